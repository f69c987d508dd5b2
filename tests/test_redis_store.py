"""What only the Redis stores promise: every key expires (but the id counter and the settings),
any client decoding works, the shared client stays open, a parent lost to expiry ends a chain,
prefixes keep deployments apart, and each call is one round trip.

The behaviour both backings share is tested in test_store.py, test_conversation_store.py and
test_settings_store.py, parametrised over SQLite and Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot.conversation.settings import ServerSettings
from bot.conversation.turns import NewTurn, Turn
from bot.fair_use.budgets import HOLD_LIFETIME, Budget, DailyBudgets, Reservation, Scope, Totals
from bot.store.redis import (
    PRUNE_BATCH,
    RedisConversationStore,
    RedisSettingsStore,
    RedisUsageStore,
)
from tests.redis_clients import redis_client
from tests.redis_server import RedisServer

ALICE, BOB = 1001, 1002
GUILD = 900_000_000_000_000_001
CHANNEL = 910_000_000_000_000_001
DAY = "2025-03-14"
START = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
NOW = START.timestamp()
RETENTION = timedelta(days=30)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with redis_client(redis_server.url) as client:
        yield client


def turn(
    prompt: str, *, user_id: int = ALICE, parent: Turn | None = None, age: timedelta | None = None
) -> NewTurn:
    return NewTurn(
        user_id=user_id,
        display_name="Alice" if user_id == ALICE else "Bob",
        guild_id=GUILD,
        channel_id=CHANNEL,
        private=False,
        prompt=prompt,
        answer=f"answer to {prompt}",
        model="gpt-4o-mini",
        prompt_tokens=3,
        answer_tokens=5,
        parent_id=None if parent is None else parent.id,
        created_at=START - (age or timedelta(0)),
    )


def hold(tokens: int, *, user_id: int = ALICE) -> Reservation:
    return Reservation(
        uuid.uuid4().hex, DAY, user_id, GUILD, tokens, NOW + HOLD_LIFETIME.total_seconds()
    )


async def test_every_key_expires_but_the_turn_ids_and_the_settings(client: Redis) -> None:
    usage = RedisUsageStore(client)
    conversations = RedisConversationStore(client, RETENTION)
    settings = RedisSettingsStore(client)
    await usage.add(DAY, ALICE, GUILD, 10)
    settling = hold(50)
    assert await usage.reserve(settling, 100, 1000, NOW) is None
    assert await usage.reserve(hold(20, user_id=BOB), 100, 1000, NOW) is None
    await usage.settle(settling, 40)
    # A settle that finds no hold leaves a mark, for a reserve it may have overtaken.
    await usage.settle(hold(5), 5)
    root = await conversations.save(turn("root"), [1])
    child = await conversations.save(turn("child", user_id=BOB, parent=root), [2])
    assert await conversations.add_messages(child.id, [3])
    await settings.set_model(GUILD, "gpt-4o", by=ALICE)

    lifetimes = {key.decode(): await client.pttl(key) async for key in client.scan_iter()}
    forever = {key for key, left in lifetimes.items() if left < 0}
    # The id counter must never expire, or ids would be handed out again; settings are
    # kept until an admin resets them.
    assert forever == {
        "askbot:turns:next",
        f"askbot:settings:{GUILD}",
        f"askbot:settings:{GUILD}:by",
    }
    day = timedelta(days=2) // timedelta(milliseconds=1)
    retention = RETENTION // timedelta(milliseconds=1)
    for key, left in lifetimes.items():
        if key.startswith(("askbot:holds:", "askbot:settled:")):
            assert 0 < left <= HOLD_LIFETIME // timedelta(milliseconds=1) + 1, key
        elif key.startswith("askbot:usage:"):
            assert day - 3_600_000 < left <= day, key
        elif key not in forever:
            assert retention - 3_600_000 < left <= retention, key
    # Bob's hold is still there; Alice's was settled and left her holds set empty, so gone.
    assert f"askbot:holds:{DAY}:user:{BOB}" in lifetimes
    assert f"askbot:holds:{DAY}:user:{ALICE}" not in lifetimes
    assert "askbot:message:3" in lifetimes
    assert any(key.startswith("askbot:settled:") for key in lifetimes)


async def test_a_settle_that_overtakes_its_reserve_still_frees_the_hold(client: Redis) -> None:
    # A cancelled ask gives its hold back with settle(0) on another connection, which can
    # reach Redis before the reserve that was already on its way.
    usage = RedisUsageStore(client)
    overtaken = hold(100)
    await usage.settle(overtaken, 0)
    await usage.reserve(overtaken, 100, None, NOW)
    assert await usage.reserve(hold(100), 100, None, NOW) is None
    assert await usage.totals(DAY, ALICE, GUILD) == Totals(user=0, guild=0)


async def test_without_a_retention_turns_never_expire(client: Redis) -> None:
    store = RedisConversationStore(client, None)
    saved = await store.save(turn("kept"), [1])
    assert await client.pttl(f"askbot:turn:{saved.id}") == -1
    assert await client.pttl("askbot:message:1") == -1
    with pytest.raises(ValueError, match="retention"):
        RedisConversationStore(client, timedelta(0))


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_the_stores_work_whether_or_not_the_client_decodes(
    redis_server: RedisServer, decode_responses: bool
) -> None:
    async with redis_client(redis_server.url, decode_responses=decode_responses) as client:
        usage = RedisUsageStore(client)
        first = hold(60)
        assert await usage.reserve(first, 100, None, NOW) is None
        assert await usage.reserve(hold(60), 100, None, NOW) is None
        assert await usage.reserve(hold(1), 100, None, NOW) is Scope.USER
        await usage.settle(first, 25)
        assert await usage.totals(DAY, ALICE, GUILD) == Totals(user=25, guild=25)
        assert await usage.totals(DAY, ALICE, None) == Totals(user=25, guild=0)
        assert await usage.prune(before="2025-03-15") == 3  # two counts and one hold

        conversations = RedisConversationStore(client, RETENTION)
        root = await conversations.save(replace(turn("ünïcode 【】"), guild_id=None), [7])
        child = await conversations.save(turn("child", parent=root), [8])
        assert await conversations.chain(child.id, 10) == [root, child]
        assert await conversations.turn_for_message(7) == root
        assert await conversations.forget_user(ALICE) == 2

        settings = RedisSettingsStore(client)
        await settings.set_prompt(GUILD, CHANNEL, "ünïcode", by=ALICE)
        assert await settings.server(GUILD) == ServerSettings(channel_prompts={CHANNEL: "ünïcode"})
        assert await settings.reset(GUILD, by=ALICE) == 1


async def test_closing_a_store_leaves_the_shared_client_open(client: Redis) -> None:
    usage = RedisUsageStore(client)
    conversations = RedisConversationStore(client, RETENTION)
    await usage.close()
    await conversations.close()
    await RedisSettingsStore(client).close()
    assert await client.ping()
    await usage.add(DAY, ALICE, GUILD, 1)
    assert await usage.totals(DAY, ALICE, GUILD) == Totals(user=1, guild=1)


async def test_a_parent_lost_to_expiry_ends_the_chain(client: Redis) -> None:
    store = RedisConversationStore(client, RETENTION)
    root = await store.save(turn("root", age=timedelta(days=3)), [1])
    middle = await store.save(turn("middle", parent=root, age=timedelta(days=2)), [2])
    last = await store.save(turn("last", parent=middle, age=timedelta(days=1)), [3])
    # As Redis expiring the root's keys would leave it (its hash and message key gone).
    await client.delete(f"askbot:turn:{root.id}", "askbot:message:1")

    assert await store.chain(last.id, 50) == [replace(middle, parent_id=None), last]
    # Stopping at the most asked for still says whether the parent above is there.
    assert await store.chain(middle.id, 1) == [replace(middle, parent_id=None)]
    assert await store.chain(last.id, 1) == [last]
    assert await store.turn(middle.id) == replace(middle, parent_id=None)
    assert await store.turn_for_message(1) is None
    # A follow-up to the expired turn starts afresh.
    again = await store.save(turn("again", parent=root), [4])
    assert again.parent_id is None
    # Only what was still there counts as pruned.
    assert await store.prune(START - timedelta(hours=36)) == 1
    assert await store.chain(last.id, 50) == [replace(last, parent_id=None)]


async def test_prefixes_keep_two_deployments_apart(client: Redis) -> None:
    ours = RedisConversationStore(client, RETENTION, prefix="one:")
    theirs = RedisConversationStore(client, RETENTION, prefix="two:")
    saved = await ours.save(turn("ours"), [1])
    other = await theirs.save(turn("theirs"), [1])
    assert await ours.turn_for_message(1) == saved
    assert await theirs.turn_for_message(1) == other
    assert await theirs.forget_user(ALICE) == 1
    assert await ours.turn(saved.id) == saved

    usage = RedisUsageStore(client, prefix="one:")
    await usage.add(DAY, ALICE, GUILD, 5)
    assert await RedisUsageStore(client, prefix="two:").totals(DAY, ALICE, GUILD) == Totals(0, 0)


async def test_a_prune_of_many_turns_deletes_them_all_in_batches(client: Redis) -> None:
    store = RedisConversationStore(client, RETENTION)
    count = PRUNE_BATCH * 2 + 7
    parent: Turn | None = None
    for number in range(count):
        parent = await store.save(turn(f"q{number}", parent=parent, age=timedelta(days=40)))
    kept = await store.save(turn("kept", parent=parent))
    assert await store.prune(START - timedelta(days=30)) == count
    assert await store.chain(kept.id, 50) == [replace(kept, parent_id=None)]


class CountingConnection(Connection):
    """redis-py's own connection, counting what it sends: each send is one round trip, as a
    pipeline's commands go in one send."""

    sent: ClassVar[int] = 0

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


async def round_trips(call: Callable[[], Awaitable[object]]) -> int:
    await call()  # once first, so the connection is made and the script loaded
    before = CountingConnection.sent
    await call()
    return CountingConnection.sent - before


@pytest.fixture
async def counted(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client whose connections count what they send."""
    async with redis_client(redis_server.url, connection_class=CountingConnection) as client:
        yield client


async def test_each_call_is_one_round_trip(counted: Redis) -> None:
    client = counted
    usage = RedisUsageStore(client)
    conversations = RedisConversationStore(client, RETENTION)
    settings = RedisSettingsStore(client)
    parent = await conversations.save(turn("root"), [1])
    for number in range(30):
        parent = await conversations.save(turn(f"q{number}", parent=parent), [10 + number])
    last = parent

    async def reserve_and_settle() -> None:
        reservation = hold(1)
        assert await usage.reserve(reservation, 10**9, 10**9, NOW) is None
        await usage.settle(reservation, 1)

    assert await round_trips(lambda: usage.add(DAY, ALICE, GUILD, 1)) == 1
    assert await round_trips(lambda: usage.totals(DAY, ALICE, GUILD)) == 1
    assert await round_trips(reserve_and_settle) == 2
    assert await round_trips(lambda: usage.prune("2025-03-01", NOW)) == 1
    assert await round_trips(lambda: conversations.save(turn("q"), [99, 98])) == 1
    assert await round_trips(lambda: conversations.chain(last.id, 50)) == 1
    assert await round_trips(lambda: conversations.turn_for_message(39)) == 1
    assert await round_trips(lambda: conversations.add_messages(last.id, [5])) == 1
    assert await round_trips(lambda: settings.server(GUILD)) == 1
    assert await round_trips(lambda: settings.set_model(GUILD, "m", by=1)) == 1
    assert await round_trips(lambda: settings.reset(GUILD, by=1)) == 1
    assert await round_trips(lambda: conversations.forget_user(BOB)) == 1


async def test_the_stores_work_again_once_redis_returns_and_ids_still_grow(
    own_redis: RedisServer,
) -> None:
    async with redis_client(own_redis.url) as client:
        usage = RedisUsageStore(client)
        conversations = RedisConversationStore(client, RETENTION)
        assert await usage.reserve(hold(10), 100, None, NOW) is None
        before = await conversations.save(turn("before"))
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await usage.reserve(hold(10), 100, None, NOW)
        # Back empty, without the scripts it had loaded: the same stores load them again.
        own_redis.start()
        assert await usage.reserve(hold(10), 100, None, NOW) is None
        saved = await conversations.save(turn("after"), [1])
        assert await conversations.turn_for_message(1) == saved
        # Its data lost, Redis still never hands out an id an old button may carry.
        assert saved.id > before.id


async def test_a_cancelled_reservation_gives_its_hold_back(
    redis_server: RedisServer, client: Redis
) -> None:
    budgets = DailyBudgets(RedisUsageStore(client), Budget(user_daily_tokens=100))
    noon = datetime(2025, 3, 14, 12, tzinfo=UTC)
    assert (await budgets.reserve(ALICE, GUILD, 1, noon)).allowed  # scripts loaded
    async with redis_client(redis_server.url, decode_responses=True) as admin:
        # Redis holds every write back, so the reservation is under way, sent but not run,
        # when the ask is cancelled (say by a shutdown).
        await admin.client_pause(60_000, all=False)  # writes only
        try:
            reserving = asyncio.create_task(budgets.reserve(ALICE, GUILD, 1100, noon))
            async with asyncio.timeout(10):  # a guard against a hang, not a measurement
                while not any(
                    entry["cmd"] == "evalsha" and "b" in entry["flags"]
                    for entry in await admin.client_list()
                ):
                    pass
            reserving.cancel()
        finally:
            await admin.client_unpause()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    # Whatever reached Redis first, nothing of the cancelled ask's 1100 tokens is held.
    assert (await budgets.reserve(ALICE, GUILD, 99, noon)).allowed
    assert not (await budgets.reserve(ALICE, GUILD, 1, noon)).allowed
