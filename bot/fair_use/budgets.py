"""Daily token budgets per user and per server.

    UsageStore          what a store of daily token counts and holds must do (a Protocol);
                        `bot.store.sqlite.SqliteUsageStore` for one machine,
                        `bot.store.redis.RedisUsageStore` for every process
    DailyBudgets        reserves tokens before an ask, counts what it cost, prunes old days
    Hold                the tokens reserved for one ask, until it settles
    Reservation         a hold as the store keeps it
    estimate_tokens     a rough count for providers that report no usage
    ask_estimate        what to reserve for an ask: its prompt plus the most it may write

A day is a UTC date ("2025-01-31"); every budget resets at midnight UTC.

Before the model is called an ask reserves an estimate of its cost (`DailyBudgets.reserve`);
the reservation is refused when the tokens already counted plus those held by asks still
running reach the limit, so concurrent asks, in this process or in others sharing the
store, cannot all slip under it. Afterwards the ask settles with what it really cost
(`Hold.settle`), which is what gets counted. The last ask let in may still go past the
limit by its own size (an ask is admitted while anything is left), never by the size of
every ask running at once. A hold a crashed process never settled stops counting after
`HOLD_LIFETIME`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import NoReturn, Protocol

__all__ = [
    "HOLD_LIFETIME",
    "Budget",
    "BudgetVerdict",
    "DailyBudgets",
    "Hold",
    "Reservation",
    "Scope",
    "Totals",
    "UsageReport",
    "UsageStore",
    "ask_estimate",
    "estimate_tokens",
    "next_reset",
    "utc_day",
]

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4

# The longest an ask can live is its interaction token's 15 minutes; a hold still there
# well after that belongs to a process that died before settling it.
HOLD_LIFETIME = timedelta(minutes=20)

# What an answer costs when nothing caps it: a long chat answer, about two Discord messages.
TYPICAL_ANSWER_TOKENS = 1000


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens in `text`: about 4 characters each, at least 1 if non-empty.

    Only for providers that report no usage; real tokenisers differ by language and
    model, so treat the result as a rough figure, never as the provider's count.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def ask_estimate(prompt_tokens: int, max_output_tokens: int | None) -> int:
    """The tokens to reserve for an ask: its prompt plus its output cap, or with no cap
    `TYPICAL_ANSWER_TOKENS`; at least 1."""
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be 0 or more (got {prompt_tokens})")
    answer = TYPICAL_ANSWER_TOKENS if max_output_tokens is None else max_output_tokens
    return max(1, prompt_tokens + answer)


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


class Scope(enum.Enum):
    """Whose daily budget it is."""

    USER = "user"
    GUILD = "guild"


@dataclass(frozen=True)
class Totals:
    """Tokens counted on one day for a user and for their server (0 outside a server)."""

    user: int
    guild: int


@dataclass(frozen=True)
class Reservation:
    """Tokens held for one ask on `day`, as a store keeps them until the ask settles.

    `id` is unique per ask (made by `DailyBudgets`); `expires_at` is in Unix seconds, after
    which the hold no longer counts against any budget. `guild_id` is None outside a server.
    """

    id: str
    day: str
    user_id: int
    guild_id: int | None
    tokens: int
    expires_at: float


class UsageStore(Protocol):
    """Daily token counts per user and per server, and the holds of asks still running.

    Every write must be atomic: concurrent calls, from this process or from others sharing
    the store, never lose an increment, and `reserve` decides and takes its hold as one
    step, so two asks can never both see the same room left under a limit.

    `bot.store.redis` keeps it in Redis for every process of the bot, each call one Lua
    script or one command; its docstring lists the keys.
    """

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        """Add `tokens` to the user's count and, inside a server, to the server's."""
        ...

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        """The counts for `day`; 0 for anyone without usage that day. Holds are not counted."""
        ...

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        """Hold `reservation.tokens` on its day unless a budget is already spent.

        A budget is spent when the day's count plus the tokens of its holds that have not
        expired at `now` (Unix seconds) reach its limit; None means no limit, and
        `guild_limit` applies only inside a server. Returns the spent scope, the user's
        first when both are, and then holds nothing; otherwise keeps the hold and returns
        None. Deciding and holding are one atomic step.
        """
        ...

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        """Drop the hold and add `tokens` to the counts of `reservation.day`, atomically.

        The tokens count even when the hold has expired or been pruned, and 0 only drops
        the hold. Call it once per reservation: a second call would count again.
        """
        ...

    async def prune(self, before: str, now: float | None = None) -> int:
        """Forget every day earlier than `before`, with its holds, and with `now` every hold
        expired by then; return how many counts and holds were dropped."""
        ...

    async def close(self) -> None:
        """Release the store's resources; only another `close` may follow."""
        ...


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


class Hold:
    """The tokens reserved for one ask, from `DailyBudgets.reserve` until it settles.

    If `exhausted` is not None the ask was refused: nothing is held and `resets_at` says
    when that budget starts afresh. Otherwise the estimate counts against the user's and
    the server's budgets until `settle` replaces it with what the ask really cost.

    Settle exactly what was consumed, however the ask ended (0 when the model was never
    called or consumed nothing); only the first `settle` counts, so a `finally:` may call
    `settle(0)` after the normal path has settled. The tokens count on the day the hold
    was reserved, even if it settles after midnight UTC.
    """

    def __init__(
        self,
        store: UsageStore,
        *,
        day: str,
        user_id: int,
        guild_id: int | None,
        exhausted: Scope | None,
        resets_at: datetime,
        reservation: Reservation | None,
    ) -> None:
        self._store = store
        self.day = day
        self.user_id = user_id
        self.guild_id = guild_id
        self.exhausted = exhausted
        self.resets_at = resets_at
        self._reservation = reservation
        self._settled = False

    @property
    def allowed(self) -> bool:
        return self.exhausted is None

    @property
    def resets_at_unix(self) -> int:
        """The reset as Unix seconds, e.g. for Discord's `<t:UNIX:R>` relative time."""
        return int(self.resets_at.timestamp())

    @property
    def held(self) -> int:
        """The tokens this hold keeps from the budgets now: 0 once settled, refused, or
        when no limit applies (then nothing needs holding)."""
        if self._settled or self._reservation is None:
            return 0
        return self._reservation.tokens

    @property
    def settled(self) -> bool:
        return self._settled

    async def settle(self, tokens: int) -> None:
        """Count `tokens` on the hold's day and free the hold; later calls do nothing.

        A refused hold counts its tokens too (a caller that spent them must not lose them),
        and settling it with 0 costs no store call. If the store fails, the error is raised
        and the hold stays until it expires.
        """
        if tokens < 0:
            raise ValueError(f"tokens must be 0 or more (got {tokens})")
        if self._settled:
            return
        # Marked before the await, so a concurrent second settle cannot count again.
        self._settled = True
        if self._reservation is not None:
            await self._store.settle(self._reservation, tokens)
        elif tokens:
            await self._store.add(self.day, self.user_id, self.guild_id, tokens)

    def __repr__(self) -> str:
        return (
            f"Hold(day={self.day!r}, user_id={self.user_id}, guild_id={self.guild_id}, "
            f"exhausted={self.exhausted}, held={self.held}, settled={self._settled})"
        )


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
    day. Outside a server (`guild_id` None) only the user's budget applies. An ask calls
    `reserve` before the model and `Hold.settle` after it; `prune` keeps the store small:

        hold = await budgets.reserve(user_id, guild_id, ask_estimate(prompt_tokens, cap))
        if hold.exhausted is not None:
            ...  # refuse: budget_exhausted(hold.exhausted, hold.resets_at_unix)
        try:
            outcome = await answer(...)
            await hold.settle(tokens_consumed(outcome))
        finally:
            await hold.settle(0)  # frees the hold if nothing above settled it
    """

    def __init__(
        self,
        store: UsageStore,
        budget: Budget,
        *,
        clock: Callable[[], datetime] = utc_now,
        hold_lifetime: timedelta = HOLD_LIFETIME,
    ) -> None:
        if hold_lifetime <= timedelta(0):
            raise ValueError(f"hold_lifetime must be positive (got {hold_lifetime})")
        self._store = store
        self.budget = budget
        self._clock = clock
        self.hold_lifetime = hold_lifetime

    def _limits(self, guild_id: int | None) -> tuple[int | None, int | None]:
        guild_limit = self.budget.guild_daily_tokens if guild_id is not None else None
        return self.budget.user_daily_tokens, guild_limit

    async def reserve(
        self, user_id: int, guild_id: int | None, estimate: int, now: datetime | None = None
    ) -> Hold:
        """Hold `estimate` tokens for an ask about to call the model, unless a budget is spent.

        `estimate` (at least 1) should be what the ask may cost: the prompt's estimate
        plus the output cap, or a typical answer. The ask is refused (`hold.exhausted` set,
        the user's budget named first when both are spent) when the day's counted tokens
        plus those held by other asks reach a limit. With no limit that applies, nothing is
        held and no store call is made; the hold still settles into the day's counts.
        If this call is cancelled, the hold it may have taken is given back.
        """
        if estimate < 1:
            raise ValueError(f"estimate must be at least 1 token (got {estimate})")
        now = self._clock() if now is None else now
        day = utc_day(now)
        resets_at = next_reset(now)
        user_limit, guild_limit = self._limits(guild_id)
        if user_limit is None and guild_limit is None:
            # Nothing to enforce: spare the store a round trip on every ask.
            return Hold(
                self._store,
                day=day,
                user_id=user_id,
                guild_id=guild_id,
                exhausted=None,
                resets_at=resets_at,
                reservation=None,
            )
        reservation = Reservation(
            id=uuid.uuid4().hex,
            day=day,
            user_id=user_id,
            guild_id=guild_id,
            tokens=estimate,
            expires_at=(now + self.hold_lifetime).timestamp(),
        )
        try:
            exhausted = await self._store.reserve(
                reservation, user_limit, guild_limit, now.timestamp()
            )
        except asyncio.CancelledError:
            # The store may have taken the hold all the same; left alone it would keep
            # the user's budget blocked until it expired.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.settle(reservation, 0))
            raise
        return Hold(
            self._store,
            day=day,
            user_id=user_id,
            guild_id=guild_id,
            exhausted=exhausted,
            resets_at=resets_at,
            reservation=reservation if exhausted is None else None,
        )

    async def check(
        self, user_id: int, guild_id: int | None, now: datetime | None = None
    ) -> BudgetVerdict:
        """Whether the user's and server's counted tokens are below their limits now.

        Holds are not seen, so this cannot keep concurrent asks under a limit: an ask
        about to call the model uses `reserve`. The user's budget is named first when
        both are spent.
        """
        now = self._clock() if now is None else now
        resets_at = next_reset(now)
        user_limit, guild_limit = self._limits(guild_id)
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
        applies at once. An ask that reserved settles its `Hold` instead.
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
        """Today's counted tokens and limits for the user and their server.

        Only settled tokens are shown, never the estimates held by asks still running:
        the figures are what was really spent, and they do not jump while an answer is
        being written.
        """
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

    async def prune(self, now: datetime | None = None) -> int:
        """Drop the counts of days before yesterday and every expired hold; return how many.

        The longest budget is one day, so only today's counts decide anything. Yesterday's
        stay: an ask reserved before midnight settles onto yesterday after it, and a process
        whose clock is a little behind may still be counting there.
        """
        now = self._clock() if now is None else now
        yesterday = _as_utc(now).date() - timedelta(days=1)
        return await self._store.prune(before=yesterday.isoformat(), now=now.timestamp())

    async def keep_pruned(
        self,
        every: timedelta = timedelta(hours=1),
        *,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> NoReturn:
        """Prune now and then every `every`, until cancelled; run it as a task.

        A failed prune (say the file is locked by another process for too long) is logged
        as one warning line and tried again next time.
        """
        while True:
            try:
                dropped = await self.prune()
            except Exception as error:
                log.warning("could not prune the usage store (will retry): %s", error)
            else:
                if dropped:
                    log.info("pruned %d old usage counts and expired holds", dropped)
            await sleep(every.total_seconds())
