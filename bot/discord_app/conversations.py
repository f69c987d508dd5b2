"""Conversations on Discord: a fresh `/ask`, a follow-up by button, a reply to an answer.

Every answer that has text is saved as a turn of its conversation, keyed by the ids of
its messages, and its last message carries a "Follow up" button. A follow-up (the
button's modal, or a reply to any message of an answer) continues from that turn: the
model receives the system prompt, as many of the newest earlier turns of that chain as
fit its context, and the new question. Replying to an older answer branches from there.
A fresh `/ask`, or a message that only mentions the bot, starts a new conversation.

Files (`/ask`'s `file`, a message's attachments) are checked on what Discord says of them
before the ask is admitted, downloaded once it is (`attachments.fetch`), and their text
added to the prompt; images go as image parts of the new message only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import discord

from bot.answers import replies
from bot.answers.answering import Outcome, Progress, Question, Request
from bot.conversation import files as attached
from bot.conversation.context import (
    PromptOverBudget,
    build_context,
    count_request,
    count_turn,
)
from bot.conversation.files import FileRules, Files
from bot.conversation.settings import ServerSettings, SettingsStore, effective_prompt
from bot.conversation.tokens import TokenCounter
from bot.conversation.turns import ConversationStore, NewTurn, Turn, TurnId, may_continue
from bot.discord_app import attachments
from bot.discord_app.ask_about import quoted_prompt
from bot.discord_app.channel_reply import MessageSurface
from bot.discord_app.follow_up import follow_up_view
from bot.discord_app.pacing import ChannelPacer
from bot.discord_app.pipeline import AskPipeline, Surface, TurnedAway
from bot.discord_app.reply import InteractionSurface
from bot.model import llm
from bot.model.vision import user_message

log = logging.getLogger(__name__)

MAX_CHAIN = 500
"""The most earlier turns looked at for one follow-up; far more than any context holds."""


@dataclass(frozen=True)
class Where:
    """Who asks, where, and whether the answer is private."""

    asker: str
    """The display name, as shown where they asked."""
    channel_id: int
    private: bool
    settings_channel_id: int | None = None
    """The channel whose settings apply: a thread's parent; None for `channel_id` itself."""
    model: str | None = None
    """The model the asker chose (a fresh `/ask`); None: the server's or the bot's default."""
    quotes: bool = False
    """The prompt quotes someone else's words: it goes labelled, with the rules on labels."""


class Conversations:
    """Starts and continues conversations through the `AskPipeline`."""

    def __init__(
        self,
        asks: AskPipeline,
        store: ConversationStore,
        counter: TokenCounter,
        *,
        system_prompt: str,
        model: str,
        budget: int,
        pacer: ChannelPacer,
        models: Sequence[str] = (),
        settings: SettingsStore | None = None,
        budget_for: Callable[[str], int] | None = None,
        files: FileRules | None = None,
    ) -> None:
        self._asks = asks
        self._store = store
        self._counter = counter
        self._system_prompt = system_prompt
        self._model = model
        self._budget = budget
        self._pacer = pacer
        self._models = tuple(models) or (model,)
        self._settings = settings
        self._budget_for = budget_for
        self._files = files or FileRules(max_bytes=8 * 1024 * 1024, max_chars=20_000)

    @property
    def models(self) -> tuple[str, ...]:
        """The models members may choose from, the bot's default first."""
        return self._models

    @property
    def store(self) -> ConversationStore:
        return self._store

    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        *,
        private: bool,
        model: str | None = None,
        files: Sequence[discord.Attachment] = (),
    ) -> None:
        """A fresh `/ask`, perhaps with files: a new conversation, with `model` when the
        asker chose one of `models` (the caller checks that)."""
        surface = InteractionSurface(interaction, private=private)
        where = Where(
            _display_name(interaction.user),
            _channel_id(interaction),
            private,
            settings_channel_id=_parent_id(interaction.channel),
            model=model,
        )
        await self._run(surface, prompt, where, parent=None, files=files)

    async def ask_about(
        self, interaction: discord.Interaction, message: discord.Message, question: str
    ) -> None:
        """The "Ask about this" modal was submitted: a new conversation about `message`."""
        surface = InteractionSurface(interaction, private=False)
        where = Where(
            _display_name(interaction.user),
            _channel_id(interaction),
            private=False,
            settings_channel_id=_parent_id(interaction.channel),
            quotes=True,
        )
        names = [attachment.filename for attachment in message.attachments]
        prompt = quoted_prompt(_display_name(message.author), message.content, names, question)
        await self._run(surface, prompt, where, parent=None)

    async def may_follow_up(self, turn_id: TurnId, user_id: int) -> str | None:
        turn = await self._store.turn(turn_id)
        if turn is None:
            return replies.FOLLOW_UP_GONE
        if not may_continue(turn, user_id):
            return replies.FOLLOW_UP_NOT_YOURS
        return None

    async def follow_up(self, interaction: discord.Interaction, turn_id: TurnId, text: str) -> None:
        """The follow-up modal was submitted: continue from `turn_id`, privately if it was."""
        turn = await self._store.turn(turn_id)
        if turn is None or not may_continue(turn, interaction.user.id):
            sentence = replies.FOLLOW_UP_GONE if turn is None else replies.FOLLOW_UP_NOT_YOURS
            await interaction.response.send_message(sentence, ephemeral=True)
            return
        surface = InteractionSurface(interaction, private=turn.private)
        where = Where(
            _display_name(interaction.user),
            _channel_id(interaction),
            turn.private,
            settings_channel_id=_parent_id(interaction.channel),
        )
        await self._run(surface, text, where, parent=turn)

    async def reply(self, message: discord.Message, bot_user: discord.ClientUser) -> None:
        """A message in a channel: a reply to an answer continues its conversation; a
        message that mentions the bot starts one; anything else is none of the bot's
        business."""
        parent: Turn | None = None
        reference = message.reference
        mentioned = _mentions(message.content, bot_user.id)
        if reference is not None and reference.message_id is not None:
            parent = await self._store.turn_for_message(reference.message_id)
            if parent is None and not mentioned:
                return  # a reply to something that is not one of the bot's answers
            if parent is not None and not may_continue(parent, message.author.id):
                return
        elif not mentioned:
            return
        prompt = _without_mention(message.content, bot_user.id)
        surface = MessageSurface(message, self._pacer)
        where = Where(
            _display_name(message.author),
            message.channel.id,
            private=False,
            settings_channel_id=_parent_id(message.channel),
        )
        await self._run(surface, prompt, where, parent=parent, files=message.attachments)

    async def forget(self, user_id: int) -> int:
        return await self._store.forget_user(user_id)

    async def _run(
        self,
        surface: Surface,
        prompt: str,
        where: Where,
        parent: Turn | None,
        files: Sequence[discord.Attachment] = (),
    ) -> None:
        saved: list[Turn] = []
        # Checked on what Discord says of each file, before anything is downloaded.
        accepted = attached.accept(attachments.offered_all(files), self._files)
        refusal = None
        if isinstance(accepted, attached.Refusal):
            sentence = replies.attachment_refused(accepted, self._files.max_bytes)
            refusal, accepted = TurnedAway("attachment_refused", sentence), attached.Accepted()

        async def prepare() -> Question:
            read = await attachments.fetch(accepted, self._files)
            if isinstance(read, attached.Refusal):
                sentence = replies.attachment_refused(read, self._files.max_bytes)
                return Question(prompt, declined=("attachment_unreadable", sentence))
            return await self._question(prompt, where, parent, saved, surface, read)

        async def after(outcome: Outcome, question: Question) -> None:
            if saved:
                # The last message (carrying the button) was sent after the turn was saved.
                await self._store.add_messages(saved[0].id, _message_ids(surface))

        await self._asks.run(
            surface, prompt, prepare, after=after, extra_tokens=accepted.tokens, refusal=refusal
        )

    async def _question(
        self,
        prompt: str,
        where: Where,
        parent: Turn | None,
        saved: list[Turn],
        surface: Surface,
        files: Files,
    ) -> Question:
        chain = await self._store.chain(parent.id, MAX_CHAIN) if parent is not None else []
        system_prompt, model = await self._setup(surface.guild_id, where, parent)
        budget = self._budget_for(model) if self._budget_for is not None else self._budget
        # The files' text is the asker's words, saved with the turn for later follow-ups;
        # images go only to this request, counted like text would be.
        prompt = files.prompt(prompt)
        counted = await count_request(self._counter, system_prompt, where.asker, prompt)
        if files.images:
            counted = replace(
                counted, prompt=counted.prompt + attached.IMAGE_TOKENS * len(files.images)
            )
        context = build_context(
            system_prompt=system_prompt,
            chain=chain,
            prompt=prompt,
            asker=where.asker,
            request=counted,
            budget=budget,
            model=model,
        )
        if isinstance(context, PromptOverBudget):
            return Question(
                prompt,
                unanswerable=llm.PromptTooLong(
                    f"prompt of {context.tokens} tokens over the context budget of {context.budget}"
                ),
                model=model,
            )
        shorter = context.halved()

        async def save(progress: Progress) -> discord.ui.View | None:
            prompt_tokens, answer_tokens = await count_turn(
                self._counter, where.asker, prompt, progress.text
            )
            turn = await self._store.save(
                NewTurn(
                    user_id=surface.user_id,
                    display_name=where.asker,
                    guild_id=surface.guild_id,
                    channel_id=where.channel_id,
                    private=where.private,
                    prompt=prompt,
                    answer=progress.text,
                    model=model,
                    prompt_tokens=prompt_tokens,
                    answer_tokens=answer_tokens,
                    parent_id=parent.id if parent is not None else None,
                    created_at=datetime.now(UTC),
                ),
                _message_ids(surface),
            )
            saved.append(turn)
            return follow_up_view(turn.id)

        # A fresh question holds nobody's words but the asker's: it goes as it is, after
        # the system prompt. Labels, and the rules about them, come with a history.
        messages = context.messages if chain or where.quotes else _lone(system_prompt, prompt)
        request: Request = _with_images(messages, files) if files.images else messages
        return Question(
            request,
            shorter=_with_images(shorter.messages, files) if shorter is not None else None,
            footer=replies.OLDER_TURNS_LEFT_OUT if chain and context.turns_left_out else None,
            final_view=save,
            model=model,
        )

    async def _setup(
        self, guild_id: int | None, where: Where, parent: Turn | None
    ) -> tuple[str, str]:
        """The system prompt and the model of an ask: the channel's (or thread parent's)
        prompt, else the server's, else SYSTEM_PROMPT; a conversation's own model while it
        is still offered, else the asker's choice, the server's default, the bot's."""
        server = ServerSettings()
        if guild_id is not None and self._settings is not None:
            server = await self._settings.server(guild_id)
        channel_id = where.settings_channel_id or where.channel_id
        system_prompt = effective_prompt(server, channel_id, self._system_prompt)
        offered = [
            model
            for model in (parent.model if parent else None, where.model, server.model)
            if model in self._models
        ]
        return system_prompt, offered[0] if offered else self._model


def _lone(system_prompt: str, prompt: str) -> list[llm.ChatMessage]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


def _parent_id(channel: object) -> int | None:
    """A thread's parent channel, whose settings the thread uses."""
    return channel.parent_id if isinstance(channel, discord.Thread) else None


def _with_images(messages: Sequence[llm.ChatMessage], files: Files) -> list[llm.ChatMessage]:
    """`messages` with the files' images after the text of the last (the new) message."""
    *earlier, last = messages
    text = last.get("content")
    return [*earlier, user_message(text if isinstance(text, str) else "", files.pictures)]


def _message_ids(surface: Surface) -> list[int]:
    return list(surface.messages.message_ids)


def _display_name(user: discord.User | discord.Member) -> str:
    return user.display_name


def _channel_id(interaction: discord.Interaction) -> int:
    return interaction.channel_id or 0


def _mention_pattern(bot_id: int) -> re.Pattern[str]:
    return re.compile(rf"<@!?{bot_id}>")


def _mentions(content: str, bot_id: int) -> bool:
    return _mention_pattern(bot_id).search(content) is not None


def _without_mention(content: str, bot_id: int) -> str:
    return _mention_pattern(bot_id).sub("", content).strip()
