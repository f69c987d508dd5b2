"""The conversation store: chains and branches, lookups by answer message, forgetting a
person, retention, restarts and concurrent saves.

Written against the `ConversationStore` protocol through `open_store`, parametrised over the
SQLite and the Redis store: both must pass the same tests, so the two cannot drift.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.config import load_settings
from bot.conversation.retention import keep_pruned, retention
from bot.conversation.turns import ConversationStore, NewTurn, Turn, may_continue
from bot.fair_use.budgets import Totals
from bot.store.redis import RedisConversationStore
from bot.store.sqlite import (
    FILE_NAME,
    SqliteConversationStore,
    SqliteDatabase,
    SqliteUsageStore,
)
from tests.redis_clients import redis_client
from tests.redis_server import RedisServer

ALICE, BOB, CAROL = 1001, 1002, 1003
NAMES = {ALICE: "Alice", BOB: "Bob", CAROL: "Carol"}
GUILD = 900_000_000_000_000_001
CHANNEL = 910_000_000_000_000_001
START = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)

OpenStore = Callable[[], Awaitable[ConversationStore]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores that share one backing (as bot processes or restarts would), all closed
    at the end: one SQLite file, or one Redis server with a client of each store's own and
    the default retention as expiry."""
    opened: list[ConversationStore] = []
    clients: list[Redis] = []
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

    async def open_one() -> ConversationStore:
        store: ConversationStore
        if server is None:
            store = await SqliteConversationStore.open(tmp_path / "data")
        else:
            client = redis_client(server.url)
            clients.append(client)
            store = RedisConversationStore(client, timedelta(days=30))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()
    for client in clients:
        await client.aclose()


@pytest.fixture
async def store(open_store: OpenStore) -> ConversationStore:
    return await open_store()


_clock = iter(range(10**6))


def turn(
    prompt: str,
    *,
    user_id: int = ALICE,
    parent: Turn | None = None,
    channel_id: int = CHANNEL,
    guild_id: int | None = GUILD,
    private: bool = False,
    created_at: datetime | None = None,
) -> NewTurn:
    return NewTurn(
        user_id=user_id,
        display_name=NAMES[user_id],
        guild_id=guild_id,
        channel_id=channel_id,
        private=private,
        prompt=prompt,
        answer=f"answer to {prompt}",
        model="gpt-4o-mini",
        prompt_tokens=len(prompt),
        answer_tokens=len(prompt) + 10,
        parent_id=None if parent is None else parent.id,
        created_at=created_at or START + timedelta(seconds=next(_clock)),
    )


async def talk(
    store: ConversationStore, prompts: list[str], *, user_id: int = ALICE, first_message: int
) -> list[Turn]:
    """A conversation of `prompts`, each answer posted in one message, ids from `first_message`."""
    turns: list[Turn] = []
    for number, prompt in enumerate(prompts):
        parent = turns[-1] if turns else None
        saved = await store.save(
            turn(prompt, user_id=user_id, parent=parent), [first_message + number]
        )
        turns.append(saved)
    return turns


def prompts_of(turns: list[Turn]) -> list[str]:
    return [t.prompt for t in turns]


async def test_a_saved_turn_comes_back_whole_by_id_and_by_message(store: ConversationStore) -> None:
    new = turn("what is a monad?", guild_id=None, private=True)
    saved = await store.save(new, [5001, 5002])

    assert saved.id >= 1
    assert saved.parent_id is None
    # Everything saved is read back as it was, including a DM's missing guild.
    assert replace(saved, id=1) == Turn(**vars(new), id=1)
    assert await store.turn(saved.id) == saved
    assert await store.turn_for_message(5001) == saved
    assert await store.turn_for_message(5002) == saved
    assert await store.turn_for_message(5003) is None
    assert await store.turn(saved.id + 1000) is None
    # The id is small enough for a Discord custom_id with room to spare.
    assert len(f"followup:{saved.id}") <= 100


async def test_the_chain_runs_from_the_root_to_the_turn_oldest_first(
    store: ConversationStore,
) -> None:
    turns = await talk(store, ["q1", "q2", "q3", "q4"], first_message=100)

    assert prompts_of(await store.chain(turns[-1].id, 50)) == ["q1", "q2", "q3", "q4"]
    assert await store.chain(turns[-1].id, 50) == turns
    # The newest few when the chain is longer than asked for.
    assert prompts_of(await store.chain(turns[-1].id, 2)) == ["q3", "q4"]
    assert prompts_of(await store.chain(turns[0].id, 50)) == ["q1"]
    assert await store.chain(turns[-1].id + 1000, 50) == []
    with pytest.raises(ValueError, match="max_turns"):
        await store.chain(turns[-1].id, 0)


async def test_replying_to_an_older_answer_branches_from_it(store: ConversationStore) -> None:
    turns = await talk(store, ["q1", "q2", "q3"], first_message=100)
    # A reply to the message of the first answer continues from there.
    at = await store.turn_for_message(100)
    assert at is not None
    branch = await store.save(turn("q2b", parent=at), [200])

    assert prompts_of(await store.chain(branch.id, 50)) == ["q1", "q2b"]
    # The original line is untouched.
    assert prompts_of(await store.chain(turns[-1].id, 50)) == ["q1", "q2", "q3"]


async def test_two_peoples_conversations_in_one_channel_never_mix(
    store: ConversationStore,
) -> None:
    # Interleaved in one channel, as two people asking at once would be.
    alice: list[Turn] = []
    bob: list[Turn] = []
    for number in range(5):
        alice.append(
            await store.save(
                turn(f"alice {number}", user_id=ALICE, parent=alice[-1] if alice else None),
                [1000 + number],
            )
        )
        bob.append(
            await store.save(
                turn(f"bob {number}", user_id=BOB, parent=bob[-1] if bob else None),
                [2000 + number],
            )
        )

    alices = await store.chain(alice[-1].id, 50)
    bobs = await store.chain(bob[-1].id, 50)
    assert {t.user_id for t in alices} == {ALICE}
    assert {t.user_id for t in bobs} == {BOB}
    assert prompts_of(alices) == [f"alice {n}" for n in range(5)]
    found = await store.turn_for_message(2003)
    assert found is not None
    assert prompts_of(await store.chain(found.id, 50)) == [f"bob {n}" for n in range(4)]


async def test_messages_added_later_find_the_turn(store: ConversationStore) -> None:
    # Saved once its text was final, before its last message was sent.
    saved = await store.save(turn("a long question"), [7001])
    assert await store.add_messages(saved.id, [7002, 7003])
    assert await store.add_messages(saved.id, [7003])  # again: harmless

    for message_id in (7001, 7002, 7003):
        assert await store.turn_for_message(message_id) == saved
    # A message id already taken stays with its turn.
    other = await store.save(turn("another"), [7003, 7004])
    assert await store.turn_for_message(7003) == saved
    assert await store.turn_for_message(7004) == other
    # A turn that is gone takes nothing.
    assert not await store.add_messages(saved.id + 1000, [7005])
    assert await store.turn_for_message(7005) is None


async def test_forgetting_a_person_deletes_their_turns_and_nothing_else(
    store: ConversationStore,
) -> None:
    # Alice asks, Bob follows up on her answer, Alice again, Bob again; Carol elsewhere.
    a1 = await store.save(turn("alice asks", user_id=ALICE), [1])
    b2 = await store.save(turn("bob follows", user_id=BOB, parent=a1), [2])
    a3 = await store.save(turn("alice again", user_id=ALICE, parent=b2), [3])
    b4 = await store.save(turn("bob again", user_id=BOB, parent=a3), [4])
    c1 = await store.save(turn("carol alone", user_id=CAROL), [5])

    assert await store.forget_user(ALICE) == 2

    assert await store.turn(a1.id) is None
    assert await store.turn(a3.id) is None
    assert await store.turn_for_message(1) is None
    assert await store.turn_for_message(3) is None
    # Bob's turns stay, each now the start of its own conversation: the chain stops where
    # Alice's words were and never reaches past them.
    assert await store.chain(b4.id, 50) == [replace(b4, parent_id=None)]
    assert await store.chain(b2.id, 50) == [replace(b2, parent_id=None)]
    assert await store.turn_for_message(4) == replace(b4, parent_id=None)
    assert await store.chain(c1.id, 50) == [c1]
    for kept in await store.chain(b4.id, 50):
        assert "alice" not in kept.prompt + kept.answer
    # Nothing left to forget.
    assert await store.forget_user(ALICE) == 0


async def test_a_follow_up_to_a_forgotten_turn_starts_afresh(store: ConversationStore) -> None:
    a1 = await store.save(turn("alice asks", user_id=ALICE), [1])
    # Bob's follow-up was being answered while Alice ran /forget.
    assert await store.forget_user(ALICE) == 1
    b2 = await store.save(turn("bob follows", user_id=BOB, parent=a1), [2])

    assert b2.parent_id is None
    assert await store.chain(b2.id, 50) == [b2]


async def test_ids_are_never_reused_after_deleting(open_store: OpenStore) -> None:
    store = await open_store()
    first = await store.save(turn("first", user_id=ALICE))
    last = await store.save(turn("last", user_id=ALICE), [9])
    await store.forget_user(ALICE)
    # Even across a restart, an old button's id cannot lead to a newer conversation.
    await store.close()
    reopened = await open_store()
    newer = await reopened.save(turn("bob's", user_id=BOB))
    assert newer.id > last.id > first.id
    assert await reopened.turn(last.id) is None


async def test_pruning_deletes_turns_older_than_the_retention(store: ConversationStore) -> None:
    day = timedelta(days=1)
    old = await store.save(turn("old", created_at=START - 40 * day), [1])
    middle = await store.save(turn("middle", parent=old, created_at=START - 31 * day), [2])
    recent = await store.save(turn("recent", parent=middle, created_at=START - day), [3])
    other = await store.save(turn("other", user_id=BOB, created_at=START - 2 * day), [4])

    assert await store.prune(START - 30 * day) == 2

    assert await store.turn(old.id) is None
    assert await store.turn_for_message(2) is None
    assert await store.chain(recent.id, 50) == [replace(recent, parent_id=None)]
    assert await store.turn(other.id) == other
    assert await store.prune(START - 30 * day) == 0
    with pytest.raises(ValueError, match="time zone"):
        await store.prune(datetime(2025, 1, 1))


async def test_conversations_survive_a_restart(open_store: OpenStore) -> None:
    first = await open_store()
    turns = await talk(first, ["q1", "q2", "q3"], first_message=100)
    await first.close()
    await first.close()  # a second close, as a shutdown path may do, is harmless

    second = await open_store()
    found = await second.turn_for_message(102)
    assert found == turns[-1]
    assert await second.chain(found.id, 50) == turns
    follow = await second.save(turn("q4", parent=found), [103])
    assert prompts_of(await second.chain(follow.id, 50)) == ["q1", "q2", "q3", "q4"]


async def test_concurrent_saves_lose_nothing_and_share_no_id(open_store: OpenStore) -> None:
    # Two stores on one backing, as two bot processes would be, saving at once.
    stores = [await open_store(), await open_store()]
    root = await stores[0].save(turn("root"), [1])
    saved = await asyncio.gather(
        *(
            stores[number % 2].save(
                turn(f"reply {number}", user_id=BOB, parent=root), [10 + number]
            )
            for number in range(60)
        )
    )

    assert len({t.id for t in saved}) == 60
    for number, one in enumerate(saved):
        assert await stores[(number + 1) % 2].turn_for_message(10 + number) == one
        assert prompts_of(await stores[0].chain(one.id, 50)) == ["root", f"reply {number}"]


def test_a_private_answer_is_continued_only_by_its_asker() -> None:
    public = Turn(**vars(turn("public")), id=1)
    private = Turn(**vars(turn("private", private=True)), id=2)
    assert may_continue(public, ALICE)
    assert may_continue(public, BOB)
    assert may_continue(private, ALICE)
    assert not may_continue(private, BOB)


def test_turns_check_their_fields() -> None:
    with pytest.raises(ValueError, match="time zone"):
        replace(turn("x"), created_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="token"):
        replace(turn("x"), prompt_tokens=-1)
    with pytest.raises(ValueError, match="id"):
        Turn(**vars(turn("x")), id=0)


# --- SQLite only: one file and one thread for every store ------------------------------------


async def test_usage_and_conversations_share_one_file_and_thread(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / "data")
    usage = SqliteUsageStore(database)
    conversations = SqliteConversationStore(database)
    try:
        await asyncio.gather(
            *(usage.add("2025-03-14", ALICE, GUILD, 1) for _ in range(50)),
            *(conversations.save(turn(f"q{n}")) for n in range(50)),
        )
        # A store made on a shared database leaves closing to its owner.
        await usage.close()
        await conversations.close()
        assert await usage.totals("2025-03-14", ALICE, GUILD) == Totals(user=50, guild=50)
    finally:
        await database.close()
    assert usage.path == conversations.path == tmp_path / "data" / FILE_NAME
    reader = sqlite3.connect(usage.path)
    try:
        (count,) = reader.execute("SELECT COUNT(*) FROM turns").fetchone()
    finally:
        reader.close()
    assert count == 50


async def test_a_usage_file_from_before_conversations_gains_them(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    usage = await SqliteUsageStore.open(directory)
    await usage.add("2025-03-14", ALICE, GUILD, 7)
    # As the file was before turns existed.
    await usage.close()
    old = sqlite3.connect(directory / FILE_NAME)
    with old:
        old.execute("DROP TABLE turns")
        old.execute("DROP TABLE turn_messages")
    old.close()

    database = await SqliteDatabase.open(directory)
    try:
        saved = await SqliteConversationStore(database).save(turn("q"), [1])
        assert saved.id == 1
        totals = await SqliteUsageStore(database).totals("2025-03-14", ALICE, GUILD)
        assert totals == Totals(user=7, guild=7)
    finally:
        await database.close()


# --- retention -----------------------------------------------------------------------------


class StopPruning(Exception):
    pass


async def test_old_conversations_are_pruned_again_and_again(
    store: ConversationStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings({"CONVERSATION_RETENTION_DAYS": "30"}, require_discord=False)
    keep_for = retention(settings)
    assert keep_for == timedelta(days=30)
    now = START
    await store.save(turn("old", created_at=now - timedelta(days=31)))
    await store.save(turn("older", user_id=BOB, created_at=now - timedelta(days=45)))
    kept = await store.save(turn("kept", created_at=now - timedelta(days=29)))
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        nonlocal now
        pauses.append(seconds)
        if len(pauses) == 3:
            raise StopPruning
        # Two days later, the turn that was kept is old too.
        now += timedelta(days=2)

    with caplog.at_level(logging.INFO, "bot.conversation.retention"), pytest.raises(StopPruning):
        await keep_pruned(store, keep_for, timedelta(minutes=30), clock=lambda: now, sleep=sleep)

    assert pauses == [1800.0] * 3
    assert [record.getMessage() for record in caplog.records] == [
        "deleted 2 conversation turn(s) older than 30 days",
        "deleted 1 conversation turn(s) older than 30 days",
    ]
    assert await store.turn(kept.id) is None


async def test_a_failed_prune_is_one_warning_and_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SqliteConversationStore.open(tmp_path, busy_timeout=0.01)
    try:
        await store.save(turn("old", created_at=START - timedelta(days=40)))
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

        with (
            caplog.at_level(logging.INFO, "bot.conversation.retention"),
            pytest.raises(StopPruning),
        ):
            await keep_pruned(store, timedelta(days=30), clock=lambda: START, sleep=sleep)
        messages = [record.getMessage() for record in caplog.records]
        assert len(messages) == 2
        assert messages[0].startswith("could not prune old conversations (will retry): ")
        assert "locked" in messages[0]
        assert messages[1] == "deleted 1 conversation turn(s) older than 30 days"
    finally:
        await store.close()
