"""Who may ask: the pure rules, how an interaction maps onto them, and the bot end to end.

Someone not allowed gets a short explanation only they can see, and the model is never
called. The local Discord has no threads, so "a thread counts as its parent channel" is
checked on a real `discord.Interaction` parsed from a thread's payload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.discord_app.reply import _parent_channel_id
from bot.fair_use import access
from bot.fair_use.access import AccessRules, Origin
from tests.fakes.discord import FakeDiscord, InteractionHandle, User, point_discord_py_at
from tests.fakes.openai_server import FakeOpenAI
from tests.stack import Asked, Stack, run_stack

GUILD, OTHER_GUILD = 1001, 1002
CHANNEL, OTHER_CHANNEL = 2001, 2002
ROLE, OTHER_ROLE = 3001, 3002
THREAD = 4001

# --- The rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "origin", "expected"),
    [
        (AccessRules(), Origin(GUILD, CHANNEL, []), None),
        (AccessRules(), Origin(None, CHANNEL), access.NOT_IN_DMS),
        (AccessRules(allow_dms=True), Origin(None, CHANNEL), None),
        # Server, channel and role lists never shut out a DM when DMs are allowed.
        (
            AccessRules(frozenset({GUILD}), frozenset({CHANNEL}), frozenset({ROLE}), True),
            Origin(None, 5000),
            None,
        ),
        (AccessRules(guild_ids=frozenset({GUILD})), Origin(GUILD, CHANNEL), None),
        (
            AccessRules(guild_ids=frozenset({GUILD})),
            Origin(OTHER_GUILD, CHANNEL),
            access.NOT_IN_SERVER,
        ),
        (AccessRules(channel_ids=frozenset({CHANNEL})), Origin(GUILD, CHANNEL), None),
        (
            AccessRules(channel_ids=frozenset({CHANNEL})),
            Origin(GUILD, OTHER_CHANNEL),
            access.NOT_IN_CHANNEL,
        ),
        (AccessRules(channel_ids=frozenset({CHANNEL})), Origin(GUILD, None), access.NOT_IN_CHANNEL),
        (AccessRules(role_ids=frozenset({ROLE})), Origin(GUILD, CHANNEL, [OTHER_ROLE, ROLE]), None),
        (
            AccessRules(role_ids=frozenset({ROLE})),
            Origin(GUILD, CHANNEL, [OTHER_ROLE]),
            access.MISSING_ROLE,
        ),
        (AccessRules(role_ids=frozenset({ROLE})), Origin(GUILD, CHANNEL, []), access.MISSING_ROLE),
        # The server is named before the channel, the channel before the role.
        (
            AccessRules(frozenset({GUILD}), frozenset({CHANNEL}), frozenset({ROLE})),
            Origin(OTHER_GUILD, OTHER_CHANNEL, []),
            access.NOT_IN_SERVER,
        ),
        (
            AccessRules(frozenset({GUILD}), frozenset({CHANNEL}), frozenset({ROLE})),
            Origin(GUILD, OTHER_CHANNEL, []),
            access.NOT_IN_CHANNEL,
        ),
    ],
)
def test_refusal(rules: AccessRules, origin: Origin, expected: str | None) -> None:
    assert access.refusal(rules, origin) == expected


@pytest.mark.parametrize(
    "sentence",
    [access.NOT_IN_DMS, access.NOT_IN_SERVER, access.NOT_IN_CHANNEL, access.MISSING_ROLE],
)
def test_refusals_are_short_sentences(sentence: str) -> None:
    assert len(sentence) <= 120
    assert sentence.endswith(".")


# --- A thread counts as its parent channel ----------------------------------------------------


def interaction_in(channel: dict[str, Any]) -> discord.Interaction:
    """A real discord.py interaction, parsed from an INTERACTION_CREATE for `channel`."""
    client = discord.Client(intents=discord.Intents.default())
    state = client._connection
    # As after login: the bot knows who it is.
    bot = {"id": "5005", "username": "ask-bot", "discriminator": "0", "avatar": None, "bot": True}
    state.user = discord.ClientUser(state=state, data=bot)  # type: ignore[arg-type]
    payload: dict[str, Any] = {
        "id": "5001",
        "application_id": "5002",
        "type": 2,
        "data": {"id": "5003", "name": "ask", "type": 1},
        "guild_id": str(GUILD),
        "channel": channel,
        "channel_id": channel["id"],
        "token": "token",
        "version": 1,
        "app_permissions": "0",
        "locale": "en-US",
        "attachment_size_limit": 10_485_760,
        "member": {
            "user": {"id": "5004", "username": "alice", "discriminator": "0", "avatar": None},
            "roles": [],
            "joined_at": "2025-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
        },
    }
    return discord.Interaction(data=payload, state=state)  # type: ignore[arg-type]


def test_an_ask_in_a_thread_counts_as_from_its_parent_channel() -> None:
    thread = {
        "id": str(THREAD),
        "type": 11,  # PUBLIC_THREAD
        "guild_id": str(GUILD),
        "parent_id": str(CHANNEL),
        "name": "a thread",
        "owner_id": "5004",
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 3,
        "member_count": 2,
        "total_message_sent": 3,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": "2025-01-01T00:00:00+00:00",
            "locked": False,
        },
    }
    interaction = interaction_in(thread)
    assert isinstance(interaction.channel, discord.Thread)

    channel_id = _parent_channel_id(interaction)

    assert channel_id == CHANNEL
    rules = AccessRules(channel_ids=frozenset({CHANNEL}))
    assert access.refusal(rules, Origin(GUILD, channel_id)) is None


def test_an_ask_in_a_channel_counts_as_from_that_channel() -> None:
    text_channel = {
        "id": str(CHANNEL),
        "type": 0,
        "guild_id": str(GUILD),
        "name": "general",
        "position": 0,
        "permission_overwrites": [],
        "parent_id": None,
        "topic": None,
        "nsfw": False,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }

    assert _parent_channel_id(interaction_in(text_channel)) == CHANNEL


# --- End to end -------------------------------------------------------------------------------


def refusal_shown(asked: Asked) -> str:
    """The sentence an ask was refused with, checking only the asker could see it."""
    assert asked.outcome == "not_allowed"
    [message] = asked.messages
    assert message.ephemeral
    assert message.visible_to == asked.handle.interaction.user.id
    return message.content


def seen_by_others(stack: Stack, handle: InteractionHandle, other: User) -> list[str]:
    return [
        message.content
        for message in stack.discord.transcript(viewer=other)
        if message.interaction_id == handle.id
    ]


@pytest.mark.parametrize("allowed", [True, False])
async def test_only_the_allowed_servers_get_answers(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, allowed: bool
) -> None:
    servers = f"{fake_discord.guild_id if allowed else fake_discord.guild_id + 1},123"
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"ALLOWED_GUILD_IDS": servers}
    ) as stack:
        asked = await stack.ask("Hello")

        if allowed:
            assert asked.outcome == "answered"
            assert asked.contents == ["Hello"]
        else:
            assert refusal_shown(asked) == access.NOT_IN_SERVER
            assert stack.model.requests == ()
            assert seen_by_others(stack, asked.handle, stack.discord.users[1]) == []


@pytest.mark.parametrize("allowed", [True, False])
async def test_only_the_allowed_channels_get_answers(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, allowed: bool
) -> None:
    channel = fake_discord.channel_id if allowed else fake_discord.channel_id + 1
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"ALLOWED_CHANNEL_IDS": str(channel)}
    ) as stack:
        asked = await stack.ask("Hello")

        if allowed:
            assert asked.outcome == "answered"
        else:
            assert refusal_shown(asked) == access.NOT_IN_CHANNEL
            assert stack.model.requests == ()


async def test_only_members_with_an_allowed_role_get_answers(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    world = fake_discord.world
    helpers = next(role for role in world.roles if role.name == "helpers")
    # The server owner has no roles at all; alice is one of the helpers.
    owner, alice = world.owner, fake_discord.users[0]
    assert helpers.id in world.members[alice.id].role_ids
    assert world.members[owner.id].role_ids == []
    async with run_stack(
        fake_discord, fake_openai, tmp_path, {"ALLOWED_ROLE_IDS": f"999,{helpers.id}"}
    ) as stack:
        refused = await stack.ask("Hello", user=owner)
        answered = await stack.ask("Hello", user=alice)

        assert refusal_shown(refused) == access.MISSING_ROLE
        assert answered.outcome == "answered"
        assert len(stack.model.requests) == 1


# A registration left over from an earlier deploy that offered /ask in DMs: Discord keeps
# global commands until they are synced again, so DMs can reach the bot regardless.
STALE_GLOBAL_ASK: dict[str, object] = {
    "name": "ask",
    "description": "Ask the language model a question.",
    "type": 1,
    "options": [
        {
            "type": 3,
            "name": "prompt",
            "description": "Your question",
            "required": True,
            "min_length": 1,
            "max_length": 6000,
        }
    ],
    "contexts": [0, 1, 2],
}


@asynccontextmanager
async def discord_offering_ask_in_dms() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(commands=[STALE_GLOBAL_ASK]) as fake:
        with point_discord_py_at(fake):
            yield fake


async def test_by_default_the_commands_are_not_offered_in_dms(stack: Stack) -> None:
    registered = stack.discord.commands(stack.discord.guild_id)

    assert {command["name"] for command in registered} == {
        "ask",
        "usage",
        "forget",
        "settings",
        "Ask about this",
    }
    assert all(command["contexts"] == [0] for command in registered)
    with pytest.raises(LookupError):
        stack.discord.dispatch_interaction("ask", {"prompt": "Hi"}, dm=True)


async def test_with_dms_allowed_the_commands_are_offered_in_dms(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, {"ALLOW_DMS": "true"}) as stack:
        registered = stack.discord.commands(stack.discord.guild_id)

        contexts = {command["name"]: command["contexts"] for command in registered}
        assert contexts.pop("settings") == [0], "a server's settings are never offered in DMs"
        assert all(1 in offered for offered in contexts.values())  # type: ignore[operator]


async def test_a_dm_that_reaches_the_bot_anyway_is_refused(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with (
        discord_offering_ask_in_dms() as fake,
        run_stack(fake, fake_openai, tmp_path) as stack,
    ):
        handle = fake.dispatch_interaction("ask", {"prompt": "Psst"}, dm=True)
        asked = await stack.finished(handle)

        assert asked.outcome == "not_allowed"
        dm = fake.transcript(fake.dm_channel_id(), viewer=fake.user)
        assert [m.content for m in dm if m.interaction_id == handle.id] == [access.NOT_IN_DMS]
        assert all(m.ephemeral for m in dm)
        assert stack.model.requests == ()


async def test_with_dms_allowed_a_dm_is_answered(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    async with (
        discord_offering_ask_in_dms() as fake,
        run_stack(fake, fake_openai, tmp_path, {"ALLOW_DMS": "true"}) as stack,
    ):
        handle = fake.dispatch_interaction("ask", {"prompt": "Psst"}, dm=True)
        asked = await stack.finished(handle)

        assert asked.outcome == "answered"
        dm = fake.transcript(fake.dm_channel_id(), viewer=fake.user)
        assert [m.content for m in dm if m.interaction_id == handle.id] == ["Psst"]
