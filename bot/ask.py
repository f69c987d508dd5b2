"""The `/ask` command: acknowledge, ask the model, post the answer in parts.

The handler only orchestrates; wording lives in `replies`, splitting in `chunking`,
the model call in `llm`. Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import llm, replies
from bot.chunking import split_message

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000
MESSAGE_LIMIT = 2000


class Ask(commands.Cog):
    """Answers `/ask` with the configured language model."""

    def __init__(self, completer: llm.Completer) -> None:
        self._completer = completer

    @app_commands.command(name="ask")
    @app_commands.describe(prompt="Your question or request for the model")
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
    ) -> None:
        """Ask the language model a question."""
        if not prompt.strip():
            await interaction.response.send_message(replies.EMPTY_PROMPT, ephemeral=True)
            return
        # Discord drops an interaction not acknowledged within 3 s, so the defer comes
        # before any other awaited work.
        await interaction.response.defer(thinking=True)
        try:
            answer = await self._completer.complete(prompt)
        except llm.CompletionError as error:
            await interaction.followup.send(replies.error_message(error))
            return
        # After a defer the first followup replaces the "thinking…" message; the rest
        # follow it in order.
        for part in answer_parts(answer):
            await interaction.followup.send(part)


def answer_parts(answer: llm.Answer, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The Discord messages for `answer`, with a note when it was cut off."""
    if not answer.truncated:
        return split_message(answer.text, limit)
    text = close_open_fence(answer.text)
    return split_message(f"{text}\n\n{replies.TRUNCATED_NOTE}", limit)


def close_open_fence(text: str) -> str:
    """Close a fenced code block the model left open (a cut-off answer often does)."""
    fence: str | None = None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker not in ("```", "~~~"):
            continue
        run = len(stripped) - len(stripped.lstrip(marker[0]))
        if fence is None:
            fence = marker[0] * run
        elif stripped.startswith(fence) and not stripped[run:].strip():
            fence = None
    return text if fence is None else f"{text}\n{fence}"
