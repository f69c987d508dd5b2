"""Starting a fake Discord for a test, with discord.py pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .fake import FakeDiscord
from .redirect import point_discord_py_at


@asynccontextmanager
async def running_fake(**settings: Any) -> AsyncIterator[FakeDiscord]:
    """A started :class:`FakeDiscord` built with ``settings``, discord.py aimed at it."""
    async with FakeDiscord(**settings) as fake:
        with point_discord_py_at(fake):
            yield fake
