"""The slash commands `/ask`, `/usage` and `/forget`: thin handlers.

`Ask` offers `/ask` without a choice of model; `AskWithModel` (used when OPENAI_MODELS
lists more than one) adds a `model` option, autocompleted from that list.

`/ask` starts a conversation through `Conversations` (and so `AskPipeline`): refusals are
ephemeral responses, an accepted ask is deferred and answered in the interaction's
followups. Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
# Discord shows at most this many autocomplete choices.
MAX_CHOICES = 25


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


class AskWithModel(Ask):
    """`Ask`, with `/ask` taking a `model` among those offered."""

    @app_commands.command(name="ask")
    @app_commands.describe(
        prompt="Your question or request for the model",
        model="The model to answer with (the server's default if you leave it out)",
        private="Show the answer only to you",
        file="A text file, code, PDF or image for the model to read",
    )
    async def ask(  # type: ignore[override]
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        model: app_commands.Range[str, 1, 100] | None = None,
        private: bool = False,
        file: discord.Attachment | None = None,
    ) -> None:
        """Ask the language model a question."""
        if model is not None and model not in self._conversations.models:
            # Autocomplete only suggests: anything may be typed.
            await interaction.response.send_message(replies.UNKNOWN_MODEL, ephemeral=True)
            return
        files = [file] if file is not None else []
        await self._conversations.ask(
            interaction, prompt, private=private, model=model, files=files
        )

    @ask.autocomplete("model")
    async def _models(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=name, value=name)
            for name in matching(self._conversations.models, current)
        ]


def matching(models: Sequence[str], typed: str) -> list[str]:
    """The models to suggest for what was typed so far: those containing it (ignoring
    case), those starting with it first, at most `MAX_CHOICES`."""
    needle = typed.strip().lower()
    found = [name for name in models if needle in name.lower()]
    found.sort(key=lambda name: not name.lower().startswith(needle))
    return found[:MAX_CHOICES]
