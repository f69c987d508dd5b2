"""Answering one prompt into a set of messages: the flow shared by Discord and the terminal.

`Answerer.answer` asks the model and makes `messages` show the answer, streamed or not,
however it ends: complete, cut off, interrupted by a provider error, or stopped by the
person who asked. It never leaves a "still writing" marker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import discord

from bot.answers import replies
from bot.answers.formatting import final_parts
from bot.answers.messages import Messages
from bot.answers.streaming import LiveReply
from bot.model import llm

log = logging.getLogger(__name__)

ViewFactory = Callable[[asyncio.Event], discord.ui.View | None]


@dataclass
class Progress:
    """What a streamed answer has produced so far, kept when the stream is cut short."""

    text: str = ""
    finish_reason: str | None = None
    usage: llm.Usage | None = None
    error: llm.CompletionError | None = None


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
    """Turns prompts into answers shown through a `Messages` implementation."""

    def __init__(
        self, completer: llm.Completer, *, stream: bool = True, edit_interval: float = 1.0
    ) -> None:
        self._completer = completer
        self._stream = stream
        self._edit_interval = edit_interval

    async def answer(
        self,
        prompt: str,
        messages: Messages,
        *,
        stop_button: ViewFactory = lambda _pressed: None,
        on_model_done: Callable[[], None] = lambda: None,
    ) -> Outcome:
        """Ask the model and show its answer in `messages`.

        `stop_button(pressed)` builds the buttons for a message still being written;
        setting `pressed` stops the generation, keeping the text so far.
        `on_model_done()` is called as soon as the model is done with this answer,
        before the final edits, so its slot can serve the next ask.
        If cancelled, the messages are closed with a note before the cancellation
        propagates.
        """
        if self._stream:
            return await self._stream_answer(prompt, messages, stop_button, on_model_done)
        try:
            return await self._answer(prompt, messages, on_model_done)
        except asyncio.CancelledError:
            await messages.finish([replies.RESTARTED_NOTE])
            raise

    async def _answer(
        self, prompt: str, reply: Messages, on_model_done: Callable[[], None]
    ) -> Outcome:
        try:
            answer = await self._completer.complete(prompt)
        except llm.CompletionError as error:
            on_model_done()
            await reply.finish([replies.error_message(error)])
            return Outcome(error.kind, "", None, None)
        on_model_done()
        note = replies.TRUNCATED_NOTE if answer.truncated else None
        await reply.finish(final_parts(answer.text, note))
        kind = "truncated" if answer.truncated else "answered"
        return Outcome(kind, answer.text, answer.usage, asyncio.get_running_loop().time())

    async def _stream_answer(
        self,
        prompt: str,
        reply: Messages,
        stop_button: ViewFactory,
        on_model_done: Callable[[], None],
    ) -> Outcome:
        stop_pressed = asyncio.Event()
        live = LiveReply(
            reply, interval=self._edit_interval, view_factory=lambda: stop_button(stop_pressed)
        )
        progress = Progress()
        renderer = asyncio.create_task(live.run())
        consumer = asyncio.create_task(self._consume(prompt, live, progress))
        stop_waiter = asyncio.create_task(stop_pressed.wait())
        try:
            try:
                done, _ = await asyncio.wait(
                    {consumer, stop_waiter, renderer}, return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:
                consumer.cancel()
                await live.close(final_parts(progress.text, replies.RESTARTED_NOTE), renderer)
                raise
            if renderer in done:
                renderer.result()  # only ends early by raising: Discord refused an edit
            stopped = consumer not in done
            if stopped:
                consumer.cancel()  # closes the HTTP stream, which cancels the generation
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            on_model_done()
            if not stopped and consumer.exception() is not None:
                # Unexpected: keep what was written, leave the apology to the tree.
                await live.close(final_parts(progress.text), renderer)
                consumer.result()
            await live.close(streamed_parts(progress, stopped=stopped), renderer)
            return Outcome(
                streamed_kind(progress, stopped=stopped),
                progress.text,
                progress.usage,
                live.first_shown_at,
            )
        finally:
            for task in (consumer, stop_waiter, renderer):
                task.cancel()

    async def _consume(self, prompt: str, live: LiveReply, progress: Progress) -> None:
        try:
            async for chunk in self._completer.stream(prompt):
                if chunk.text:
                    progress.text += chunk.text
                    live.update(progress.text)
                progress.finish_reason = chunk.finish_reason or progress.finish_reason
                progress.usage = chunk.usage or progress.usage
        except llm.CompletionError as error:
            progress.error = error


def streamed_parts(progress: Progress, *, stopped: bool) -> list[str]:
    """The final messages of a streamed answer, however it ended."""
    if stopped:
        return final_parts(progress.text, replies.STOPPED_NOTE)
    if progress.error is not None:
        if not progress.text.strip():
            return [replies.error_message(progress.error)]
        return final_parts(progress.text, replies.interrupted_note(progress.error))
    if progress.finish_reason == "length":
        return final_parts(progress.text, replies.TRUNCATED_NOTE)
    return final_parts(progress.text)


def streamed_kind(progress: Progress, *, stopped: bool) -> str:
    if stopped:
        return "stopped"
    if progress.error is not None:
        return "interrupted" if progress.text.strip() else progress.error.kind
    return "truncated" if progress.finish_reason == "length" else "answered"
