"""Answering one question into a set of messages: the flow shared by Discord and the terminal.

`Answerer.answer` asks the model and makes `messages` show the answer, streamed or not,
however it ends: complete, cut off, interrupted by a provider error, or stopped by the
person who asked. It never leaves a "still writing" marker behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import discord

from bot.answers import replies
from bot.answers.attachment import capped
from bot.answers.formatting import final_parts
from bot.answers.messages import Attachment, DeliveryFailed, MessageGone, Messages
from bot.answers.streaming import LiveReply, write_final
from bot.model import llm
from bot.model.vision import has_images, without_images

log = logging.getLogger(__name__)

ViewFactory = Callable[[asyncio.Event], discord.ui.View | None]
Request = str | Sequence[llm.ChatMessage]
"""What the model is asked: a lone prompt (after the system prompt) or a whole conversation."""


@dataclass
class Progress:
    """What a streamed answer has produced so far, kept when the stream is cut short."""

    text: str = ""
    finish_reason: str | None = None
    usage: llm.Usage | None = None
    error: llm.CompletionError | None = None
    images_dropped: bool = False
    """The model cannot see images: they were left out and the text alone was answered."""
    reasoning: str = ""
    """What a reasoning model thought first: never part of `text`, nor of any turn."""


@dataclass(frozen=True)
class Question:
    """One question and how its answer is to be closed.

    `shorter` is the same question with less history, tried once if the provider says
    `request` is too long. `footer` is a small note after a complete answer (e.g. that
    older turns were left out). `final_view(progress)` gives the buttons of the last
    message of an answer that has text (a "Follow up" button); it is awaited once,
    just before the final edit.
    """

    request: Request
    shorter: Request | None = None
    footer: str | None = None
    unanswerable: llm.CompletionError | None = None
    """Known before asking: the model would refuse it (e.g. it is too long even alone)."""
    declined: tuple[str, str] | None = None
    """Known before asking: it is not asked (e.g. an attached file is unreadable); the
    outcome kind and the sentence shown instead of an answer."""
    final_view: Callable[[Progress], Awaitable[discord.ui.View | None]] | None = None
    model: str | None = None
    """The model to answer with; None: the completer's own."""

    def without_images(self) -> Question:
        """The same question with its image parts left out."""
        shorter = self.shorter
        return replace(
            self,
            request=_without_images(self.request),
            shorter=_without_images(shorter) if shorter is not None else None,
        )

    @property
    def has_images(self) -> bool:
        return not isinstance(self.request, str) and has_images(self.request)

    async def view_for(self, progress: Progress) -> discord.ui.View | None:
        if self.final_view is None or not progress.text.strip():
            return None
        return await self.final_view(progress)


@dataclass(frozen=True)
class Outcome:
    """How one answer ended, for the ask's log line, metrics and token budgets."""

    kind: str
    """answered, truncated, stopped, interrupted, or the `CompletionError.kind`."""
    text: str
    usage: llm.Usage | None
    first_text_at: float | None
    """The event loop time the first answer text was shown, if any was."""


class Answerer:
    """Turns questions into answers shown through a `Messages` implementation."""

    def __init__(
        self,
        completer: llm.Completer,
        *,
        stream: bool = True,
        edit_interval: float = 1.0,
        attach_reasoning: bool = False,
    ) -> None:
        """`attach_reasoning`: a reasoning model's thoughts go with the answer's last
        message as `reasoning.md` (SHOW_REASONING=file)."""
        self._completer = completer
        self._stream = stream
        self._edit_interval = edit_interval
        self._attach_reasoning = attach_reasoning

    @property
    def completer(self) -> llm.Completer:
        return self._completer

    async def answer(
        self,
        question: Question | str,
        messages: Messages,
        *,
        stop_button: ViewFactory = lambda _pressed: None,
        on_model_done: Callable[[], None] = lambda: None,
        deadline: float | None = None,
        progress: Progress | None = None,
    ) -> Outcome:
        """Ask the model and show its answer in `messages`.

        `stop_button(pressed)` builds the buttons for a message still being written;
        setting `pressed` stops the generation, keeping the text so far.
        `on_model_done()` is called as soon as the model is done with this answer,
        before the final edits, so its slot can serve the next ask.
        `deadline` (event loop time) ends the model call early: what was written is
        kept, with a note. `progress`, when given, holds the text so far however the
        answer ends, cancellation included (for counting what was spent).

        When the messages are gone (deleted, token expired) generation stops and the
        outcome says so (`deleted`, `expired`); when Discord keeps refusing writes it is
        `undelivered`. If cancelled, the messages are closed with a note (or with the
        answer itself, when the model had finished) before the cancellation propagates.
        """
        if isinstance(question, str):
            question = Question(question)
        progress = progress if progress is not None else Progress()
        if question.unanswerable is not None:
            on_model_done()
            progress.error = question.unanswerable
            await _finish(messages, [replies.error_message(question.unanswerable)])
            return Outcome(question.unanswerable.kind, "", None, None)
        if question.declined is not None:
            on_model_done()
            kind, sentence = question.declined
            await _finish(messages, [sentence])
            return Outcome(kind, "", None, None)
        if question.has_images and self._completer.sees_images is False:
            question, progress.images_dropped = question.without_images(), True
        try:
            if self._stream:
                return await self._stream_answer(
                    question, messages, stop_button, on_model_done, deadline, progress
                )
            return await self._answer(question, messages, on_model_done, deadline, progress)
        except (MessageGone, DeliveryFailed) as error:
            on_model_done()
            kind = error.kind if isinstance(error, MessageGone) else "undelivered"
            log.info("answer not shown in full: %s", error)
            return Outcome(kind, progress.text, progress.usage, None)

    async def _complete(
        self, question: Question, deadline: float | None, progress: Progress
    ) -> llm.Answer:
        try:
            return await self._completer.complete(
                question.request, deadline=deadline, model=question.model
            )
        except llm.ImagesNotSupported:
            if not question.has_images:
                raise
            progress.images_dropped = True
            return await self._complete(question.without_images(), deadline, progress)
        except llm.PromptTooLong:
            if question.shorter is None:
                raise
            log.info("prompt too long for the model: trying once with half the history")
            return await self._completer.complete(
                question.shorter, deadline=deadline, model=question.model
            )

    async def _answer(
        self,
        question: Question,
        reply: Messages,
        on_model_done: Callable[[], None],
        deadline: float | None,
        progress: Progress,
    ) -> Outcome:
        try:
            answer = await self._complete(question, deadline, progress)
        except llm.CompletionError as error:
            on_model_done()
            progress.error = error
            await _finish(reply, [replies.error_message(error)])
            return Outcome(error.kind, "", None, None)
        except asyncio.CancelledError:
            await _finish(reply, [replies.RESTARTED_NOTE])
            raise
        on_model_done()
        progress.text, progress.usage = answer.text, answer.usage
        progress.finish_reason, progress.reasoning = answer.finish_reason, answer.reasoning
        note = replies.TRUNCATED_NOTE if answer.truncated else _footer(question, progress)
        view = await question.view_for(progress)
        # Cut off by a shutdown while sending, the answer itself is still the best close.
        parts, file = capped(final_parts(answer.text, note), answer.text, reply.cap)
        await _finish(reply, parts, view, file or self._reasoning_file(progress))
        kind = "truncated" if answer.truncated else "answered"
        return Outcome(kind, answer.text, answer.usage, asyncio.get_running_loop().time())

    async def _stream_answer(
        self,
        question: Question,
        reply: Messages,
        stop_button: ViewFactory,
        on_model_done: Callable[[], None],
        deadline: float | None,
        progress: Progress,
    ) -> Outcome:
        stop_pressed = asyncio.Event()
        live = LiveReply(
            reply, interval=self._edit_interval, view_factory=lambda: stop_button(stop_pressed)
        )
        renderer = asyncio.create_task(live.run())
        consumer = asyncio.create_task(self._consume(question, live, progress, deadline))
        stop_waiter = asyncio.create_task(stop_pressed.wait())
        try:
            try:
                done, _ = await asyncio.wait(
                    {consumer, stop_waiter, renderer}, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:
                consumer.cancel()
                parts = final_parts(progress.text, replies.RESTARTED_NOTE)
                await _close(live, parts, renderer, whole=progress.text)
                raise
            if renderer in done:
                # It ends early only by raising: the messages are gone, or Discord kept
                # failing. Nobody will see more, so stop the model.
                await _cancelled(consumer)
                on_model_done()
                renderer.result()
            stopped = consumer not in done
            if stopped:
                # Closing the HTTP stream cancels the generation.
                await _cancelled(consumer)
            on_model_done()
            if not stopped and consumer.exception() is not None:
                # Unexpected: keep what was written, leave the apology to the tree.
                await _close(live, final_parts(progress.text), renderer, whole=progress.text)
                consumer.result()
            parts = streamed_parts(progress, stopped=stopped, footer=_footer(question, progress))
            view = await question.view_for(progress)
            reasoning = self._reasoning_file(progress)
            await _close(live, parts, renderer, view, reasoning, whole=progress.text)
            return Outcome(
                streamed_kind(progress, stopped=stopped),
                progress.text,
                progress.usage,
                live.first_shown_at,
            )
        finally:
            for task in (consumer, stop_waiter, renderer):
                task.cancel()

    def _reasoning_file(self, progress: Progress) -> Attachment | None:
        """The `reasoning.md` of an answer, when asked for and the model reasoned."""
        if not self._attach_reasoning or not progress.reasoning.strip():
            return None
        return reasoning_file(progress.reasoning)

    async def _consume(
        self, question: Question, live: LiveReply, progress: Progress, deadline: float | None
    ) -> None:
        request: Request | None = question.request
        while request is not None:
            current, request = request, None
            try:
                async for chunk in self._completer.stream(
                    current, deadline=deadline, model=question.model
                ):
                    if chunk.text_was_reasoning:
                        # The model's template opened its reasoning unseen: what looked
                        # like answer text so far was reasoning, and is no part of it
                        # (this chunk's reasoning repeats it).
                        progress.text = ""
                        live.update("")
                    if chunk.reasoning:
                        progress.reasoning += chunk.reasoning
                        live.think()
                    if chunk.text:
                        progress.text += chunk.text
                        live.update(progress.text)
                    progress.finish_reason = chunk.finish_reason or progress.finish_reason
                    progress.usage = chunk.usage or progress.usage
            except llm.PromptTooLong as error:
                if progress.text or current is question.shorter or question.shorter is None:
                    progress.error = error
                    return
                log.info("prompt too long for the model: trying once with half the history")
                request = question.shorter
            except llm.ImagesNotSupported as error:
                if progress.text or isinstance(current, str) or not has_images(current):
                    progress.error = error
                    return
                progress.images_dropped = True
                question = question.without_images()
                request = question.request
            except llm.CompletionError as error:
                progress.error = error


def _without_images(request: Request) -> Request:
    if isinstance(request, str):
        return request
    return without_images(request)


def _footer(question: Question, progress: Progress) -> str | None:
    """The note under a whole answer: that images went unseen, then the question's own."""
    if not progress.images_dropped:
        return question.footer
    if question.footer is None:
        return replies.IMAGES_NOT_SEEN
    return f"{replies.IMAGES_NOT_SEEN}\n{question.footer}"


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended, without hiding our own cancellation."""
    task.cancel()
    await asyncio.wait({task})


async def _close(
    live: LiveReply,
    parts: list[str],
    renderer: asyncio.Task[None],
    view: discord.ui.View | None = None,
    file: Attachment | None = None,
    *,
    whole: str,
) -> None:
    """Close `live` with `parts` and `file`, within its cap (past it, with `whole`, the
    complete answer, attached instead: `capped`); if cancelled meanwhile, still write them,
    then re-raise."""
    parts, whole_file = capped(parts, whole, live.messages.cap)
    file = whole_file or file
    try:
        await live.close(parts, renderer, view, file)
    except asyncio.CancelledError:
        # The renderer was cancelled with us; the final parts are still the right close.
        await _finish(live.messages, parts, view, file)
        raise


async def _finish(
    reply: Messages,
    parts: list[str],
    view: discord.ui.View | None = None,
    file: Attachment | None = None,
) -> None:
    """`reply.finish(parts, view, file)`, retried while Discord fails (`write_final`), and
    completed even when the caller is cancelled meanwhile."""
    writing = asyncio.ensure_future(write_final(lambda: reply.finish(parts, view, file)))
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        # A shutdown cut in while the last messages were going out: let them land (the
        # shutdown bounds how long), then let the cancellation go on.
        await asyncio.wait({writing})
        if not writing.cancelled() and writing.exception() is not None:
            log.info("could not close an answer cut off by a shutdown: %s", writing.exception())
        raise


def reasoning_file(reasoning: str) -> Attachment:
    """A model's reasoning as the Markdown file shown with its answer."""
    return Attachment(replies.REASONING_FILE, reasoning.strip().encode() + b"\n")


def streamed_parts(progress: Progress, *, stopped: bool, footer: str | None = None) -> list[str]:
    """The final messages of a streamed answer, however it ended; `footer` after a whole one."""
    if stopped:
        return final_parts(progress.text, replies.STOPPED_NOTE)
    if progress.error is not None:
        if not progress.text.strip():
            return [replies.error_message(progress.error)]
        return final_parts(progress.text, replies.interrupted_note(progress.error))
    if progress.finish_reason == "length":
        return final_parts(progress.text, replies.TRUNCATED_NOTE)
    return final_parts(progress.text, footer)


def streamed_kind(progress: Progress, *, stopped: bool) -> str:
    if stopped:
        return "stopped"
    if progress.error is not None:
        return "interrupted" if progress.text.strip() else progress.error.kind
    return "truncated" if progress.finish_reason == "length" else "answered"
