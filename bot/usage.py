"""Daily token budgets per user and per server, and where the counts are kept.

    UsageStore          what a store of daily token counts must do (a Protocol)
    SqliteUsageStore    the built-in store: one SQLite file, on its own thread
    DailyBudgets        decides whether an ask may go ahead, records what it cost
    estimate_tokens     a rough count for providers that report no usage

A day is a UTC date ("2025-01-31"); every budget resets at midnight UTC. A budget is a
ceiling checked before an ask: an ask is allowed while the count is below the limit, and
its cost is only known afterwards, so the last ask of a day may go past the limit by its
own size.
"""

from __future__ import annotations

import asyncio
import enum
import math
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

__all__ = [
    "FILE_NAME",
    "Budget",
    "BudgetVerdict",
    "DailyBudgets",
    "Scope",
    "SqliteUsageStore",
    "Totals",
    "UsageReport",
    "UsageStore",
    "estimate_tokens",
    "next_reset",
    "utc_day",
]

FILE_NAME = "usage.sqlite3"
CHARS_PER_TOKEN = 4

T = TypeVar("T")


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens in `text`: about 4 characters each, at least 1 if non-empty.

    Only for providers that report no usage; real tokenisers differ by language and
    model, so treat the result as a rough figure, never as the provider's count.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def utc_day(now: datetime) -> str:
    """The UTC date of `now` as "YYYY-MM-DD"; `now` must carry a time zone."""
    return _as_utc(now).date().isoformat()


def next_reset(now: datetime) -> datetime:
    """The next midnight UTC after `now`, when every daily budget starts afresh."""
    tomorrow = _as_utc(now).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=UTC)


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("a time without a time zone is ambiguous; pass an aware datetime")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class Totals:
    """Tokens counted on one day for a user and for their server (0 outside a server)."""

    user: int
    guild: int


class UsageStore(Protocol):
    """Daily token counts per user and per server.

    `add` must be atomic: concurrent adds, from this process or others sharing the
    store, never lose an increment. A store shared by several bot processes fits
    Redis well: one key per day and scope, e.g. `usage:2025-01-31:user:<id>` and
    `usage:2025-01-31:guild:<id>`, raised with INCRBY in one MULTI/EXEC (or a pipeline)
    and given an EXPIRE of a couple of days, so `prune` has nothing left to do; `totals`
    is one MGET of the two keys.
    """

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        """Add `tokens` to the user's count and, inside a server, to the server's."""
        ...

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        """The counts for `day`; 0 for anyone without usage that day."""
        ...

    async def prune(self, before: str) -> int:
        """Forget every day earlier than `before`; return how many counts were dropped."""
        ...

    async def close(self) -> None:
        """Release the store's resources; only another `close` may follow."""
        ...


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


class Scope(enum.Enum):
    """Whose daily budget it is."""

    USER = "user"
    GUILD = "guild"


@dataclass(frozen=True)
class Budget:
    """Daily token limits; None means no limit."""

    user_daily_tokens: int | None = None
    guild_daily_tokens: int | None = None

    def __post_init__(self) -> None:
        for name, limit in (
            ("user_daily_tokens", self.user_daily_tokens),
            ("guild_daily_tokens", self.guild_daily_tokens),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 or None for no limit (got {limit})")


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether an ask may go ahead; if not, whose budget ran out and when it resets."""

    exhausted: Scope | None
    resets_at: datetime

    @property
    def allowed(self) -> bool:
        return self.exhausted is None

    @property
    def resets_at_unix(self) -> int:
        """The reset as Unix seconds, e.g. for Discord's `<t:UNIX:R>` relative time."""
        return int(self.resets_at.timestamp())

    def resets_in(self, now: datetime) -> timedelta:
        """How long from `now` until the budget resets."""
        return self.resets_at - _as_utc(now)


@dataclass(frozen=True)
class UsageReport:
    """One user's standing today, for a `/usage` command; guild fields are None outside a server."""

    day: str
    user_tokens: int
    user_limit: int | None
    guild_tokens: int | None
    guild_limit: int | None
    resets_at: datetime

    @property
    def resets_at_unix(self) -> int:
        return int(self.resets_at.timestamp())


def utc_now() -> datetime:
    return datetime.now(UTC)


class DailyBudgets:
    """Per-user and per-server daily token budgets over a `UsageStore`.

    Every method takes an aware `now` (by default from `clock`); its UTC date picks the
    day. Outside a server (`guild_id` None) only the user's budget applies.
    """

    def __init__(
        self, store: UsageStore, budget: Budget, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._store = store
        self.budget = budget
        self._clock = clock

    async def check(
        self, user_id: int, guild_id: int | None, now: datetime | None = None
    ) -> BudgetVerdict:
        """Whether the user may ask now; the user's budget is named first when both are spent."""
        now = self._clock() if now is None else now
        resets_at = next_reset(now)
        user_limit = self.budget.user_daily_tokens
        guild_limit = self.budget.guild_daily_tokens if guild_id is not None else None
        if user_limit is None and guild_limit is None:
            # Nothing to enforce: spare the store a read on every ask.
            return BudgetVerdict(exhausted=None, resets_at=resets_at)
        totals = await self._store.totals(utc_day(now), user_id, guild_id)
        if user_limit is not None and totals.user >= user_limit:
            return BudgetVerdict(exhausted=Scope.USER, resets_at=resets_at)
        if guild_limit is not None and totals.guild >= guild_limit:
            return BudgetVerdict(exhausted=Scope.GUILD, resets_at=resets_at)
        return BudgetVerdict(exhausted=None, resets_at=resets_at)

    async def record(
        self, user_id: int, guild_id: int | None, tokens: int, now: datetime | None = None
    ) -> None:
        """Count `tokens` spent by the user (and their server) on `now`'s day.

        Counted even with no limit set, so `/usage` has figures and a limit added later
        applies at once.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be 0 or more (got {tokens})")
        now = self._clock() if now is None else now
        day = utc_day(now)
        if tokens:
            await self._store.add(day, user_id, guild_id, tokens)

    async def usage_report(
        self, user_id: int, guild_id: int | None, now: datetime | None = None
    ) -> UsageReport:
        """Today's counts and limits for the user and their server."""
        now = self._clock() if now is None else now
        day = utc_day(now)
        totals = await self._store.totals(day, user_id, guild_id)
        in_guild = guild_id is not None
        return UsageReport(
            day=day,
            user_tokens=totals.user,
            user_limit=self.budget.user_daily_tokens,
            guild_tokens=totals.guild if in_guild else None,
            guild_limit=self.budget.guild_daily_tokens if in_guild else None,
            resets_at=next_reset(now),
        )
