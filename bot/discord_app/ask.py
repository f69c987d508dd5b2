"""The slash commands `/ask`, `/usage` and `/forget`: thin handlers.

`/ask` starts a conversation through `Conversations` (and so `AskPipeline`): refusals are
ephemeral responses, an accepted ask is deferred and answered in the interaction's
followups. Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers import replies
from bot.discord_app.conversations import Conversations
from bot.discord_app.pipeline import FairUse
from bot.discord_app.reply import origin_of
from bot.fair_use import access

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000


class Ask(commands.Cog):
    """Answers `/ask` with the configured language model."""

    def __init__(self, conversations: Conversations, fair_use: FairUse) -> None:
        self._conversations = conversations
        self._fair = fair_use

    @app_commands.command(name="ask")
    @app_commands.describe(
        prompt="Your question or request for the model",
        private="Show the answer only to you",
        file="A text file, code, PDF or image for the model to read",
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        private: bool = False,
        file: discord.Attachment | None = None,
    ) -> None:
        """Ask the language model a question."""
        files = [file] if file is not None else []
        await self._conversations.ask(interaction, prompt, private=private, files=files)

    @app_commands.command(name="usage")
    async def usage(self, interaction: discord.Interaction) -> None:
        """Show how many model tokens you and this server have used today."""
        if await self._refused(interaction):
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        report = await self._fair.budgets.usage_report(interaction.user.id, interaction.guild_id)
        await interaction.followup.send(replies.usage_report(report), ephemeral=True)

    @app_commands.command(name="forget")
    async def forget(self, interaction: discord.Interaction) -> None:
        """Delete every question of yours and its answer that I stored for conversations."""
        await interaction.response.defer(thinking=True, ephemeral=True)
        deleted = await self._conversations.forget(interaction.user.id)
        log.info("forgot %d turn(s) of user %s at their request", deleted, interaction.user.id)
        await interaction.followup.send(replies.forgotten(deleted), ephemeral=True)

    async def _refused(self, interaction: discord.Interaction) -> bool:
        refusal = access.refusal(self._fair.rules, origin_of(interaction))
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
        return refusal is not None
