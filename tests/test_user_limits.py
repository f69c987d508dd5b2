"""Per-user limits (cooldown and asks in flight), in memory and in Redis, by the same tests.

The Redis ones are checked on a real Redis server, with several clients standing in for
several bot processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Literal

import pytest
import redis.asyncio as redis

from bot.discord_app.identify import LocalIdentifyTurns
from bot.fair_use.limits import Cooldown, CooldownSpec, PerUserCap
from bot.fair_use.user_limits import LocalUserLimits, UserLimits, UserRefusal, UserSlot
from bot.store.redis_limits import (
    SLOT_LIFETIME,
    RedisIdentifyTurns,
    RedisShardClaims,
    RedisUserLimits,
)
from tests.redis_server import RedisServer

ALICE, BOB = 1001, 1002

MakeLimits = Callable[[CooldownSpec | None, int], UserLimits]
"""Another set of limits sharing the same state (another process, for Redis)."""


@pytest.fixture(params=["memory", "redis"])
async def make_limits(request: pytest.FixtureRequest) -> AsyncIterator[MakeLimits]:
    kind: Literal["memory", "redis"] = request.param
    clients: list[redis.Redis] = []
    local: dict[tuple[CooldownSpec | None, int], LocalUserLimits] = {}
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")

    def make(cooldown: CooldownSpec | None, cap: int) -> UserLimits:
        if kind == "memory":
            # One process: the same limits object.
            key = (cooldown, cap)
            if key not in local:
                local[key] = LocalUserLimits(
                    Cooldown(cooldown) if cooldown else None, PerUserCap(cap)
                )
            return local[key]
        client = redis.Redis.from_url(server.url)
        clients.append(client)
        return RedisUserLimits(client, cooldown, cap)

    yield make
    for client in clients:
        await client.aclose()


async def admitted(limits: UserLimits, user_id: int = ALICE) -> UserSlot:
    slot = await limits.admit(user_id)
    assert not isinstance(slot, UserRefusal), slot
    return slot


async def test_the_cap_refuses_a_third_ask_in_flight_until_one_ends(
    make_limits: MakeLimits,
) -> None:
    first, second = make_limits(None, 2), make_limits(None, 2)
    one = await admitted(first)
    await admitted(second)
    assert await first.admit(ALICE) == UserRefusal("too_many")
    assert await second.admit(ALICE) == UserRefusal("too_many")
    # Someone else is not affected.
    await admitted(second, BOB)
    await one.release()
    await admitted(second)


async def test_the_cooldown_refuses_with_the_wait_and_does_not_count_refusals(
    make_limits: MakeLimits,
) -> None:
    spec = CooldownSpec(2, 60)
    first, second = make_limits(spec, 5), make_limits(spec, 5)
    await (await admitted(first)).release()
    await (await admitted(second)).release()
    refused = await first.admit(ALICE)
    assert isinstance(refused, UserRefusal)
    assert refused.kind == "cooldown"
    assert 0 < refused.retry_after <= 60
    again = await second.admit(ALICE)
    assert isinstance(again, UserRefusal)
    # Asking while refused does not push the wait further out.
    assert again.retry_after <= refused.retry_after
    await admitted(first, BOB)


async def test_a_withdrawn_ask_does_not_count_against_the_cooldown(
    make_limits: MakeLimits,
) -> None:
    limits = make_limits(CooldownSpec(1, 60), 2)
    slot = await admitted(limits)
    await slot.withdraw()
    # Withdrawing twice, or after it, changes nothing.
    await slot.withdraw()
    await slot.release()
    ran = await admitted(limits)
    await ran.release()
    refused = await limits.admit(ALICE)
    assert isinstance(refused, UserRefusal)
    assert refused.kind == "cooldown"


async def test_a_release_is_given_back_once(make_limits: MakeLimits) -> None:
    limits = make_limits(None, 1)
    slot = await admitted(limits)
    await slot.release()
    await slot.release()
    other = await admitted(limits)
    assert await limits.admit(ALICE) == UserRefusal("too_many")
    await other.release()


async def test_racing_asks_never_take_more_places_than_the_cap(make_limits: MakeLimits) -> None:
    processes = [make_limits(CooldownSpec(5, 60), 3) for _ in range(4)]
    results = await asyncio.gather(*(processes[index % 4].admit(ALICE) for index in range(20)))
    slots = [result for result in results if not isinstance(result, UserRefusal)]
    assert len(slots) == 3
    assert {result.kind for result in results if isinstance(result, UserRefusal)} == {"too_many"}
    for slot in slots:
        await slot.release()
    # The cooldown counted exactly the three that ran: two more fit in its window.
    await admitted(processes[0])
    await admitted(processes[1])
    refused = await processes[2].admit(ALICE)
    assert isinstance(refused, UserRefusal)
    assert refused.kind == "cooldown"


async def test_redis_keys_expire_by_themselves(redis_server: RedisServer) -> None:
    async with redis.Redis.from_url(redis_server.url) as client:
        limits = RedisUserLimits(client, CooldownSpec(3, 30), 2)
        await admitted(limits)
        keys = await client.keys("*")
        assert sorted(keys) == [b"askbot:asks:1001", b"askbot:cooldown:1001"]
        # A place whose process died lapses after an ask's longest life; the cooldown
        # after its window.
        assert 0 < await client.pttl("askbot:asks:1001") <= SLOT_LIFETIME * 1000
        assert 0 < await client.pttl("askbot:cooldown:1001") <= 30_000


async def test_identify_turns_are_taken_one_per_bucket_across_processes(
    redis_server: RedisServer,
) -> None:
    async with (
        redis.Redis.from_url(redis_server.url) as first_client,
        redis.Redis.from_url(redis_server.url) as second_client,
    ):
        first = RedisIdentifyTurns(first_client, window=30.0)
        second = RedisIdentifyTurns(second_client, window=30.0)
        await first.wait_turn(0)
        # Another bucket is free at once, even though bucket 0's window runs.
        await second.wait_turn(1)
        assert await first_client.pttl("askbot:identify:0") > 0
        # Within a bucket the next turn waits for the window (a short one here).
        quick_first = RedisIdentifyTurns(first_client, window=1.0)
        quick_second = RedisIdentifyTurns(second_client, window=1.0)
        await quick_first.wait_turn(2)
        waiting = asyncio.create_task(quick_second.wait_turn(2))
        await asyncio.sleep(0)
        await first_client.ping()
        assert not waiting.done()
        await waiting
        # Its own turn holds the bucket for the next one.
        assert await first_client.pttl("askbot:identify:2") > 0


async def test_local_identify_turns_let_other_buckets_through() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    turns = LocalIdentifyTurns(clock=lambda: now[0], sleep=sleep)
    await turns.wait_turn(0)
    await turns.wait_turn(1)
    assert slept == [], "another bucket's turn is free at once"
    await turns.wait_turn(0)
    assert slept == [pytest.approx(5.25)], "the same bucket waits for the window"
    now[0] += 10
    await turns.wait_turn(1)
    assert len(slept) == 1, "a window that has passed costs no wait"


async def test_a_shard_claimed_by_one_process_waits_in_another_until_given_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        redis.Redis.from_url(redis_server.url) as first_client,
        redis.Redis.from_url(redis_server.url) as second_client,
    ):
        first = RedisShardClaims(first_client, lifetime=0.6)
        second = RedisShardClaims(second_client, lifetime=0.6)
        await first.claim(0, 2)
        # Claiming again is harmless; another shard (or count) is free at once.
        await first.claim(0, 2)
        await second.claim(1, 2)
        await second.claim(0, 3)
        waiting = asyncio.create_task(second.claim(0, 2))
        await asyncio.sleep(0)
        await first_client.ping()
        assert not waiting.done()
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "shard 0 of 2 is run by another process" in warning.getMessage()
        assert str(os.getpid()) in warning.getMessage()

        await first.release_all()
        await waiting
        assert await second_client.get("askbot:shard:2:0") == await second_client.get(
            "askbot:shard:2:1"
        )
        await second.release_all()
        assert await second_client.keys("askbot:shard:*") == []
