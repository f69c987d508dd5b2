"""The local Discord's autocomplete, subcommands and default member permissions behave as
Discord's do (raw HTTP against the fake; the bot's own use is in test_e2e_operators)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord.plugin import running_fake
from tests.fakes.discord.state import MANAGE_GUILD

ASK: dict[str, object] = {
    "name": "ask",
    "description": "Ask a question",
    "type": 1,
    "options": [
        {"name": "prompt", "description": "What to ask", "type": 3, "required": True},
        {"name": "model", "description": "Which model", "type": 3, "autocomplete": True},
    ],
}
SETTINGS: dict[str, object] = {
    "name": "settings",
    "description": "Settings",
    "type": 1,
    "default_member_permissions": str(MANAGE_GUILD),
    "options": [
        {
            "name": "show",
            "description": "Show them",
            "type": 1,
            "options": [{"name": "verbose", "description": "More", "type": 5}],
        }
    ],
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def respond(http: aiohttp.ClientSession, fake: FakeDiscord, handle: Any, body: Any) -> int:
    path = f"/interactions/{handle.id}/{handle.token}/callback"
    data = json.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with http.post(fake.api_url + path, data=data, headers=headers) as response:
        return response.status


async def test_autocomplete_sends_the_focused_option_and_takes_choices(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.autocomplete("ask", "model", {"model": "gp"})
        assert handle.payload["type"] == 4
        assert handle.payload["data"]["options"] == [
            {"name": "model", "type": 3, "value": "gp", "focused": True}
        ], "the required prompt may still be empty while typing"
        message = {"type": 4, "data": {"content": "no"}}
        assert await respond(http, fake, handle, message) == 400, "only choices answer it"
        choices = [{"name": f"m{i}", "value": f"m{i}"} for i in range(26)]
        assert await respond(http, fake, handle, {"type": 8, "data": {"choices": choices}}) == 400
        accepted = await respond(http, fake, handle, {"type": 8, "data": {"choices": choices[:25]}})
        assert accepted == 204
        assert handle.choices == choices[:25]
        assert handle.callback_type == 8


async def test_only_options_with_autocomplete_can_be_focused() -> None:
    async with running_fake(commands=[ASK]) as fake:
        with pytest.raises(ValueError, match="no autocomplete option"):
            fake.autocomplete("ask", "prompt")


async def test_a_command_for_managers_is_hidden_from_others_unless_allowed() -> None:
    async with running_fake(commands=[SETTINGS]) as fake:
        alice, bob = fake.users
        with pytest.raises(LookupError, match="hidden"):
            fake.dispatch_interaction("settings show", user=alice)
        fake.add_role("moderators", MANAGE_GUILD, [alice])
        handle = fake.dispatch_interaction("settings show", {"verbose": True}, user=alice)
        assert handle.payload["data"]["options"] == [
            {"name": "show", "type": 1, "options": [{"name": "verbose", "type": 5, "value": True}]}
        ]
        assert int(handle.payload["member"]["permissions"]) & MANAGE_GUILD
        with pytest.raises(LookupError, match="hidden"):
            fake.dispatch_interaction("settings show", user=bob)
        fake.allow_command_for_everyone("settings")
        shown = fake.dispatch_interaction("settings show", user=bob)
        assert not int(shown.payload["member"]["permissions"]) & MANAGE_GUILD
        with pytest.raises(LookupError, match="no subcommand"):
            fake.dispatch_interaction("settings hide", user=bob)
