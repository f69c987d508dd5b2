"""Shared fixtures: the local Discord, the local model server, and the bot running on both."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import FakeOpenAI, start_fake_openai
from tests.redis_server import RedisServer
from tests.stack import Stack, run_stack


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    # A generous bound on each wait: bot processes start slowly on a loaded machine.
    async with running_fake(wait_timeout=30.0) as fake:
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


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One real Redis server for the whole run (see `redis_server`)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    """A real Redis server, emptied for this test. Tests that stop it use `own_redis`."""
    if not shared_redis.running:
        shared_redis.start()
    shared_redis.flush()
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A real Redis server of this test's own, which it may stop and start again."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
