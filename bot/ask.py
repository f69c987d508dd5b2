"""The `/ask` command: acknowledge at once, then answer through `Answerer`.

The handler only orchestrates; everything else lives in pure helpers and small
modules. Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import replies
from bot.answering import Answerer
from bot.reply import Reply
from bot.stop_button import StopButton

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000


class Ask(commands.Cog):
    """Answers `/ask` with the configured language model."""

    def __init__(self, answerer: Answerer) -> None:
        self._answerer = answerer

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
        asker_id = interaction.user.id
        await self._answerer.answer(
            prompt,
            Reply(interaction.followup),
            stop_button=lambda pressed: StopButton(asker_id, pressed.set),
        )
