"""Answers posted in the channel as replies to a person's message: the second kind of answer.

`ChannelReply` is the `Messages` of such an answer: the first message replies to the
person's message, the rest follow it in the channel, and every write goes through the
channel's `ChannelPacer`. `MessageSurface` is the ask such a message makes, for
`AskPipeline`: refusals go to the asker by direct message (a channel has no ephemeral
messages), and a typing indicator shows until the first text.

Posting in a channel needs permissions an interaction never needs (Send Messages, Send
Messages in Threads, Read Message History for a reply); without them the answer cannot
be shown, which `NotPermitted` reports as one clear log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterator, Sequence

import discord

from bot.answers.messages import Attachment, MessageGone
from bot.discord_app.pacing import ChannelPacer
from bot.discord_app.reply import translate_failures
from bot.fair_use import access

log = logging.getLogger(__name__)

# Discord's codes for a write the bot's permissions do not allow.
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
CANNOT_REPLY_WITHOUT_HISTORY = 160002

_PERMISSION_HINTS = {
    MISSING_ACCESS: "View Channel",
    MISSING_PERMISSIONS: "Send Messages (Send Messages in Threads in a thread)",
    CANNOT_REPLY_WITHOUT_HISTORY: "Read Message History",
}


def missing_permissions(message: discord.Message) -> list[str]:
    """The permissions the bot lacks to reply to `message` where it was posted, as far as
    its cached view of the channel tells (empty in direct messages, or when unknown)."""
    guild = message.guild
    if guild is None or guild.me is None:
        return []
    channel = message.channel
    if not isinstance(channel, discord.abc.GuildChannel | discord.Thread):
        return []
    allowed = channel.permissions_for(guild.me)
    needed = [
        ("View Channel", allowed.view_channel),
        (
            "Send Messages in Threads" if isinstance(channel, discord.Thread) else "Send Messages",
            allowed.send_messages_in_threads
            if isinstance(channel, discord.Thread)
            else allowed.send_messages,
        ),
        ("Read Message History", allowed.read_message_history),
    ]
    return [name for name, granted in needed if not granted]


class NotPermitted(MessageGone):
    """The bot may not post or reply in the channel; `str()` names the permission."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, kind="forbidden")


class ChannelReply:
    """The channel messages of one answer, replying to `to`; see the module docstring."""

    def __init__(self, to: discord.Message, pacer: ChannelPacer) -> None:
        self._to = to
        self._pacer = pacer
        self._channel_id = to.channel.id
        self._messages: list[discord.Message] = []
        self._shown: list[tuple[str, discord.ui.View | None]] = []
        self._typing: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return len(self._messages)

    cap: int | None = None
    """A channel takes as many messages as an answer needs."""

    @property
    def message_ids(self) -> list[int]:
        return [message.id for message in self._messages]

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]:
        return self._shown[index]

    def start_typing(self) -> None:
        """Show "… is typing" in the channel until the first message is sent."""
        if self._typing is None:
            self._typing = asyncio.create_task(self._keep_typing())

    def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()

    async def _keep_typing(self) -> None:
        try:
            async with self._to.channel.typing():
                await asyncio.Event().wait()
        except discord.HTTPException as error:
            # Only a preview: the answer itself still goes out, or reports what is wrong.
            log.debug("typing indicator refused in channel %s: %s", self._channel_id, error)

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        """Make message `index` show `content` and `view`; a live preview edit is skipped
        when the channel has no write to spare (the next one brings newer text)."""
        if index < len(self._messages):
            if self._shown[index] == (content, view):
                return
            if view is not None and view is self._shown[index][1]:
                # A progress edit of a growing message: skip it rather than wait.
                if not self._pacer.try_take(self._channel_id):
                    return
            else:
                await self._pacer.take(self._channel_id)
            with _translated(self._channel_id):
                edited = await self._messages[index].edit(content=content, view=view)
            self._messages[index] = edited
            self._shown[index] = (content, view)
            return
        if index != len(self._messages):
            raise IndexError(f"message {index} requested after only {len(self._messages)}")
        await self._pacer.take(self._channel_id)
        with _translated(self._channel_id):
            if index == 0:
                # A reply to a message deleted meanwhile is still posted, without the link.
                reference = self._to.to_reference(fail_if_not_exists=False)
                sent = await self._to.channel.send(
                    content, reference=reference, view=view or discord.utils.MISSING
                )
            else:
                sent = await self._to.channel.send(content, view=view or discord.utils.MISSING)
        self.stop_typing()
        self._messages.append(sent)
        self._shown.append((content, view))

    async def finish(
        self,
        parts: Sequence[str],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        """Show exactly `parts`, the last with `view` and `file`; surplus earlier messages
        are deleted."""
        self.stop_typing()
        for index, part in enumerate(parts):
            await self.show(index, part, view if index == len(parts) - 1 else None)
        while len(self._messages) > len(parts):
            message = self._messages.pop()
            self._shown.pop()
            await self._pacer.take(self._channel_id)
            with _translated(self._channel_id):
                await message.delete()
        if file is not None and parts:
            await self._attach(len(parts) - 1, file)

    async def _attach(self, index: int, file: Attachment) -> None:
        """Give message `index` `file` as its one attachment, keeping what it shows."""
        await self._pacer.take(self._channel_id)
        upload = discord.File(io.BytesIO(file.content), filename=file.filename)
        with _translated(self._channel_id):
            self._messages[index] = await self._messages[index].edit(attachments=[upload])


@contextlib.contextmanager
def _translated(channel_id: int) -> Iterator[None]:
    try:
        with translate_failures():
            yield
    except discord.Forbidden as error:
        needed = _PERMISSION_HINTS.get(error.code, "Send Messages and Read Message History")
        raise NotPermitted(
            f"cannot answer in channel {channel_id}: the bot lacks {needed} there "
            f"(Discord {error.code}); give it that permission, or ask with /ask"
        ) from error


class MessageSurface:
    """An ask made by a message in a channel: a reply to an answer, or a mention."""

    kind = "message"
    lifetime = None
    """Channel messages can be edited for as long as they exist."""

    def __init__(self, message: discord.Message, pacer: ChannelPacer) -> None:
        self._message = message
        self.messages = ChannelReply(message, pacer)

    @property
    def id(self) -> int:
        return self._message.id

    @property
    def user_id(self) -> int:
        return self._message.author.id

    @property
    def guild_id(self) -> int | None:
        return self._message.guild.id if self._message.guild is not None else None

    @property
    def origin(self) -> access.Origin:
        channel = self._message.channel
        channel_id = channel.parent_id if isinstance(channel, discord.Thread) else channel.id
        roles = getattr(self._message.author, "roles", [])
        return access.Origin(
            guild_id=self.guild_id, channel_id=channel_id, role_ids=[role.id for role in roles]
        )

    async def refuse(self, sentence: str) -> None:
        # A channel shows everyone everything: the reason goes to the asker alone.
        try:
            await self._message.author.send(sentence)
        except discord.HTTPException as error:
            log.info(
                "could not tell user %s why their message %s was turned away: %s",
                self.user_id,
                self.id,
                error,
            )

    async def acknowledge(self) -> None:
        self.messages.start_typing()

    def unanswerable(self) -> str | None:
        missing = missing_permissions(self._message)
        if not missing:
            return None
        return (
            f"cannot answer in channel {self._message.channel.id}: the bot lacks "
            f"{' and '.join(missing)} there (message {self.id}); give it that permission, "
            "or ask with /ask"
        )
