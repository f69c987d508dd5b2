"""The settings store: settings kept exactly and per server, who changed them, and reopening.

Written against the `SettingsStore` protocol through `open_store`, parametrised over the SQLite
and the Redis store: both must pass the same tests, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.conversation.settings import ServerSettings, SettingsStore
from bot.store.redis import RedisSettingsStore
from bot.store.sqlite import SqliteDatabase, SqliteSettingsStore
from tests.redis_clients import redis_client
from tests.redis_server import RedisServer


class Backing:
    """Opens stores on one backing, each with a connection of its own (as other processes
    would), and reads who changed what straight from it."""

    def __init__(self, tmp_path: Path, server: RedisServer | None) -> None:
        self._tmp_path = tmp_path
        self._server = server
        self._databases: list[SqliteDatabase] = []
        self._clients: list[Redis] = []

    async def open(self) -> SettingsStore:
        if self._server is None:
            database = await SqliteDatabase.open(self._tmp_path)
            self._databases.append(database)
            return SqliteSettingsStore(database)
        client = redis_client(self._server.url)
        self._clients.append(client)
        return RedisSettingsStore(client)

    async def restart(self) -> None:
        """Close everything open, as a process stopping would."""
        for database in self._databases:
            await database.close()
        for client in self._clients:
            await client.aclose()
        self._databases.clear()
        self._clients.clear()

    async def changed_by(self, guild_id: int) -> list[int]:
        if self._server is None:
            database = await SqliteDatabase.open(self._tmp_path)
            try:

                def who() -> list[tuple[int]]:
                    query = "SELECT changed_by FROM settings WHERE guild_id = ?"
                    return database.connection.execute(query, (guild_id,)).fetchall()

                return [by for (by,) in await database.run(who)]
            finally:
                await database.close()
        async with redis_client(self._server.url, decode_responses=True) as client:
            changes = await client.hvals(f"askbot:settings:{guild_id}:by")
        # Each is "<user id> <unix seconds>".
        return [int(str(change).split()[0]) for change in changes]


@pytest.fixture(params=["sqlite", "redis"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    opened = Backing(tmp_path, server)
    yield opened
    await opened.restart()


async def test_the_store_keeps_settings_exactly_and_per_server(backing: Backing) -> None:
    store = await backing.open()
    assert await store.server(1) == ServerSettings()
    prompt = "  Two spaces,\nunicode 【】 and a trailing newline\n"
    await store.set_prompt(1, None, prompt, by=10)
    await store.set_prompt(1, 5, "channel five", by=10)
    await store.set_model(1, "gpt-4o", by=11)
    await store.set_model(2, "o4-mini", by=12)
    assert await store.server(1) == ServerSettings("gpt-4o", prompt, {5: "channel five"})
    await store.set_prompt(1, 5, "channel five again", by=11)
    await store.set_prompt(1, None, None, by=11)
    assert await store.server(1) == ServerSettings("gpt-4o", None, {5: "channel five again"})
    assert await store.reset(1, by=10) == 2
    assert await store.server(1) == ServerSettings()
    assert await store.server(2) == ServerSettings("o4-mini")
    assert await store.reset(1, by=10) == 0


async def test_who_made_each_change_is_kept(backing: Backing) -> None:
    store = await backing.open()
    await store.set_model(2, "o4-mini", by=12)
    await store.set_prompt(2, 7, "first", by=13)
    await store.set_prompt(2, 7, "second", by=14)
    await store.set_prompt(2, None, "gone soon", by=15)
    await store.set_prompt(2, None, None, by=16)
    assert sorted(await backing.changed_by(2)) == [12, 14]


async def test_settings_outlive_the_store_being_reopened(backing: Backing) -> None:
    await (await backing.open()).set_prompt(1, 3, "kept", by=1)
    await backing.restart()
    assert await (await backing.open()).server(1) == ServerSettings(channel_prompts={3: "kept"})


async def test_two_stores_on_one_backing_see_each_others_changes(backing: Backing) -> None:
    first, second = await backing.open(), await backing.open()
    await first.set_model(1, "gpt-4o", by=1)
    await second.set_prompt(1, 4, "from the other process", by=2)
    expected = ServerSettings("gpt-4o", None, {4: "from the other process"})
    assert await first.server(1) == expected
    assert await second.server(1) == expected
