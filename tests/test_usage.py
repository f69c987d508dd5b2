"""Daily budgets and the usage stores: counts add up, survive restarts, reset at 00:00 UTC;
reservations keep concurrent asks under a limit and settle what they really cost.

The `store` fixture is parametrised over the SQLite and the Redis store, so every budget test
runs against both; the tests of the SQLite file itself use `sqlite_store`."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.fair_use.budgets import (
    HOLD_LIFETIME,
    Budget,
    DailyBudgets,
    Reservation,
    Scope,
    Totals,
    UsageReport,
    UsageStore,
    ask_estimate,
    estimate_tokens,
    next_reset,
    utc_day,
)
from bot.store.redis import RedisUsageStore
from bot.store.sqlite import FILE_NAME, SqliteUsageStore
from tests.redis_clients import redis_client
from tests.redis_server import RedisServer

ALICE, BOB, CAROL = 1001, 1002, 1003
GUILD, OTHER_GUILD = 900_000_000_000_000_001, 900_000_000_000_000_002
DAY = "2025-03-14"
NOON = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
MIDNIGHT = datetime(2025, 3, 15, tzinfo=UTC)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteUsageStore]:
    opened = await SqliteUsageStore.open(tmp_path / "data")
    yield opened
    await opened.close()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UsageStore]:
    if request.param == "sqlite":
        opened = await SqliteUsageStore.open(tmp_path / "data")
        yield opened
        await opened.close()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with redis_client(server.url) as client:
        yield RedisUsageStore(client)


# --- estimate_tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("héllo wörld", 3)],
)
def test_token_estimate_is_about_four_characters_each(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


@given(st.text(min_size=1))
def test_token_estimate_is_at_least_one_and_never_far_below_a_quarter(text: str) -> None:
    estimate = estimate_tokens(text)
    assert estimate >= 1
    assert len(text) / 4 <= estimate < len(text) / 4 + 1


@pytest.mark.parametrize(
    ("prompt_tokens", "max_output_tokens", "estimate"),
    [(100, 1000, 1100), (100, None, 1100), (30, 50, 80), (0, 0, 1)],
)
def test_an_ask_reserves_its_prompt_and_the_most_it_may_write(
    prompt_tokens: int, max_output_tokens: int | None, estimate: int
) -> None:
    assert ask_estimate(prompt_tokens, max_output_tokens) == estimate


def test_an_ask_estimate_refuses_a_negative_prompt() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        ask_estimate(-1, 100)


# --- days and resets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "day", "reset"),
    [
        (NOON, DAY, MIDNIGHT),
        (datetime(2025, 3, 14, 0, 0, tzinfo=UTC), DAY, MIDNIGHT),
        (datetime(2025, 3, 14, 23, 59, 59, 999999, tzinfo=UTC), DAY, MIDNIGHT),
        # 01:30 in Paris on the 15th is still the 14th in UTC.
        (datetime(2025, 3, 15, 1, 30, tzinfo=timezone(timedelta(hours=2))), DAY, MIDNIGHT),
        (datetime(2024, 12, 31, 18, 0, tzinfo=UTC), "2024-12-31", datetime(2025, 1, 1, tzinfo=UTC)),
    ],
)
def test_the_day_is_the_utc_date_and_resets_at_utc_midnight(
    now: datetime, day: str, reset: datetime
) -> None:
    assert utc_day(now) == day
    assert next_reset(now) == reset


@given(st.datetimes(timezones=st.timezones()))
def test_the_reset_is_the_next_utc_midnight(now: datetime) -> None:
    reset = next_reset(now)
    # Compared in UTC: adding a day to a local time keeps its wall clock across DST.
    in_utc = now.astimezone(UTC)
    assert in_utc < reset <= in_utc + timedelta(days=1)
    assert (reset.hour, reset.minute, reset.second, reset.microsecond) == (0, 0, 0, 0)
    assert utc_day(reset - timedelta(microseconds=1)) == utc_day(now)


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        utc_day(datetime(2025, 3, 14, 12, 0))


# --- the stores ---------------------------------------------------------------------------------


def test_the_sqlite_store_fills_the_protocol(sqlite_store: SqliteUsageStore) -> None:
    typed: UsageStore = sqlite_store
    assert typed is sqlite_store


async def test_counts_add_up_per_user_and_per_guild(store: UsageStore) -> None:
    await store.add(DAY, ALICE, GUILD, 100)
    await store.add(DAY, ALICE, GUILD, 50)
    await store.add(DAY, BOB, GUILD, 30)
    await store.add(DAY, ALICE, OTHER_GUILD, 7)
    await store.add(DAY, ALICE, None, 3)  # a direct message counts for the user only
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=160, guild=180)
    assert await store.totals(DAY, BOB, GUILD) == Totals(user=30, guild=180)
    assert await store.totals(DAY, ALICE, OTHER_GUILD) == Totals(user=160, guild=7)
    assert await store.totals(DAY, ALICE, None) == Totals(user=160, guild=0)
    assert await store.totals(DAY, CAROL, GUILD) == Totals(user=0, guild=180)
    assert await store.totals("2025-03-15", ALICE, GUILD) == Totals(user=0, guild=0)


async def test_concurrent_adds_lose_nothing(store: UsageStore) -> None:
    await asyncio.gather(*(store.add(DAY, ALICE, GUILD, 1) for _ in range(200)))
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=200, guild=200)


async def test_usage_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "data"
    first = await SqliteUsageStore.open(directory)
    await first.add(DAY, ALICE, GUILD, 1234)
    await first.close()
    assert (directory / FILE_NAME).is_file()

    second = await SqliteUsageStore.open(directory)
    try:
        await second.add(DAY, ALICE, GUILD, 6)
        assert await second.totals(DAY, ALICE, GUILD) == Totals(user=1240, guild=1240)
    finally:
        await second.close()
    await second.close()  # a second close, as a shutdown path may do, is harmless


async def test_the_file_uses_wal_and_a_key_on_day_scope_and_id(
    sqlite_store: SqliteUsageStore,
) -> None:
    store = sqlite_store
    await store.add(DAY, ALICE, GUILD, 1)
    reader = sqlite3.connect(store.path)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = reader.execute("PRAGMA table_info(usage)").fetchall()
    finally:
        reader.close()
    # table_info rows: (cid, name, type, notnull, default, position in the primary key)
    key = [name for _, name, _, _, _, position in sorted(columns, key=lambda c: c[5]) if position]
    assert key == ["day", "scope", "id"]


async def test_old_days_can_be_pruned(store: UsageStore) -> None:
    for day in ("2025-03-12", "2025-03-13", DAY):
        await store.add(day, ALICE, GUILD, 10)
    assert await store.prune(before=DAY) == 4
    assert await store.totals("2025-03-13", ALICE, GUILD) == Totals(user=0, guild=0)
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=10, guild=10)


async def test_the_event_loop_runs_on_while_the_store_waits_for_the_disk(
    sqlite_store: SqliteUsageStore,
) -> None:
    store = sqlite_store
    # Another process holds the write lock: the store's write must wait for it on its
    # own thread while this loop carries on. A store that blocked the loop would wait out
    # its busy timeout here and fail, since the lock is released only by this loop.
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    locker.execute("INSERT INTO usage VALUES (?, 'user', ?, 5)", (DAY, BOB))
    writing = asyncio.create_task(store.add(DAY, ALICE, GUILD, 10))
    loop_alive = asyncio.Event()

    async def other_work() -> None:
        loop_alive.set()

    await asyncio.create_task(other_work())
    await loop_alive.wait()
    assert not writing.done()
    locker.execute("COMMIT")
    locker.close()
    await writing
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=10, guild=10)
    assert await store.totals(DAY, BOB, GUILD) == Totals(user=5, guild=10)


# --- DailyBudgets -----------------------------------------------------------------------------


async def test_no_limits_always_allow(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget())
    await budgets.record(ALICE, GUILD, 10**9, NOON)
    verdict = await budgets.check(ALICE, GUILD, NOON)
    assert verdict.allowed
    assert verdict.exhausted is None
    assert (await budgets.usage_report(ALICE, GUILD, NOON)).user_tokens == 10**9


async def test_a_user_is_stopped_once_their_budget_is_spent(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    await budgets.record(ALICE, GUILD, 99, NOON)
    assert (await budgets.check(ALICE, GUILD, NOON)).allowed
    await budgets.record(ALICE, GUILD, 1, NOON)
    verdict = await budgets.check(ALICE, GUILD, NOON)
    assert not verdict.allowed
    assert verdict.exhausted is Scope.USER
    assert verdict.resets_at == MIDNIGHT
    assert verdict.resets_in(NOON) == timedelta(hours=12)
    assert verdict.resets_at_unix == 1741996800
    assert (await budgets.check(BOB, GUILD, NOON)).allowed


async def test_a_guild_budget_is_shared_by_its_members(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=1000, guild_daily_tokens=100))
    await budgets.record(ALICE, GUILD, 60, NOON)
    await budgets.record(BOB, GUILD, 40, NOON)
    verdict = await budgets.check(CAROL, GUILD, NOON)
    assert verdict.exhausted is Scope.GUILD
    assert verdict.resets_at == MIDNIGHT
    assert (await budgets.check(CAROL, OTHER_GUILD, NOON)).allowed
    # In a direct message no server budget applies.
    assert (await budgets.check(CAROL, None, NOON)).allowed


async def test_the_user_budget_is_named_when_both_are_spent(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=50, guild_daily_tokens=50))
    await budgets.record(ALICE, GUILD, 80, NOON)
    assert (await budgets.check(ALICE, GUILD, NOON)).exhausted is Scope.USER
    assert (await budgets.check(BOB, GUILD, NOON)).exhausted is Scope.GUILD


async def test_budgets_start_afresh_at_utc_midnight(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=10, guild_daily_tokens=10))
    just_before = MIDNIGHT - timedelta(microseconds=1)
    await budgets.record(ALICE, GUILD, 10, just_before)
    assert not (await budgets.check(ALICE, GUILD, just_before)).allowed
    after = await budgets.check(ALICE, GUILD, MIDNIGHT)
    assert after.allowed
    assert after.resets_at == MIDNIGHT + timedelta(days=1)


async def test_the_clock_gives_the_time_when_none_is_passed(store: UsageStore) -> None:
    times = iter([NOON, NOON, MIDNIGHT])
    budgets = DailyBudgets(store, Budget(user_daily_tokens=5), clock=lambda: next(times))
    await budgets.record(ALICE, None, 5)
    assert (await budgets.check(ALICE, None)).exhausted is Scope.USER
    assert (await budgets.check(ALICE, None)).allowed


async def test_recording_checks_its_input(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=5))
    with pytest.raises(ValueError, match="0 or more"):
        await budgets.record(ALICE, GUILD, -1, NOON)
    with pytest.raises(ValueError, match="time zone"):
        await budgets.check(ALICE, GUILD, datetime(2025, 3, 14, 12))
    await budgets.record(ALICE, GUILD, 0, NOON)
    assert (await budgets.usage_report(ALICE, GUILD, NOON)).user_tokens == 0


@pytest.mark.parametrize(("user_limit", "guild_limit"), [(0, None), (None, 0), (-5, 10)], ids=str)
def test_limits_below_one_are_refused(user_limit: int | None, guild_limit: int | None) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Budget(user_daily_tokens=user_limit, guild_daily_tokens=guild_limit)


async def test_usage_report_for_the_usage_command(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=5000, guild_daily_tokens=20000))
    await budgets.record(ALICE, GUILD, 1200, NOON)
    await budgets.record(BOB, GUILD, 800, NOON)
    assert await budgets.usage_report(ALICE, GUILD, NOON) == UsageReport(
        day=DAY,
        user_tokens=1200,
        user_limit=5000,
        guild_tokens=2000,
        guild_limit=20000,
        resets_at=MIDNIGHT,
    )
    in_dm = await budgets.usage_report(ALICE, None, NOON)
    assert (in_dm.user_tokens, in_dm.guild_tokens, in_dm.guild_limit) == (1200, None, None)
    assert in_dm.resets_at_unix == 1741996800


# --- reservations -----------------------------------------------------------------------------


class CountingStore:
    """The real store, counting the calls made to it."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        self.calls["add"] += 1
        await self._store.add(day, user_id, guild_id, tokens)

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        self.calls["totals"] += 1
        return await self._store.totals(day, user_id, guild_id)

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        self.calls["reserve"] += 1
        return await self._store.reserve(reservation, user_limit, guild_limit, now)

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        self.calls["settle"] += 1
        await self._store.settle(reservation, tokens)

    async def prune(self, before: str, now: float | None = None) -> int:
        self.calls["prune"] += 1
        return await self._store.prune(before, now)

    async def close(self) -> None:
        await self._store.close()


async def used(budgets: DailyBudgets, user_id: int = ALICE, at: datetime = NOON) -> int:
    return (await budgets.usage_report(user_id, GUILD, at)).user_tokens


async def test_simultaneous_asks_cannot_all_slip_under_the_limit(store: UsageStore) -> None:
    # Five asks at once, each estimated at a 100-token prompt plus a 1000-token output cap.
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    holds = await asyncio.gather(*(budgets.reserve(ALICE, GUILD, 1100, NOON) for _ in range(5)))
    allowed = [hold for hold in holds if hold.allowed]
    assert len(allowed) == 1
    refused = [hold for hold in holds if not hold.allowed]
    assert {hold.exhausted for hold in refused} == {Scope.USER}
    assert {hold.resets_at_unix for hold in refused} == {1741996800}
    await allowed[0].settle(550)
    assert await used(budgets) == 550


async def test_small_asks_are_let_in_until_the_held_tokens_reach_the_limit(
    store: UsageStore,
) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100, guild_daily_tokens=1000))
    holds = await asyncio.gather(*(budgets.reserve(ALICE, GUILD, 30, NOON) for _ in range(10)))
    # 0, 30, 60 and 90 held are each below 100; at 120 the rest are refused.
    assert sum(hold.allowed for hold in holds) == 4
    # Others in the server are not held back by Alice's holds until the server's are spent.
    assert (await budgets.reserve(BOB, GUILD, 30, NOON)).allowed


async def test_settling_counts_the_real_tokens_not_the_estimate(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=1000))
    hold = await budgets.reserve(ALICE, GUILD, 1100, NOON)
    assert hold.allowed
    assert hold.held == 1100
    assert not (await budgets.reserve(ALICE, GUILD, 1100, NOON)).allowed
    await hold.settle(120)
    assert (hold.held, hold.settled) == (0, True)
    report = await budgets.usage_report(ALICE, GUILD, NOON)
    assert (report.user_tokens, report.guild_tokens) == (120, 120)
    assert (await budgets.reserve(ALICE, GUILD, 1100, NOON)).allowed


async def test_a_call_that_consumed_nothing_costs_nothing(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    hold = await budgets.reserve(ALICE, GUILD, 1100, NOON)
    await hold.settle(0)
    assert await used(budgets) == 0
    assert (await budgets.reserve(ALICE, GUILD, 1100, NOON)).allowed


async def test_only_the_first_settle_counts(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=1000))
    hold = await budgets.reserve(ALICE, GUILD, 500, NOON)
    await asyncio.gather(hold.settle(50), hold.settle(50))
    await hold.settle(0)  # as a `finally:` would, after the normal path settled
    await hold.settle(70)
    assert await used(budgets) == 50


async def test_with_no_limits_reserving_costs_no_store_call(store: UsageStore) -> None:
    counting = CountingStore(store)
    budgets = DailyBudgets(counting, Budget(user_daily_tokens=None, guild_daily_tokens=500))
    # In a direct message the server budget does not apply either: nothing to enforce.
    for guild_id in (None, GUILD):
        unlimited = DailyBudgets(counting, Budget()) if guild_id else budgets
        hold = await unlimited.reserve(ALICE, guild_id, 1100, NOON)
        assert hold.allowed
        assert hold.held == 0
        await hold.settle(0)
        assert counting.calls == Counter()
        await (await unlimited.reserve(ALICE, guild_id, 1100, NOON)).settle(40)
        # The real cost is still counted, with one write.
        assert counting.calls == Counter(add=1)
        counting.calls.clear()
    assert await used(budgets) == 80


async def test_a_refused_hold_settles_without_a_store_call(store: UsageStore) -> None:
    counting = CountingStore(store)
    budgets = DailyBudgets(counting, Budget(user_daily_tokens=10))
    await budgets.record(ALICE, GUILD, 10, NOON)
    counting.calls.clear()
    refused = await budgets.reserve(ALICE, GUILD, 5, NOON)
    assert refused.exhausted is Scope.USER
    await refused.settle(0)
    assert counting.calls == Counter(reserve=1)


async def test_a_hold_across_midnight_counts_on_the_day_it_was_reserved(
    store: UsageStore,
) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    late = await budgets.reserve(ALICE, GUILD, 100, MIDNIGHT - timedelta(seconds=1))
    assert late.day == DAY
    # The new day starts afresh even while yesterday's answer is still being written.
    fresh = await budgets.reserve(ALICE, GUILD, 100, MIDNIGHT + timedelta(seconds=1))
    assert fresh.allowed
    assert fresh.resets_at == MIDNIGHT + timedelta(days=1)
    await late.settle(80)
    await fresh.settle(10)
    assert await used(budgets, at=NOON) == 80
    assert await used(budgets, at=MIDNIGHT) == 10


async def test_a_hold_never_settled_stops_counting_once_it_expires(
    store: UsageStore,
) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    # The process holding this crashes before it can settle.
    assert (await budgets.reserve(ALICE, GUILD, 1100, NOON)).allowed
    almost = NOON + HOLD_LIFETIME - timedelta(seconds=1)
    assert (await budgets.reserve(ALICE, GUILD, 10, almost)).exhausted is Scope.USER
    assert (await budgets.reserve(ALICE, GUILD, 10, NOON + HOLD_LIFETIME)).allowed


async def test_a_cancelled_reservation_gives_its_hold_back(sqlite_store: SqliteUsageStore) -> None:
    store = sqlite_store
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    # Another process holds the file, so the reservation is still under way when the
    # ask is cancelled (say by a shutdown); it completes on the store's thread regardless.
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    reserving = asyncio.create_task(budgets.reserve(ALICE, GUILD, 1100, NOON))
    started = asyncio.Event()

    async def mark_started() -> None:
        started.set()

    await asyncio.create_task(mark_started())
    await started.wait()
    assert not reserving.done()
    reserving.cancel()
    locker.execute("COMMIT")
    locker.close()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    assert (await budgets.reserve(ALICE, GUILD, 1100, NOON)).allowed
    assert await used(budgets) == 0


async def test_reserving_checks_its_input(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=100))
    with pytest.raises(ValueError, match="at least 1"):
        await budgets.reserve(ALICE, GUILD, 0, NOON)
    with pytest.raises(ValueError, match="time zone"):
        await budgets.reserve(ALICE, GUILD, 10, datetime(2025, 3, 14, 12))
    hold = await budgets.reserve(ALICE, GUILD, 10, NOON)
    with pytest.raises(ValueError, match="0 or more"):
        await hold.settle(-1)
    assert not hold.settled
    with pytest.raises(ValueError, match="positive"):
        DailyBudgets(store, Budget(), hold_lifetime=timedelta(0))


async def test_the_usage_report_shows_spent_tokens_not_holds(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=5000, guild_daily_tokens=20000))
    await budgets.record(ALICE, GUILD, 1200, NOON)
    hold = await budgets.reserve(ALICE, GUILD, 1100, NOON)
    report = await budgets.usage_report(ALICE, GUILD, NOON)
    assert (report.user_tokens, report.guild_tokens) == (1200, 1200)
    await hold.settle(300)
    report = await budgets.usage_report(ALICE, GUILD, NOON)
    assert (report.user_tokens, report.guild_tokens) == (1500, 1500)


async def test_a_hold_says_what_it_holds_and_nothing_more(store: UsageStore) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=10))
    hold = await budgets.reserve(ALICE, None, 25, NOON)
    assert repr(hold) == (
        "Hold(day='2025-03-14', user_id=1001, guild_id=None, exhausted=None, held=25, "
        "settled=False)"
    )
    refused = await budgets.reserve(ALICE, None, 25, NOON)
    assert "exhausted=Scope.USER, held=0," in repr(refused)


# --- pruning ----------------------------------------------------------------------------------


async def test_pruning_keeps_today_and_yesterday_and_drops_expired_holds(
    store: UsageStore,
) -> None:
    budgets = DailyBudgets(store, Budget(user_daily_tokens=1000))
    for day in (12, 13, 14):
        await budgets.record(ALICE, GUILD, 10, datetime(2025, 3, day, 12, tzinfo=UTC))
    abandoned = await budgets.reserve(ALICE, GUILD, 500, NOON - HOLD_LIFETIME)
    running = await budgets.reserve(ALICE, GUILD, 400, NOON)
    # The 12th's user and server counts, and the hold that expired at noon.
    assert await budgets.prune(NOON) == 3
    assert abandoned.held == 500  # the store forgot it; a late settle would still count
    assert await used(budgets, at=datetime(2025, 3, 12, 12, tzinfo=UTC)) == 0
    assert await used(budgets, at=datetime(2025, 3, 13, 12, tzinfo=UTC)) == 10
    assert await used(budgets) == 10
    # The running hold is kept: 10 counted + 400 held + 590 more reach the limit.
    assert (await budgets.reserve(ALICE, GUILD, 590, NOON)).allowed
    assert not (await budgets.reserve(ALICE, GUILD, 1, NOON)).allowed
    await running.settle(0)
    assert await budgets.prune(NOON) == 0


class StopPruning(Exception):
    pass


async def test_pruning_runs_again_after_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SqliteUsageStore.open(tmp_path, busy_timeout=0.01)
    try:
        budgets = DailyBudgets(store, Budget(), clock=lambda: NOON)
        await budgets.record(ALICE, GUILD, 10, datetime(2025, 3, 1, tzinfo=UTC))
        # Another process holds the file for longer than the store waits.
        locker = sqlite3.connect(store.path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        pauses: list[float] = []

        async def sleep(seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) == 1:
                locker.execute("COMMIT")
                locker.close()
            else:
                raise StopPruning

        with caplog.at_level(logging.INFO, "bot.fair_use.budgets"), pytest.raises(StopPruning):
            await budgets.keep_pruned(timedelta(minutes=30), sleep=sleep)
        assert pauses == [1800.0, 1800.0]
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 2
        assert messages[0].startswith("could not prune the usage store (will retry): ")
        assert "locked" in messages[0]
        assert messages[1] == "pruned 2 old usage counts and expired holds"
        assert (await budgets.usage_report(ALICE, GUILD, datetime(2025, 3, 1, tzinfo=UTC))) == (
            UsageReport(
                day="2025-03-01",
                user_tokens=0,
                user_limit=None,
                guild_tokens=0,
                guild_limit=None,
                resets_at=datetime(2025, 3, 2, tzinfo=UTC),
            )
        )
    finally:
        await store.close()
