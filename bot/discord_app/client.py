"""The Discord client: safe defaults, the `/ask` cog, and command syncing."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers.answering import Answerer
from bot.config import Settings
from bot.discord_app.ask import Ask
from bot.discord_app.pipeline import AskPipeline, FairUse
from bot.discord_app.tree import AskTree
from bot.model.llm import Completer

log = logging.getLogger(__name__)


class AskBot(commands.Bot):
    """A bot that answers slash commands only; it reads no message content."""

    def __init__(
        self,
        settings: Settings,
        completer: Completer,
        fair_use: FairUse,
        *,
        sync_on_start: bool = True,
    ) -> None:
        dms = settings.allow_dms
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=AskTree,
            # Slash commands need no privileged intents.
            intents=discord.Intents.default(),
            # Model output is untrusted: it must never ping anyone. This default also
            # covers interaction followups, which use the client's state.
            allowed_mentions=discord.AllowedMentions.none(),
            # Without ALLOW_DMS the commands are not offered in direct messages at all.
            allowed_contexts=app_commands.AppCommandContext(
                guild=True, dm_channel=dms, private_channel=dms
            ),
            http_trace=fair_use.metrics.discord_trace(),
        )
        self._fair_use = fair_use
        self._settings = settings
        self._completer = completer
        self._sync_on_start = sync_on_start

    async def setup_hook(self) -> None:
        answerer = Answerer(
            self._completer,
            stream=self._settings.stream_responses,
            edit_interval=self._settings.stream_edit_interval,
        )
        await self.add_cog(Ask(AskPipeline(answerer, self._fair_use)))
        guild_id = self._settings.discord_guild_id
        if self._sync_on_start and guild_id is not None:
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to guild %s", len(synced), guild_id)

    async def sync_globally(self) -> int:
        """Register the commands for every server; Discord may take a while to show them."""
        synced = await self.tree.sync()
        return len(synced)

    async def on_message(self, message: discord.Message, /) -> None:
        # Slash commands only. The default would parse every message that mentions the
        # bot as a prefix command and log a "command not found" traceback for each.
        return

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s (%s guilds)", self.user, len(self.guilds))
