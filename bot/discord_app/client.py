"""The Discord client: safe defaults, the commands, follow-ups, and command syncing.

It needs no privileged intent: slash commands, the "Ask about this" message command (the
message comes resolved in it) and buttons arrive as interactions, and the messages it reads
(replies to its answers, mentions of it) carry their content without the Message Content
intent, because they mention the bot.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers.answering import Answerer
from bot.config import Settings
from bot.conversation.context import context_budget
from bot.conversation.files import FileRules
from bot.conversation.settings import SettingsStore
from bot.conversation.tokens import TokenCounter
from bot.conversation.turns import ConversationStore
from bot.discord_app.ask import Ask, AskWithModel
from bot.discord_app.ask_about import ask_about_menu
from bot.discord_app.conversations import Conversations
from bot.discord_app.follow_up import FollowUpButton
from bot.discord_app.identify import IdentifyTurns, LocalIdentifyTurns, bucket_of
from bot.discord_app.pacing import ChannelPacer
from bot.discord_app.pipeline import AskPipeline, FairUse
from bot.discord_app.settings_command import SettingsCommand
from bot.discord_app.shard_claims import LocalShardClaims, ShardClaims
from bot.discord_app.tree import AskTree
from bot.model.llm import Completer

log = logging.getLogger(__name__)


class AskBot(commands.AutoShardedBot):
    """Answers `/ask`, follow-ups by button, and replies to its answers.

    It runs the gateway shards SHARD_IDS of SHARD_COUNT, or, with neither set, as many as
    Discord recommends, all in this process. Each IDENTIFY waits for its turn in
    `identify_turns`, shared by every process of the bot when they share Redis.
    """

    def __init__(
        self,
        settings: Settings,
        completer: Completer,
        fair_use: FairUse,
        conversations: ConversationStore,
        counter: TokenCounter,
        *,
        settings_store: SettingsStore,
        identify_turns: IdentifyTurns | None = None,
        shard_claims: ShardClaims | None = None,
        sync_on_start: bool = True,
    ) -> None:
        dms = settings.allow_dms
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=AskTree,
            # No privileged intent: see the module docstring. The default ones include
            # the guild and direct messages that replies to answers arrive as.
            intents=discord.Intents.default(),
            # Model output is untrusted: it must never ping anyone. This default also
            # covers interaction followups, which use the client's state.
            allowed_mentions=discord.AllowedMentions.none(),
            # Without ALLOW_DMS the commands are not offered in direct messages at all.
            allowed_contexts=app_commands.AppCommandContext(
                guild=True, dm_channel=dms, private_channel=dms
            ),
            # Servers add the app, and so can people, to their own account: then /ask
            # works wherever they are and apps are allowed (access rules still apply).
            allowed_installs=app_commands.AppInstallationType(guild=True, user=True),
            http_trace=fair_use.metrics.discord_trace(),
            shard_count=settings.shard_count,
        )
        # Set here rather than passed: discord.py's options type has no "all of them".
        self.shard_ids = list(settings.shard_ids) if settings.shard_ids is not None else None
        self._identify_turns = identify_turns or LocalIdentifyTurns()
        self._shard_claims = shard_claims or LocalShardClaims()
        self._max_concurrency: int | None = None
        self._fair_use = fair_use
        self._settings = settings
        self._completer = completer
        self._store = conversations
        self._counter = counter
        self._settings_store = settings_store
        self._sync_on_start = sync_on_start
        self._conversations: Conversations | None = None

    async def setup_hook(self) -> None:
        answerer = Answerer(
            self._completer,
            stream=self._settings.stream_responses,
            edit_interval=self._settings.stream_edit_interval,
            attach_reasoning=self._settings.show_reasoning == "file",
        )
        conversations = Conversations(
            AskPipeline(answerer, self._fair_use),
            self._store,
            self._counter,
            system_prompt=self._settings.system_prompt,
            model=self._completer.model,
            budget=context_budget(self._settings).prompt_tokens,
            pacer=ChannelPacer(),
            models=self._offered_models(),
            settings=self._settings_store,
            budget_for=lambda model: context_budget(self._settings, model).prompt_tokens,
            files=FileRules(
                self._settings.max_attachment_bytes, self._settings.max_attachment_chars
            ),
        )
        self._conversations = conversations
        FollowUpButton.service = conversations
        # Buttons of answers sent before a restart are matched by their custom id.
        self.add_dynamic_items(FollowUpButton)
        # The model option is offered only when there is a choice.
        ask = AskWithModel if len(conversations.models) > 1 else Ask
        await self.add_cog(ask(conversations, self._fair_use))
        await self.add_cog(
            SettingsCommand(
                self._settings_store,
                models=conversations.models,
                system_prompt=self._settings.system_prompt,
            )
        )
        self.tree.add_command(ask_about_menu(conversations))
        guild_id = self._settings.discord_guild_id
        if self._sync_on_start and guild_id is not None and self._runs_shard_of(guild_id):
            guild = discord.Object(id=guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d command(s) to guild %s", len(synced), guild_id)

    def _runs_shard_of(self, guild_id: int) -> bool:
        """Whether this process runs the shard of `guild_id` (so one process of several
        syncs that server's commands). Unknown until connected when Discord picks the
        count, but then this process runs every shard."""
        ids, count = self._settings.shard_ids, self._settings.shard_count
        return ids is None or count is None or (guild_id >> 22) % count in ids

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Claim the shard (see `bot.discord_app.shard_claims`), then wait for its turn in its
        rate-limit bucket (see `bot.discord_app.identify`).

        discord.py's own hook sleeps 5 s before every IDENTIFY but the first of this
        process, which neither lets large bots start shards together nor keeps several
        processes apart.
        """
        shard = shard_id or 0
        await self._shard_claims.claim(shard, self.shard_count or 1)
        if self._max_concurrency is None:
            self._max_concurrency = await self._fetch_max_concurrency()
        await self._identify_turns.wait_turn(bucket_of(shard, self._max_concurrency))

    async def close(self) -> None:
        """Close every shard's connection, then give the shards back for another process."""
        await super().close()
        await self._shard_claims.release_all()

    async def _fetch_max_concurrency(self) -> int:
        try:
            _, _, limit = await self.http.get_bot_gateway()
        except discord.DiscordException as error:
            log.warning("could not read Discord's session start limit (%s); assuming 1", error)
            return 1
        remaining = limit.get("remaining")
        if remaining == 0:
            log.error(
                "Discord allows no more session starts today; they reset in %d s",
                limit.get("reset_after", 0) // 1000,
            )
        return max(1, int(limit.get("max_concurrency", 1)))

    def _offered_models(self) -> tuple[str, ...]:
        # The built-in model answers under its own name, whatever OPENAI_MODEL says.
        if self._settings.uses_builtin_model:
            return (self._completer.model,)
        return self._settings.openai_models

    async def sync_globally(self) -> int:
        """Register the commands for every server; Discord may take a while to show them."""
        synced = await self.tree.sync()
        return len(synced)

    async def on_message(self, message: discord.Message, /) -> None:
        """A reply to an answer, or a mention of the bot, is a question; the rest is ignored.

        (The default would parse every message that mentions the bot as a prefix command.)
        """
        if message.author.bot or self.user is None or self._conversations is None:
            return
        if message.guild is None and not self._settings.allow_dms:
            return
        try:
            await self._conversations.reply(message, self.user)
        except Exception:
            # The ask's own line is logged already; this is the traceback, once.
            log.exception("unexpected error answering message %s", message.id)

    async def on_ready(self) -> None:
        """Every shard of this process is connected."""
        shards = ",".join(str(shard) for shard in sorted(self.shards))
        log.info(
            "connected to Discord as %s (%s guilds, shards %s of %s)",
            self.user,
            len(self.guilds),
            shards,
            self.shard_count,
        )
