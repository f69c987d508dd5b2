"""The `/ask` and `/usage` commands: thin handlers over `AskPipeline`.

`/ask` describes itself as an `InteractionSurface`: a refusal is the interaction's
ephemeral response, so the channel never sees who was turned away; an accepted ask is
deferred ("thinking…") and answered in the interaction's followups, which live as long
as its token (15 minutes). Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers import replies
from bot.answers.answering import Question
from bot.discord_app import pipeline
from bot.discord_app.pipeline import AskPipeline
from bot.discord_app.reply import Reply
from bot.fair_use import access

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000


class InteractionSurface:
    """An ask made through an interaction: a slash command or a modal submit."""

    kind = "interaction"

    def __init__(self, interaction: discord.Interaction, *, private: bool) -> None:
        self._interaction = interaction
        self._private = private
        self.messages = Reply(interaction.followup, ephemeral=private)

    @property
    def id(self) -> int:
        return self._interaction.id

    @property
    def user_id(self) -> int:
        return self._interaction.user.id

    @property
    def guild_id(self) -> int | None:
        return self._interaction.guild_id

    @property
    def origin(self) -> access.Origin:
        return origin_of(self._interaction)

    @property
    def lifetime(self) -> float:
        return pipeline.LIFETIME.token

    async def refuse(self, sentence: str) -> None:
        await self._interaction.response.send_message(sentence, ephemeral=True)

    async def acknowledge(self) -> None:
        await self._interaction.response.defer(thinking=True, ephemeral=self._private)


class Ask(commands.Cog):
    """Answers `/ask` with the configured language model."""

    def __init__(self, asks: AskPipeline) -> None:
        self._asks = asks

    @app_commands.command(name="ask")
    @app_commands.describe(
        prompt="Your question or request for the model",
        private="Show the answer only to you",
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        private: bool = False,
    ) -> None:
        """Ask the language model a question."""
        surface = InteractionSurface(interaction, private=private)

        async def prepare() -> Question:
            return Question(prompt)

        await self._asks.run(surface, prompt, prepare)

    @app_commands.command(name="usage")
    async def usage(self, interaction: discord.Interaction) -> None:
        """Show how many model tokens you and this server have used today."""
        fair_use = self._asks.fair_use
        refusal = access.refusal(fair_use.rules, origin_of(interaction))
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        report = await fair_use.budgets.usage_report(interaction.user.id, interaction.guild_id)
        await interaction.followup.send(replies.usage_report(report), ephemeral=True)


def origin_of(interaction: discord.Interaction) -> access.Origin:
    """Where an interaction's ask counts as coming from."""
    return access.Origin(
        guild_id=interaction.guild_id,
        channel_id=_parent_channel_id(interaction),
        role_ids=[role.id for role in getattr(interaction.user, "roles", [])],
    )


def _parent_channel_id(interaction: discord.Interaction) -> int | None:
    """The channel an ask counts as coming from: a thread counts as its parent."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return interaction.channel_id
