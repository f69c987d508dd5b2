"""Several bot processes, each running some gateway shards, behaving as one bot.

Real processes (`python -m bot`, aimed at the local Discord), a real Redis server, and a
local Discord that routes each guild to its shard by `(guild_id >> 22) % shard_count`,
refuses IDENTIFYs that break the session-start rate limit, and hosts guilds on both
shards. Each process has a DATA_PATH of its own, as on separate machines: whatever they
share, they share through Redis.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from bot.answers import replies
from tests.fakes.discord import FakeDiscord, shard_of
from tests.fakes.discord.interactions import InteractionHandle
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import FakeOpenAI, Reply, Usage
from tests.processes import Bot, launched, settings_for
from tests.redis_server import RedisServer

SHARDS = 2
EXIT_OK, EXIT_FAILURE = 0, 1


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    """The local Discord with one guild on each shard of two, and a session-start limit of
    one IDENTIFY per 5 s for the whole bot (max_concurrency 1, as for most bots)."""
    async with running_fake(max_concurrency=1, wait_timeout=30.0) as fake:
        fake.add_guild_on_shard(1 - shard_of(fake.guild_id, SHARDS), SHARDS, name="Other")
        yield fake


def guild_on(fake: FakeDiscord, shard: int) -> int:
    [guild] = [guild for guild in fake.guild_ids if shard_of(guild, SHARDS) == shard]
    return guild


def channel_on(fake: FakeDiscord, shard: int) -> int:
    return fake.guild_channel_id(guild_on(fake, shard))


def shard_settings(
    fake: FakeDiscord,
    model: FakeOpenAI,
    data: Path,
    redis_url: str,
    shards: str,
    *,
    machine: str | None = None,
    **more: str,
) -> dict[str, str]:
    """A process running `shards`, with the files of `machine` (by default its own)."""
    settings = settings_for(
        fake,
        model,
        data,
        # Commands are global (synced once, below), unless a test says otherwise.
        DISCORD_GUILD_ID="",
        SHARD_COUNT=str(SHARDS),
        SHARD_IDS=shards,
        REDIS_URL=redis_url,
        DATA_PATH=str(data / f"machine-{machine or shards}"),
    )
    return {**settings, **more}


async def sync_globally(fake: FakeDiscord, model: FakeOpenAI, data: Path) -> None:
    """`python -m bot sync`, once, as an operator registers the commands everywhere."""
    async with launched(
        fake, settings_for(fake, model, data, DISCORD_GUILD_ID=""), data, "sync"
    ) as bot:
        assert await bot.exit_status() == EXIT_OK, bot.output


async def all_connected(fake: FakeDiscord, bots: Sequence[Bot]) -> None:
    for bot in bots:
        await bot.logged("connected to Discord as")
    assert fake.gateway.ready_shards() == {(shard, SHARDS) for shard in range(SHARDS)}


@asynccontextmanager
async def processes(
    fake: FakeDiscord,
    model: FakeOpenAI,
    data: Path,
    redis_url: str,
    *,
    layout: Sequence[tuple[str, str]] = (("0", "0"), ("1", "1")),
    more: Mapping[str, str] | None = None,
) -> AsyncIterator[list[Bot]]:
    """One process for each (shards, machine) of `layout`, started together; yielded once
    all are connected."""
    async with contextlib.AsyncExitStack() as stack:
        bots = [
            await stack.enter_async_context(
                launched(
                    fake,
                    shard_settings(
                        fake, model, data, redis_url, shards, machine=machine, **(more or {})
                    ),
                    data,
                )
            )
            for shards, machine in layout
        ]
        await all_connected(fake, bots)
        yield bots


async def outcome(handle: InteractionHandle, bot: Bot) -> str:
    """How the ask ended, from the one line the process that answered it logs."""
    line = await bot.logged(f"ask interaction={handle.id} ")
    return line.split(" outcome=", 1)[1].split(" ", 1)[0]


def texts_of(body: dict[str, Any]) -> list[str]:
    """The text of each message of a chat completion request."""
    return [str(message.get("content")) for message in body["messages"]]


async def stop(bots: Sequence[Bot]) -> None:
    for bot in bots:
        bot.stop()
    for bot in bots:
        assert await bot.exit_status() == EXIT_OK, bot.output
        assert "Traceback" not in bot.output


async def test_the_cap_the_cooldown_and_the_budget_hold_across_two_processes(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    fake = discord_fake
    await sync_globally(fake, fake_openai, tmp_path)
    limits = {"MAX_ASKS_PER_USER": "1", "ASK_COOLDOWN": "2/3600", "USER_DAILY_TOKENS": "2000"}
    here, there = channel_on(fake, 0), channel_on(fake, 1)
    alice, bob = fake.users[0], fake.users[1]
    async with processes(fake, fake_openai, tmp_path, redis_server.url, more=limits) as bots:
        first, second = bots
        # Started together, they took turns to IDENTIFY: Discord refused neither.
        assert fake.gateway.identify_rate_limited == []

        # The cap: while Alice's ask runs on the first process, the second refuses her.
        gate = fake_openai.gated_stream()
        running = fake.dispatch_interaction("ask", {"prompt": "One"}, user=alice, channel_id=here)
        await gate.started()
        refused = fake.dispatch_interaction("ask", {"prompt": "Two"}, user=alice, channel_id=there)
        assert await outcome(refused, second) == "too_many"
        turned_away = await refused.answered()
        assert turned_away is not None
        assert turned_away.ephemeral
        assert turned_away.content == replies.too_many(1)
        await gate.send("Done.")
        await gate.finish()
        assert await outcome(running, first) == "answered"

        # The cooldown (2 an hour): the refused ask did not count; one more runs, on the
        # other process, and the next is refused wherever it comes.
        allowed = fake.dispatch_interaction(
            "ask", {"prompt": "Three"}, user=alice, channel_id=there
        )
        assert await outcome(allowed, second) == "answered"
        cooling = fake.dispatch_interaction("ask", {"prompt": "Four"}, user=alice, channel_id=here)
        assert await outcome(cooling, first) == "cooldown"
        cooled = await cooling.answered()
        assert cooled is not None
        assert cooled.ephemeral
        assert cooled.content.startswith("You're asking quickly!")

        # The budget: what Bob spent through one process counts in the other.
        fake_openai.script(Reply("Long.", usage=Usage(prompt_tokens=1900, completion_tokens=200)))
        spent = fake.dispatch_interaction("ask", {"prompt": "Five"}, user=bob, channel_id=there)
        assert await outcome(spent, second) == "answered"
        over = fake.dispatch_interaction("ask", {"prompt": "Six"}, user=bob, channel_id=here)
        assert await outcome(over, first) == "over_budget"
        broke = await over.answered()
        assert broke is not None
        assert broke.ephemeral
        assert broke.content.startswith("You've used today's token budget")

        asked = [texts_of(request.json)[-1] for request in fake_openai.requests]
        assert len(asked) == 3, "refused asks never reach the model"
        assert all(
            prompt in text for prompt, text in zip(["One", "Three", "Five"], asked, strict=True)
        )
        await stop([first, second])


async def test_a_conversation_continues_after_its_guild_moves_to_another_process(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    fake = discord_fake
    await sync_globally(fake, fake_openai, tmp_path)
    alice = fake.users[0]
    channel = channel_on(fake, 1)
    url = redis_server.url

    fake_openai.script(Reply("Paris."))
    async with processes(fake, fake_openai, tmp_path, url) as bots:
        first, second = bots
        asked = fake.dispatch_interaction(
            "ask", {"prompt": "What is the capital of France?"}, user=alice, channel_id=channel
        )
        assert await outcome(asked, second) == "answered"
        answer = asked.messages()[-1]
        await stop([first, second])

    # The same processes (and their files), each now running the other's shard.
    fake_openai.script(Reply("Rome."))
    swapped = [("1", "0"), ("0", "1")]
    async with processes(fake, fake_openai, tmp_path, url, layout=swapped) as bots:
        moved, other = bots
        # Restarted within Discord's window, they still waited for their turns.
        assert fake.gateway.identify_rate_limited == []
        fake.post_message(alice, "And of Italy?", channel_id=channel, reply_to=answer.id)
        line = await moved.logged("ask message=")
        assert " outcome=answered " in line
        texts = texts_of(fake_openai.requests[-1].json)
        assert any("What is the capital of France?" in text for text in texts)
        assert any("Paris." in text for text in texts)
        assert "And of Italy?" in texts[-1]
        await stop([moved, other])


async def test_asks_are_answered_while_redis_is_down_and_shared_again_once_it_is_back(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, own_redis: RedisServer, tmp_path: Path
) -> None:
    fake = discord_fake
    await sync_globally(fake, fake_openai, tmp_path)
    url = own_redis.url
    people = itertools.cycle(fake.users)
    # A development server: only the process running its shard syncs its commands.
    server = {"DISCORD_GUILD_ID": str(fake.guild_id)}
    async with processes(fake, fake_openai, tmp_path, url, more=server) as bots:
        assert [sync.guild_id for sync in fake.command_syncs] == [None, fake.guild_id]

        async def ask_both(prompt: str) -> list[str]:
            user = next(people)
            handles = [
                fake.dispatch_interaction(
                    "ask", {"prompt": prompt}, user=user, channel_id=channel_on(fake, shard)
                )
                for shard in range(SHARDS)
            ]
            return [await outcome(handle, bot) for handle, bot in zip(handles, bots, strict=True)]

        assert await ask_both("Before") == ["answered", "answered"]
        own_redis.stop()
        assert await ask_both("During") == ["answered", "answered"]
        assert await ask_both("Still") == ["answered", "answered"]
        for bot in bots:
            await bot.logged("is unreachable")
        own_redis.start()
        for bot in bots:
            await bot.logged("is reachable again")
        assert await ask_both("After") == ["answered", "answered"]

        # Shared again: the last asks' usage is in the restarted Redis.
        async with redis.Redis.from_url(url) as client:
            assert await client.keys("askbot:usage:*:user:*")
        for bot in bots:
            warnings = [line for line in bot.lines if "is unreachable" in line]
            assert len(warnings) == 1, bot.output
            assert " WARNING " in warnings[0]
        await stop(bots)


async def test_redis_unreachable_at_start_exits_1_with_one_line(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, closed_port: int
) -> None:
    settings = settings_for(
        fake_discord,
        fake_openai,
        tmp_path,
        REDIS_URL=f"redis://:hunter2@127.0.0.1:{closed_port}/0",
    )
    async with launched(fake_discord, settings, tmp_path) as bot:
        status = await bot.exit_status()

    assert status == EXIT_FAILURE, bot.output
    errors = [line for line in bot.lines if " ERROR " in line]
    assert len(errors) == 1, bot.output
    assert errors[0].endswith(
        f"cannot reach Redis at 127.0.0.1:{closed_port} (REDIS_URL): connection refused"
    )
    assert "Traceback" not in bot.output
    assert "hunter2" not in bot.output
    assert fake_discord.gateway.identifies == []


async def test_a_second_process_for_the_same_shard_waits_until_the_first_stops(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A new deployment started before the old one stopped, or a typo in SHARD_IDS: the
    # shard must never run twice, or every ask in its guilds would be answered twice.
    fake = discord_fake
    await sync_globally(fake, fake_openai, tmp_path)
    url = redis_server.url
    old = shard_settings(fake, fake_openai, tmp_path, url, "0", machine="old")
    new = shard_settings(fake, fake_openai, tmp_path, url, "0", machine="new")

    def sessions_of_shard_0() -> int:
        return sum(1 for identify in fake.gateway.identifies if identify.get("shard") == [0, 2])

    async with launched(fake, old, tmp_path) as first:
        await first.logged("connected to Discord as")
        async with launched(fake, new, tmp_path) as second:
            await second.logged("shard 0 of 2 is run by another process")
            assert sessions_of_shard_0() == 1
            first.stop()
            assert await first.exit_status() == EXIT_OK, first.output
            await second.logged("connected to Discord as")
            assert sessions_of_shard_0() == 2

            asked = fake.dispatch_interaction(
                "ask", {"prompt": "Once?"}, channel_id=channel_on(fake, 0)
            )
            assert await outcome(asked, second) == "answered"
            assert len(fake_openai.requests) == 1
            await stop([second])
