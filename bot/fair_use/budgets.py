"""Daily token budgets per user and per server.

    UsageStore          what a store of daily token counts must do (a Protocol); the
                        SQLite one is `bot.store.sqlite.SqliteUsageStore`
    DailyBudgets        decides whether an ask may go ahead, records what it cost
    estimate_tokens     a rough count for providers that report no usage

A day is a UTC date ("2025-01-31"); every budget resets at midnight UTC. A budget is a
ceiling checked before an ask: an ask is allowed while the count is below the limit, and
its cost is only known afterwards, so the last ask of a day may go past the limit by its
own size.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

__all__ = [
    "Budget",
    "BudgetVerdict",
    "DailyBudgets",
    "Scope",
    "Totals",
    "UsageReport",
    "UsageStore",
    "estimate_tokens",
    "next_reset",
    "utc_day",
]

CHARS_PER_TOKEN = 4


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
