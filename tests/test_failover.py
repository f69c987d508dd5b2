"""Redis taken away from the stores and given back: nothing fails, and sharing resumes.

The stores are built exactly as `python -m bot` builds them with REDIS_URL set
(`make_redis` and `shared_stores` from validated settings), on a real Redis server that
each test stops and starts again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as redis

from bot.config import load_settings
from bot.conversation.settings import ServerSettings, SettingsUnavailable
from bot.conversation.turns import NewTurn
from bot.fair_use.budgets import Reservation
from bot.fair_use.user_limits import UserRefusal
from bot.metrics import Metrics
from bot.store.failover import SHARED_TURN_IDS, Failover
from bot.store.sqlite import SqliteDatabase
from bot.store.stores import Stores, make_redis, shared_stores
from tests.redis_server import RedisServer

ALICE, BOB = 1001, 1002
GUILD = 900_000_000_000_000_001
DAY = "2025-03-14"
NOW = datetime(2025, 3, 14, 12, tzinfo=UTC).timestamp()


@dataclass
class Shared:
    stores: Stores
    failover: Failover
    metrics: Metrics
    server: RedisServer
    client: redis.Redis


@pytest.fixture
async def shared(own_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Shared]:
    settings = load_settings(
        {
            "DISCORD_TOKEN": "t",
            "REDIS_URL": own_redis.url,
            "REDIS_TIMEOUT": "2",
            "MAX_ASKS_PER_USER": "1",
            "ASK_COOLDOWN": "5/60",
        }
    )
    database = await SqliteDatabase.open(tmp_path)
    client = make_redis(settings)
    metrics = Metrics()
    # Quick probes, so a test waits on Redis's return for moments, not seconds.
    stores = shared_stores(settings, client, database, metrics, retry_seconds=0.02)
    assert stores.failover is not None
    yield Shared(stores, stores.failover, metrics, own_redis, client)
    await stores.failover.aclose()
    await client.aclose()
    await database.close()


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def reservation(hold_id: str, user_id: int = ALICE, tokens: int = 100) -> Reservation:
    return Reservation(hold_id, DAY, user_id, GUILD, tokens, NOW + 1200)


def new_turn(parent_id: int | None = None, prompt: str = "Hello?") -> NewTurn:
    return NewTurn(
        user_id=ALICE,
        display_name="Alice",
        guild_id=GUILD,
        channel_id=5,
        private=False,
        prompt=prompt,
        answer="Hi.",
        model="m",
        prompt_tokens=3,
        answer_tokens=2,
        parent_id=parent_id,
        created_at=datetime.now(UTC),
    )


async def test_every_store_keeps_working_while_redis_is_away_and_shares_again_after(
    shared: Shared, caplog: pytest.LogCaptureFixture
) -> None:
    stores, failover = shared.stores, shared.failover
    caplog.set_level(logging.INFO, logger="bot.store.failover")
    assert await stores.usage.reserve(reservation("before"), 1000, None, NOW) is None
    await stores.usage.settle(reservation("before"), 300)
    assert await shared.client.exists(f"askbot:usage:{DAY}:user:{ALICE}")
    assert gauge(shared.metrics, "bot_redis_up") == 1

    shared.server.stop()
    # Nothing fails: each call is answered by this process's own stores.
    assert await stores.usage.reserve(reservation("during"), 1000, None, NOW) is None
    await stores.usage.settle(reservation("during"), 50)
    assert (await stores.usage.totals(DAY, ALICE, GUILD)).user == 50
    slot = await stores.user_limits.admit(ALICE)
    assert not isinstance(slot, UserRefusal)
    assert await stores.user_limits.admit(ALICE) == UserRefusal("too_many")
    await slot.release()
    saved = await stores.conversations.save(new_turn())
    assert await stores.settings.server(GUILD) == ServerSettings()
    with pytest.raises(SettingsUnavailable):
        await stores.settings.set_model(GUILD, "m", by=ALICE)
    await stores.identify_turns.wait_turn(0)

    assert not failover.shared
    assert gauge(shared.metrics, "bot_redis_up") == 0
    fallbacks = gauge(shared.metrics, "bot_redis_fallbacks_total")
    assert fallbacks is not None
    assert fallbacks >= 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one line for the outage, not one per call"
    assert f"127.0.0.1:{shared.server.port} is unreachable" in warnings[0].getMessage()

    shared.server.start()
    await failover.until_shared()
    assert gauge(shared.metrics, "bot_redis_up") == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    # Shared again: the usage lands in Redis (which restarted empty).
    assert await stores.usage.reserve(reservation("after"), 1000, None, NOW) is None
    await stores.usage.settle(reservation("after"), 20)
    assert int(await shared.client.get(f"askbot:usage:{DAY}:user:{ALICE}") or 0) == 20
    await stores.settings.set_model(GUILD, "m", by=ALICE)
    assert (await stores.settings.server(GUILD)).model == "m"
    # A conversation started meanwhile continues in the local store.
    assert saved.id < SHARED_TURN_IDS
    child = await stores.conversations.save(new_turn(saved.id, "And then?"))
    assert child.parent_id == saved.id
    chain = await stores.conversations.chain(child.id, 10)
    assert [turn.prompt for turn in chain] == ["Hello?", "And then?"]
    fresh = await stores.conversations.save(new_turn())
    assert fresh.id >= SHARED_TURN_IDS


async def test_a_hold_taken_in_redis_settles_locally_when_redis_went_away(
    shared: Shared,
) -> None:
    stores = shared.stores
    assert await stores.usage.reserve(reservation("held"), 1000, None, NOW) is None
    slot = await stores.user_limits.admit(BOB)
    assert not isinstance(slot, UserRefusal)
    shared.server.stop()
    # Given back without an error; Redis's copies expire by themselves.
    await stores.usage.settle(reservation("held"), 70)
    await slot.release()
    assert (await stores.usage.totals(DAY, ALICE, GUILD)).user == 70


async def test_turns_found_by_message_in_either_store(shared: Shared) -> None:
    stores = shared.stores
    in_redis = await stores.conversations.save(new_turn(), [111])
    shared.server.stop()
    local = await stores.conversations.save(new_turn(prompt="Meanwhile"), [222])
    shared.server.start()
    await shared.failover.until_shared()
    found = await stores.conversations.turn_for_message(222)
    assert found is not None
    assert found.id == local.id
    # Redis restarted empty (no persistence here): its turn is gone, not mistaken.
    assert await stores.conversations.turn_for_message(111) is None
    assert await stores.conversations.turn(in_redis.id) is None
