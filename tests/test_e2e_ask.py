"""`/ask` end to end: the real bot, real discord.py and openai SDK, local Discord and model.

Most tests run with STREAM_RESPONSES=false, the path that posts the whole answer at once;
where the streamed path must end the same way, a test runs both. Every assertion is about
what people in the channel see (the transcript after all edits) or what the bot sent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import discord
import pytest

from bot.answers import replies
from bot.answers.chunking import split_message
from bot.answers.formatting import final_parts
from bot.answers.streaming import WRITING_MARKER
from bot.discord_app.ask import Ask
from bot.model import llm
from tests.fakes.discord import CommandSync, FakeDiscord, InteractionHandle
from tests.fakes.discord.plugin import running_fake
from tests.fakes.discord.state import EVERYONE_PERMISSIONS, MENTION_EVERYONE
from tests.fakes.openai_server import (
    Behaviour,
    FakeOpenAI,
    Hang,
    Refusal,
    Reply,
    StreamReply,
    context_length_exceeded,
    invalid_api_key,
    rate_limited,
    server_error,
)
from tests.stack import Asked, Stack, no_live_buttons, run_stack

NOT_STREAMED = {"STREAM_RESPONSES": "false"}
STREAMED = {"STREAM_RESPONSES": "true"}
BOTH_PATHS = pytest.mark.parametrize(
    "overrides", [NOT_STREAMED, STREAMED], ids=["not_streamed", "streamed"]
)
API_KEY = "sk-test-key"  # what tests.stack configures
DEFERRED_WITH_THINKING = 5
CHANNEL_MESSAGE = 4
STRING, BOOLEAN, ATTACHMENT = 3, 5, 11
GUILD_CONTEXT = 0
# What a person must never read: stack traces, SDK wording, exception class names.
LEAKS = re.compile(
    r"Traceback|Error code|Exception|Error:|openai|httpx|req_[0-9a-f]"
    r"|\b(?:RateLimit|APIStatus|APIConnection|APITimeout|BadRequest|Authentication|"
    r"InternalServer|Runtime|Completion)Error\b"
    r"|\b(?:RateLimited|TimedOut|PromptTooLong|ProviderMisconfigured|ProviderUnavailable|"
    r"EmptyAnswer)\b"
)


@pytest.fixture
async def plain(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The bot with streaming off: answers are posted whole."""
    async with run_stack(fake_discord, fake_openai, tmp_path, NOT_STREAMED) as running:
        yield running


def interaction_calls(discord_fake: FakeDiscord, handle: InteractionHandle) -> list[str]:
    """Every request the bot made for one interaction, as "METHOD route"."""
    return [
        f"{call.method} {call.route}"
        for call in discord_fake.calls
        if call.interaction_id == handle.id
    ]


def assert_resolved(asked: Asked) -> None:
    """The person sees a finished answer: "thinking…" replaced, no buttons, nothing leaked."""
    original = asked.handle.original()
    assert original is not None
    assert asked.messages, "the ask left nothing in the channel"
    assert asked.messages[0].id == original.id, "the first message must replace thinking…"
    for message in asked.messages:
        assert not message.loading
        assert no_live_buttons(message)
        assert WRITING_MARKER not in message.content
        assert LEAKS.search(message.content) is None, message.content


# --- Startup ---------------------------------------------------------------------------------


async def test_startup_registers_the_commands_to_the_guild(stack: Stack) -> None:
    discord_fake = stack.discord
    [identify] = discord_fake.gateway.identifies
    assert identify["intents"] == discord.Intents.default().value, "no privileged intents"
    assert discord_fake.gateway.readies_sent == 1
    assert discord_fake.command_syncs == [
        CommandSync(discord_fake.guild_id, ("ask", "usage", "forget", "settings", "Ask about this"))
    ]
    assert discord_fake.commands() == [], "nothing is registered globally on start"

    commands = {
        command["name"]: command for command in discord_fake.commands(discord_fake.guild_id)
    }
    assert set(commands) == {"ask", "usage", "forget", "settings", "Ask about this"}
    ask, usage = commands["ask"], commands["usage"]
    assert ask["description"] == "Ask the language model a question."
    assert ask["description"] == _first_docstring_line(Ask.ask.callback)
    assert usage["description"] == _first_docstring_line(Ask.usage.callback)
    assert commands["forget"]["description"] == _first_docstring_line(Ask.forget.callback)
    options = {option["name"]: option for option in _options(ask)}
    assert options["prompt"]["type"] == STRING
    assert options["prompt"]["required"] is True
    assert options["prompt"]["max_length"] == 6000
    assert options["prompt"]["description"] == "Your question or request for the model"
    assert options["private"]["type"] == BOOLEAN
    assert not options["private"].get("required", False)
    assert options["file"]["type"] == ATTACHMENT
    assert not options["file"].get("required", False)
    assert list(options) == ["prompt", "private", "file"]
    assert _options(usage) == []
    for command in commands.values():
        assert command["contexts"] == [GUILD_CONTEXT], "not offered in DMs by default"

    # Discord's own client would not let anyone run it in a DM.
    with pytest.raises(LookupError):
        discord_fake.dispatch_interaction("ask", {"prompt": "Hello?"}, dm=True)


def _first_docstring_line(function: object) -> str:
    doc = inspect.getdoc(function)
    assert doc is not None
    return doc.splitlines()[0]


def _options(command: Mapping[str, object]) -> list[dict[str, object]]:
    options = command.get("options") or []
    assert isinstance(options, list)
    return options


@BOTH_PATHS
async def test_a_whole_session_keeps_to_discords_api_description(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, overrides: dict[str, str]
) -> None:
    if not fake_discord.spec_checked:
        pytest.skip("Discord's OpenAPI description is not beside the checkout")
    fake_openai.script(
        Reply("Short."),
        Reply(long_answer(9_000)),
        rate_limited(retry_after=3),
        Refusal(),
        Reply("Cut off mid", finish_reason="length"),
    )
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        outcomes = [
            (await stack.ask(prompt)).outcome
            for prompt in ("short", "long", "throttled", "refused", "cut off", "   ")
        ]
        outcomes.append((await stack.ask("private one", private=True)).outcome)
        usage = fake_discord.dispatch_interaction("usage")
        await usage.answered()

    assert outcomes == [
        "answered",
        "answered",
        "rate_limited",
        "refused",  # by the model
        "truncated",
        "empty_prompt",  # turned away by the bot itself
        "answered",
    ]
    assert fake_discord.spec_violations == []
    assert fake_discord.response_violations == []
    assert fake_discord.internal_errors == []


# --- Acknowledge first -----------------------------------------------------------------------


@BOTH_PATHS
async def test_the_defer_comes_before_the_model_is_asked(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    overrides: dict[str, str],
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        gate = fake_openai.gated_stream()
        handle = stack.send("Why is the sky blue?")
        await gate.started()

        # The model request has arrived; by then Discord had the defer, and nothing else.
        assert interaction_calls(fake_discord, handle) == [
            "POST /interactions/{interaction_id}/{interaction_token}/callback"
        ]
        assert handle.callback_type == DEFERRED_WITH_THINKING
        original = handle.original()
        assert original is not None
        assert original.text == "thinking…"

        await gate.send("Rayleigh scattering.")
        await gate.finish()
        asked = await stack.finished(handle)

    assert asked.outcome == "answered"
    assert asked.contents == ["Rayleigh scattering."]
    assert_resolved(asked)


# --- Answers of every length -----------------------------------------------------------------


async def test_short_answer_replaces_thinking(stack: Stack) -> None:
    stack.model.script(Reply("Paris is the capital of France."))
    asked = await stack.ask("What is the capital of France?")
    assert asked.outcome == "answered"
    assert asked.contents == ["Paris is the capital of France."]
    assert not asked.messages[0].loading


async def test_short_answer_not_streamed(plain: Stack) -> None:
    plain.model.script(Reply("Four."))
    asked = await plain.ask("What is 2 + 2?")

    assert asked.outcome == "answered"
    assert asked.contents == ["Four."]
    assert_resolved(asked)
    assert [message.ephemeral for message in asked.messages] == [False]


async def test_a_private_answer_is_seen_only_by_the_asker(
    plain: Stack, fake_discord: FakeDiscord
) -> None:
    alice, bob = fake_discord.users[:2]
    plain.model.script(Reply("Just between us."))
    asked = await plain.ask("A private question", user=alice, private=True)

    assert asked.contents == ["Just between us."]
    assert_resolved(asked)
    assert all(message.ephemeral for message in asked.messages)
    assert fake_discord.transcript(viewer=bob) == []


@pytest.mark.parametrize(
    ("size", "overrides"),
    [(9_000, NOT_STREAMED), (20_000, NOT_STREAMED), (20_000, STREAMED)],
    ids=["9k-not_streamed", "20k-not_streamed", "20k-streamed"],
)
async def test_a_long_answer_is_split_into_messages_that_render(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    overrides: dict[str, str],
    size: int,
) -> None:
    answer = long_answer(size)
    fake_openai.script(Reply(answer))
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await stack.ask("Show me the handlers, in Python and JavaScript.")

    contents = asked.contents
    assert asked.outcome == "answered"
    assert_resolved(asked)
    # Both paths end with exactly the splitter's messages, so they end identically.
    assert contents == split_message(answer)
    for content in contents:
        assert len(content) <= 2000
        assert _fence_lines(content) % 2 == 0, "every message closes the code block it opens"
    reopened = reconstruct(answer, contents)
    assert {"```python", "```js"} <= set(reopened), "cuts fell inside both kinds of block"
    opens_quote = next(n for n, content in enumerate(contents) if _QUOTE_STARTED.search(content))
    assert contents[opens_quote + 1 :], "the quote is cut"
    assert all(content.startswith(">>> ") for content in contents[opens_quote + 1 :])
    fewest = math.ceil(len(answer) / 2000)
    assert fewest <= len(contents) <= fewest + math.ceil(fewest / 4)
    # The transcript lists messages in the order they were posted: the answer's own order
    # (checked above), with nothing else in between.
    assert fake_discord.transcript() == asked.messages


def _fence_lines(content: str) -> int:
    lines = content.split("\n")
    lines[0] = lines[0].removeprefix(">>> ")
    return sum(1 for line in lines if line.startswith("```"))


def long_answer(size: int) -> str:
    """About `size` characters of Markdown: prose, ```python and ```js blocks each longer
    than a message (so some cut falls inside each kind), more prose, then a long quote."""
    quote = ">>> " + "\n".join(
        f"Remember point {n}: small functions with clear names are easier to test and to read."
        for n in range(30)
    )
    sections: list[str] = []
    step = 0
    while True:
        step += 1
        more = [_prose(step, 5), _python_block(step, 36), _prose(step, 3), _js_block(step, 38)]
        if sections and _joined_length(sections + more + [quote]) > size:
            break
        sections += more
    room = size - _joined_length([*sections, quote]) - 2
    sections.append(_prose(step, 50)[: max(room, 1)].rstrip())
    return "\n\n".join([*sections, quote])


def _joined_length(sections: list[str]) -> int:
    return sum(len(section) + 2 for section in sections) - 2


def _prose(step: int, sentences: int) -> str:
    return " ".join(
        f"In step {step}.{n} the handler checks its input, keeps the state in order and "
        "returns early when there is nothing to do."
        for n in range(sentences)
    )


def _python_block(step: int, functions: int) -> str:
    body = "\n".join(
        f"def handle_{step}_{n}(value: int) -> int:\n    return value * {n} + {step}"
        for n in range(functions)
    )
    return f"```python\n{body}\n```"


def _js_block(step: int, functions: int) -> str:
    body = "\n".join(
        f"function handle{step}x{n}(value) {{\n  return value * {n} + {step};\n}}"
        for n in range(functions)
    )
    return f"```js\n{body}\n```"


_QUOTE_STARTED = re.compile(r"(?m)^>>> ")


def reconstruct(answer: str, messages: Sequence[str]) -> list[str]:
    """Check that `messages` are `answer` cut up, with only rendering aids added; return the
    opening lines of the code blocks that were reopened after a cut.

    Each message must be: `>>> ` when a quote has already begun, the opening line of the
    code block open at that point (exactly as the answer wrote it) on a line of its own,
    then the next piece of the answer, then a closing fence if the block is still open.
    Between pieces only whitespace may be dropped, and nothing may be left over.
    """
    position = 0
    reopened: list[str] = []
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        body = message
        before = answer[:position]
        if _QUOTE_STARTED.search(before):
            assert body.startswith(">>> "), f"the quote does not continue: {body[:40]!r}"
            body = body.removeprefix(">>> ")
        opening = _open_fence(before)
        if opening is not None:
            assert body.startswith(opening + "\n"), f"not reopened with {opening!r}"
            body = body.removeprefix(opening + "\n")
            reopened.append(opening)
        start = _piece_start(answer, position, body)
        if start is not None:
            position = start + len(body)
            assert last or _open_fence(answer[:position]) is None, "a code block is left open"
            continue
        piece, _, closing = body.rpartition("\n")
        start = _piece_start(answer, position, piece)
        assert start is not None, f"text lost or changed before {body[:60]!r}"
        position = start + len(piece)
        still_open = _open_fence(answer[:position])
        assert still_open is not None, "a closing fence was added outside a code block"
        assert closing == still_open[:3], "closed with a different fence"
    assert not answer[position:].strip(), f"the end was lost: {answer[position:][:60]!r}"
    return reopened


def _piece_start(answer: str, position: int, piece: str) -> int | None:
    """Where `piece` starts in `answer` if only whitespace lies between `position` and it."""
    gap = answer[position:]
    first_visible = position + len(gap) - len(gap.lstrip())
    for start in range(position, first_visible + 1):
        if answer.startswith(piece, start):
            return start
    return None


def _open_fence(text: str) -> str | None:
    """The opening line of the code block still open at the end of `text`, if any."""
    opening: str | None = None
    for line in text.split("\n"):
        if line.startswith("```"):
            opening = line if opening is None else None
    return opening


# --- Mentions --------------------------------------------------------------------------------


@pytest.fixture
async def mighty_discord() -> AsyncIterator[FakeDiscord]:
    """A Discord where the bot may mention everyone, so only the bot's own care stops pings."""
    async with running_fake(bot_permissions=EVERYONE_PERMISSIONS | MENTION_EVERYONE) as fake:
        yield fake


@BOTH_PATHS
async def test_mentions_in_an_answer_are_shown_but_ping_no_one(
    mighty_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    overrides: dict[str, str],
) -> None:
    bob = mighty_discord.users[1]
    role = next(role for role in mighty_discord.world.roles if role.mentionable)
    mentions = f"@everyone @here <@{bob.id}> <@&{role.id}>"
    # Mentions open the answer (the message that resolves "thinking…" can ping) and open
    # a later message (a new message can ping).
    answer = f"{mentions} look at this.\n\n{_prose(1, 20)}\n\n{mentions} and this too."
    fake_openai.script(Reply(answer))
    async with run_stack(mighty_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await stack.ask("Say hello to everyone")

    assert asked.outcome == "answered"
    assert asked.contents == split_message(answer)
    assert asked.contents[0].startswith(mentions), "shown verbatim"
    assert len(asked.contents) > 1
    for message in mighty_discord.transcript():
        assert not message.notified.any, f"message {message.id} pinged {message.notified}"


# --- Faults ----------------------------------------------------------------------------------


def _said(error: llm.CompletionError) -> list[str]:
    return [replies.error_message(error)]


@dataclass(frozen=True)
class Fault:
    """Something going wrong with the model, and exactly what the asker then sees."""

    behaviour: Behaviour | None
    shown: list[str]
    outcome: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    provider_down: bool = False
    """The provider refuses connections for the first ask, then comes back."""


FAULTS = {
    "rate_limited": Fault(
        rate_limited(retry_after=7),
        _said(llm.RateLimited("", retry_after=7)),
        "rate_limited",
    ),
    "timeout": Fault(
        Hang(), _said(llm.TimedOut("")), "timed_out", overrides={"OPENAI_TIMEOUT": "0.5"}
    ),
    "context_length": Fault(
        context_length_exceeded(), _said(llm.PromptTooLong("")), "prompt_too_long"
    ),
    "invalid_key": Fault(
        invalid_api_key(API_KEY), _said(llm.ProviderMisconfigured("")), "misconfigured"
    ),
    "server_error_500": Fault(server_error(500), _said(llm.ProviderUnavailable("")), "unavailable"),
    "server_error_503": Fault(server_error(503), _said(llm.ProviderUnavailable("")), "unavailable"),
    "connection_refused": Fault(
        None, _said(llm.ProviderUnavailable("")), "unavailable", provider_down=True
    ),
    "empty_content": Fault(Reply(""), _said(llm.EmptyAnswer("")), "empty"),
    "null_content": Fault(Reply(None), _said(llm.EmptyAnswer("")), "empty"),
    "refusal": Fault(Refusal("I can't help with that."), _said(llm.Refused("")), "refused"),
    "cut_off": Fault(
        Reply("The first three steps are", finish_reason="length"),
        final_parts("The first three steps are", replies.TRUNCATED_NOTE),
        "truncated",
    ),
    "stream_dropped": Fault(
        StreamReply("The first three steps are one, two and", drop_after=4),
        final_parts("The first three steps", replies.interrupted_note(llm.ProviderUnavailable(""))),
        "interrupted",
        overrides=STREAMED,
    ),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_a_fault_is_one_clear_message_and_the_next_ask_works(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, fault: Fault
) -> None:
    async with AsyncExitStack() as resources:
        relay = await resources.enter_async_context(Relay.to(fake_openai))
        overrides = {**NOT_STREAMED, **fault.overrides}
        if fault.provider_down:
            overrides["OPENAI_BASE_URL"] = relay.base_url
        if fault.behaviour is not None:
            fake_openai.script(fault.behaviour)
        stack = await resources.enter_async_context(
            run_stack(fake_discord, fake_openai, tmp_path, overrides)
        )

        failed = await stack.ask("Walk me through the steps.")
        assert failed.outcome == fault.outcome
        assert failed.contents == fault.shown
        assert_resolved(failed)

        await relay.open()
        fake_openai.script(Reply("All good again."))
        again = await stack.ask("And now?")
        assert again.outcome == "answered"
        assert again.contents == ["All good again."]

    assert fake_openai.in_flight == 0, "the bot left a model request open"


async def test_rate_limit_message_says_how_long_to_wait(plain: Stack) -> None:
    plain.model.script(rate_limited(retry_after=42))
    asked = await plain.ask("Quick question")
    assert "42 seconds" in asked.contents[0]


async def test_a_timed_out_request_is_abandoned_not_left_open(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Hang())
    overrides = {**NOT_STREAMED, "OPENAI_TIMEOUT": "0.5"}
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await stack.ask("Take your time")
        [request] = fake_openai.requests
        assert await request.finished() == "client_disconnected"
    assert asked.outcome == "timed_out"


async def test_an_invalid_key_is_explained_to_the_operator_not_the_member(
    plain: Stack, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.script(invalid_api_key(API_KEY))
    asked = await plain.ask("Hello?")

    assert "ask a server admin" in asked.contents[0]
    [request] = fake_openai.requests
    problem = [record for record in caplog.records if record.levelno >= logging.WARNING]
    logged = "\n".join(record.getMessage() for record in problem)
    assert "Incorrect API key provided" in logged
    assert request.request_id in logged
    assert API_KEY not in caplog.text


# --- Prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [" ", "   \n\t  "], ids=["space", "whitespace"])
async def test_a_blank_prompt_gets_a_private_hint_and_no_model_call(
    plain: Stack, fake_discord: FakeDiscord, fake_openai: FakeOpenAI, prompt: str
) -> None:
    asked = await plain.ask(prompt)

    assert asked.outcome == "empty_prompt"
    assert asked.handle.callback_type == CHANNEL_MESSAGE
    [hint] = asked.messages
    assert hint.content == replies.EMPTY_PROMPT
    assert hint.ephemeral
    assert hint.visible_to == asked.handle.interaction.user.id
    assert fake_discord.transcript(viewer=fake_discord.users[1]) == []
    assert fake_openai.requests == ()


async def test_an_empty_prompt_cannot_even_be_sent(plain: Stack) -> None:
    with pytest.raises(ValueError, match="characters"):
        plain.send("")


async def test_a_prompt_of_6000_characters_reaches_the_model_intact(
    plain: Stack, fake_openai: FakeOpenAI
) -> None:
    words = " ".join(f"wörd{n}·😀" for n in range(1_000))
    prompt = (words * 2)[:6_000]
    assert len(prompt) == 6_000
    with pytest.raises(ValueError, match="characters"):
        plain.send(prompt + "x")  # Discord's limit, registered by the bot

    asked = await plain.ask(prompt)  # the fake model echoes the prompt back

    [request] = fake_openai.requests
    assert request.json["messages"][-1] == {"role": "user", "content": prompt}
    assert asked.outcome == "answered"
    assert asked.contents == split_message(prompt)


# --- Many at once ----------------------------------------------------------------------------


@BOTH_PATHS
async def test_fifty_asks_at_once_each_get_their_own_answer(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    overrides: dict[str, str],
) -> None:
    # Two people with 25 questions each: the per-user cap is raised to let them in.
    many = {**overrides, "MAX_ASKS_PER_USER": "25"}
    async with run_stack(fake_discord, fake_openai, tmp_path, many) as stack:
        people = fake_discord.users
        prompts = [f"Question {n}: what is {n} squared?" for n in range(50)]
        handles = [
            stack.send(prompt, user=people[n % len(people)]) for n, prompt in enumerate(prompts)
        ]
        answers = await asyncio.gather(*(stack.finished(handle) for handle in handles))

    for prompt, asked in zip(prompts, answers, strict=True):
        assert asked.outcome == "answered"
        assert asked.contents == [prompt], "each asker gets the answer to their own question"
    assert sorted(request.json["messages"][-1]["content"] for request in fake_openai.requests) == (
        sorted(prompts)
    )
    assert fake_discord.rate_limited == 0


# --- Unexpected errors -----------------------------------------------------------------------


@BOTH_PATHS
async def test_an_unexpected_error_gets_an_apology_and_a_logged_traceback(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    overrides: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    streamed = overrides == STREAMED
    name = "stream" if streamed else "complete"
    working = getattr(llm.Completer, name)
    calls = 0

    def first_call_breaks(
        self: llm.Completer,
        prompt: str,
        *,
        deadline: float | None = None,
        model: str | None = None,
    ) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the adapter broke")
        return working(self, prompt, deadline=deadline, model=model)

    monkeypatch.setattr(llm.Completer, name, first_call_breaks)
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        handle = stack.send("Anything")
        failed = await stack.finished(handle)
        # The ask's line is written as the error leaves it, before the apology goes out.
        await handle.answered()
        shown = stack.messages_of(handle)
        fake_openai.script(Reply("Working again."))
        again = await stack.ask("And now?")

    assert failed.outcome == "error"
    assert [message.content for message in shown] == [replies.UNEXPECTED]
    assert not shown[0].loading
    assert again.contents == ["Working again."]
    [error] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert error.exc_info is not None
    assert "Traceback (most recent call last)" in caplog.text
    assert "RuntimeError: the adapter broke" in caplog.text


# --- Secrets ---------------------------------------------------------------------------------


async def test_no_secret_or_prompt_reaches_logs_or_messages(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_prompt = "my-private-question-about-zanzibar"
    fake_openai.script(
        invalid_api_key(API_KEY),
        rate_limited(retry_after=2),
        context_length_exceeded(),
        Reply(None),
    )
    working = llm.Completer.complete
    calls = 0

    async def fifth_call_breaks(
        self: llm.Completer,
        prompt: str,
        *,
        deadline: float | None = None,
        model: str | None = None,
    ) -> llm.Answer:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("the adapter broke")
        return await working(self, prompt, deadline=deadline, model=model)

    monkeypatch.setattr(llm.Completer, "complete", fifth_call_breaks)
    async with run_stack(fake_discord, fake_openai, tmp_path, NOT_STREAMED) as stack:
        for _ in range(4):
            await stack.ask(secret_prompt)
        broken = stack.send(secret_prompt)
        await broken.answered()
        await stack.ask(secret_prompt)  # echoed back by the model

    secrets = (fake_discord.token, API_KEY)
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        for secret in secrets:
            assert secret not in text, f"{record.name} logged a secret"
        if record.levelno >= logging.INFO:
            assert secret_prompt not in text, f"{record.name} logged the prompt at INFO"
    for secret in secrets:
        assert secret not in caplog.text
    for message in fake_discord.transcript():
        for secret in secrets:
            assert secret not in message.content


# --- The real model --------------------------------------------------------------------------


@pytest.mark.real_model
async def test_the_built_in_model_answers_when_no_provider_is_set(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # No key and no base URL: the bot starts its own model, as a fresh install does.
    overrides = {
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        "OPENAI_TIMEOUT": "300",
        "MAX_OUTPUT_TOKENS": "48",
    }
    async with (
        running_fake(wait_timeout=300) as discord_fake,
        run_stack(discord_fake, fake_openai, tmp_path, overrides, wait=300) as stack,
    ):
        handle = stack.send("Name one colour of the rainbow.")
        async with asyncio.timeout(300):
            outcome = await stack.log.future(handle.id)
        messages = stack.messages_of(handle)

    assert fake_openai.requests == (), "no configured provider was called"
    assert outcome in {"answered", "truncated"}
    assert messages
    original = handle.original()
    assert original is not None
    assert messages[0].id == original.id
    for message in messages:
        assert message.content.strip()
        assert len(message.content) <= 2000
        assert not message.loading
        assert no_live_buttons(message)
    assert discord_fake.spec_violations == []


# --- Helpers ---------------------------------------------------------------------------------


class Relay:
    """A loopback port that refuses connections until `open()`, then forwards them to the
    model server: a provider that is down, then comes back."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def to(cls, model: FakeOpenAI) -> Relay:
        port = urlsplit(model.base_url).port
        assert port is not None
        return cls(port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._tasks.discard(task)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
