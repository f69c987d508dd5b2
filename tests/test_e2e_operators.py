"""Models and `/settings` end to end: the real bot on the local Discord and model server.

What is asserted is what people see (the transcript, autocomplete suggestions, what Discord
offers whom) and what reaches the model (the request's `model` and system message).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.answers import replies
from bot.config import DEFAULT_SYSTEM_PROMPT
from bot.conversation.settings import MAX_SYSTEM_PROMPT
from tests.fakes.discord import FakeDiscord, InteractionHandle, User
from tests.fakes.discord.state import MANAGE_GUILD
from tests.fakes.openai_server import FakeOpenAI, RecordedRequest, Reply
from tests.redis_server import RedisServer
from tests.stack import Stack, run_stack

MODELS = {"OPENAI_MODELS": "alpha-1, beta-2, gamma-3", "STREAM_RESPONSES": "false"}
PLAIN = {"STREAM_RESPONSES": "false"}
AUTOCOMPLETE_RESULT = 8
MESSAGE_LINE = re.compile(r"^ask message=(\d+) .*outcome=(\S+)")


@pytest.fixture
async def models(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The bot offering three models."""
    async with run_stack(fake_discord, fake_openai, tmp_path, MODELS) as running:
        yield running


@pytest.fixture
async def plain(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The bot with its one default model."""
    async with run_stack(fake_discord, fake_openai, tmp_path, PLAIN) as running:
        yield running


def registered(discord: FakeDiscord, name: str) -> dict[str, Any]:
    """The command `/name` as registered in the server."""
    [command] = [c for c in discord.commands(discord.guild_id) if c["name"] == name]
    return dict(command)


def admin_of(discord: FakeDiscord) -> User:
    """alice, given a role with Manage Server."""
    alice = discord.users[0]
    discord.add_role("moderators", MANAGE_GUILD, [alice])
    return alice


def member_of(discord: FakeDiscord) -> User:
    """bob, an ordinary member."""
    return discord.users[1]


def last_request(model: FakeOpenAI) -> RecordedRequest:
    assert model.requests, "the model was never asked"
    return model.requests[-1]


def system_message(request: RecordedRequest) -> Any:
    messages = request.json["messages"]
    assert messages[0]["role"] == "system"
    return messages[0]["content"]


async def settings(
    stack: Stack,
    sub: str,
    options: dict[str, str | int | float | bool] | None = None,
    *,
    user: User,
    channel_id: int | None = None,
) -> str:
    """`user` runs `/settings <sub>`; returns the (private) answer they see."""
    handle = stack.discord.dispatch_interaction(
        f"settings {sub}", options or {}, user=user, channel_id=channel_id
    )
    answer = await handle.answered()
    assert answer is not None
    assert answer.ephemeral, "settings are shown privately"
    assert answer.visible_to == user.id
    return answer.content


async def asked(stack: Stack, handle: InteractionHandle) -> str:
    async with asyncio.timeout(30):
        return await stack.log.future(handle.id)


@contextmanager
def message_asks() -> Iterator[dict[int, asyncio.Future[str]]]:
    """Futures resolved by the bot's line for each ask made by a channel message."""
    futures: dict[int, asyncio.Future[str]] = {}
    loop = asyncio.get_running_loop()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = MESSAGE_LINE.match(record.getMessage())
            if match:
                future = futures.setdefault(int(match.group(1)), loop.create_future())
                if not future.done():
                    future.set_result(match.group(2))

    handler = Handler(logging.INFO)
    logger = logging.getLogger("bot")
    logger.addHandler(handler)
    try:
        yield futures
    finally:
        logger.removeHandler(handler)


# --- Models -----------------------------------------------------------------------------------


async def test_ask_offers_its_models_by_autocomplete(models: Stack) -> None:
    discord = models.discord
    ask = registered(discord, "ask")
    options = {option["name"]: option for option in ask["options"]}
    assert list(options) == ["prompt", "model", "private", "file"]
    assert options["model"]["autocomplete"] is True
    assert not options["model"].get("required", False)

    everything = discord.autocomplete("ask", "model", {"prompt": "Hi"})
    assert await everything.acknowledged() == AUTOCOMPLETE_RESULT
    assert everything.choices == [
        {"name": name, "value": name} for name in ("alpha-1", "beta-2", "gamma-3")
    ]
    typed = discord.autocomplete("ask", "model", {"model": "BE"})
    await typed.acknowledged()
    assert typed.choices == [{"name": "beta-2", "value": "beta-2"}]


async def test_ask_answers_with_the_chosen_model_or_the_default(
    models: Stack, fake_openai: FakeOpenAI
) -> None:
    discord = models.discord
    chosen = discord.dispatch_interaction("ask", {"prompt": "Hi", "model": "gamma-3"})
    assert await asked(models, chosen) == "answered"
    assert last_request(fake_openai).json["model"] == "gamma-3"

    assert (await models.ask("Hi again")).outcome == "answered"
    assert last_request(fake_openai).json["model"] == "alpha-1", "the first listed is the default"


async def test_a_model_not_offered_is_refused_before_the_model_is_asked(
    models: Stack, fake_openai: FakeOpenAI
) -> None:
    handle = models.discord.dispatch_interaction("ask", {"prompt": "Hi", "model": "gpt-99"})
    answer = await handle.answered()
    assert answer is not None
    assert answer.ephemeral
    assert answer.content == replies.UNKNOWN_MODEL
    assert fake_openai.requests == ()


async def test_one_model_means_no_model_option(plain: Stack) -> None:
    discord = plain.discord
    ask = registered(discord, "ask")
    assert [option["name"] for option in ask["options"]] == ["prompt", "private", "file"]
    with pytest.raises(ValueError, match="no autocomplete option"):
        discord.autocomplete("ask", "model")


async def test_a_conversation_keeps_the_model_it_started_with(
    models: Stack, fake_openai: FakeOpenAI
) -> None:
    discord = models.discord
    alice = admin_of(discord)
    fake_openai.script(Reply("Beta here."))
    started = discord.dispatch_interaction(
        "ask", {"prompt": "Who are you?", "model": "beta-2"}, user=alice
    )
    assert await asked(models, started) == "answered"
    answer = started.original()
    assert answer is not None
    # The server's default changes meanwhile; the conversation stays with its model.
    await settings(models, "model", {"name": "gamma-3"}, user=alice)
    with message_asks() as futures:
        reply = discord.post_message(alice, "And then?", reply_to=answer.id)
        future = futures.setdefault(reply.id, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(30):
            assert await future == "answered"
    follow_up = last_request(fake_openai).json
    assert follow_up["model"] == "beta-2"
    assert "Beta here." in str(follow_up["messages"]), "it continues the conversation"

    assert (await models.ask("Fresh start", user=alice)).outcome == "answered"
    assert last_request(fake_openai).json["model"] == "gamma-3", "the server's default now"


# --- /settings: who may use it ----------------------------------------------------------------


async def test_settings_is_hidden_from_and_refused_to_members_without_manage_server(
    plain: Stack, fake_openai: FakeOpenAI
) -> None:
    discord = plain.discord
    bob = member_of(discord)
    command = registered(discord, "settings")
    assert int(command["default_member_permissions"]) == MANAGE_GUILD
    assert command["contexts"] == [0], "a server's settings: never offered in DMs"
    with pytest.raises(LookupError, match="hidden"):
        discord.dispatch_interaction("settings show", user=bob)

    # The server's admins can offer it to everyone: the bot still checks.
    discord.allow_command_for_everyone("settings")
    refused = await settings(plain, "channel-prompt", {"text": "Talk like a pirate."}, user=bob)
    assert refused == replies.SETTINGS_NOT_PERMITTED
    [shown] = [m for m in discord.transcript(viewer=bob) if m.visible_to == bob.id]
    assert shown.content == refused, "the refusal alone: no apology for an error after it"
    assert (await plain.ask("Hello", user=bob)).outcome == "answered"
    assert "pirate" not in system_message(last_request(fake_openai))
    assert any(f"refused user {bob.id}" in line for line in plain.log.lines)
    assert not any("unexpected error" in line for line in plain.log.lines)


# --- /settings: prompts -----------------------------------------------------------------------


async def test_a_channel_prompt_reaches_the_model_in_the_channel_and_its_threads(
    plain: Stack, fake_openai: FakeOpenAI
) -> None:
    discord = plain.discord
    alice, bob = admin_of(discord), member_of(discord)
    server_prompt = "You answer for the Test Server. Be brief."
    channel_prompt = "You are a pirate.\n  Answer in   pirate speak, <@&1> @everyone included!"
    saved = await settings(plain, "server-prompt", {"text": server_prompt}, user=alice)
    assert saved == replies.setting_saved("this server's system prompt", server_prompt)
    saved = await settings(plain, "channel-prompt", {"text": channel_prompt}, user=alice)
    assert f"```\n{channel_prompt}\n```" in saved, "shown back exactly as saved"

    assert (await plain.ask("Ahoy?", user=bob)).outcome == "answered"
    assert system_message(last_request(fake_openai)) == channel_prompt

    thread = discord.create_thread("voyage", owner=bob)
    in_thread = discord.dispatch_interaction(
        "ask", {"prompt": "Where to?"}, user=bob, channel_id=thread
    )
    assert await asked(plain, in_thread) == "answered"
    assert system_message(last_request(fake_openai)) == channel_prompt, "a thread uses its parent's"

    shown = await settings(plain, "show", user=alice, channel_id=thread)
    assert f"```\n{channel_prompt}\n```" in shown
    assert "this channel's" in shown

    cleared = await settings(plain, "reset", {"what": "this channel's prompt"}, user=alice)
    assert cleared == replies.setting_saved("this channel's system prompt", None)
    assert (await plain.ask("Ahoy again?", user=bob)).outcome == "answered"
    assert system_message(last_request(fake_openai)) == server_prompt, "the server's, next"

    everything = await settings(plain, "reset", {"what": "everything in this server"}, user=alice)
    assert everything == replies.settings_reset(1)
    assert (await plain.ask("And now?", user=bob)).outcome == "answered"
    assert system_message(last_request(fake_openai)) == DEFAULT_SYSTEM_PROMPT

    changes = [line for line in plain.log.lines if line.startswith("settings: user")]
    assert len(changes) == 4
    assert all(f"user {alice.id} " in line for line in changes)
    assert not any("pirate" in line for line in plain.log.lines), "prompts are not logged"


async def test_a_prompt_is_validated_before_it_is_saved(plain: Stack) -> None:
    discord = plain.discord
    alice = admin_of(discord)
    command = registered(discord, "settings")
    subcommands = {option["name"]: option for option in command["options"]}
    [text] = subcommands["channel-prompt"]["options"]
    assert text["max_length"] == MAX_SYSTEM_PROMPT
    with pytest.raises(ValueError, match="characters"):
        discord.dispatch_interaction(
            "settings channel-prompt", {"text": "x" * (MAX_SYSTEM_PROMPT + 1)}, user=alice
        )
    fenced = await settings(plain, "channel-prompt", {"text": "Use ``` fences"}, user=alice)
    assert fenced == replies.PROMPT_WITH_FENCE
    blank = await settings(plain, "server-prompt", {"text": "   "}, user=alice)
    assert blank == replies.SETTINGS_EMPTY_PROMPT
    unknown = await settings(plain, "model", {"name": "gpt-99"}, user=alice)
    assert unknown == replies.UNKNOWN_MODEL
    shown = await settings(plain, "show", user=alice)
    assert "the bot's default" in shown
    assert "Use" not in shown


async def test_settings_survive_a_restart(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    prompt = "You are the ship's cook. Talk about food."
    async with run_stack(fake_discord, fake_openai, tmp_path, MODELS) as first:
        alice = admin_of(fake_discord)
        await settings(first, "channel-prompt", {"text": prompt}, user=alice)
        await settings(first, "model", {"name": "beta-2"}, user=alice)
    async with run_stack(fake_discord, fake_openai, tmp_path, MODELS) as second:
        assert (await second.ask("What's for dinner?")).outcome == "answered"
        request = last_request(fake_openai)
        assert request.json["model"] == "beta-2"
        assert system_message(request) == prompt
        shown = await settings(second, "show", user=alice)
        assert f"```\n{prompt}\n```" in shown
        assert "`beta-2` (this server's default)" in shown


# --- /settings shared through Redis ---------------------------------------------------------


async def test_settings_are_shared_through_redis_and_not_changed_while_it_is_away(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, own_redis: RedisServer, tmp_path: Path
) -> None:
    redis = {"REDIS_URL": own_redis.url}
    alice = admin_of(fake_discord)
    async with run_stack(fake_discord, fake_openai, tmp_path / "one", redis) as first:
        saved = await settings(first, "server-prompt", {"text": "Answer in French."}, user=alice)
        assert saved == replies.setting_saved("this server's system prompt", "Answer in French.")
    # Another machine (no files in common) sees it.
    async with run_stack(fake_discord, fake_openai, tmp_path / "two", redis) as second:
        assert (await second.ask("Hello")).outcome == "answered"
        assert "Answer in French." in system_message(last_request(fake_openai))

        own_redis.stop()
        refused = await settings(second, "server-prompt", {"text": "Answer in Latin."}, user=alice)
        assert refused == replies.SETTINGS_UNAVAILABLE
        # Asks are still answered meanwhile.
        assert (await second.ask("Still there?")).outcome == "answered"
        assert not any("unexpected error" in line for line in second.log.lines)
