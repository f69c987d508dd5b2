"""Answers to an interaction: its followups (`Reply`, the Discord `Messages`) and the ask an
interaction makes (`InteractionSurface`, for `AskPipeline`).

A refusal is the interaction's ephemeral response, so the channel never sees who was
turned away; an accepted ask is deferred ("thinking…") and answered in the followups,
which live as long as the interaction's token (15 minutes).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Sequence

import discord

from bot.answers.messages import Attachment, DeliveryFailed, MessageGone
from bot.discord_app import pipeline
from bot.fair_use import access

log = logging.getLogger(__name__)

# Discord's JSON error codes for a message or interaction that is out of reach for good.
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
INVALID_WEBHOOK_TOKEN = 50027


class Reply:
    """Creates and edits the followup messages of one interaction, in order.

    The interaction must already be acknowledged with a defer. The first message
    sent replaces the "thinking…" message (after a defer, the first followup *is*
    the original response); later ones follow it. A message is edited only when its
    content or its buttons change, so repeated calls cost no requests. `cap` is the most
    messages Discord lets the interaction send (None: no limit); asking for more is a bug.
    """

    def __init__(
        self, followup: discord.Webhook, *, ephemeral: bool = False, cap: int | None = None
    ) -> None:
        self._followup = followup
        self._ephemeral = ephemeral
        self._cap = cap
        self._messages: list[discord.WebhookMessage] = []
        self._shown: list[tuple[str, discord.ui.View | None]] = []

    @property
    def count(self) -> int:
        """How many messages have been sent so far."""
        return len(self._messages)

    @property
    def cap(self) -> int | None:
        return self._cap

    @property
    def message_ids(self) -> list[int]:
        """The ids of the messages sent so far, in order."""
        return [message.id for message in self._messages]

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]:
        """The content and buttons message `index` currently shows."""
        return self._shown[index]

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        """Make message `index` (an existing one, or the next) show `content` and `view`.

        Raises `MessageGone` when the message was deleted or the interaction's token
        expired, `DeliveryFailed` when Discord kept failing after discord.py's retries.
        """
        with translate_failures():
            await self._show(index, content, view)

    async def _show(
        self,
        index: int,
        content: str,
        view: discord.ui.View | None,
        file: Attachment | None = None,
    ) -> None:
        if self._cap is not None and index >= self._cap:
            raise IndexError(f"message {index} requested past the cap of {self._cap}")
        if index < len(self._messages):
            if self._shown[index] == (content, view) and file is None:
                return
            message = self._messages[index]
            if file is None:
                self._messages[index] = await message.edit(content=content, view=view)
            else:
                self._messages[index] = await message.edit(
                    content=content, view=view, attachments=[_discord_file(file)]
                )
        elif index == len(self._messages):
            message = await self._followup.send(
                content,
                wait=True,
                ephemeral=self._ephemeral,
                view=view or discord.utils.MISSING,
                file=_discord_file(file) if file is not None else discord.utils.MISSING,
            )
            self._messages.append(message)
        else:
            raise IndexError(f"message {index} requested after only {len(self._messages)}")
        if index < len(self._shown):
            self._shown[index] = (content, view)
        else:
            self._shown.append((content, view))

    async def finish(
        self,
        parts: Sequence[str],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        """Show exactly `parts`, the last with `view` and `file`; surplus earlier messages
        are deleted."""
        last = len(parts) - 1
        for index, part in enumerate(parts):
            if index == last:
                with translate_failures():
                    await self._show(index, part, view, file)
            else:
                await self.show(index, part)
        while len(self._messages) > len(parts):
            message = self._messages.pop()
            self._shown.pop()
            with translate_failures():
                await message.delete()


def _discord_file(file: Attachment) -> discord.File:
    """A fresh upload of `file` (a `discord.File` is spent by one request)."""
    return discord.File(io.BytesIO(file.content), filename=file.filename)


@contextlib.contextmanager
def translate_failures() -> Iterator[None]:
    """Turn discord.py's errors for a write into `MessageGone` or `DeliveryFailed`.

    Anything else (a request Discord calls malformed) is a bug and propagates as it is.
    """
    try:
        yield
    except discord.NotFound as error:
        if error.code == UNKNOWN_WEBHOOK:
            raise MessageGone(f"interaction is gone: {error}", kind="expired") from error
        raise MessageGone(f"message was deleted: {error}") from error
    except discord.HTTPException as error:
        if error.code == INVALID_WEBHOOK_TOKEN or error.status == 401:
            raise MessageGone(f"interaction token expired: {error}", kind="expired") from error
        if error.status == 429 or error.status >= 500:
            raise DeliveryFailed(f"Discord did not accept a write: {error}") from error
        raise
    except discord.RateLimited as error:
        raise DeliveryFailed(f"Discord rate limit of {error.retry_after:.0f} s") from error


class InteractionSurface:
    """An ask made through an interaction: a slash command or a modal submit."""

    kind = "interaction"

    def __init__(self, interaction: discord.Interaction, *, private: bool) -> None:
        self._interaction = interaction
        self._private = private
        self.messages = Reply(
            interaction.followup, ephemeral=private, cap=followup_cap(interaction)
        )

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

    def unanswerable(self) -> str | None:
        # An interaction's response needs no permission in the channel.
        return None


USER_INSTALL_FOLLOWUPS = 5
"""Discord's limit of followup messages for an interaction of an app installed only by the
person using it (its authorizing integration owners have no guild install)."""


def followup_cap(interaction: discord.Interaction) -> int | None:
    """How many followup messages Discord lets `interaction` send (None: no limit)."""
    # discord.py keeps the owners only privately; is_guild_integration() is False in DMs.
    owners = interaction._integration_owners
    if discord.app_commands.AppInstallationType.GUILD in owners:
        return None
    if discord.app_commands.AppInstallationType.USER in owners:
        return USER_INSTALL_FOLLOWUPS
    return None


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
