"""How Discord and providers really behave, end to end: no answer lost, overspent or hanging.

Each test drives the real bot (in-process, as `python -m bot` runs it) on the local Discord
and the scripted model server, makes Discord or the provider misbehave the way they do in
production (an expired token, a moderator's delete, 5xx and 429s discord.py gives up on, a
provider that trickles, throttles or stops mid-stream), and asserts what people and the
operator see: the messages and who can see them, what is left in the channel, the one log
line per ask, the tokens counted, and what the model server was asked.

Interaction lifetime: the bot measures an interaction's 15 minutes on its own event loop
from when it received it. Tests shorten the bot's idea of that lifetime (`LIFETIME`) and
move the fake's clock forward so the fake expires the same tokens at the same moment; the
fake refuses any write after that, as Discord does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from bot.answers import replies
from bot.answers.streaming import WRITING_MARKER
from bot.discord_app import pipeline
from bot.discord_app.pipeline import PROMPT_OVERHEAD_TOKENS, Lifetime
from bot.fair_use.budgets import Reservation, estimate_tokens, utc_day
from bot.model import llm
from bot.store.sqlite import SqliteUsageStore
from tests.fakes.discord import (
    CALLBACK,
    FOLLOWUP,
    WEBHOOK_MESSAGE,
    FakeDiscord,
    InteractionHandle,
    User,
    VisibleMessage,
)
from tests.fakes.discord.plugin import running_fake
from tests.fakes.discord.state import TOKEN_LIFETIME
from tests.fakes.openai_server import (
    FakeOpenAI,
    Hang,
    StreamReply,
    Usage,
    rate_limited,
    server_error,
)
from tests.fakes.openai_server import Reply as ModelReply
from tests.stack import WAIT, Asked, Stack, no_live_buttons, run_stack
from tests.test_e2e_fair_use import person, tokens_used, usage_text, watching_bot_log
from tests.test_e2e_streaming import showing_live, stop_button_of, without_marker
from tests.test_metrics import free_port, scrape, value

CHANNEL_MESSAGE = 4
ASK_LINE = re.compile(r"^ask interaction=(\d+) .*outcome=(\S+) .*tokens=(\d+|None)$")


# --- What every test leaves behind -------------------------------------------------------------


@dataclass
class Leftovers:
    """Messages a test shows Discord would not let the bot fix (it refused every edit)."""

    stuck: set[int] = field(default_factory=set)


def assert_left_clean(discord: FakeDiscord, stuck: set[int]) -> None:
    """No 429 but those a test scripted, no rule of Discord's broken, and no message left
    loading, marked "still writing" or with a button, but those in `stuck` (Discord refused
    every edit that would have fixed them)."""
    unscripted = [call.route for call in discord.calls if call.status == 429 and not call.injected]
    assert unscripted == []
    assert not discord.spec_violations
    assert not discord.internal_errors
    for message in discord.transcript():
        if message.id in stuck:
            continue
        assert not message.loading, message
        assert WRITING_MARKER not in message.content, message
        assert no_live_buttons(message), message


@pytest.fixture(autouse=True)
async def leftovers(fake_discord: FakeDiscord) -> AsyncIterator[Leftovers]:
    """Checks the channel is left clean after each test, once the bot has stopped."""
    leftovers = Leftovers()
    yield leftovers
    assert_left_clean(fake_discord, leftovers.stuck)


# --- Helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AskLine:
    outcome: str
    tokens: int | None


def ask_line(stack: Stack, handle: InteractionHandle) -> AskLine:
    """The one log line the bot wrote for this ask (there must be exactly one)."""
    found = [
        match
        for line in stack.log.lines
        if (match := ASK_LINE.match(line)) and int(match.group(1)) == handle.id
    ]
    assert len(found) == 1, [m.group(0) for m in found]
    tokens = found[0].group(3)
    return AskLine(found[0].group(2), None if tokens == "None" else int(tokens))


def estimated_cost(prompt: str, written: str) -> int:
    """What the bot counts for an answer the provider reported no usage for."""
    return estimate_tokens(prompt) + PROMPT_OVERHEAD_TOKENS + estimate_tokens(written)


def refused_privately(stack: Stack, asked: Asked, outcome: str) -> str:
    """The sentence an ask was refused with, checking nobody but the asker can see it."""
    assert asked.outcome == outcome
    assert asked.handle.callback_type == CHANNEL_MESSAGE  # answered at once, never deferred
    [message] = asked.messages
    asker = asked.handle.interaction.user
    assert message.ephemeral
    assert message.visible_to == asker.id
    for other in stack.discord.users:
        if other.id != asker.id:
            seen = stack.discord.transcript(viewer=other)
            assert all(m.interaction_id != asked.handle.id for m in seen), other.username
    return message.content


def calls_of(discord: FakeDiscord, handle: InteractionHandle) -> list[tuple[str, str, int]]:
    return [
        (call.method, call.route, call.status)
        for call in discord.calls
        if call.interaction_id == handle.id
    ]


async def outcomes(stack: Stack, handles: Iterable[InteractionHandle], count: int) -> list[int]:
    """Wait until `count` of these asks are over; return the ids of those that are."""
    futures = {stack.log.future(handle.id): handle.id for handle in handles}
    async with asyncio.timeout(WAIT):
        while sum(future.done() for future in futures) < count:
            pending = {future for future in futures if not future.done()}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    return [interaction_id for future, interaction_id in futures.items() if future.done()]


async def press_is_ignored(stack: Stack, message: VisibleMessage, user: User) -> None:
    """Press the Stop button left on `message`: the bot must no longer act on it.

    Discord shows the presser "This interaction failed" for a press nobody acknowledges.
    Gateway events reach the bot in order, so once a later `/usage` is answered the bot has
    seen the press.
    """
    button = stop_button_of(message)
    assert button is not None
    press = stack.discord.press_button(message.id, button, user=user)
    await usage_text(stack, user)
    assert press.callback_type is None
    assert [call for call in stack.discord.calls if call.interaction_id == press.id] == []


def share_the_bots_lifetime(discord: FakeDiscord, lifetime: Lifetime) -> None:
    """Make the fake expire every interaction dispatched so far `lifetime.token` seconds
    after its dispatch, as the bot believes; call it once they are all acknowledged."""
    discord.clock.advance(TOKEN_LIFETIME - lifetime.token)


# --- 1. The interaction token's lifetime -------------------------------------------------------


async def test_a_queued_ask_is_told_in_time_and_a_slow_answer_ends_before_its_token(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Answers must end 3 s before the token does, and be given at least 4 s.
    lifetime = Lifetime(token=8.0, margin=3.0, min_answer=4.0)
    monkeypatch.setattr(pipeline, "LIFETIME", lifetime)
    settings = {"MAX_CONCURRENT_ASKS": "1", "OPENAI_TIMEOUT": "60"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        alice, bob = person(stack, "alice"), person(stack, "bob")
        gate = stack.model.gated_stream()
        slow = stack.send("Tell me everything", user=alice)
        request = await gate.started()
        await gate.send("The first part of a long answer")
        await showing_live(stack, slow, "The first part of a long answer")
        waiting = stack.send("A quick one", user=bob)
        await waiting.acknowledged()
        share_the_bots_lifetime(fake_discord, lifetime)

        # The slow answer holds the only slot past the last moment the queued ask could
        # still be answered in time: it is told so, while its token still works.
        too_late = await stack.finished(waiting)
        assert too_late.outcome == "too_late"
        assert too_late.contents == [replies.TOO_LATE]
        assert not too_late.messages[0].loading

        # The slow answer reaches its own deadline: what was written stays, with a note.
        slow_asked = await stack.finished(slow)
        assert await request.finished() == "client_disconnected"
        spent = await usage_text(stack, alice)

        # Long after both tokens expired, nothing more is written for either ask.
        fake_discord.clock.advance(60)
        await usage_text(stack, bob)

    assert len(fake_openai.requests) == 1, "the ask that waited too long never reached the model"
    assert slow_asked.outcome == "interrupted"
    note = replies.interrupted_note(llm.TimedOut("deadline"))
    assert slow_asked.contents == [f"The first part of a long answer\n\n{note}"]
    assert no_live_buttons(slow_asked.messages[0])  # no live Stop button left behind
    line = ask_line(stack, slow)
    assert line.tokens == estimated_cost("Tell me everything", "The first part of a long answer")
    assert tokens_used(spent, "You've") == line.tokens
    for handle in (slow, waiting):
        refused = [call for call in calls_of(fake_discord, handle) if call[2] >= 400]
        assert refused == [], "the bot wrote after Discord would accept it"


async def test_a_write_refused_for_an_expired_token_ends_the_answer_quietly(
    stack: Stack, leftovers: Leftovers, caplog: pytest.LogCaptureFixture
) -> None:
    """Should the clocks disagree, Discord's 401 ends the answer like a deleted one."""
    caplog.set_level(logging.INFO)
    alice = person(stack, "alice")
    gate = stack.model.gated_stream()
    handle = stack.send("Tell me a story", user=alice)
    request = await gate.started()
    await gate.send("Once upon a time")
    live = await showing_live(stack, handle, "Once upon a time")

    stack.discord.clock.advance(TOKEN_LIFETIME + 1)
    await gate.send(", a token expired.")
    asked = await stack.finished(handle)

    assert asked.outcome == "expired"
    assert await request.finished() == "client_disconnected"  # nobody could see more
    refused = [call for call in calls_of(stack.discord, handle) if call[2] >= 400]
    assert refused == [("PATCH", WEBHOOK_MESSAGE, 401)], "one refused write, then no more"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert ask_line(stack, handle).tokens == estimated_cost(
        "Tell me a story", "Once upon a time, a token expired."
    )
    # Discord will take no edit of it any more: it stays as it was, but its button is dead.
    leftovers.stuck.add(live.id)
    await press_is_ignored(stack, live, alice)


# --- 2. OPENAI_TIMEOUT is one overall deadline -------------------------------------------------


async def test_a_trickling_stream_is_cut_at_openai_timeout(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Each piece comes well within the timeout; all of them would take 8 s.
    pieces = [f" word{index}" for index in range(40)]
    fake_openai.script(StreamReply(pieces, interval=0.2))
    async with run_stack(fake_discord, fake_openai, tmp_path, {"OPENAI_TIMEOUT": "1.5"}) as stack:
        asked = await stack.ask("Trickle")
        [request] = fake_openai.requests
        assert await request.finished() == "client_disconnected"

    assert asked.outcome == "interrupted"
    [content] = asked.contents
    note = replies.interrupted_note(llm.TimedOut("deadline"))
    written, _, shown_note = content.partition("\n\n")
    assert shown_note == note
    assert written.startswith("word0")
    assert len(written.split()) < len(pieces)
    assert "".join(pieces).strip().startswith(written)


async def test_a_long_retry_after_does_not_hold_the_model_slot(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"MAX_CONCURRENT_ASKS": "1", "OPENAI_TIMEOUT": "5", "OPENAI_MAX_RETRIES": "2"}
    fake_openai.script(
        rate_limited(retry_after=60),  # more than the answer has: give up at once
        rate_limited(retry_after_ms=1),  # a short wait: retried, within the deadline
        ModelReply("Second answer."),
    )
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        throttled = stack.send("First", user=person(stack, "alice"))
        behind = stack.send("Second", user=person(stack, "bob"))
        first, second = await stack.finished(throttled), await stack.finished(behind)

    assert first.outcome == "rate_limited"
    assert first.contents == [replies.error_message(llm.RateLimited("429", retry_after=60))]
    assert "60 seconds" in first.contents[0]
    assert second.outcome == "answered"
    assert second.contents == ["Second answer."]
    prompts = [request.json["messages"][-1]["content"] for request in fake_openai.requests]
    assert prompts == ["First", "Second", "Second"]


async def test_a_silent_provider_is_given_up_at_openai_timeout_not_per_attempt(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"STREAM_RESPONSES": "false", "OPENAI_TIMEOUT": "1", "OPENAI_MAX_RETRIES": "3"}
    fake_openai.script(Hang())
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        asked = await stack.ask("Anyone there?")
        [request] = fake_openai.requests  # no second attempt: the answer's time is up
        assert await request.finished() == "client_disconnected"

    assert asked.outcome == "timed_out"
    assert asked.contents == [replies.error_message(llm.TimedOut("deadline"))]


# --- 3. A moderator deletes the answer while it is written -------------------------------------


async def test_a_deleted_answer_stops_the_model_and_frees_its_slot(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"MAX_CONCURRENT_ASKS": "1"}) as (
        stack
    ):
        alice, bob = person(stack, "alice"), person(stack, "bob")
        gate = stack.model.gated_stream()
        handle = stack.send("Say something rude", user=alice)
        request = await gate.started()
        await gate.send("Something")
        live = await showing_live(stack, handle, "Something")

        fake_discord.delete_message(live.id)
        await gate.send(" rude")  # the bot learns of the delete at its next edit
        assert await request.finished() == "client_disconnected"
        asked = await stack.finished(handle)
        # The one slot is free: the next ask is answered.
        after = await stack.ask("Something kind", user=bob)
        spent = await usage_text(stack, alice)

    assert asked.outcome == "deleted"
    assert asked.messages == []
    assert after.outcome == "answered"
    everything = [message.content for message in fake_discord.transcript()]
    assert replies.UNEXPECTED not in everything  # no apology in the channel
    assert not any("Something rude" in content for content in everything)
    refused = [call for call in calls_of(fake_discord, handle) if call[2] >= 400]
    assert refused == [("PATCH", WEBHOOK_MESSAGE, 404)]  # no retry of a deleted message
    line = ask_line(stack, handle)
    assert line.tokens == estimated_cost("Say something rude", "Something rude")
    assert tokens_used(spent, "You've") == line.tokens
    # Its Stop button went with it: Discord offers nothing to press.
    with pytest.raises(LookupError):
        fake_discord.press_button(live.id, "anything", user=alice)


# --- 4. Edits Discord fails, then accepts, or never accepts ------------------------------------


async def test_edits_refused_for_a_while_are_retried_and_the_answer_completes(
    stack: Stack,
) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Greet the world")
    await gate.started()
    await gate.send("Hello")
    live = await showing_live(stack, handle, "Hello")

    # A server error on a progress edit: discord.py retries it a second later.
    server_fault = stack.discord.fail_requests(
        "PATCH", WEBHOOK_MESSAGE, status=500, times=1, message_id=live.id
    )
    await gate.send(" world")
    await showing_live(stack, handle, "Hello world")
    # Then 429s on every one of discord.py's five tries of the final edit: the bot tries again.
    throttle = stack.discord.rate_limit_requests(
        "PATCH", WEBHOOK_MESSAGE, times=5, retry_after=0.01, message_id=live.id
    )
    await gate.finish()
    asked = await stack.finished(handle)

    assert (server_fault.hits, throttle.hits) == (1, 5)
    assert asked.outcome == "answered"
    assert asked.contents == ["Hello world"]
    assert no_live_buttons(asked.messages[0])


async def test_an_edit_refused_every_time_ends_undelivered_and_counted(
    stack: Stack, leftovers: Leftovers
) -> None:
    alice = person(stack, "alice")
    gate = stack.model.gated_stream()
    handle = stack.send("Explain rate limits", user=alice)
    await gate.started()
    await gate.send("Rate limits")
    live = await showing_live(stack, handle, "Rate limits")

    stack.discord.rate_limit_requests(
        "PATCH", WEBHOOK_MESSAGE, times=None, retry_after=0.01, message_id=live.id
    )
    await gate.send(" protect the service.")
    await gate.finish(usage=Usage(prompt_tokens=20, completion_tokens=5))
    asked = await stack.finished(handle)

    assert asked.outcome == "undelivered"
    line = ask_line(stack, handle)
    assert line.tokens == 25
    assert tokens_used(await usage_text(stack, alice), "You've") == 25
    # Discord kept the last state it accepted; nothing the bot could still change.
    [message] = asked.messages
    assert without_marker(message.content) == "Rate limits"
    leftovers.stuck.add(message.id)
    await press_is_ignored(stack, message, alice)


async def test_a_whole_answer_refused_for_a_while_is_posted_once_discord_takes_it(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Not streamed, the answer goes out in one post: it is retried like a streamed one's
    final edit, rather than leaving "thinking…" for good."""
    fake_openai.script(ModelReply("The answer.", usage=Usage(prompt_tokens=9, completion_tokens=3)))
    throttle = fake_discord.rate_limit_requests("POST", FOLLOWUP, times=5, retry_after=0.01)
    async with run_stack(fake_discord, fake_openai, tmp_path, {"STREAM_RESPONSES": "false"}) as (
        stack
    ):
        asked = await stack.ask("A question")

    assert throttle.hits == 5
    assert asked.outcome == "answered"
    assert asked.contents == ["The answer."]
    assert ask_line(stack, asked.handle).tokens == 12


async def test_a_deleted_place_in_line_ends_the_ask_without_an_apology(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"MAX_CONCURRENT_ASKS": "1"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        alice, bob = person(stack, "alice"), person(stack, "bob")
        gates = [stack.model.gated_stream() for _ in range(2)]
        running = stack.send("First", user=alice)
        await gates[0].started()
        second = stack.send("Second", user=bob)
        await stack.discord.wait_for(
            lambda: any("#1 in line" in m.content for m in stack.messages_of(second))
        )
        third = stack.send("Third", user=alice)
        await stack.discord.wait_for(
            lambda: any("#2 in line" in m.content for m in stack.messages_of(third))
        )
        [place] = stack.messages_of(third)
        fake_discord.delete_message(place.id)

        # The line moves: the third ask's place can no longer be shown, nor its answer.
        await gates[0].send("One.")
        await gates[0].finish()
        gone = await stack.finished(third)
        await gates[1].started()
        await gates[1].send("Two.")
        await gates[1].finish()
        answers = [await stack.finished(handle) for handle in (running, second)]

    assert gone.outcome == "deleted"
    assert gone.messages == []
    assert [asked.contents for asked in answers] == [["One."], ["Two."]]
    assert len(fake_openai.requests) == 2  # the deleted ask never reached the model
    everything = [message.content for message in fake_discord.transcript()]
    assert replies.UNEXPECTED not in everything


async def test_a_place_in_line_discord_will_not_show_does_not_cost_the_ask(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"MAX_CONCURRENT_ASKS": "1"}) as (
        stack
    ):
        gate = stack.model.gated_stream()
        running = stack.send("First", user=person(stack, "alice"))
        await gate.started()
        # discord.py gives up on the post of the place in line; it is only a preview.
        throttle = fake_discord.rate_limit_requests("POST", FOLLOWUP, times=5, retry_after=0.01)
        waiting = stack.send("Second", user=person(stack, "bob"))
        await fake_discord.wait_for(lambda: throttle.hits == 5)
        await gate.send("One.")
        await gate.finish()
        answers = [await stack.finished(handle) for handle in (running, waiting)]

    assert [asked.outcome for asked in answers] == ["answered", "answered"]
    assert [asked.contents for asked in answers] == [["One."], ["Second"]]
    assert replies.UNEXPECTED not in [m.content for m in fake_discord.transcript()]


# --- 5. Budgets under concurrency --------------------------------------------------------------


async def test_five_asks_at_once_against_a_small_budget_run_only_one(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"USER_DAILY_TOKENS": "100", "MAX_ASKS_PER_USER": "5"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        alice = person(stack, "alice")
        gate = stack.model.gated_stream()
        handles = [stack.send(f"Question {number}", user=alice) for number in range(5)]
        await gate.started()
        refused_ids = await outcomes(stack, handles, 4)
        [running] = [handle for handle in handles if handle.id not in refused_ids]
        await gate.send("The one answer.")
        await gate.finish(usage=Usage(prompt_tokens=60, completion_tokens=50))
        answered = await stack.finished(running)
        refused = [await stack.finished(h) for h in handles if h.id in refused_ids]
        report = await usage_text(stack, alice)
        later = await stack.ask("One more", user=alice)

    assert answered.outcome == "answered"
    assert answered.contents == ["The one answer."]
    for asked in [*refused, later]:
        sentence = refused_privately(stack, asked, "over_budget")
        assert sentence.startswith("You've used today's token budget")
    assert len(fake_openai.requests) == 1
    # The one ask let in may go past the limit by its own size, never by five.
    assert tokens_used(report, "You've") == 110


async def test_a_provider_error_on_a_long_prompt_costs_nothing(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"USER_DAILY_TOKENS": "5000"}
    fake_openai.script(server_error(500))
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        failed = await stack.ask("Summarise this: " + "lorem ipsum " * 330)
        report = await usage_text(stack)
        # Nothing is still held for it either: the budget is whole for the next ask.
        fake_openai.script(ModelReply("Fine.", usage=Usage(prompt_tokens=10, completion_tokens=2)))
        again = await stack.ask("And now?")
        after = await usage_text(stack)

    assert failed.outcome == "unavailable"
    assert failed.contents == [replies.error_message(llm.ProviderUnavailable("500"))]
    assert ask_line(stack, failed.handle).tokens == 0
    assert tokens_used(report, "You've") == 0
    assert again.outcome == "answered"
    assert tokens_used(after, "You've") == 12


async def test_stopped_and_interrupted_answers_count_what_they_used(stack: Stack) -> None:
    alice = person(stack, "alice")
    gate = stack.model.gated_stream()
    stopped = stack.send("Tell me a long story", user=alice)
    await gate.started()
    await gate.send("Once upon a time")
    live = await showing_live(stack, stopped, "Once upon a time")
    button = stop_button_of(live)
    assert button is not None
    stack.discord.press_button(live.id, button, user=alice)
    stopped_asked = await stack.finished(stopped)

    gate = stack.model.gated_stream()
    dropped = stack.send("Tell me about rivers", user=alice)
    await gate.started()
    await gate.send("Rivers flow")
    await showing_live(stack, dropped, "Rivers flow")
    await gate.drop()
    dropped_asked = await stack.finished(dropped)
    report = await usage_text(stack, alice)

    assert (stopped_asked.outcome, dropped_asked.outcome) == ("stopped", "interrupted")
    stopped_cost = estimated_cost("Tell me a long story", "Once upon a time")
    dropped_cost = estimated_cost("Tell me about rivers", "Rivers flow")
    assert ask_line(stack, stopped).tokens == stopped_cost
    assert ask_line(stack, dropped).tokens == dropped_cost
    assert tokens_used(report, "You've") == stopped_cost + dropped_cost


async def test_an_answer_ended_by_a_shutdown_counts_what_it_used(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"SHUTDOWN_GRACE": "0.1"}) as stack:
        alice = person(stack, "alice")
        gate = stack.model.gated_stream()
        handle = stack.send("Never mind", user=alice)
        request = await gate.started()
        await gate.send("Half an answer")
        await showing_live(stack, handle, "Half an answer")
        stack.stop.set()
        assert await stack.task == 0
        assert await request.finished() == "client_disconnected"

    assert ask_line(stack, handle).outcome == "cancelled"
    assert [m.content for m in stack.messages_of(handle)] == [
        f"Half an answer\n\n{replies.RESTARTED_NOTE}"
    ]
    store = await SqliteUsageStore.open(tmp_path)
    try:
        totals = await store.totals(utc_day(datetime.now(UTC)), alice.id, fake_discord.guild_id)
    finally:
        await store.close()
    assert totals.user == estimated_cost("Never mind", "Half an answer")


# --- 6. Every refusal is the asker's alone -----------------------------------------------------


async def test_every_refusal_is_shown_to_the_asker_alone(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {
        "MAX_CONCURRENT_ASKS": "1",
        "MAX_QUEUED_ASKS": "1",
        "MAX_ASKS_PER_USER": "1",
        "MAX_PROMPT_CHARS": "100",
        "ASK_COOLDOWN": "2/600",
        "USER_DAILY_TOKENS": "50",
        "SHUTDOWN_GRACE": "30",
    }
    refusals: list[tuple[Asked, str]] = []
    with watching_bot_log() as log:
        async with (
            running_fake(user_names=("alice", "bob", "carol")) as discord,
            run_stack(discord, fake_openai, tmp_path, settings) as stack,
        ):
            alice, bob, carol = (person(stack, name) for name in ("alice", "bob", "carol"))
            refusals.append((await stack.ask("   ", user=alice), "empty_prompt"))
            refusals.append((await stack.ask("x" * 101, user=alice), "prompt_too_long"))
            first = stack.model.gated_stream()
            running = stack.send("First", user=alice)
            await first.started()
            refusals.append((await stack.ask("Second", user=alice), "too_many"))
            second = stack.model.gated_stream()
            queued = stack.send("Bob's", user=bob)
            await queued.acknowledged()
            refusals.append((await stack.ask("Carol's", user=carol), "busy"))
            await first.send("Done.")
            await first.finish(usage=Usage(prompt_tokens=40, completion_tokens=20))
            await stack.finished(running)
            await second.send("Done too.")
            await second.finish(usage=Usage(prompt_tokens=5, completion_tokens=5))
            await stack.finished(queued)
            # Alice's 60 tokens are over her 50; her next ask also uses up her cooldown.
            refusals.append((await stack.ask("Again", user=alice), "over_budget"))
            refusals.append((await stack.ask("And again", user=alice), "cooldown"))

            last = stack.model.gated_stream()
            holding = stack.send("Keep going", user=bob)
            await last.started()
            stack.stop.set()
            await log.line(r"shutting down: finishing 1 answer")
            refusals.append((await stack.ask("Hello?", user=carol), "restarting"))
            await last.send("Finished.")
            await last.finish()
            assert await stack.task == 0
            assert (await stack.finished(holding)).outcome == "answered"
            for asked, outcome in refusals:
                refused_privately(stack, asked, outcome)
        assert_left_clean(discord, set())

    assert [outcome for _, outcome in refusals] == [
        "empty_prompt",
        "prompt_too_long",
        "too_many",
        "busy",
        "over_budget",
        "cooldown",
        "restarting",
    ]
    assert len(fake_openai.requests) == 3


async def test_usage_is_refused_where_asking_is(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    elsewhere = fake_discord.world.snowflakes.next()
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"ALLOWED_CHANNEL_IDS": str(elsewhere)}
    ) as stack:
        asked = await stack.ask("Hello")
        usage = stack.discord.dispatch_interaction("usage")
        answer = await usage.answered()

    sentence = refused_privately(stack, asked, "not_allowed")
    assert usage.callback_type == CHANNEL_MESSAGE
    assert answer is not None
    assert answer.ephemeral
    assert answer.content == sentence
    assert "tokens" not in answer.content
    assert fake_openai.requests == ()


# --- 7. One user cannot fill the line ----------------------------------------------------------


async def test_one_user_cannot_take_every_place_in_line(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"MAX_CONCURRENT_ASKS": "1", "MAX_QUEUED_ASKS": "2"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        alice, bob = person(stack, "alice"), person(stack, "bob")
        gates = [stack.model.gated_stream() for _ in range(3)]
        running = stack.send("Alice one", user=alice)
        await gates[0].started()
        waiting = stack.send("Alice two", user=alice)
        await stack.discord.wait_for(
            lambda: any("#1 in line" in m.content for m in stack.messages_of(waiting))
        )
        third = await stack.ask("Alice three", user=alice)
        bobs = stack.send("Bob one", user=bob)
        await stack.discord.wait_for(
            lambda: any("#2 in line" in m.content for m in stack.messages_of(bobs))
        )
        for index, gate in enumerate(gates):
            await gate.started()
            await gate.send(f"Answer {index}.")
            await gate.finish()
        answers = [await stack.finished(handle) for handle in (running, waiting, bobs)]

    assert refused_privately(stack, third, "too_many") == replies.too_many(2)
    assert [asked.contents for asked in answers] == [["Answer 0."], ["Answer 1."], ["Answer 2."]]
    assert len(fake_openai.requests) == 3


# --- 8. A stream that ends without saying it is finished ---------------------------------------


async def test_a_stream_ending_without_a_finish_reason_is_shown_as_interrupted(
    stack: Stack,
) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Tell me about lakes")
    request = await gate.started()
    await gate.send("Lakes are")
    await showing_live(stack, handle, "Lakes are")
    await gate.send(" still water")
    await gate.end()  # no finish chunk, no usage, no [DONE]: a clean but early end
    asked = await stack.finished(handle)

    assert await request.finished() == "answered"
    assert asked.outcome == "interrupted"
    note = replies.interrupted_note(llm.ProviderUnavailable("ended early"))
    assert asked.contents == [f"Lakes are still water\n\n{note}"]
    assert ask_line(stack, handle).tokens == estimated_cost(
        "Tell me about lakes", "Lakes are still water"
    )


# --- 9. The built-in model's slots are the gate's limit ----------------------------------------


@pytest.mark.real_model
async def test_the_gate_of_the_built_in_model_is_its_slots(
    fake_openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.model.local_model")
    port = free_port()
    overrides = {
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        # Ignored with the built-in model: llama.cpp answers only as many at once as it has slots.
        "MAX_CONCURRENT_ASKS": "16",
        "METRICS_PORT": str(port),
    }
    async with (
        running_fake(wait_timeout=300) as discord_fake,
        run_stack(discord_fake, fake_openai, tmp_path, overrides, wait=300),
    ):
        metrics = await scrape(port)
        served = next(
            match
            for record in caplog.records
            if (match := re.search(r"serving at (http://\S+)/v1 with", record.getMessage()))
        )
        async with (
            aiohttp.ClientSession() as session,
            session.get(served.group(1) + "/props") as response,
        ):
            props = await response.json()

    assert value(metrics, "bot_concurrency_limit") == props["total_slots"]
    assert props["total_slots"] >= 1


# --- 10. Smaller ones --------------------------------------------------------------------------


async def test_the_apology_for_a_private_ask_is_private_too(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    working = llm.Completer.stream

    async def breaks_after_the_first_text(
        self: llm.Completer,
        prompt: str,
        *,
        deadline: float | None = None,
        model: str | None = None,
    ) -> AsyncGenerator[llm.Chunk, None]:
        async for chunk in working(self, prompt, deadline=deadline, model=model):
            yield chunk
            if chunk.text:
                raise RuntimeError("the adapter broke")

    monkeypatch.setattr(llm.Completer, "stream", breaks_after_the_first_text)
    fake_openai.script(StreamReply(["A private", " answer"]))
    async with run_stack(fake_discord, fake_openai, tmp_path) as stack:
        alice, bob = person(stack, "alice"), person(stack, "bob")
        handle = stack.send("Something private", user=alice, private=True)
        await stack.finished(handle)
        await stack.discord.wait_for(
            lambda: any(m.content == replies.UNEXPECTED for m in stack.messages_of(handle))
        )
        messages = stack.messages_of(handle)

    assert ask_line(stack, handle).outcome == "error"
    assert [m.content for m in messages] == ["A private", replies.UNEXPECTED]
    assert all(m.ephemeral and m.visible_to == alice.id for m in messages)
    seen_by_bob = stack.discord.transcript(viewer=bob)
    assert all(m.interaction_id != handle.id for m in seen_by_bob)


async def test_a_stop_whose_acknowledgement_fails_still_stops(stack: Stack) -> None:
    alice = person(stack, "alice")
    gate = stack.model.gated_stream()
    handle = stack.send("Tell me a long story", user=alice)
    request = await gate.started()
    await gate.send("Once upon a time")
    live = await showing_live(stack, handle, "Once upon a time")
    button = stop_button_of(live)
    assert button is not None

    # Discord's edge turns the acknowledgement away (discord.py does not retry that).
    refused = stack.discord.rate_limit_requests("POST", CALLBACK, scope="cloudflare", times=1)
    press = stack.discord.press_button(live.id, button, user=alice)
    assert await request.finished() == "client_disconnected"
    asked = await stack.finished(handle)

    assert refused.hits == 1
    assert press.callback_type is None  # the presser saw "This interaction failed"…
    assert asked.outcome == "stopped"  # …but the answer stopped all the same
    assert asked.contents == [f"Once upon a time\n\n{replies.STOPPED_NOTE}"]


async def test_a_shutdown_during_the_final_sends_keeps_the_answer(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"STREAM_RESPONSES": "false", "SHUTDOWN_GRACE": "0.1"}
    answer = "The whole answer, ready to go."
    fake_openai.script(ModelReply(answer, usage=Usage(prompt_tokens=30, completion_tokens=7)))
    # The answer's post fails once; discord.py tries it again a second later.
    slow_post = fake_discord.fail_requests("POST", FOLLOWUP, status=500, times=1)
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        alice = person(stack, "alice")
        handle = stack.send("A question", user=alice)
        await fake_discord.wait_for(lambda: slow_post.hits == 1)
        stack.stop.set()  # the shutdown's grace runs out while the post is being retried
        assert await stack.task == 0

    assert ask_line(stack, handle).outcome == "cancelled"
    assert [m.content for m in stack.messages_of(handle)] == [answer]
    store = await SqliteUsageStore.open(tmp_path)
    try:
        totals = await store.totals(utc_day(datetime.now(UTC)), alice.id, fake_discord.guild_id)
    finally:
        await store.close()
    assert totals.user == 37


async def test_usage_older_than_the_longest_budget_is_pruned_at_start(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    alice_id, guild_id = fake_discord.user.id, fake_discord.guild_id
    days = {
        name: utc_day(now - timedelta(days=back))
        for name, back in (("old", 3), ("yesterday", 1), ("today", 0))
    }
    store = await SqliteUsageStore.open(tmp_path)
    try:
        for name, tokens in (("old", 500), ("yesterday", 70), ("today", 30)):
            await store.add(days[name], alice_id, guild_id, tokens)
        # A hold left by a process that died mid-answer, long expired.
        stale = Reservation("dead", days["today"], alice_id, guild_id, 900, now.timestamp() - 60)
        await store.reserve(stale, None, None, now.timestamp())
    finally:
        await store.close()

    with watching_bot_log() as log:
        async with run_stack(
            fake_discord, fake_openai, tmp_path, {"USER_DAILY_TOKENS": "1000"}
        ) as (stack):
            pruned = await log.line(r"pruned (\d+) old usage counts and expired holds")
            report = await usage_text(stack)
            asked = await stack.ask("Still allowed?")

    # The old day's two counts (the user's and the server's) and the stale hold.
    assert int(pruned.group(1)) == 3
    assert tokens_used(report, "You've") == 30
    assert asked.outcome == "answered"
    store = await SqliteUsageStore.open(tmp_path)
    try:
        old = await store.totals(days["old"], alice_id, guild_id)
        yesterday = await store.totals(days["yesterday"], alice_id, guild_id)
    finally:
        await store.close()
    assert (old.user, old.guild) == (0, 0)
    assert (yesterday.user, yesterday.guild) == (70, 70)
