"""Terminal mode: answer prompts on stdout exactly as the bot would in Discord.

The same `Answerer` runs with the same settings, splitting and streaming; only the
messages go to a terminal instead of a channel. Each Discord message is printed in
turn and closed with a rule that gives its number and length, so a reader sees where
Discord would cut and that no message exceeds the limit.

stdout carries only those messages. Everything else goes to stderr: the reason an
answer could not be given, and, on a terminal, the start-up hint, the prompt and the
"thinking" indicator. Ctrl-C during an answer stops it like Discord's Stop button,
keeping what was written; at the prompt it quits.

Exit statuses: 0 answered (cut off at the length limit included), 1 no answer (the
provider failed; with several prompts read from a pipe or file, any of them), 2 an
empty prompt, 130 a single prompt's answer stopped with Ctrl-C. An interactive
session (stdin is a terminal) ends with 0.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

import discord

from bot.answers import replies
from bot.answers.answering import Answerer
from bot.answers.chunking import close_open_fence
from bot.answers.formatting import MESSAGE_LIMIT
from bot.answers.messages import Attachment
from bot.answers.streaming import WRITING_MARKER
from bot.config import Settings
from bot.model.llm import Completer

RULE = "\N{BOX DRAWINGS LIGHT HORIZONTAL}" * 3
EMPTY_PROMPT = 'Please give a prompt, for example: python -m bot ask "What is a monad?"'
THINKING = "thinking\N{HORIZONTAL ELLIPSIS}"
PROMPT = "> "
HINT = (
    "Type a question and press Enter. Ctrl-C stops an answer; at the prompt, Ctrl-C or "
    "Ctrl-D quits."
)
BUILTIN_HINT = (
    " The built-in model is tiny, for trying the bot out: set OPENAI_API_KEY or "
    "OPENAI_BASE_URL for a real one."
)
# Erases from the cursor to the end of the line: the indicator ends with a carriage
# return, so a log line written meanwhile simply overwrites it.
ERASE_LINE = "\x1b[K"

EXIT_OK = 0
EXIT_NO_ANSWER = 1
EXIT_EMPTY_PROMPT = 2
EXIT_STOPPED = 130  # the shell's status for a command ended by Ctrl-C

ANSWERED = frozenset({"answered", "truncated", "stopped"})
"""Outcome kinds that gave the person an answer (a stopped one is their own choice)."""

NO_ANSWER_REASONS = {
    "rate_limited": "the provider is rate limiting requests",
    "timed_out": "the model did not answer within OPENAI_TIMEOUT",
    "prompt_too_long": "the prompt is too long for the model's context window",
    "misconfigured": (
        "the provider rejected the request (check OPENAI_API_KEY, OPENAI_MODEL and OPENAI_BASE_URL)"
    ),
    "unavailable": "the provider could not be reached or failed",
    "empty": "the model returned an empty answer",
    "refused": "the model declined to answer",
    "interrupted": "the provider failed midway through the answer",
}

# A growing message is printed only up to here until its content is final. The splitter
# cuts a message only in the last fifth of its room, so text before this point is in the
# message whatever comes next, and printing it never has to be taken back.
_SAFE_SHARE = 3 / 4
_CLOSING_FENCE = re.compile(r"\n(`{3,}|~{3,})\Z")


def no_answer_reason(kind: str) -> str:
    """Why an answer that ended as `kind` (an `Outcome.kind`) was not given, for stderr."""
    return NO_ANSWER_REASONS.get(kind, f"the answer failed ({kind})")


class TerminalMessages:
    """`Messages` printed to a text stream, as they would appear in Discord.

    A terminal cannot edit what it printed, so only text that cannot change is printed:
    with `live`, a growing message is printed as it grows, without the closing fence
    added to show it and only up to the point the splitter can no longer cut before;
    the rest follows once its content is final. Should the final content still not
    continue what was printed, it is printed again whole, marked as such. Without `live`
    (output to a file or pipe), each message is printed once, when final. Either way each
    message is closed, in order, by exactly one rule with its number and length.

    With a `status` stream, `thinking()` shows an indicator there that is erased as the
    first text is printed; a reasoning model's status ("Thinking… 12 s") replaces it
    there, and is never a message. A file the last message would carry is named there.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        live: bool = False,
        status: TextIO | None = None,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self._out = out
        self._live = live
        self._status = status
        self._limit = limit
        self._shown: list[str] = []  # the content last given for each message
        self._closed = 0  # messages printed in full with their rule, all before the others
        self._printed = ""  # what is printed of message `_closed`, the one being written
        self._indicator = False
        self._abandoned = False

    @property
    def count(self) -> int:
        return len(self._shown)

    cap: int | None = None
    """A terminal prints as many messages as an answer needs."""

    @property
    def message_ids(self) -> list[int]:
        """A terminal's messages have no ids."""
        return []

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]:
        return self._shown[index], None

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        if self._abandoned or index < self._closed:
            return  # a final message never changes
        if index == len(self._shown) and content.startswith(replies.THINKING):
            self._status_line(content.removeprefix("-# "))
            return
        if index < len(self._shown):
            self._shown[index] = content
        elif index == len(self._shown):
            self._shown.append(content)
        else:
            raise IndexError(f"message {index + 1} shown before message {len(self._shown) + 1}")
        if content.endswith(WRITING_MARKER):
            if self._live and index == self._closed:
                self._grow(content.removesuffix(WRITING_MARKER))
            return
        while self._closed < len(self._shown) and not self._shown[self._closed].endswith(
            WRITING_MARKER
        ):
            self._close(self._shown[self._closed])

    async def finish(
        self,
        parts: Sequence[str],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        # No cap: an answer in a terminal is never cut into a file.
        for index, part in enumerate(parts):
            await self.show(index, part)
        if self._abandoned:
            return
        # Messages shown while writing that the final answer does not have.
        del self._shown[len(parts) :]
        if self._printed and self._closed == len(parts):
            self._write("\n")
            self._printed = ""
        if file is not None and self._status is not None:
            self._status.write(
                f"(Discord would attach {file.filename}: {len(file.content)} bytes)\n"
            )
            self._status.flush()

    def thinking(self) -> None:
        """Show the indicator on the status stream until the first text is printed."""
        if not self._indicator:
            self._status_line(THINKING)

    def _status_line(self, text: str) -> None:
        """Show `text` as the indicator, replacing any shown, until the first text."""
        if self._status is None or self._printed or self._closed:
            return
        self._status.write(f"{ERASE_LINE if self._indicator else ''}{text}\r")
        self._status.flush()
        self._indicator = True

    def cut_short(self, note: str) -> None:
        """Close the display with `note` as a message of its own; ignore later changes.

        For an answer abandoned before it could close its messages itself.
        """
        if self._abandoned:
            return
        self._abandoned = True
        if self._printed:
            # Closed as far as it got: that much is on the screen.
            self._rule(self._closed, len(self._printed))
            self._closed += 1
            self._printed = ""
        self._write(note)
        self._rule(self._closed, len(note))

    def _grow(self, content: str) -> None:
        text = _without_display_fence(content)[: int(self._limit * _SAFE_SHARE)]
        if len(text) > len(self._printed) and text.startswith(self._printed):
            self._write(text[len(self._printed) :])
            self._printed = text

    def _close(self, text: str) -> None:
        if text.startswith(self._printed):
            self._write(text[len(self._printed) :])
        else:
            self._write(f"\n{RULE} message {self._closed + 1}, as sent {RULE}\n{text}")
        self._rule(self._closed, len(text))
        self._closed += 1
        self._printed = ""

    def _rule(self, index: int, length: int) -> None:
        self._write(f"\n{RULE} message {index + 1} \N{MIDDLE DOT} {length} characters {RULE}\n")

    def _write(self, text: str) -> None:
        if self._indicator and self._status is not None:
            self._status.write(ERASE_LINE)
            self._status.flush()
            self._indicator = False
        self._out.write(text)
        self._out.flush()


def _without_display_fence(text: str) -> str:
    """`text` without the closing fence `close_open_fence` added to show it while growing.

    The fence is not part of the answer: the model writes more code before closing it.
    """
    match = _CLOSING_FENCE.search(text)
    if match is None:
        return text
    # Without the newline first: "```" stays a prefix of the "```python" that follows.
    for candidate in (text[: match.start()], text[: match.start() + 1]):
        if close_open_fence(candidate) == text:
            return candidate
    return text


class Terminal:
    """Answers prompts from the command line; see the module docstring for the behaviour."""

    def __init__(
        self,
        completer: Completer,
        settings: Settings,
        *,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self._answerer = Answerer(
            completer,
            stream=settings.stream_responses,
            edit_interval=settings.stream_edit_interval,
            attach_reasoning=settings.show_reasoning == "file",
        )
        self._out = out
        self._err = err
        self._builtin_model = settings.uses_builtin_model
        self._on_interrupt: Callable[[], None] = lambda: None

    async def answer(self, prompt: str) -> int:
        """Print the answer to `prompt`; return the exit status."""
        if not prompt.strip():
            self._say(EMPTY_PROMPT)
            return EXIT_EMPTY_PROMPT
        with self._interrupts():
            kind = await self._answer(prompt)
        if kind == "stopped":
            return EXIT_STOPPED
        if kind not in ANSWERED:
            self._say(f"No answer: {no_answer_reason(kind)}.")
            return EXIT_NO_ANSWER
        return EXIT_OK

    async def repl(self, stdin: TextIO) -> int:
        """Answer each line read from `stdin` until end of input (or Ctrl-C at the prompt)."""
        interactive = stdin.isatty()
        if interactive:
            self._say(HINT + (BUILTIN_HINT if self._builtin_model else ""))
        failed = False
        with self._interrupts(), _Lines.reading(stdin) as lines:
            while True:
                if interactive:
                    self._err.write(PROMPT)
                    self._err.flush()
                line = await self._next_line(lines)
                if line is None:
                    if interactive:
                        self._say("")  # the shell's prompt starts on a line of its own
                        return EXIT_OK
                    return EXIT_NO_ANSWER if failed else EXIT_OK
                if not line.strip():
                    continue
                kind = await self._answer(line.strip())
                if kind not in ANSWERED:
                    failed = True
                    if not interactive:
                        self._say(f"No answer: {no_answer_reason(kind)}.")

    async def _answer(self, prompt: str) -> str:
        """Answer one prompt; return the `Outcome.kind`, "stopped" when Ctrl-C stopped it."""
        messages = TerminalMessages(
            self._out,
            live=self._out.isatty(),
            status=self._err if self._err.isatty() else None,
        )
        messages.thinking()
        stop: asyncio.Event | None = None

        def stop_button(pressed: asyncio.Event) -> None:
            nonlocal stop
            stop = pressed

        task = asyncio.create_task(self._answerer.answer(prompt, messages, stop_button=stop_button))
        abandoned = False

        def interrupt() -> None:
            nonlocal abandoned
            if task.done():
                return
            if stop is not None and not stop.is_set():
                stop.set()  # like the Stop button: the answer closes with what it has
                return
            # Nothing to stop yet (no text so far, or not streaming), or a second Ctrl-C.
            abandoned = True
            messages.cut_short(replies.STOPPED_NOTE)
            task.cancel()

        self._on_interrupt = interrupt
        try:
            outcome = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not abandoned or (current is not None and current.cancelling()):
                raise
            return "stopped"
        finally:
            self._on_interrupt = lambda: None
        return outcome.kind

    async def _next_line(self, lines: _Lines) -> str | None:
        """The next line, or None at end of input or on Ctrl-C."""
        quit_ = asyncio.Event()
        self._on_interrupt = quit_.set
        reading = asyncio.create_task(lines.readline())
        quitting = asyncio.create_task(quit_.wait())
        try:
            await asyncio.wait({reading, quitting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._on_interrupt = lambda: None
            quitting.cancel()
            line = reading.result() if reading.done() else None
            reading.cancel()
        return line

    @contextlib.contextmanager
    def _interrupts(self) -> Iterator[None]:
        """Route Ctrl-C (SIGINT) to whatever is waiting for it, instead of ending the program."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, lambda: self._on_interrupt())
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    def _say(self, text: str) -> None:
        self._err.write(text + "\n")
        self._err.flush()


class _Lines:
    """Lines of stdin read on the event loop, so waiting for one holds no thread.

    A thread blocked reading a terminal cannot be interrupted, and would keep Ctrl-C from
    quitting at once. A regular file, which the loop cannot watch, never blocks: it is
    read directly.
    """

    def __init__(self, fd: int, encoding: str) -> None:
        self._fd = fd
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._buffer = ""
        self._eof = False
        self._readable = asyncio.Event()
        self._watched = False

    @classmethod
    @contextlib.contextmanager
    def reading(cls, stream: TextIO) -> Iterator[_Lines]:
        lines = cls(stream.fileno(), stream.encoding or "utf-8")
        try:
            yield lines
        finally:
            lines._unwatch()

    async def readline(self) -> str | None:
        """The next line without its line break; None at end of input."""
        while "\n" not in self._buffer and not self._eof:
            if not self._watched and not self._watch():
                self._read()
                continue
            self._readable.clear()
            await self._readable.wait()
        if "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            return line
        # At end of input, a last line without a line break (Ctrl-D after some text).
        line, self._buffer = self._buffer, ""
        if line:
            self._eof = False  # a terminal can still be read after Ctrl-D
            return line
        return None

    def _watch(self) -> bool:
        try:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        except (PermissionError, NotImplementedError):  # a regular file
            return False
        self._watched = True
        return True

    def _unwatch(self) -> None:
        if self._watched:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._watched = False

    def _on_readable(self) -> None:
        self._read()
        if self._eof:
            # Still readable at end of input: stop watching, or the loop spins.
            self._unwatch()
        self._readable.set()

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # the terminal went away
        self._buffer += self._decoder.decode(data, final=not data)
        self._eof = not data
