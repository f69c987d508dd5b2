"""Fair use end to end: cooldown, the ask queue, prompt size, private answers, token budgets,
the per-ask log line and graceful shutdown, with the real bot on the local Discord and model.

Every wait is on something observable: the bot's one log line per ask, a change in the
fake Discord, or a gated model stream the test steps itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.answers import replies
from bot.fair_use.budgets import utc_day
from bot.store.sqlite import SqliteUsageStore
from tests.fakes.discord import FakeDiscord, InteractionHandle, User
from tests.fakes.openai_server import FakeOpenAI, StreamReply, Usage
from tests.fakes.openai_server import Reply as ModelReply
from tests.stack import WAIT, Asked, Stack, no_live_buttons, run_stack

# Interaction callback types, as Discord numbers them.
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5

RETRY_IN = re.compile(r"try again in (\d+) seconds?")
RESETS_AT = re.compile(r"<t:(\d+):R>")
REPO = Path(__file__).resolve().parent.parent
TURNED_AWAY = {"not_allowed", "empty_prompt", "prompt_too_long", "cooldown", "busy", "restarting"}


class LineWatch(logging.Handler):
    """Collects the bot's log lines and lets a test wait for one matching a pattern."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    async def line(self, pattern: str) -> re.Match[str]:
        """The first line matching `pattern`, waiting for it if it has not come yet."""
        compiled = re.compile(pattern)
        async with asyncio.timeout(WAIT):
            while True:
                for line in self.lines:
                    match = compiled.search(line)
                    if match:
                        return match
                self._changed.clear()
                await self._changed.wait()


@contextmanager
def watching_bot_log() -> Iterator[LineWatch]:
    watch = LineWatch()
    logger = logging.getLogger("bot")
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


def person(stack: Stack, name: str) -> User:
    return next(user for user in stack.discord.users if user.username == name)


def refusal(asked: Asked) -> str:
    """The text an ask was refused with, checking it was shown to the asker alone."""
    assert asked.outcome in TURNED_AWAY
    assert asked.handle.callback_type == CHANNEL_MESSAGE
    [message] = asked.messages
    assert message.ephemeral
    assert message.visible_to == asked.handle.interaction.user.id
    return message.content


async def shows(stack: Stack, handle: InteractionHandle, text: str) -> None:
    """Wait until one of the ask's messages contains `text`."""
    await stack.discord.wait_for(
        lambda: any(text in message.content for message in stack.messages_of(handle))
    )


async def usage_text(stack: Stack, user: User | None = None) -> str:
    """What `/usage` tells `user`; it must be for their eyes only."""
    handle = stack.discord.dispatch_interaction("usage", user=user)
    message = await handle.answered()
    assert message is not None
    assert message.ephemeral
    assert message.visible_to == handle.interaction.user.id
    return message.content


def tokens_used(report: str, whose: str) -> int:
    """The bold token count after `whose` ("You've", "This server has") in a `/usage` reply."""
    match = re.search(re.escape(whose) + r" used \*\*([\d,]+)\*\*", report)
    assert match, report
    return int(match.group(1).replace(",", ""))


# --- Cooldown ---------------------------------------------------------------------------------


async def test_cooldown_refuses_with_the_wait_and_calls_no_model(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"ASK_COOLDOWN": "3/60"}) as stack:
        for number in range(3):
            assert (await stack.ask(f"Question {number}")).outcome == "answered"

        text = refusal(await stack.ask("One more question"))

        match = RETRY_IN.search(text)
        assert match, text
        assert 1 <= int(match.group(1)) <= 60
        assert len(stack.model.requests) == 3
        # Someone else is not held back by alice's cooldown.
        other = await stack.ask("My first question", user=person(stack, "bob"))
        assert other.outcome == "answered"


async def test_two_asks_racing_for_the_last_cooldown_slot_get_one_answer(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"ASK_COOLDOWN": "3/60"}) as stack:
        for number in range(2):
            assert (await stack.ask(f"Question {number}")).outcome == "answered"

        first, second = stack.send("Race one"), stack.send("Race two")
        results = [await stack.finished(first), await stack.finished(second)]

        assert sorted(asked.outcome for asked in results) == ["answered", "cooldown"]
        [refused] = [asked for asked in results if asked.outcome == "cooldown"]
        assert RETRY_IN.search(refusal(refused))
        assert len(stack.model.requests) == 3


# --- The queue --------------------------------------------------------------------------------


async def test_queued_asks_show_their_place_and_a_full_queue_says_busy(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_discord.world.users.extend(
        User(fake_discord.world.snowflakes.next(), name, name.title()) for name in ("carol", "dan")
    )
    settings = {"MAX_CONCURRENT_ASKS": "1", "MAX_QUEUED_ASKS": "2"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        gates = [stack.model.gated_stream() for _ in range(3)]
        alice, bob = person(stack, "alice"), person(stack, "bob")
        running = stack.send("First question", user=alice)
        await gates[0].started()
        second = stack.send("Second question", user=bob)
        await shows(stack, second, "You're #1 in line")
        third = stack.send("Third question", user=alice)
        await shows(stack, third, "You're #2 in line")

        turned_away = await stack.ask("Fourth question", user=bob)

        assert refusal(turned_away) == replies.BUSY
        assert len(stack.model.requests) == 1
        # A queued ask is acknowledged at once, so Discord does not give up on it.
        assert second.callback_type == DEFERRED_CHANNEL_MESSAGE
        assert third.callback_type == DEFERRED_CHANNEL_MESSAGE

        # The line moves up as answers finish.
        await gates[0].send("First answer.")
        await gates[0].finish()
        assert (await stack.finished(running)).contents == ["First answer."]
        await gates[1].started()
        await shows(stack, third, "You're #1 in line")
        await gates[1].send("Second answer.")
        await gates[1].finish()
        await gates[2].send("Third answer.")
        await gates[2].finish()

        assert (await stack.finished(second)).contents == ["Second answer."]
        third_asked = await stack.finished(third)
        assert third_asked.contents == ["Third answer."]
        assert not third_asked.messages[0].loading
        assert len(stack.model.requests) == 3


# --- Prompt size ------------------------------------------------------------------------------


async def test_a_prompt_over_the_limit_is_refused_naming_the_limit(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"MAX_PROMPT_CHARS": "1500"}
    ) as stack:
        text = refusal(await stack.ask("x" * 1501))

        assert "1,500" in text
        assert stack.model.requests == ()
        assert (await stack.ask("y" * 1500)).outcome == "answered"


# --- Private answers --------------------------------------------------------------------------


async def test_a_private_answer_in_several_messages_is_seen_by_the_asker_only(
    stack: Stack,
) -> None:
    paragraph = " ".join(f"word{number}" for number in range(150))
    answer = "\n\n".join([paragraph] * 4)
    stack.model.script(ModelReply(answer))
    alice, bob = person(stack, "alice"), person(stack, "bob")

    asked = await stack.ask("Write at length", user=alice, private=True)

    assert asked.outcome == "answered"
    assert len(asked.messages) >= 2
    assert all(message.ephemeral and message.visible_to == alice.id for message in asked.messages)
    assert "\n\n".join(asked.contents).split() == answer.split()
    seen_by_bob = [
        m for m in stack.discord.transcript(viewer=bob) if m.interaction_id == asked.handle.id
    ]
    assert seen_by_bob == []


async def test_a_public_answer_is_seen_by_everyone(stack: Stack) -> None:
    asked = await stack.ask("Hello there", user=person(stack, "alice"))

    seen_by_bob = stack.discord.transcript(viewer=person(stack, "bob"))
    assert [m.content for m in seen_by_bob if m.interaction_id == asked.handle.id] == [
        "Hello there"
    ]
    assert not any(message.ephemeral for message in asked.messages)


# --- Token budgets ----------------------------------------------------------------------------


def next_midnight_utc() -> int:
    return (int(time.time()) // 86_400 + 1) * 86_400


async def test_usage_counts_the_tokens_the_provider_reports(stack: Stack) -> None:
    stack.model.script(
        ModelReply("An answer.", usage=Usage(prompt_tokens=120, completion_tokens=34))
    )

    assert (await stack.ask("A question")).outcome == "answered"

    [request] = stack.model.requests
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    report = await usage_text(stack)
    assert tokens_used(report, "You've") == 154
    assert tokens_used(report, "This server has") == 154
    assert "(no limit)" in report
    assert tokens_used(await usage_text(stack, person(stack, "bob")), "You've") == 0


async def test_an_ask_over_the_user_budget_is_refused_until_the_reset(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"USER_DAILY_TOKENS": "1000"}
    ) as stack:
        stack.model.script(
            ModelReply("Long.", usage=Usage(prompt_tokens=900, completion_tokens=200))
        )
        assert (await stack.ask("First")).outcome == "answered"

        refused = await stack.ask("Second")

        assert refused.outcome == "over_budget"
        [message] = refused.messages
        assert message.content.startswith("You've used today's token budget")
        match = RESETS_AT.search(message.content)
        assert match, message.content
        assert int(match.group(1)) == next_midnight_utc()
        assert len(stack.model.requests) == 1
        report = await usage_text(stack)
        assert tokens_used(report, "You've") == 1100
        assert "1,100** tokens today of 1,000" in report
        # The budget is alice's: bob may still ask.
        assert (await stack.ask("Mine", user=person(stack, "bob"))).outcome == "answered"


async def test_an_ask_over_the_server_budget_is_refused_for_everyone_there(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"GUILD_DAILY_TOKENS": "500"}
    ) as stack:
        stack.model.script(
            ModelReply("Long.", usage=Usage(prompt_tokens=400, completion_tokens=150))
        )
        assert (await stack.ask("First", user=person(stack, "alice"))).outcome == "answered"

        bob = person(stack, "bob")
        refused = await stack.ask("Second", user=bob)

        assert refused.outcome == "over_budget"
        assert refused.contents[0].startswith("This server has used today's token budget")
        assert RESETS_AT.search(refused.contents[0])
        assert len(stack.model.requests) == 1
        report = await usage_text(stack, bob)
        assert tokens_used(report, "You've") == 0
        assert tokens_used(report, "This server has") == 550
        assert "of 500" in report


async def test_an_answer_with_no_reported_usage_counts_an_estimate_and_says_so(
    stack: Stack,
) -> None:
    with watching_bot_log() as log:
        # The connection drops mid-answer, so the provider never reports usage.
        stack.model.script(StreamReply("Part of an answer that never ends", drop_after=4))
        asked = await stack.ask("Tell me everything")

        assert asked.outcome == "interrupted"
        note = await log.line(
            rf"provider reported no token usage for interaction {asked.handle.id}; "
            r"counting an estimate of (\d+) tokens"
        )
    estimate = int(note.group(1))
    assert estimate > 0
    assert tokens_used(await usage_text(stack), "You've") == estimate


async def test_usage_survives_a_restart(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    with watching_bot_log() as log:
        async with run_stack(fake_discord, fake_openai, tmp_path) as first:
            first.model.script(
                ModelReply("Hi.", usage=Usage(prompt_tokens=200, completion_tokens=50))
            )
            assert (await first.ask("Hello")).outcome == "answered"
            # discord.py keeps a task announcing readiness, which outlives a client closed
            # before it fires and would then run against the next bot in this event loop.
            await log.line("connected to Discord as")

    async with run_stack(fake_discord, fake_openai, tmp_path) as second:
        report = await usage_text(second)

    assert tokens_used(report, "You've") == 250
    assert tokens_used(report, "This server has") == 250


# --- The log line per ask ---------------------------------------------------------------------

ASK_LINE = re.compile(
    r"^ask interaction=(?P<interaction>\d+) user=(?P<user>\d+) guild=(?P<guild>\d+) "
    r"outcome=(?P<outcome>\S+) ack_ms=(?P<ack>\d+|-) first_text_ms=(?P<first>\d+|-) "
    r"done_ms=(?P<done>\d+) tokens=(?P<tokens>\d+|None)$"
)


async def test_one_log_line_per_ask_without_the_prompt_or_the_answer(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    prompt, answer = "What is the airspeed of a laden swallow", "Roughly eleven metres per second"
    stack.model.script(ModelReply(answer, usage=Usage(prompt_tokens=40, completion_tokens=9)))

    answered = await stack.ask(prompt)
    refused = await stack.ask("   ")

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ask ")]
    matches = [ASK_LINE.match(line) for line in lines]
    assert all(matches), lines
    by_interaction = {int(m.group("interaction")): m for m in matches if m}
    assert len(by_interaction) == len(lines) == 2
    line = by_interaction[answered.handle.id]
    assert line.group("user") == str(stack.discord.user.id)
    assert line.group("guild") == str(stack.discord.guild_id)
    assert line.group("outcome") == "answered"
    assert line.group("tokens") == "49"
    assert int(line.group("ack")) <= int(line.group("first")) <= int(line.group("done"))
    assert by_interaction[refused.handle.id].group("outcome") == "empty_prompt"
    assert by_interaction[refused.handle.id].group("ack") == "-"
    leaked = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and (prompt in r.getMessage() or answer in r.getMessage())
    ]
    assert leaked == []


# --- Graceful shutdown ------------------------------------------------------------------------


async def test_shutdown_finishes_answers_in_flight_and_turns_new_asks_away(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = {"MAX_CONCURRENT_ASKS": "1", "SHUTDOWN_GRACE": "60"}
    with watching_bot_log() as log:
        async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
            alice, bob = person(stack, "alice"), person(stack, "bob")
            gate = stack.model.gated_stream()
            running = stack.send("Tell me a story", user=alice)
            await gate.started()
            await gate.send("Once upon a time")
            await shows(stack, running, "Once upon a time")
            queued = stack.send("And another", user=bob)
            await shows(stack, queued, "You're #1 in line")

            stack.stop.set()  # what SIGTERM does
            await log.line(r"shutting down: finishing 1 answer")
            late = await stack.ask("Are you there?", user=bob)
            waited = await stack.finished(queued)

            assert refusal(late) == replies.RESTARTING
            assert waited.outcome == "restarting"
            assert waited.contents == [replies.RESTARTING]
            assert not stack.task.done()
            await gate.send(", a bot answered every question.")
            await gate.finish(usage=Usage(prompt_tokens=30, completion_tokens=12))
            assert await stack.task == 0
            # Its bookkeeping was done before the bot let go of the store and of Discord.
            assert (await stack.finished(running)).outcome == "answered"

        story = stack.messages_of(running)
        assert [m.content for m in story] == ["Once upon a time, a bot answered every question."]
        assert no_live_buttons(story[0])  # no Stop button left behind
        assert len(stack.model.requests) == 1
        store = await SqliteUsageStore.open(tmp_path)
        try:
            totals = await store.totals(utc_day(datetime.now(UTC)), alice.id, fake_discord.guild_id)
        finally:
            await store.close()
        assert totals.user == 42


async def test_an_answer_outlasting_the_grace_does_not_hold_up_the_exit(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    with watching_bot_log() as log:
        async with run_stack(
            fake_discord, fake_openai, tmp_path, {"SHUTDOWN_GRACE": "0.2"}
        ) as stack:
            gate = stack.model.gated_stream()
            asked = stack.send("Never mind")
            request = await gate.started()

            stack.stop.set()

            assert await stack.task == 0
            await log.line(r"shutting down: ending 1 unfinished answer")
            assert await request.finished() == "client_disconnected"
        # The answer does not linger as "thinking…" or "still writing": it says why it ended.
        (message,) = stack.messages_of(asked)
        assert message.content == replies.RESTARTED_NOTE
        assert not message.loading
        assert no_live_buttons(message)
