"""pytest fixtures for the fake Discord; enable with ``pytest_plugins`` in the root conftest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio

from .fake import FakeDiscord
from .redirect import point_discord_py_at


@asynccontextmanager
async def running_fake(**settings: Any) -> AsyncIterator[FakeDiscord]:
    """A started :class:`FakeDiscord` built with ``settings``, discord.py aimed at it."""
    async with FakeDiscord(**settings) as fake:
        with point_discord_py_at(fake):
            yield fake


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running fake with default settings, discord.py pointed at it for the test."""
    async with running_fake() as fake:
        yield fake
