"""User installs end to end: the real bot on the local Discord, asked through a server's
install of the app and through a person's own, in a server the bot is not in.

There Discord lets an interaction send only 5 followup messages (the 6th fails with
40094) and makes its answers visible to the asker alone unless the server lets members'
apps answer in public; the access rules apply as anywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from bot.__main__ import sync_commands
from bot.answers import replies
from bot.answers.attachment import ANSWER_FILE
from bot.answers.chunking import split_message
from bot.config import load_settings
from bot.fair_use import access
from tests.fakes.discord import FakeDiscord, InteractionHandle, User, VisibleMessage
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.stack import Asked, Stack, run_stack, stack_settings

GUILD_INSTALL, USER_INSTALL = 0, 1
GUILD, BOT_DM, PRIVATE_CHANNEL = 0, 1, 2
CAP = 5
BOTH_PATHS = pytest.mark.parametrize("streamed", [False, True], ids=["not_streamed", "streamed"])
# An answer of about eight messages, in paragraphs the splitter cuts between.
LONG_ANSWER = "\n\n".join(
    f"Part {number}: " + " ".join(f"word{number}-{index}" for index in range(110))
    for number in range(16)
)


@asynccontextmanager
async def installed(
    discord: FakeDiscord,
    model: FakeOpenAI,
    data: Path,
    overrides: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """The bot after `python -m bot sync` registered its commands globally (the only ones
    a person's own install offers), running with its guild copies as usual."""
    settings = dict(overrides or {})
    await sync_commands(load_settings(stack_settings(discord, model, data, settings)))
    async with run_stack(discord, model, data, settings) as stack:
        yield stack


def ask_in(
    stack: Stack,
    prompt: str,
    *,
    channel_id: int | None = None,
    dm: bool = False,
    user_installed: bool = False,
) -> InteractionHandle:
    return stack.discord.dispatch_interaction(
        "ask",
        {"prompt": prompt},
        channel_id=channel_id,
        dm=dm,
        user_installed=user_installed,
    )


async def finished(stack: Stack, handle: InteractionHandle) -> Asked:
    """Wait for the ask's log line; the messages are those the asker sees where they asked."""
    outcome = (await stack.finished(handle)).outcome
    return Asked(handle, outcome, seen_by(stack.discord, handle, handle.interaction.user))


def seen_by(discord: FakeDiscord, handle: InteractionHandle, viewer: User) -> list[VisibleMessage]:
    channel = discord.transcript(handle.interaction.channel_id, viewer=viewer)
    return [message for message in channel if message.interaction_id == handle.id]


def failed_calls(discord: FakeDiscord) -> list[str]:
    return [f"{c.method} {c.route} -> {c.status}" for c in discord.calls if c.status >= 400]


# --- Registration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow_dms", "contexts"),
    [("false", [GUILD]), ("true", [GUILD, BOT_DM, PRIVATE_CHANNEL])],
)
async def test_commands_are_offered_to_server_and_personal_installs(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    allow_dms: str,
    contexts: list[int],
) -> None:
    async with installed(fake_discord, fake_openai, tmp_path, {"ALLOW_DMS": allow_dms}):
        commands = {command["name"]: command for command in fake_discord.commands(None)}
    assert commands, "no global commands were registered"
    settings = commands.pop("settings")
    assert settings["integration_types"] == [GUILD_INSTALL], "a server's settings need its install"
    assert settings["contexts"] == [GUILD]
    for command in commands.values():
        assert command["integration_types"] == [GUILD_INSTALL, USER_INSTALL]
        assert command["contexts"] == contexts
    assert not fake_discord.spec_violations


# --- Both installs answered ------------------------------------------------------------------


async def test_server_install_answers_in_public(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with installed(fake_discord, fake_openai, tmp_path) as stack:
        stack.model.script(Reply("Paris is the capital of France."))
        asked = await finished(stack, ask_in(stack, "Capital of France?"))
    assert asked.handle.payload["authorizing_integration_owners"] == {
        "0": str(fake_discord.guild_id)
    }
    assert asked.outcome == "answered"
    assert asked.contents == ["Paris is the capital of France."]
    assert not asked.messages[0].ephemeral


@pytest.mark.parametrize("public", [False, True], ids=["server_keeps_apps_private", "public"])
async def test_personal_install_answers_where_the_bot_is_not(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, public: bool
) -> None:
    fake_discord.external_apps_public = public
    async with installed(fake_discord, fake_openai, tmp_path) as stack:
        stack.model.script(Reply("Four."))
        handle = ask_in(stack, "2 + 2?", channel_id=fake_discord.external_channel_id)
        asked = await finished(stack, handle)
    payload = handle.payload
    assert payload["authorizing_integration_owners"] == {"1": str(fake_discord.user.id)}
    assert payload["context"] == GUILD
    assert asked.outcome == "answered"
    assert asked.contents == ["Four."]
    # Unless the server lets members' apps answer in public, only the asker sees it.
    assert asked.messages[0].ephemeral is not public
    others = seen_by(fake_discord, handle, fake_discord.users[1])
    assert [message.content for message in others] == ([] if not public else ["Four."])
    assert failed_calls(fake_discord) == []


async def test_personal_install_in_a_dm_is_answered_when_dms_are_allowed(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with installed(fake_discord, fake_openai, tmp_path, {"ALLOW_DMS": "true"}) as stack:
        stack.model.script(Reply("Hello there."))
        handle = ask_in(stack, "Hi?", dm=True, user_installed=True)
        asked = await finished(stack, handle)
    assert handle.payload["context"] == BOT_DM
    assert handle.payload["authorizing_integration_owners"]["1"] == str(fake_discord.user.id)
    assert asked.contents == ["Hello there."]


async def test_personal_install_in_a_group_dm_is_capped_and_answered(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A group DM has no server install: the person's own, its cap, a public answer."""
    overrides = {"ALLOW_DMS": "true", "STREAM_RESPONSES": "false"}
    async with installed(fake_discord, fake_openai, tmp_path, overrides) as stack:
        stack.model.script(Reply(LONG_ANSWER))
        handle = ask_in(stack, "Tell us everything.", channel_id=fake_discord.group_dm_id)
        asked = await finished(stack, handle)
    assert handle.payload["context"] == PRIVATE_CHANNEL
    assert handle.payload["authorizing_integration_owners"] == {"1": str(fake_discord.user.id)}
    assert asked.outcome == "answered"
    assert len(asked.messages) == CAP
    assert attachment_text(fake_discord, asked.messages[-1].id) == LONG_ANSWER
    assert not any(message.ephemeral for message in asked.messages)
    assert failed_calls(fake_discord) == []


# --- The 5-followup cap ----------------------------------------------------------------------


@BOTH_PATHS
async def test_long_answer_through_a_personal_install_keeps_to_five_messages(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, streamed: bool
) -> None:
    parts = split_message(LONG_ANSWER)
    assert len(parts) > CAP
    overrides = {"STREAM_RESPONSES": str(streamed).lower()}
    async with installed(fake_discord, fake_openai, tmp_path, overrides) as stack:
        stack.model.script(Reply(LONG_ANSWER))
        handle = ask_in(stack, "Tell me everything.", channel_id=fake_discord.external_channel_id)
        asked = await finished(stack, handle)
        refused = failed_calls(fake_discord)
        sixth = await post_followup(fake_discord, handle, "one more")
    assert asked.outcome == "answered"
    assert refused == [], "the bot went past Discord's cap"
    assert len(asked.messages) == CAP
    assert asked.contents[: CAP - 1] == parts[: CAP - 1]
    last = asked.messages[-1]
    assert last.content == replies.WHOLE_ANSWER_ATTACHED
    assert last.attachments == [ANSWER_FILE]
    assert attachment_text(fake_discord, last.id) == LONG_ANSWER
    # The cap is Discord's, not a choice of the bot: one more followup is refused.
    assert sixth == (400, 40094)


async def test_long_answer_through_the_server_install_is_not_capped(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """A person who installed the app too, in a server that has it: no cap applies."""
    parts = split_message(LONG_ANSWER)
    overrides = {"STREAM_RESPONSES": "false"}
    async with installed(fake_discord, fake_openai, tmp_path, overrides) as stack:
        stack.model.script(Reply(LONG_ANSWER))
        handle = ask_in(stack, "Tell me everything.", user_installed=True)
        asked = await finished(stack, handle)
    owners = handle.payload["authorizing_integration_owners"]
    assert owners == {"0": str(fake_discord.guild_id), "1": str(fake_discord.user.id)}
    assert asked.contents == parts
    assert all(message.attachments == [] for message in asked.messages)


async def post_followup(
    discord: FakeDiscord, handle: InteractionHandle, content: str
) -> tuple[int, int | None]:
    """A followup posted with the interaction's token: (status, Discord's error code)."""
    url = f"{discord.api_url}/webhooks/{discord.application_id}/{handle.token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"content": content}) as response,
    ):
        body = await response.json()
        return response.status, body.get("code") if isinstance(body, dict) else None


def attachment_text(discord: FakeDiscord, message_id: int) -> str:
    (attachment,) = discord.world.messages[message_id].attachments
    return attachment.data.decode()


# --- Access rules ----------------------------------------------------------------------------


async def test_personal_install_in_a_server_not_allowed_is_refused(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    overrides = {"ALLOWED_GUILD_IDS": str(fake_discord.guild_id)}
    async with installed(fake_discord, fake_openai, tmp_path, overrides) as stack:
        handle = ask_in(stack, "Hello?", channel_id=fake_discord.external_channel_id)
        asked: Asked = await finished(stack, handle)
    assert asked.outcome == "not_allowed"
    original = handle.original()
    assert original is not None
    assert original.content == access.NOT_IN_SERVER
    assert original.ephemeral
    assert not fake_openai.requests


async def test_personal_install_is_not_offered_in_dms_without_allow_dms(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with installed(fake_discord, fake_openai, tmp_path) as stack:
        with pytest.raises(LookupError, match="in DMs"):
            ask_in(stack, "Hello?", dm=True, user_installed=True)
        with pytest.raises(LookupError, match="in DMs"):
            ask_in(stack, "Hello?", channel_id=fake_discord.group_dm_id)
