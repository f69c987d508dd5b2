"""The local Discord with a sharded bot: recommended shards and IDENTIFY concurrency from
/gateway/bot, the IDENTIFY rate limit (op 9), 4010 and 4011, guilds placed on a shard,
READY, GUILD_CREATE and events going only to the shard that owns a guild, dropped events,
and real discord.py AutoShardedClients on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord import (
    IDENTIFY_WINDOW,
    MAX_GUILDS_PER_SHARD,
    FakeDiscord,
    Undelivered,
    guild_id_on_shard,
    shard_of,
)
from tests.fakes.discord.plugin import running_fake

WHERE: dict[str, object] = {"name": "where", "description": "Which client answers", "type": 1}
GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
INTENTS = GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Shard:
    """One raw gateway connection (plain JSON frames, no compression)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def frame(self) -> dict[str, Any]:
        message = await self.ws.receive()
        assert message.type is aiohttp.WSMsgType.TEXT, message
        decoded: dict[str, Any] = json.loads(message.data)
        return decoded

    async def event(self) -> tuple[str, dict[str, Any]]:
        """The next DISPATCH, skipping heartbeat acks."""
        while True:
            frame = await self.frame()
            if frame["op"] == 0:
                return frame["t"], frame["d"]

    async def identify(self, fake: FakeDiscord, shard: Sequence[int] | None) -> dict[str, Any]:
        """Send IDENTIFY; returns the first frame after it (READY, op 9 or a close)."""
        data: dict[str, Any] = {"token": fake.token, "intents": INTENTS, "properties": {}}
        if shard is not None:
            data["shard"] = list(shard)
        await self.ws.send_json({"op": 2, "d": data})
        message = await self.ws.receive()
        if message.type is aiohttp.WSMsgType.CLOSE:
            return {"close": message.data}
        decoded: dict[str, Any] = json.loads(message.data)
        return decoded


@asynccontextmanager
async def connected(http: aiohttp.ClientSession, fake: FakeDiscord) -> AsyncIterator[Shard]:
    async with asyncio.timeout(10), http.ws_connect(f"{fake.gateway_url}?v=10") as ws:
        shard = Shard(ws)
        hello = await shard.frame()
        assert hello["op"] == 10
        yield shard


async def ready_guilds(shard: Shard, ready: dict[str, Any]) -> tuple[set[int], set[int]]:
    """The guild ids in READY and in the GUILD_CREATEs that follow it."""
    assert ready["t"] == "READY", ready
    listed = {int(guild["id"]) for guild in ready["d"]["guilds"]}
    assert all(guild["unavailable"] for guild in ready["d"]["guilds"])
    created = set()
    for _ in listed:
        name, data = await shard.event()
        assert name == "GUILD_CREATE"
        created.add(int(data["id"]))
    return listed, created


def on_shard(fake: FakeDiscord, shard_id: int, shard_count: int) -> set[int]:
    return {g for g in fake.guild_ids if shard_of(g, shard_count) == shard_id}


# /gateway/bot


@pytest.mark.parametrize(("shards", "concurrency"), [(1, 1), (4, 2)])
async def test_gateway_bot_says_the_recommended_shards_and_identify_concurrency(
    http: aiohttp.ClientSession, shards: int, concurrency: int
) -> None:
    settings = {} if shards == 1 else {"recommended_shards": shards}
    if concurrency != 1:
        settings["max_concurrency"] = concurrency
    async with running_fake(**settings) as fake:
        headers = {"Authorization": f"Bot {fake.token}"}
        async with http.get(fake.api_url + "/gateway/bot", headers=headers) as response:
            assert response.status == 200
            body = await response.json()
    assert body["url"] == fake.gateway_url.rstrip("/")
    assert body["shards"] == shards
    assert body["session_start_limit"]["max_concurrency"] == concurrency


async def test_discord_py_reads_the_limits_the_fake_reports() -> None:
    async with running_fake(recommended_shards=3, max_concurrency=16) as fake:
        client = discord.AutoShardedClient(intents=discord.Intents.none())
        try:
            await client.login(fake.token)
            limits = await client.fetch_session_start_limits()
            count, _, _ = await client.http.get_bot_gateway()
        finally:
            await client.close()
    assert (count, limits.max_concurrency) == (3, 16)


# The IDENTIFY rate limit


async def test_a_second_identify_in_one_bucket_within_the_window_is_invalid_session(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake() as fake:
        async with connected(http, fake) as first:
            assert (await first.identify(fake, [0, 2]))["t"] == "READY"
            async with connected(http, fake) as second:
                refused = await second.identify(fake, [1, 2])
                assert (refused["op"], refused["d"]) == (9, False)
                assert fake.gateway.identify_rate_limited == [1]
            fake.clock.advance(IDENTIFY_WINDOW)
            async with connected(http, fake) as third:
                assert (await third.identify(fake, [1, 2]))["t"] == "READY"
        assert fake.gateway.identify_rate_limited == [1]
        assert [identify["shard"] for identify in fake.gateway.identifies] == [[0, 2], [1, 2]]


async def test_identify_buckets_are_the_shard_id_modulo_max_concurrency(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(max_concurrency=2, identify_window=60.0) as fake:
        async with connected(http, fake) as zero, connected(http, fake) as one:
            assert (await zero.identify(fake, [0, 4]))["t"] == "READY"
            assert (await one.identify(fake, [1, 4]))["t"] == "READY"
            async with connected(http, fake) as two:
                refused = await two.identify(fake, [2, 4])  # bucket 0 again
                assert refused["op"] == 9
        assert fake.gateway.identify_rate_limited == [2]


async def test_the_window_is_the_fakes_setting_on_its_clock(http: aiohttp.ClientSession) -> None:
    async with running_fake(identify_window=30.0) as fake:
        async with connected(http, fake) as first:
            assert (await first.identify(fake, None))["t"] == "READY"
        fake.clock.advance(29.0)
        async with connected(http, fake) as early:
            assert (await early.identify(fake, None))["op"] == 9
        fake.clock.advance(1.0)
        async with connected(http, fake) as later:
            assert (await later.identify(fake, None))["t"] == "READY"
        assert fake.gateway.identify_rate_limited == [0]


# Invalid shards and sharding required


@pytest.mark.parametrize("shard", [[2, 2], [-1, 2], [0, 0], [0], "0,1"])
async def test_an_invalid_shard_closes_with_4010(http: aiohttp.ClientSession, shard: Any) -> None:
    async with running_fake() as fake, connected(http, fake) as ws:
        data = {"token": fake.token, "intents": INTENTS, "properties": {}, "shard": shard}
        await ws.ws.send_json({"op": 2, "d": data})
        message = await ws.ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert ws.ws.close_code == 4010
        assert fake.gateway.identifies == []


async def test_too_many_guilds_for_the_shards_closes_with_4011(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(max_concurrency=16) as fake:
        for _ in range(MAX_GUILDS_PER_SHARD):
            fake.add_guild()
        assert len(fake.guild_ids) == MAX_GUILDS_PER_SHARD + 1
        for shard in (None, [0, 1]):
            async with connected(http, fake) as ws:
                closed = await ws.identify(fake, shard)
                assert "close" in closed
                assert ws.ws.close_code == 4011
        async with connected(http, fake) as ws:
            ready = await ws.identify(fake, [1, 2])
            assert ready["t"] == "READY"
            listed = {int(guild["id"]) for guild in ready["d"]["guilds"]}
            assert listed == on_shard(fake, 1, 2)
        assert fake.gateway.server_close_codes.count(4011) == 2


async def test_sessions_with_different_shard_counts_may_run_together_while_resharding(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(max_concurrency=16) as fake:
        fake.add_guild_on_shard(1, 3)
        async with connected(http, fake) as old, connected(http, fake) as new:
            assert (await old.identify(fake, [0, 2]))["t"] == "READY"
            ready = await new.identify(fake, [1, 3])
            assert ready["t"] == "READY"
            assert ready["d"]["shard"] == [1, 3]
            await fake.shard_ready(1, 3)
            assert fake.gateway.connected_shards() == {(0, 2), (1, 3)}


# Guilds on a chosen shard


@pytest.mark.parametrize("shard_count", [1, 2, 3, 16])
def test_guild_ids_land_on_the_shard_asked_for_and_stay_realistic(shard_count: int) -> None:
    fake = FakeDiscord(spec_path=None)
    previous = fake.guild_id
    for shard_id in [*range(shard_count), 0]:
        guild_id = guild_id_on_shard(shard_id, shard_count, previous)
        assert shard_of(guild_id, shard_count) == shard_id
        assert guild_id > previous > 2**22
        # Its creation time is at most shard_count milliseconds after the one before.
        assert 0 < (guild_id >> 22) - (previous >> 22) <= shard_count
        previous = guild_id


def test_add_guild_on_shard_makes_a_usable_guild_with_increasing_ids() -> None:
    fake = FakeDiscord(commands=[WHERE], spec_path=None)
    one = fake.add_guild_on_shard(1, 2, name="Shard One")
    zero = fake.add_guild_on_shard(0, 2, name="Shard Zero")
    assert (shard_of(one, 2), shard_of(zero, 2)) == (1, 0)
    assert fake.guild_id < one < zero
    assert fake.guild_ids == [fake.guild_id, one, zero]
    channel_id = fake.guild_channel_id(one)
    assert one < channel_id < zero  # later snowflakes still sort after a shard-placed id
    payload = fake.dispatch_interaction("where", channel_id=channel_id).payload
    assert payload["guild_id"] == str(one)
    assert payload["member"]["user"]["id"] == str(fake.user.id)
    with pytest.raises(ValueError, match="no shard"):
        fake.add_guild_on_shard(2, 2)


# Routing by shard


async def test_each_shard_gets_only_its_guilds_and_their_events(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[WHERE], max_concurrency=2) as fake:
        for shard_id in (0, 1, 0, 1):
            fake.add_guild_on_shard(shard_id, 2)
        zero_guilds, one_guilds = on_shard(fake, 0, 2), on_shard(fake, 1, 2)
        async with connected(http, fake) as zero, connected(http, fake) as one:
            assert await ready_guilds(zero, await zero.identify(fake, [0, 2])) == (
                zero_guilds,
                zero_guilds,
            )
            assert await ready_guilds(one, await one.identify(fake, [1, 2])) == (
                one_guilds,
                one_guilds,
            )
            in_one = min(one_guilds)
            in_zero = min(zero_guilds)

            handle = fake.dispatch_interaction("where", channel_id=fake.guild_channel_id(in_one))
            assert handle.delivered
            to_zero = fake.post_message(fake.user, "hi", channel_id=fake.guild_channel_id(in_zero))
            to_one = fake.post_message(fake.user, "hi", channel_id=fake.guild_channel_id(in_one))
            dm = fake.post_message(fake.user, "a dm", channel_id=fake.dm_channel_id())

            # Each connection's events arrive in order: what it did not get never shows up
            # before what it did.
            name, data = await one.event()
            assert (name, data["id"]) == ("INTERACTION_CREATE", str(handle.id))
            name, data = await one.event()
            assert (name, data["id"], data["guild_id"]) == (
                "MESSAGE_CREATE",
                str(to_one.id),
                str(in_one),
            )
            name, data = await zero.event()
            assert (name, data["id"], data["guild_id"]) == (
                "MESSAGE_CREATE",
                str(to_zero.id),
                str(in_zero),
            )
            name, data = await zero.event()
            assert (name, data["id"], "guild_id" in data) == ("MESSAGE_CREATE", str(dm.id), False)

            # A guild joined now is announced on its shard only.
            joined = fake.add_guild_on_shard(1, 2, name="Joined")
            later = fake.post_message(fake.user, "hi", channel_id=fake.guild_channel_id(in_zero))
            name, data = await one.event()
            assert (name, data["id"], data["name"]) == ("GUILD_CREATE", str(joined), "Joined")
            name, data = await zero.event()
            assert (name, data["id"]) == ("MESSAGE_CREATE", str(later.id))
        assert fake.gateway.dropped == []


async def test_events_of_a_shard_nobody_runs_are_dropped_and_say_so(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[WHERE]) as fake:
        orphan = fake.add_guild_on_shard(1, 2)
        async with connected(http, fake) as zero:
            ready = await zero.identify(fake, [0, 2])
            assert orphan not in {int(guild["id"]) for guild in ready["d"]["guilds"]}
            handle = fake.dispatch_interaction("where", channel_id=fake.guild_channel_id(orphan))
            assert not handle.delivered
            with pytest.raises(Undelivered, match="dropped"):
                await handle.answered()
            with pytest.raises(Undelivered):
                await handle.acknowledged()
            assert [name for name, _ in fake.gateway.dropped] == ["INTERACTION_CREATE"]
            # The DM path still reaches shard 0.
            dm = fake.dispatch_interaction("where", dm=True)
            assert dm.delivered


async def test_connected_and_ready_shards_follow_the_connections(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(max_concurrency=4) as fake:
        assert fake.gateway.connected_shards() == set()
        async with connected(http, fake) as one:
            waiting = asyncio.create_task(fake.shard_ready(1, 2))
            assert not waiting.done()
            await one.identify(fake, [1, 2])
            await waiting
            assert fake.gateway.ready_shards() == {(1, 2)}
            async with connected(http, fake) as plain:
                await plain.identify(fake, None)
                await fake.shard_ready(0, 1)
                assert fake.gateway.connected_shards() == {(1, 2), (0, 1)}
            await fake.wait_for(lambda: fake.gateway.connected_shards() == {(1, 2)})
        await fake.wait_for(lambda: fake.gateway.connected_shards() == set())


# Real discord.py AutoShardedClients


class WhereBot(discord.AutoShardedClient):
    """Answers ``/where`` with its name; records which of its shards IDENTIFY when.

    Its identify hook models a well-behaved bot's wait for the IDENTIFY window: it never
    waits before a shard's first IDENTIFY, and before a retry it moves the fake's clock
    past the window instead of sleeping.
    """

    def __init__(
        self,
        fake: FakeDiscord,
        name: str,
        shard_ids: list[int] | None,
        shard_count: int | None = 2,
    ) -> None:
        # Without ids or a count, discord.py asks /gateway/bot how many shards to run.
        layout: dict[str, Any] = {}
        if shard_ids is not None:
            layout["shard_ids"] = shard_ids
        if shard_count is not None:
            layout["shard_count"] = shard_count
        super().__init__(
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.01,
            **layout,
        )
        self.fake = fake
        self.name = name
        self.tries: list[int] = []
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="where", description="Which client answers")
        async def where(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"{self.name} in {interaction.guild_id}")

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if shard_id in self.tries:
            self.fake.clock.advance(self.fake.gateway.identify_window)
        self.tries.append(shard_id if shard_id is not None else 0)


@asynccontextmanager
async def running_shards(
    client: WhereBot, fake: FakeDiscord, shard_ids: Sequence[int]
) -> AsyncIterator[WhereBot]:
    task = asyncio.create_task(client.start(fake.token))
    try:
        async with asyncio.timeout(10):
            for shard_id in shard_ids:
                ready = asyncio.create_task(fake.shard_ready(shard_id, 2))
                done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    ready.cancel()
                    task.result()
                    raise AssertionError("the client stopped before it was ready")
            await client.wait_until_ready()
        yield client
    finally:
        await client.close()
        await task
    assert fake.internal_errors == []


async def ask_where(fake: FakeDiscord, guild_id: int) -> str:
    handle = fake.dispatch_interaction("where", channel_id=fake.guild_channel_id(guild_id))
    answered = await handle.answered()
    assert answered is not None
    return answered.content


async def test_an_auto_sharded_client_runs_both_shards_and_retries_a_rate_limited_identify() -> (
    None
):
    # One IDENTIFY per window: shard 1 comes at once after shard 0, so it is told op 9
    # and discord.py identifies it again.
    async with running_fake(commands=[WHERE], identify_window=60.0) as fake:
        zero = fake.add_guild_on_shard(0, 2, name="Zero")
        one = fake.add_guild_on_shard(1, 2, name="One")
        client = WhereBot(fake, "both", [0, 1])
        async with running_shards(client, fake, [0, 1]):
            assert fake.gateway.identify_rate_limited == [1]
            assert client.tries == [0, 1, 1]
            assert fake.gateway.ready_shards() == {(0, 2), (1, 2)}
            assert {guild.id for guild in client.guilds} == set(fake.guild_ids)
            for guild_id in (zero, one):
                guild = client.get_guild(guild_id)
                assert guild is not None
                assert guild.shard_id == shard_of(guild_id, 2)
                assert [channel.name for channel in guild.text_channels] == ["general"]
                assert guild.default_role.id == guild_id
                assert guild.me is not None
                assert await ask_where(fake, guild_id) == f"both in {guild_id}"
        assert [identify["shard"] for identify in fake.gateway.identifies] == [[0, 2], [1, 2]]


async def test_two_clients_on_one_shard_each_see_and_answer_only_their_guilds() -> None:
    async with running_fake(commands=[WHERE], max_concurrency=2) as fake:
        zero = fake.add_guild_on_shard(0, 2, name="Zero")
        one = fake.add_guild_on_shard(1, 2, name="One")
        first, second = WhereBot(fake, "first", [0]), WhereBot(fake, "second", [1])
        async with running_shards(first, fake, [0]), running_shards(second, fake, [1]):
            assert {guild.id for guild in first.guilds} == on_shard(fake, 0, 2)
            assert {guild.id for guild in second.guilds} == on_shard(fake, 1, 2)
            assert await ask_where(fake, zero) == f"first in {zero}"
            assert await ask_where(fake, one) == f"second in {one}"
        # Each IDENTIFY had a bucket to itself: nobody was told to wait.
        assert fake.gateway.identify_rate_limited == []
        assert fake.gateway.dropped == []


async def test_an_auto_sharded_client_without_a_count_runs_the_recommended_shards() -> None:
    async with running_fake(commands=[WHERE], recommended_shards=2, max_concurrency=2) as fake:
        one = fake.add_guild_on_shard(1, 2)
        client = WhereBot(fake, "auto", None, None)
        async with running_shards(client, fake, [0, 1]):
            assert client.shard_count == 2
            assert fake.gateway.ready_shards() == {(0, 2), (1, 2)}
            assert await ask_where(fake, one) == f"auto in {one}"
        assert fake.gateway.identify_rate_limited == []


async def test_a_new_role_is_announced_in_every_guild_on_its_shard(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(max_concurrency=2) as fake:
        fake.add_guild_on_shard(0, 2)
        fake.add_guild_on_shard(1, 2)
        async with connected(http, fake) as zero, connected(http, fake) as one:
            await ready_guilds(zero, await zero.identify(fake, [0, 2]))
            await ready_guilds(one, await one.identify(fake, [1, 2]))
            role_id = fake.add_role("mods", 0, [fake.user])
            for shard_id, shard in ((0, zero), (1, one)):
                announced = set()
                for _ in on_shard(fake, shard_id, 2):
                    name, data = await shard.event()
                    assert (name, data["role"]["id"]) == ("GUILD_ROLE_CREATE", str(role_id))
                    announced.add(int(data["guild_id"]))
                assert announced == on_shard(fake, shard_id, 2)
