"""What an answer is shown through: an ordered set of messages, in Discord or a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import discord


class Messages(Protocol):
    """An ordered set of messages that can be created and edited: Discord, or a terminal."""

    @property
    def count(self) -> int: ...

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]: ...

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None: ...

    async def finish(self, parts: Sequence[str]) -> None: ...
