"""Shared fixtures: the local Discord, the local model server, and the bot running on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import FakeOpenAI, start_fake_openai
from tests.stack import Stack, run_stack


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with running_fake() as fake:
        yield fake


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with start_fake_openai() as server:
        yield server


@pytest.fixture
async def stack(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The bot, exactly as `python -m bot` runs it, on the local Discord and model."""
    async with run_stack(fake_discord, fake_openai, tmp_path) as running:
        yield running
