"""What an answer is shown through: an ordered set of messages, in Discord or a terminal.

An implementation raises one of two errors when the other side will not take a write:

    MessageGone       the messages can no longer be shown: deleted by someone, or the
                      interaction's token expired. Nobody will see any further write.
    DeliveryFailed    the service kept failing (server errors, rate limits it would not
                      absorb) after its own retries; a later write may succeed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import discord


class MessageGone(Exception):
    """The answer's messages are gone or out of reach for good; `str()` says which."""

    kind = "deleted"
    """How the ask ended, for logs and metrics: `deleted`, or `expired` for the token."""

    def __init__(self, detail: str, *, kind: str = "deleted") -> None:
        super().__init__(detail)
        self.kind = kind


class DeliveryFailed(Exception):
    """A write was not accepted after retries; `str()` is for operators."""


@dataclass(frozen=True)
class Attachment:
    """A file to attach to an answer's last message (e.g. the model's `reasoning.md`).

    Plain bytes, not a `discord.File`: a final write may be retried, and each attempt
    needs a fresh upload.
    """

    filename: str
    content: bytes


class Messages(Protocol):
    """An ordered set of messages that can be created and edited: Discord, or a terminal."""

    @property
    def count(self) -> int: ...

    @property
    def cap(self) -> int | None:
        """The most messages the answer may have (None: as many as it needs).

        An answer needing more is sent as `cap - 1` of its messages and a last one with
        the whole answer attached (see `bot.answers.attachment`)."""
        ...

    @property
    def message_ids(self) -> Sequence[int]:
        """The ids of the messages shown so far, in order (empty where there are none)."""
        ...

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]: ...

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        """Make message `index` (an existing one, or the next) show `content` and `view`.

        Raises `MessageGone` or `DeliveryFailed`; after either, the shown state is as
        before the call.
        """
        ...

    async def finish(
        self,
        parts: Sequence[str],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        """Show exactly `parts`, the last one with `view` (and `file`, when given, as its
        only attachment) and the others without buttons; raises like `show`."""
        ...
