"""Terminal mode: answer prompts on stdout exactly as the bot would in Discord.

The same `Answerer` runs with the same settings, splitting and streaming; only the
messages go to a terminal instead of a channel. Each Discord message is printed in
turn and closed with a rule that gives its number and length, so a reader sees where
Discord would cut and that no message exceeds the limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TextIO

import discord

from bot.answers.answering import Answerer
from bot.answers.streaming import WRITING_MARKER
from bot.config import Settings
from bot.model.llm import Completer

RULE = "\N{BOX DRAWINGS LIGHT HORIZONTAL}" * 3
EMPTY_PROMPT = 'Please give a prompt, for example: python -m bot ask "What is a monad?"'


class TerminalMessages:
    """`Messages` printed to a text stream, as they would appear in Discord.

    A terminal cannot edit what it printed. With `live`, growing text is printed as
    it grows, and a message whose final content does not continue what was printed
    (the splitter moved the cut back) is printed again whole, marked as such. Without
    it (output to a file or pipe), each message is printed once, when final. Either
    way a message is closed with its rule once its content is final.
    """

    def __init__(self, out: TextIO, *, live: bool = False) -> None:
        self._out = out
        self._live = live
        self._printed: list[str] = []
        self._final: list[str] = []

    @property
    def count(self) -> int:
        return len(self._printed)

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]:
        text = self._final[index] if index < len(self._final) else self._printed[index]
        return text, None

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        if index < len(self._final):
            return
        if index == len(self._printed):
            self._printed.append("")
        live = content.endswith(WRITING_MARKER)
        if live and not self._live:
            return
        text = content.removesuffix(WRITING_MARKER)
        printed = self._printed[index]
        if text.startswith(printed):
            self._write(text[len(printed) :])
            self._printed[index] = text
        elif not live:
            self._write(f"\n{RULE} message {index + 1}, as sent {RULE}\n{text}")
            self._printed[index] = text
        if not live:
            self._final.append(text)
            self._write(
                f"\n{RULE} message {index + 1} \N{MIDDLE DOT} {len(text)} characters {RULE}\n"
            )

    async def finish(self, parts: Sequence[str]) -> None:
        for index, part in enumerate(parts):
            await self.show(index, part)

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


class Terminal:
    """Answers prompts from the command line."""

    def __init__(self, completer: Completer, settings: Settings, *, out: TextIO) -> None:
        self._answerer = Answerer(
            completer,
            stream=settings.stream_responses,
            edit_interval=settings.stream_edit_interval,
        )
        self._out = out

    async def answer(self, prompt: str) -> int:
        """Print the answer to `prompt`; exit status 0, or 2 for an empty prompt."""
        if not prompt.strip():
            self._out.write(EMPTY_PROMPT + "\n")
            return 2
        await self._answerer.answer(prompt, self._messages())
        return 0

    async def repl(self, lines: TextIO) -> int:
        """Answer each line read from `lines` until end of input."""
        while True:
            if lines.isatty():
                self._out.write("> ")
                self._out.flush()
            # Reading stdin blocks; keep the event loop (and the model's HTTP) free.
            line = await asyncio.to_thread(lines.readline)
            if not line:
                return 0
            if line.strip():
                await self._answerer.answer(line.strip(), self._messages())

    def _messages(self) -> TerminalMessages:
        # Growing text only makes sense where it is watched; files get final messages.
        return TerminalMessages(self._out, live=self._out.isatty())
