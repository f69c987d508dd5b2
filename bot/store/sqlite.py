"""The built-in stores: SQLite files in the data directory, each used from its own thread.

SqliteUsageStore    daily token counts and holds (`bot.fair_use.budgets.UsageStore`)
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from bot.fair_use.budgets import Reservation, Scope, Totals

__all__ = ["FILE_NAME", "SqliteUsageStore"]

FILE_NAME = "usage.sqlite3"

T = TypeVar("T")


_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS usage (
        day    TEXT    NOT NULL,
        scope  TEXT    NOT NULL CHECK (scope IN ('user', 'guild')),
        id     INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (day, scope, id)
    ) WITHOUT ROWID
    """,
    # The estimates held by asks still running; `expires_at` is in Unix seconds.
    """
    CREATE TABLE IF NOT EXISTS holds (
        id         TEXT    PRIMARY KEY,
        day        TEXT    NOT NULL,
        user_id    INTEGER NOT NULL,
        guild_id   INTEGER,
        tokens     INTEGER NOT NULL,
        expires_at REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS holds_by_user ON holds (day, user_id)",
    "CREATE INDEX IF NOT EXISTS holds_by_guild ON holds (day, guild_id)",
)

_ADD = """
INSERT INTO usage (day, scope, id, tokens) VALUES (?, ?, ?, ?)
ON CONFLICT (day, scope, id) DO UPDATE SET tokens = tokens + excluded.tokens
"""

_USED = "SELECT COALESCE(SUM(tokens), 0) FROM usage WHERE day = ? AND scope = ? AND id = ?"

_HELD = {
    Scope.USER: "SELECT COALESCE(SUM(tokens), 0) FROM holds "
    "WHERE day = ? AND user_id = ? AND expires_at > ?",
    Scope.GUILD: "SELECT COALESCE(SUM(tokens), 0) FROM holds "
    "WHERE day = ? AND guild_id = ? AND expires_at > ?",
}


class SqliteUsageStore:
    """A `UsageStore` in one SQLite file, `usage.sqlite3` inside a data directory.

    Every SQLite call runs on one dedicated thread that owns the only connection, so
    the event loop never waits on the disk and calls run one at a time in order. The
    file is in WAL mode, so readers from other processes do not block writes. Every
    write is one `BEGIN IMMEDIATE` transaction: it takes the file's write lock before
    reading, so a `reserve` in another process (or another store on the same file) waits
    for this one instead of deciding on the same figures. A call that is cancelled while
    its work is under way still completes on the thread.
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
        await self._run(self._add, _rows(day, user_id, guild_id, tokens))

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        return await self._run(self._totals, day, user_id, guild_id)

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        return await self._run(self._reserve, reservation, user_limit, guild_limit, now)

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        await self._run(self._settle, reservation, tokens)

    async def prune(self, before: str, now: float | None = None) -> int:
        return await self._run(self._prune, before, now)

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

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the file's write lock from its first read."""
        connection = self._connection
        # Waits up to the busy timeout for another writer of the file.
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            # SQLite may have rolled back already (a full disk, an interrupt).
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _add(self, rows: list[tuple[str, str, int, int]]) -> None:
        with self._writing() as connection:
            connection.executemany(_ADD, rows)

    def _totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        rows = self._connection.execute(
            "SELECT scope, tokens FROM usage WHERE day = ? AND "
            "((scope = 'user' AND id = ?) OR (scope = 'guild' AND id = ?))",
            (day, user_id, guild_id),
        ).fetchall()
        counts = dict(rows)
        return Totals(user=counts.get("user", 0), guild=counts.get("guild", 0))

    def _reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        day = reservation.day
        limits = [(Scope.USER, reservation.user_id, user_limit)]
        if reservation.guild_id is not None:
            limits.append((Scope.GUILD, reservation.guild_id, guild_limit))
        with self._writing() as connection:
            for scope, scope_id, limit in limits:
                if limit is None:
                    continue
                (used,) = connection.execute(_USED, (day, scope.value, scope_id)).fetchone()
                (held,) = connection.execute(_HELD[scope], (day, scope_id, now)).fetchone()
                if used + held >= limit:
                    return scope
            connection.execute(
                "INSERT INTO holds (id, day, user_id, guild_id, tokens, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    reservation.id,
                    day,
                    reservation.user_id,
                    reservation.guild_id,
                    reservation.tokens,
                    reservation.expires_at,
                ),
            )
        return None

    def _settle(self, reservation: Reservation, tokens: int) -> None:
        with self._writing() as connection:
            connection.execute("DELETE FROM holds WHERE id = ?", (reservation.id,))
            if tokens:
                connection.executemany(
                    _ADD, _rows(reservation.day, reservation.user_id, reservation.guild_id, tokens)
                )

    def _prune(self, before: str, now: float | None) -> int:
        with self._writing() as connection:
            counts = connection.execute("DELETE FROM usage WHERE day < ?", (before,)).rowcount
            holds = connection.execute("DELETE FROM holds WHERE day < ?", (before,)).rowcount
            if now is not None:
                expired = "DELETE FROM holds WHERE expires_at <= ?"
                holds += connection.execute(expired, (now,)).rowcount
        return counts + holds


def _rows(
    day: str, user_id: int, guild_id: int | None, tokens: int
) -> list[tuple[str, str, int, int]]:
    rows = [(day, "user", user_id, tokens)]
    if guild_id is not None:
        rows.append((day, "guild", guild_id, tokens))
    return rows


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Made on the store's own thread, which is the only one that ever uses it. Without
    # implicit transactions: every write opens its own with BEGIN IMMEDIATE.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL survives a crash of the bot; only a power cut can lose the
        # last few counts, which is fine for usage figures.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("COMMIT")
    except BaseException:
        connection.close()
        raise
    return connection
