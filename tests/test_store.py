"""The usage store's holds: reserving is atomic across asks, stores and processes; holds
settle onto their own day, expire when left behind, and are pruned.

Written against the `UsageStore` protocol through `open_store`, parametrised over the SQLite
and the Redis store: both must pass the same tests, so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.fair_use.budgets import (
    HOLD_LIFETIME,
    Budget,
    DailyBudgets,
    Reservation,
    Scope,
    Totals,
    UsageStore,
)
from bot.store.redis import RedisUsageStore
from bot.store.sqlite import FILE_NAME, SqliteUsageStore
from tests.redis_clients import redis_client
from tests.redis_server import RedisServer

ALICE, BOB = 1001, 1002
GUILD = 900_000_000_000_000_001
DAY, NEXT_DAY = "2025-03-14", "2025-03-15"
NOON = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
NOW = NOON.timestamp()
LATER = NOW + HOLD_LIFETIME.total_seconds()
ROOT = Path(__file__).resolve().parents[1]

OpenStore = Callable[[], Awaitable[UsageStore]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores that share one backing (as bot processes would), all closed at the end:
    one SQLite file, or one Redis server with a client of each store's own."""
    opened: list[UsageStore] = []
    clients: list[Redis] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

    async def open_one() -> UsageStore:
        store: UsageStore
        if server is None:
            store = await SqliteUsageStore.open(tmp_path / "data")
        else:
            client = redis_client(server.url)
            clients.append(client)
            store = RedisUsageStore(client)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    for client in clients:
        await client.aclose()


@pytest.fixture
async def store(open_store: OpenStore) -> UsageStore:
    return await open_store()


def hold(
    tokens: int,
    *,
    user_id: int = ALICE,
    guild_id: int | None = GUILD,
    day: str = DAY,
    expires_at: float = LATER,
) -> Reservation:
    return Reservation(uuid.uuid4().hex, day, user_id, guild_id, tokens, expires_at)


async def test_a_hold_counts_against_the_budget_until_it_reaches_the_limit(
    store: UsageStore,
) -> None:
    await store.add(DAY, ALICE, GUILD, 40)
    assert await store.reserve(hold(50), 100, None, NOW) is None
    # 40 counted + 50 held is still under 100: one more may start, whatever its size.
    assert await store.reserve(hold(500), 100, None, NOW) is None
    assert await store.reserve(hold(1), 100, None, NOW) is Scope.USER
    # Holds are not usage: nothing was spent yet.
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=40, guild=40)
    assert await store.reserve(hold(1, user_id=BOB), 100, None, NOW) is None


async def test_a_guild_budget_counts_every_members_holds(store: UsageStore) -> None:
    assert await store.reserve(hold(60, user_id=ALICE), None, 100, NOW) is None
    assert await store.reserve(hold(40, user_id=BOB), None, 100, NOW) is None
    assert await store.reserve(hold(1, user_id=BOB), None, 100, NOW) is Scope.GUILD
    # The user's budget is named first when both are spent.
    assert await store.reserve(hold(1, user_id=BOB), 40, 100, NOW) is Scope.USER
    # Outside a server no server budget applies.
    assert await store.reserve(hold(1, user_id=BOB, guild_id=None), None, 100, NOW) is None


async def test_a_refused_reservation_holds_nothing(store: UsageStore) -> None:
    assert await store.reserve(hold(100), 100, None, NOW) is None
    for _ in range(3):
        assert await store.reserve(hold(100, user_id=ALICE), 100, 1000, NOW) is Scope.USER
    # Had the refusals held their 300 tokens, Bob would be refused by the server budget.
    assert await store.reserve(hold(100, user_id=BOB), None, 300, NOW) is None


async def test_settling_counts_the_real_tokens_and_frees_the_hold(store: UsageStore) -> None:
    first = hold(90)
    assert await store.reserve(first, 100, None, NOW) is None
    assert await store.reserve(hold(5), 100, None, NOW) is None
    await store.settle(first, 30)
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=30, guild=30)
    # 30 counted + 5 still held: room for another.
    assert await store.reserve(hold(5), 100, None, NOW) is None


async def test_settling_nothing_only_frees_the_hold(store: UsageStore) -> None:
    reservation = hold(100)
    assert await store.reserve(reservation, 100, None, NOW) is None
    assert await store.reserve(hold(1), 100, None, NOW) is Scope.USER
    await store.settle(reservation, 0)
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=0, guild=0)
    assert await store.reserve(hold(1), 100, None, NOW) is None


async def test_a_hold_settles_onto_its_own_day(store: UsageStore) -> None:
    late = hold(100, day=DAY)
    assert await store.reserve(late, 100, None, NOW) is None
    # The next day starts afresh: the day before's hold does not count there.
    assert await store.reserve(hold(100, day=NEXT_DAY), 100, None, NOW + 43_200) is None
    await store.settle(late, 70)
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=70, guild=70)
    assert await store.totals(NEXT_DAY, ALICE, GUILD) == Totals(user=0, guild=0)


async def test_an_expired_hold_stops_counting_but_still_settles(store: UsageStore) -> None:
    abandoned = hold(100, expires_at=NOW + 60)
    assert await store.reserve(abandoned, 100, None, NOW) is None
    assert await store.reserve(hold(1), 100, None, NOW + 59) is Scope.USER
    assert await store.reserve(hold(1), 100, None, NOW + 60) is None
    # A late settle still counts what was really spent.
    await store.settle(abandoned, 80)
    assert await store.totals(DAY, ALICE, GUILD) == Totals(user=80, guild=80)


async def test_concurrent_reservations_never_overspend(store: UsageStore) -> None:
    results = await asyncio.gather(*(store.reserve(hold(7), 100, None, NOW) for _ in range(40)))
    # 14 holds make 98 < 100, so a 15th gets in; after it 105 >= 100 refuses the rest.
    assert results.count(None) == 15
    assert results.count(Scope.USER) == 25


async def test_stores_sharing_one_backing_never_overspend(open_store: OpenStore) -> None:
    # As four bot processes would: many small holds racing for the last of a server's room.
    stores = [await open_store() for _ in range(4)]
    results = await asyncio.gather(
        *(
            stores[turn % len(stores)].reserve(hold(1, user_id=ALICE + turn), None, 100, NOW)
            for turn in range(300)
        )
    )
    assert results.count(None) == 100
    assert results.count(Scope.GUILD) == 200


_CHILD = """
import asyncio
import sys
from datetime import datetime
from pathlib import Path

from redis.asyncio import Redis

from bot.fair_use.budgets import Budget, DailyBudgets, UsageStore
from bot.store.redis import RedisUsageStore
from bot.store.sqlite import SqliteUsageStore


async def main() -> None:
    backing, where, user, guild, limit, estimate, asks, now = sys.argv[1:]
    client = None
    store: UsageStore
    if backing == "redis":
        client = Redis.from_url(where, socket_timeout=5)
        store = RedisUsageStore(client)
    else:
        store = await SqliteUsageStore.open(Path(where))
    try:
        budgets = DailyBudgets(store, Budget(guild_daily_tokens=int(limit)))
        print("ready", flush=True)
        sys.stdin.readline()
        at = datetime.fromisoformat(now)
        holds = await asyncio.gather(
            *(budgets.reserve(int(user), int(guild), int(estimate), at) for _ in range(int(asks)))
        )
        print(sum(hold.allowed for hold in holds), flush=True)
    finally:
        await store.close()
        if client is not None:
            await client.aclose()


asyncio.run(main())
"""


@pytest.mark.parametrize("backing", ["sqlite", "redis"])
async def test_two_processes_on_one_backing_never_overspend(
    backing: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    client: Redis | None = None
    store: UsageStore
    if backing == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        where = server.url
        client = redis_client(where)
        store = RedisUsageStore(client)
    else:
        where = str(tmp_path / "data")
        store = await SqliteUsageStore.open(Path(where))
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [environment.get("PYTHONPATH")])]
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        backing,
        where,
        str(BOB),
        str(GUILD),
        "100",
        "7",
        "20",
        NOON.isoformat(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=environment,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        # A guard against a hung child, not a measurement.
        async with asyncio.timeout(60):
            assert await child.stdout.readline() == b"ready\n"
            budgets = DailyBudgets(store, Budget(guild_daily_tokens=100))
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            ours = await asyncio.gather(
                *(budgets.reserve(ALICE, GUILD, 7, NOON) for _ in range(20))
            )
            theirs = int(await child.stdout.readline())
            assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await store.close()
        if client is not None:
            await client.aclose()
    # Between them the two processes let in exactly what one would have.
    assert sum(hold.allowed for hold in ours) + theirs == 15


async def test_pruning_drops_old_days_their_holds_and_expired_holds(store: UsageStore) -> None:
    for day in ("2025-03-12", "2025-03-13", DAY):
        await store.add(day, ALICE, GUILD, 10)
    old = hold(5, day="2025-03-12")
    await store.reserve(old, 100, None, NOW)
    await store.reserve(hold(5, expires_at=NOW + 1), 100, None, NOW)
    live = hold(20, expires_at=NOW + 10)
    await store.reserve(live, 100, None, NOW)
    # Counts of the 12th (user and guild) and the 12th's hold, then the expired one.
    assert await store.prune(before="2025-03-13", now=NOW + 5) == 4
    assert await store.totals("2025-03-12", ALICE, GUILD) == Totals(user=0, guild=0)
    assert await store.totals("2025-03-13", ALICE, GUILD) == Totals(user=10, guild=10)
    # The live hold still counts: 10 counted + 20 held reaches a limit of 30.
    assert await store.reserve(hold(1), 30, None, NOW + 5) is Scope.USER
    assert await store.prune(before="2025-03-13") == 0


async def test_a_file_from_before_holds_gains_them_and_keeps_its_counts(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    old = sqlite3.connect(directory / FILE_NAME)
    with old:
        old.execute(
            "CREATE TABLE usage (day TEXT NOT NULL, scope TEXT NOT NULL "
            "CHECK (scope IN ('user', 'guild')), id INTEGER NOT NULL, tokens INTEGER NOT NULL, "
            "PRIMARY KEY (day, scope, id)) WITHOUT ROWID"
        )
        old.execute("INSERT INTO usage VALUES (?, 'user', ?, 95)", (DAY, ALICE))
    old.close()
    store = await SqliteUsageStore.open(directory)
    try:
        assert await store.reserve(hold(10), 100, None, NOW) is None
        assert await store.reserve(hold(10), 100, None, NOW) is Scope.USER
    finally:
        await store.close()


def test_a_hold_lives_longer_than_any_interaction() -> None:
    # Discord accepts a followup for 15 minutes; a hold must outlast every live answer.
    assert timedelta(minutes=15) < HOLD_LIFETIME <= timedelta(hours=1)
