"""The built-in stores: SQLite files in the data directory, each used from its own thread.

SqliteUsageStore    daily token counts (`bot.fair_use.budgets.UsageStore`)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bot.fair_use.budgets import Totals

__all__ = ["FILE_NAME", "SqliteUsageStore"]

FILE_NAME = "usage.sqlite3"

T = TypeVar("T")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day    TEXT    NOT NULL,
    scope  TEXT    NOT NULL CHECK (scope IN ('user', 'guild')),
    id     INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (day, scope, id)
) WITHOUT ROWID
"""

_ADD = """
INSERT INTO usage (day, scope, id, tokens) VALUES (?, ?, ?, ?)
ON CONFLICT (day, scope, id) DO UPDATE SET tokens = tokens + excluded.tokens
"""


class SqliteUsageStore:
    """A `UsageStore` in one SQLite file, `usage.sqlite3` inside a data directory.

    Every SQLite call runs on one dedicated thread that owns the only connection, so
    the event loop never waits on the disk and calls run one at a time in order. The
    file is in WAL mode, so readers from other processes do not block writes. A call
    that is cancelled while its work is under way still completes on the thread.
    Open with `await SqliteUsageStore.open(directory)`; close with `await store.close()`.
    """

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, connection: sqlite3.Connection
    ) -> None:
        self.path = path
        self._executor = executor
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(cls, directory: Path, *, busy_timeout: float = 5.0) -> SqliteUsageStore:
        """Open (creating if need be) the directory and the store file inside it.

        `busy_timeout` is how long a write waits for another process holding the file.
        """
        path = directory / FILE_NAME
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _connect, path, busy_timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, connection)

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        rows = [(day, "user", user_id, tokens)]
        if guild_id is not None:
            rows.append((day, "guild", guild_id, tokens))
        await self._run(self._add, rows)

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        return await self._run(self._totals, day, user_id, guild_id)

    async def prune(self, before: str) -> int:
        return await self._run(self._prune, before)

    async def close(self) -> None:
        """Close the file and stop the thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self._run(self._connection.close)
        # The thread has nothing left to run, so this does not hold up the loop.
        self._executor.shutdown(wait=True)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    def _add(self, rows: list[tuple[str, str, int, int]]) -> None:
        with self._connection:
            self._connection.executemany(_ADD, rows)

    def _totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        rows = self._connection.execute(
            "SELECT scope, tokens FROM usage WHERE day = ? AND "
            "((scope = 'user' AND id = ?) OR (scope = 'guild' AND id = ?))",
            (day, user_id, guild_id),
        ).fetchall()
        counts = dict(rows)
        return Totals(user=counts.get("user", 0), guild=counts.get("guild", 0))

    def _prune(self, before: str) -> int:
        with self._connection:
            return self._connection.execute("DELETE FROM usage WHERE day < ?", (before,)).rowcount


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Made on the store's own thread, which is the only one that ever uses it.
    connection = sqlite3.connect(path, timeout=busy_timeout)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL survives a crash of the bot; only a power cut can lose the
        # last few counts, which is fine for usage figures.
        connection.execute("PRAGMA synchronous = NORMAL")
        with connection:
            connection.execute(_SCHEMA)
    except BaseException:
        connection.close()
        raise
    return connection
