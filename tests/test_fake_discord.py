"""The fake Discord behaves like Discord: a real discord.py client works against it, and the
rules the bot must live with (limits, deadlines, acknowledgements, rate limits) are enforced
with Discord's own errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord import (
    CHANNEL_MESSAGE,
    CHANNEL_MESSAGES,
    DEFAULT_TOKEN,
    FOLLOWUP,
    MESSAGE_CONTENT,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    TYPING,
    VIEW_CHANNEL,
    WEBHOOK_MESSAGES,
    WEBHOOK_ORIGINAL,
    FakeDiscord,
    Limit,
    Mentions,
    RateLimits,
    spec_available,
)
from tests.fakes.discord.mentions import pings
from tests.fakes.discord.plugin import running_fake

ASK: dict[str, object] = {
    "name": "ask",
    "description": "Ask a question",
    "type": 1,
    "options": [{"name": "prompt", "description": "What to ask", "type": 3, "required": True}],
}
GUILD_MEMBERS = 1 << 1
REPO_ROOT = Path(__file__).resolve().parents[1]
SYNC_FLUSH_TAIL = b"\x00\x00\xff\xff"
T = TypeVar("T")


class AskClient(discord.Client):
    """A minimal bot: ``/ask`` defers, then answers in followups; ``/pick`` offers a button."""

    def __init__(
        self, *, intents: discord.Intents | None = None, answers: Sequence[str] = ("one", "two")
    ) -> None:
        super().__init__(
            intents=intents or discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.01,
        )
        self.tree = app_commands.CommandTree(self)
        self.answers = list(answers)
        self.followup_ids: list[int] = []
        self.original_ids: list[int] = []
        self.asked = asyncio.Event()

        @self.tree.command(name="ask", description="Ask a question")
        @app_commands.describe(prompt="What to ask")
        async def ask(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)
            for answer in self.answers:
                sent = await interaction.followup.send(f"{answer}: {prompt}", wait=True)
                self.followup_ids.append(sent.id)
            original = await interaction.original_response()
            self.original_ids.append(original.id)
            self.asked.set()

        @self.tree.command(name="pick", description="Offer a button")
        async def pick(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pick one", view=_PickView())

    async def setup_hook(self) -> None:
        await self.tree.sync()


class _PickView(discord.ui.View):
    @discord.ui.button(label="Again", custom_id="again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="picked", view=None)


@asynccontextmanager
async def running(client: discord.Client, fake: FakeDiscord) -> AsyncIterator[discord.Client]:
    """Run ``client`` against ``fake`` until the fake has sent it READY."""
    task = asyncio.create_task(client.start(fake.token))
    ready = asyncio.create_task(fake.ready())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        await client.close()
        task.result()
        raise AssertionError("the client stopped before it was ready")
    try:
        yield client
    finally:
        await client.close()
        await task
    assert fake.internal_errors == []


async def settled(awaitable: Awaitable[T]) -> T:
    """Await something the client signals; the timeout only stops a hung test."""
    async with asyncio.timeout(10):
        return await awaitable


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    fake: FakeDiscord,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: bool = True,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One raw request; returns status, parsed JSON (or raw text) and the response."""
    headers = {"Authorization": f"Bot {fake.token}"} if auth else {}
    data = None if body is None else json.dumps(body)
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, fake.api_url + path, data=data, headers=headers) as response:
        text = await response.text()
        parsed = json.loads(text) if response.content_type == "application/json" else text
        return response.status, parsed, response


async def gateway_frame(ws: aiohttp.ClientWebSocketResponse, inflate: Any) -> dict[str, Any]:
    """The next gateway message, decompressed from the connection's zlib stream."""
    message = await ws.receive()
    assert message.type is aiohttp.WSMsgType.BINARY, message
    assert message.data.endswith(SYNC_FLUSH_TAIL)
    decoded: dict[str, Any] = json.loads(inflate.decompress(message.data))
    return decoded


def gateway_query(url: str) -> str:
    return f"{url}?v=10&encoding=json&compress=zlib-stream"


# The gateway


async def test_real_client_identifies_over_zlib_stream_and_sees_the_guild() -> None:
    async with running_fake() as fake:
        client = AskClient()
        async with running(client, fake):
            await settled(client.wait_until_ready())
            assert fake.gateway.connection_queries[0]["compress"] == "zlib-stream"
            assert fake.gateway.identifies[0]["intents"] == discord.Intents.default().value
            assert client.user is not None
            assert client.user.id == fake.bot_user_id
            assert client.application_id == fake.application_id
            guild = client.get_guild(fake.guild_id)
            assert guild is not None
            assert [channel.name for channel in guild.text_channels] == ["general"]
            assert guild.default_role.id == fake.guild_id
            assert guild.me is not None


async def test_bad_token_closes_the_gateway_with_4004(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        inflate = zlib.decompressobj()
        async with http.ws_connect(gateway_query(fake.gateway_url)) as ws:
            hello = await gateway_frame(ws, inflate)
            assert hello["op"] == 10
            assert hello["d"]["heartbeat_interval"] > 0
            await ws.send_json({"op": 1, "d": None})
            assert (await gateway_frame(ws, inflate))["op"] == 11  # same zlib stream
            identify = {"token": "not-the-token", "intents": 513, "properties": {}}
            await ws.send_json({"op": 2, "d": identify})
            closing = await ws.receive()
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4004


async def test_privileged_intent_not_enabled_closes_with_4014() -> None:
    async with running_fake() as fake:
        intents = discord.Intents.default()
        intents.members = True
        client = AskClient(intents=intents)
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await settled(client.start(fake.token))
        await client.close()
        assert fake.gateway.server_close_codes == [4014]


async def test_privileged_intent_enabled_for_the_application_connects() -> None:
    async with running_fake(privileged_intents=GUILD_MEMBERS) as fake:
        intents = discord.Intents.default()
        intents.members = True
        client = AskClient(intents=intents)
        async with running(client, fake):
            await settled(client.wait_until_ready())
            guild = client.get_guild(fake.guild_id)
            assert guild is not None
            assert guild.get_member(fake.user.id) is not None


async def test_reconnect_makes_the_client_resume_its_session() -> None:
    async with running_fake() as fake:
        client = AskClient()
        async with running(client, fake):
            fake.reconnect()
            await fake.wait_for(lambda: fake.gateway.resumes == 1 and fake.gateway.connected == 1)
            handle = fake.dispatch_interaction("ask", {"prompt": "still there?"})
            await handle.answered()
            assert len(fake.gateway.identifies) == 1
            assert fake.gateway.client_close_codes == [4000]


async def test_resume_replays_the_events_missed_while_away(http: aiohttp.ClientSession) -> None:
    async with running_fake(commands=[ASK]) as fake:
        inflate = zlib.decompressobj()
        async with http.ws_connect(gateway_query(fake.gateway_url)) as ws:
            await gateway_frame(ws, inflate)
            identify = {"token": fake.token, "intents": 513, "properties": {}}
            await ws.send_json({"op": 2, "d": identify})
            ready = await gateway_frame(ws, inflate)
            guild = await gateway_frame(ws, inflate)
            assert (ready["t"], ready["s"], guild["t"], guild["s"]) == (
                "READY",
                1,
                "GUILD_CREATE",
                2,
            )
            await ws.close(code=4000)
        await fake.wait_for(lambda: fake.gateway.connected == 0)
        missed = fake.dispatch_interaction("ask", {"prompt": "while away"})

        resume_url = ready["d"]["resume_gateway_url"]
        assert resume_url == fake.gateway_url
        inflate = zlib.decompressobj()
        async with http.ws_connect(gateway_query(resume_url)) as ws:
            await gateway_frame(ws, inflate)
            resume = {"token": fake.token, "session_id": ready["d"]["session_id"], "seq": 2}
            await ws.send_json({"op": 6, "d": resume})
            replayed = await gateway_frame(ws, inflate)
            resumed = await gateway_frame(ws, inflate)
        assert (replayed["t"], replayed["s"]) == ("INTERACTION_CREATE", 3)
        assert replayed["d"]["id"] == str(missed.id)
        assert (resumed["t"], resumed["s"]) == ("RESUMED", 4)


async def test_resume_of_an_unknown_session_is_invalid(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        inflate = zlib.decompressobj()
        async with http.ws_connect(gateway_query(fake.gateway_url)) as ws:
            await gateway_frame(ws, inflate)
            resume = {"token": fake.token, "session_id": "gone", "seq": 7}
            await ws.send_json({"op": 6, "d": resume})
            invalid = await gateway_frame(ws, inflate)
        assert (invalid["op"], invalid["d"]) == (9, False)


# Message rules


@pytest.mark.parametrize(
    "content",
    ["x" * 2000, "\N{GRINNING FACE}" * 2000],
    ids=["2000 ascii", "2000 astral code points"],
)
async def test_content_of_2000_code_points_is_accepted(
    http: aiohttp.ClientSession, content: str
) -> None:
    async with running_fake() as fake:
        status, body, _ = await call(
            http, fake, "POST", f"/channels/{fake.channel_id}/messages", {"content": content}
        )
        assert status == 200
        assert body["content"] == content
        assert [m.content for m in fake.transcript()] == [content]


async def test_content_over_2000_is_invalid_form_body(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        status, body, _ = await call(
            http, fake, "POST", f"/channels/{fake.channel_id}/messages", {"content": "x" * 2001}
        )
        assert status == 400
        assert body == {
            "code": 50035,
            "message": "Invalid Form Body",
            "errors": {
                "content": {
                    "_errors": [
                        {
                            "code": "BASE_TYPE_MAX_LENGTH",
                            "message": "Must be 2000 or fewer in length.",
                        }
                    ]
                }
            },
        }
        assert fake.transcript() == []


@pytest.mark.parametrize("payload", [{"content": ""}, {"content": " \n\t "}, {"tts": False}])
async def test_empty_message_is_refused(
    http: aiohttp.ClientSession, payload: dict[str, object]
) -> None:
    async with running_fake() as fake:
        status, body, _ = await call(
            http, fake, "POST", f"/channels/{fake.channel_id}/messages", payload
        )
        assert (status, body) == (400, {"code": 50006, "message": "Cannot send an empty message"})


async def test_allowed_mentions_decide_who_is_notified(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        helpers = fake.world.roles[2].id
        content = f"@everyone <@{fake.user.id}> <@&{helpers}>"
        route = f"/channels/{fake.channel_id}/messages"
        silenced = {"content": content, "allowed_mentions": {"parse": []}}
        assert (await call(http, fake, "POST", route, silenced))[0] == 200
        assert (await call(http, fake, "POST", route, {"content": content}))[0] == 200
        quiet, loud = fake.transcript()
        assert not quiet.notified.any
        assert fake.world.messages[quiet.id].allowed_mentions == [{"parse": []}]
        assert loud.notified.users == {fake.user.id}
        assert loud.notified.roles == {helpers}
        assert not loud.notified.everyone  # the bot lacks MENTION_EVERYONE


@pytest.mark.parametrize(
    ("allowed", "everyone_allowed", "expected"),
    [
        (None, True, Mentions(everyone=True, users=frozenset({1}), roles=frozenset({5, 6}))),
        (None, False, Mentions(users=frozenset({1}), roles=frozenset({5}))),
        ({"parse": []}, True, Mentions()),
        ({"parse": ["users"]}, True, Mentions(users=frozenset({1}))),
        ({"parse": [], "users": ["1", "2"]}, True, Mentions(users=frozenset({1}))),
        ({"parse": ["everyone", "roles"]}, True, Mentions(everyone=True, roles=frozenset({5, 6}))),
    ],
    ids=["default", "no MENTION_EVERYONE", "none", "users", "listed users", "everyone+roles"],
)
def test_pings_follow_allowed_mentions(
    allowed: dict[str, object] | None, everyone_allowed: bool, expected: Mentions
) -> None:
    content = "@here <@1> <@!1> <@&5> <@&6> plain @ text"
    found = pings(content, allowed, can_mention_everyone=everyone_allowed, mentionable_roles={5})
    assert found == expected


# Interactions


async def acknowledge(
    http: aiohttp.ClientSession, fake: FakeDiscord, interaction_id: int, token: str, body: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    path = f"/interactions/{interaction_id}/{token}/callback?with_response=true"
    return await call(http, fake, "POST", path, body, auth=False)


async def test_callback_after_three_seconds_is_unknown_interaction(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "slow"})
        fake.clock.advance(3.01)
        status, body, _ = await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        assert (status, body) == (404, {"code": 10062, "message": "Unknown interaction"})
        assert handle.callback_type is None
        late = fake.calls[-1].since_dispatch
        assert late is not None
        assert late >= 3.01


async def test_second_acknowledgement_is_refused(http: aiohttp.ClientSession) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "twice"})
        first = await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        second = await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        assert first[0] == 200
        assert (second[0], second[1]) == (
            400,
            {"code": 40060, "message": "Interaction has already been acknowledged."},
        )


async def test_deferred_callback_response_describes_the_loading_message(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "think"})
        status, body, _ = await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        assert status == 200
        summary, resource = body["interaction"], body["resource"]
        assert summary["id"] == str(handle.id)
        assert summary["response_message_loading"] is True
        assert summary["response_message_ephemeral"] is False
        assert resource["type"] == 5
        assert resource["message"]["id"] == summary["response_message_id"]
        assert resource["message"]["flags"] & 128  # LOADING
        [thinking] = fake.transcript()
        assert thinking.loading
        assert thinking.text == "thinking…"


async def test_first_followup_after_defer_becomes_the_original(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "hi"})
        _, deferred, _ = await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        original_id = deferred["interaction"]["response_message_id"]
        webhook = f"/webhooks/{fake.application_id}/{handle.token}"
        first = await call(http, fake, "POST", webhook, {"content": "part 1"}, auth=False)
        second = await call(http, fake, "POST", webhook, {"content": "part 2"}, auth=False)
        assert first[1]["id"] == original_id
        assert second[1]["id"] != original_id
        edited = await call(
            http, fake, "PATCH", f"{webhook}/messages/@original", {"content": "part 1!"}, auth=False
        )
        assert edited[1]["id"] == original_id
        assert [(m.content, m.loading) for m in handle.messages()] == [
            ("part 1!", False),
            ("part 2", False),
        ]


async def test_real_client_defers_then_followups_fill_the_original() -> None:
    async with running_fake() as fake:
        client = AskClient(answers=("first", "second"))
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            handle = fake.dispatch_interaction("ask", {"prompt": "why?"})
            assert await handle.acknowledged() == 5
            await settled(client.asked.wait())
        assert client.followup_ids[0] == client.original_ids[0] == handle.interaction.original_id
        assert client.followup_ids[1] != client.original_ids[0]
        assert [(m.text, m.ephemeral) for m in fake.transcript()] == [
            ("first: why?", False),
            ("second: why?", False),
        ]
        assert fake.commands()[0]["name"] == "ask"


async def test_ephemeral_defer_keeps_the_answer_private(http: aiohttp.ClientSession) -> None:
    async with running_fake(commands=[ASK]) as fake:
        alice, bob = fake.users
        handle = fake.dispatch_interaction("ask", {"prompt": "secret"}, user=alice)
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5, "data": {"flags": 64}})
        webhook = f"/webhooks/{fake.application_id}/{handle.token}"
        await call(http, fake, "POST", webhook, {"content": "only you", "flags": 0}, auth=False)
        assert fake.transcript(viewer=bob) == []
        [seen] = fake.transcript(viewer=alice)
        assert (seen.content, seen.ephemeral, seen.visible_to) == ("only you", True, alice.id)


async def test_followup_with_a_file_is_read_from_multipart(http: aiohttp.ClientSession) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "file"})
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        form = aiohttp.FormData(quote_fields=False)
        payload = {"content": "see file", "attachments": [{"id": 0, "filename": "a.txt"}]}
        form.add_field("payload_json", json.dumps(payload))
        form.add_field("files[0]", b"hello", filename="a.txt", content_type="text/plain")
        url = f"{fake.api_url}/webhooks/{fake.application_id}/{handle.token}"
        async with http.post(url, data=form) as response:
            assert response.status == 200
            message = await response.json()
        [attachment] = message["attachments"]
        assert attachment["filename"] == "a.txt"
        assert attachment["size"] == 5
        async with http.get(attachment["url"]) as download:
            assert await download.read() == b"hello"
        assert fake.calls[-1].files == ("a.txt",)
        assert handle.messages()[0].attachments == ["a.txt"]


async def test_followup_needs_an_acknowledged_live_token(http: aiohttp.ClientSession) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "later"})
        webhook = f"/webhooks/{fake.application_id}/{handle.token}"
        unknown = {"code": 10015, "message": "Unknown Webhook"}
        early = await call(http, fake, "POST", webhook, {"content": "too soon"}, auth=False)
        assert (early[0], early[1]) == (404, unknown)
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        fake.clock.advance(15 * 60 + 1)
        late = await call(http, fake, "POST", webhook, {"content": "too late"}, auth=False)
        assert (late[0], late[1]) == (401, {"code": 50027, "message": "Invalid Webhook Token"})


async def test_button_press_reaches_the_view_and_updates_the_message() -> None:
    async with running_fake() as fake:
        client = AskClient()
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            offer = fake.dispatch_interaction("pick")
            shown = await offer.answered()
            assert shown is not None
            assert shown.components[0]["components"][0]["custom_id"] == "again"
            press = fake.press_button(shown.id, "again")
            assert await press.acknowledged() == 7
        [message] = fake.transcript()
        assert (message.content, message.components) == ("picked", [])


def test_dm_interaction_carries_user_not_member() -> None:
    fake = FakeDiscord(commands=[ASK], spec_path=None)
    payload = fake.dispatch_interaction("ask", {"prompt": "dm"}, dm=True).payload
    assert "member" not in payload
    assert "guild_id" not in payload
    assert payload["user"]["id"] == str(fake.user.id)
    assert payload["context"] == 1
    assert payload["channel"]["type"] == 1
    assert payload["authorizing_integration_owners"] == {"0": "0"}


def test_guild_interaction_payload_is_complete() -> None:
    fake = FakeDiscord(commands=[ASK], spec_path=None)
    first = fake.dispatch_interaction("ask", {"prompt": "hello"})
    second = fake.dispatch_interaction("ask", {"prompt": "again"})
    payload = first.payload
    assert payload["type"] == 2
    assert payload["data"]["name"] == "ask"
    assert payload["data"]["options"] == [{"name": "prompt", "type": 3, "value": "hello"}]
    assert payload["guild_id"] == payload["channel"]["guild_id"] == str(fake.guild_id)
    assert payload["member"]["user"]["id"] == str(fake.user.id)
    assert int(payload["member"]["permissions"]) & (1 << 11)  # SEND_MESSAGES
    assert payload["version"] == 1
    assert payload["context"] == 0
    assert payload["entitlements"] == []
    assert payload["attachment_size_limit"] > 0
    assert first.token != second.token


def test_people_can_only_run_what_is_registered() -> None:
    fake = FakeDiscord(commands=[ASK], spec_path=None)
    with pytest.raises(LookupError):
        fake.dispatch_interaction("nope")
    with pytest.raises(ValueError, match="required"):
        fake.dispatch_interaction("ask")
    with pytest.raises(ValueError, match="no option"):
        fake.dispatch_interaction("ask", {"prompt": "x", "extra": 1})


async def test_invalid_command_name_is_refused(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        bad = [{**ASK, "name": "Ask"}]
        status, body, _ = await call(
            http, fake, "PUT", f"/applications/{fake.application_id}/commands", bad
        )
        assert (status, body["code"]) == (400, 50035)
        assert body["errors"]["0"]["name"]["_errors"][0]["code"] == (
            "APPLICATION_COMMAND_INVALID_NAME"
        )
        assert fake.commands() == []


# Rate limits


async def test_flood_gets_discords_429(http: aiohttp.ClientSession) -> None:
    async with running_fake(limits=RateLimits(channel_messages=Limit(2, 60.0))) as fake:
        route = f"/channels/{fake.channel_id}/messages"
        results = [await call(http, fake, "POST", route, {"content": str(n)}) for n in range(3)]
        assert [status for status, _, _ in results] == [200, 200, 429]
        _, body, response = results[2]
        assert set(body) == {"message", "retry_after", "global"}
        assert body["message"] == "You are being rate limited."
        assert body["global"] is False
        assert 0 < body["retry_after"] <= 60
        assert response.headers["Via"] == "1.1 google"
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["X-RateLimit-Scope"] == "user"
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert results[0][2].headers["X-RateLimit-Remaining"] == "1"
        assert fake.rate_limited == 1
        assert [m.content for m in fake.transcript()] == ["0", "1"]


async def test_client_that_reads_the_headers_is_never_rate_limited() -> None:
    limits = RateLimits(interaction_webhook=Limit(2, 0.2))
    async with running_fake(limits=limits) as fake:
        client = AskClient(answers=[f"part {n}" for n in range(5)])
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            handle = fake.dispatch_interaction("ask", {"prompt": "long"})
            await settled(client.asked.wait())
        assert fake.rate_limited == 0
        assert [m.content for m in handle.messages()] == [f"part {n}: long" for n in range(5)]


# Responses and auth


async def test_responses_carry_exact_json_content_type_and_via(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        status, body, response = await call(http, fake, "GET", "/users/@me")
        assert status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Via"] == "1.1 google"
        assert "X-RateLimit-Bucket" in response.headers
        assert body["id"] == str(fake.bot_user_id)

        handle = fake.dispatch_interaction("ask", {"prompt": "quiet"})
        path = f"/interactions/{handle.id}/{handle.token}/callback"
        status, body, response = await call(http, fake, "POST", path, {"type": 5}, auth=False)
        assert (status, body) == (204, "")
        assert "Content-Type" not in response.headers


async def test_bot_routes_need_the_bot_token(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        status, body, response = await call(http, fake, "GET", "/users/@me", auth=False)
        assert (status, body) == (401, {"message": "401: Unauthorized", "code": 0})
        assert response.headers["Content-Type"] == "application/json"


# The OpenAPI description


async def test_body_against_the_description_is_recorded_not_refused(
    http: aiohttp.ClientSession,
) -> None:
    if not spec_available():
        pytest.skip("Discord's OpenAPI description is not beside this checkout")
    async with running_fake() as fake:
        assert fake.spec_checked
        # The live API takes integer ids here; the description wants snowflake strings.
        body = {"content": "hi", "allowed_mentions": {"parse": [], "users": [123]}}
        status, _, _ = await call(http, fake, "POST", f"/channels/{fake.channel_id}/messages", body)
        assert status == 200
        [violation] = fake.spec_violations
        assert violation.route == "/channels/{channel_id}/messages"
        assert violation.location == "$.allowed_mentions.users[0]"


async def test_a_whole_bot_session_matches_the_description() -> None:
    if not spec_available():
        pytest.skip("Discord's OpenAPI description is not beside this checkout")
    async with running_fake() as fake:
        client = AskClient()
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            ask = fake.dispatch_interaction("ask", {"prompt": "spec?"})
            await settled(client.asked.wait())
            offer = fake.dispatch_interaction("pick")
            shown = await offer.answered()
            assert shown is not None
            await fake.press_button(shown.id, "again").acknowledged()
        assert ask.callback_type == 5
        assert fake.spec_violations == []
        assert fake.response_violations == []


def test_default_token_is_what_the_fake_accepts() -> None:
    assert FakeDiscord(spec_path=None).token == DEFAULT_TOKEN


# Running the real bot in its own process


async def test_launch_runs_the_bot_against_the_fake() -> None:
    async with running_fake() as fake:
        env = {
            **os.environ,
            **fake.env(),
            "DISCORD_TOKEN": fake.token,
            "DISCORD_GUILD_ID": str(fake.guild_id),
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": "not-used",
            "LOG_LEVEL": "WARNING",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.launch",
            env=env,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        exited = asyncio.create_task(process.wait())
        up = asyncio.create_task(
            fake.wait_for(lambda: bool(fake.command_syncs) and fake.gateway.readies_sent > 0)
        )
        await asyncio.wait({exited, up}, return_when=asyncio.FIRST_COMPLETED)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        output, _ = await process.communicate()
        up.cancel()
        await exited
        assert process.returncode == 0, output.decode()
        assert fake.gateway.identifies, output.decode()
        [sync] = fake.command_syncs
        assert sync.guild_id == fake.guild_id
        assert "ask" in sync.names
        assert fake.internal_errors == []


# Moderation, token lifetime and failures the bot must survive


class EditClient(discord.Client):
    """``/ask`` defers and answers "draft: …"; once the test sets :attr:`proceed` it edits
    the answer to "final: …", and :attr:`edited` resolves to how that ended (``None``: the
    edit landed, else discord.py's exception). Records the MESSAGE_DELETEs it receives."""

    def __init__(self, *, intents: discord.Intents | None = None) -> None:
        super().__init__(
            intents=intents or discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.01,
        )
        self.tree = app_commands.CommandTree(self)
        self.drafted = asyncio.Event()
        self.proceed = asyncio.Event()
        self.edited: asyncio.Future[discord.HTTPException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.deleted: list[int] = []
        self.deletion = asyncio.Event()

        @self.tree.command(name="ask", description="Ask a question")
        async def ask(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send(f"draft: {prompt}")
            self.drafted.set()
            await self.proceed.wait()
            try:
                await interaction.edit_original_response(content=f"final: {prompt}")
            except discord.HTTPException as error:
                self.edited.set_result(error)
            else:
                self.edited.set_result(None)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.deleted.append(payload.message_id)
        self.deletion.set()


async def drafted(fake: FakeDiscord, client: EditClient, prompt: str = "q") -> int:
    """Run ``/ask`` and return the id of its answer once it reads "draft: …"."""
    await fake.wait_for(lambda: bool(fake.command_syncs))
    handle = fake.dispatch_interaction("ask", {"prompt": prompt})
    await settled(client.drafted.wait())
    original = handle.original()
    assert original is not None
    assert original.content == f"draft: {prompt}"
    return original.id


UNKNOWN_MESSAGE = {"message": "Unknown Message", "code": 10008}
INVALID_TOKEN = {"message": "Invalid Webhook Token", "code": 50027}


async def test_a_moderator_deletes_an_answer_the_bot_sees_it_and_its_edit_is_unknown() -> None:
    async with running_fake() as fake:
        client = EditClient()
        async with running(client, fake):
            answer_id = await drafted(fake, client)
            fake.delete_message(answer_id)
            await settled(client.deletion.wait())
            client.proceed.set()
            error = await settled(client.edited)
        assert isinstance(error, discord.NotFound)
        assert (error.status, error.code, error.text) == (404, 10008, "Unknown Message")
        assert client.deleted == [answer_id]
        assert fake.gateway.events("MESSAGE_DELETE") == [
            {
                "id": str(answer_id),
                "channel_id": str(fake.channel_id),
                "guild_id": str(fake.guild_id),
            }
        ]
        assert fake.transcript() == []


async def test_a_deleted_message_is_unknown_through_every_route(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "x"})
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        webhook = f"/webhooks/{fake.application_id}/{handle.token}"
        await call(http, fake, "POST", webhook, {"content": "answer"}, auth=False)
        _, followup, _ = await call(http, fake, "POST", webhook, {"content": "more"}, auth=False)
        _, posted, _ = await call(
            http, fake, "POST", f"/channels/{fake.channel_id}/messages", {"content": "post"}
        )
        original_id = handle.interaction.original_id
        assert original_id is not None
        for message_id in (original_id, int(followup["id"]), int(posted["id"])):
            fake.delete_message(message_id)
        by_token = [f"{webhook}/messages/@original", f"{webhook}/messages/{followup['id']}"]
        by_channel = [
            f"/channels/{fake.channel_id}/messages/{message_id}"
            for message_id in (original_id, posted["id"])
        ]
        for path in by_token + by_channel:
            for method in ("GET", "PATCH", "DELETE"):
                fake.clock.advance(5)  # past the token's and the channel's bucket windows
                body = {"content": "edit"} if method == "PATCH" else None
                status, answer, _ = await call(
                    http, fake, method, path, body, auth=path in by_channel
                )
                assert (method, path, status, answer) == (method, path, 404, UNKNOWN_MESSAGE)
        assert fake.transcript() == []
        with pytest.raises(LookupError):
            fake.delete_message(original_id)


@pytest.mark.parametrize(
    ("dm", "guild_messages", "dm_messages", "delivered"),
    [
        (False, True, False, True),
        (False, False, True, False),
        (True, False, True, True),
        (True, True, False, False),
    ],
    ids=["guild+GUILD_MESSAGES", "guild without", "DM+DIRECT_MESSAGES", "DM without"],
)
async def test_message_delete_follows_the_intents(
    http: aiohttp.ClientSession, dm: bool, guild_messages: bool, dm_messages: bool, delivered: bool
) -> None:
    async with running_fake() as fake:
        intents = discord.Intents.default()
        intents.guild_messages = guild_messages
        intents.dm_messages = dm_messages
        client = EditClient(intents=intents)
        async with running(client, fake):
            channel_id = fake.dm_channel_id() if dm else fake.channel_id
            _, posted, _ = await call(
                http, fake, "POST", f"/channels/{channel_id}/messages", {"content": "hi"}
            )
            fake.delete_message(int(posted["id"]))
            if delivered:
                await settled(client.deletion.wait())
        sent = fake.gateway.events("MESSAGE_DELETE")
        assert [event["id"] for event in sent] == ([posted["id"]] if delivered else [])
        assert client.deleted == ([int(posted["id"])] if delivered else [])


async def test_an_ephemeral_message_cannot_be_deleted_by_a_moderator(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "secret"})
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5, "data": {"flags": 64}})
        assert handle.interaction.original_id is not None
        with pytest.raises(LookupError, match="ephemeral"):
            fake.delete_message(handle.interaction.original_id)


async def test_every_use_of_an_expired_token_is_invalid_webhook_token(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "long"})
        await acknowledge(http, fake, handle.id, handle.token, {"type": 5})
        webhook = f"/webhooks/{fake.application_id}/{handle.token}"
        await call(http, fake, "POST", webhook, {"content": "answer"}, auth=False)
        _, followup, _ = await call(http, fake, "POST", webhook, {"content": "more"}, auth=False)
        fake.clock.advance(15 * 60 - 1)
        status, _, _ = await call(http, fake, "GET", f"{webhook}/messages/@original", auth=False)
        assert status == 200  # still inside the 15 minutes
        fake.clock.advance(2)
        requests: list[tuple[str, str, Any]] = [("POST", webhook, {"content": "late"})]
        for path in (f"{webhook}/messages/@original", f"{webhook}/messages/{followup['id']}"):
            requests += [("GET", path, None), ("PATCH", path, {"content": "x"})]
            requests += [("DELETE", path, None)]
        for method, path, body in requests:
            fake.clock.advance(2)  # past the token's bucket window
            status, answer, _ = await call(http, fake, method, path, body, auth=False)
            assert (method, path, status, answer) == (method, path, 401, INVALID_TOKEN)
        assert [m.content for m in handle.messages()] == ["answer", "more"]

        late = fake.dispatch_interaction("ask", {"prompt": "unanswered"})
        fake.clock.advance(15 * 60 + 1)
        status, answer, _ = await acknowledge(http, fake, late.id, late.token, {"type": 5})
        assert (status, answer) == (404, {"message": "Unknown interaction", "code": 10062})


async def test_the_real_client_cannot_edit_after_the_token_expires() -> None:
    async with running_fake() as fake:
        client = EditClient()
        async with running(client, fake):
            await drafted(fake, client)
            fake.clock.advance(15 * 60 + 1)
            client.proceed.set()
            error = await settled(client.edited)
        assert isinstance(error, discord.HTTPException)
        assert (error.status, error.code) == (401, 50027)
        assert [m.content for m in fake.transcript()] == ["draft: q"]


async def test_an_edit_rate_limited_on_every_attempt_makes_discord_py_give_up() -> None:
    async with running_fake() as fake:
        client = EditClient()
        async with running(client, fake):
            answer_id = await drafted(fake, client)
            fault = fake.rate_limit_requests(
                "PATCH", WEBHOOK_MESSAGES, times=None, retry_after=0.01, message_id=answer_id
            )
            client.proceed.set()
            error = await settled(client.edited)
        assert isinstance(error, discord.HTTPException)
        assert error.status == 429
        edits = [c for c in fake.calls if c.method == "PATCH"]
        assert [(c.status, c.injected) for c in edits] == [(429, True)] * 5  # discord.py's tries
        assert fault.hits == 5
        assert edits[0].response == {
            "message": "The resource is being rate limited.",
            "retry_after": 0.01,
            "global": False,
        }
        assert [m.content for m in fake.transcript()] == ["draft: q"]


async def test_a_cloudflare_ban_fails_the_edit_at_once() -> None:
    async with running_fake() as fake:
        client = EditClient()
        async with running(client, fake):
            await drafted(fake, client)
            fake.rate_limit_requests("PATCH", WEBHOOK_ORIGINAL, times=None, scope="cloudflare")
            client.proceed.set()
            error = await settled(client.edited)
        assert isinstance(error, discord.HTTPException)
        assert error.status == 429
        assert "Error 1015" in error.text
        assert [c.status for c in fake.calls if c.method == "PATCH"] == [429]


async def test_one_server_error_is_retried_by_discord_py_and_the_answer_lands_once() -> None:
    async with running_fake() as fake:
        client = AskClient(answers=("only",))
        fake.fail_requests("POST", FOLLOWUP, status=502)
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            fake.dispatch_interaction("ask", {"prompt": "retry?"})
            await settled(client.asked.wait())
        followups = [c for c in fake.calls if c.route == FOLLOWUP]
        assert [(c.status, c.injected) for c in followups] == [(502, True), (200, False)]
        assert [m.content for m in fake.transcript()] == ["only: retry?"]


async def test_a_503_on_a_channel_send_raises_at_once() -> None:
    async with running_fake() as fake:
        client = AskClient()
        async with running(client, fake):
            await settled(client.wait_until_ready())
            fake.fail_requests("POST", CHANNEL_MESSAGES, status=503)
            channel = client.get_channel(fake.channel_id)
            assert isinstance(channel, discord.TextChannel)
            with pytest.raises(discord.DiscordServerError) as raised:
                await channel.send("hello")
            assert raised.value.status == 503
            sent = await channel.send("again")  # the fault was for one request
        assert [c.status for c in fake.calls if c.route == CHANNEL_MESSAGES] == [503, 200]
        assert [m.content for m in fake.transcript()] == ["again"]
        assert sent.content == "again"


async def test_a_processed_failure_makes_the_change_and_still_fails(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake() as fake:
        route = f"/channels/{fake.channel_id}/messages"
        _, posted, _ = await call(http, fake, "POST", route, {"content": "before"})
        fake.fail_requests("PATCH", CHANNEL_MESSAGE, status=504, processed=True)
        status, body, response = await call(
            http, fake, "PATCH", f"{route}/{posted['id']}", {"content": "after"}
        )
        assert status == 504
        assert response.headers["Content-Type"] == "text/html"
        assert "504 Gateway Time-out" in body
        assert [m.content for m in fake.transcript()] == ["after"]
        assert (fake.calls[-1].status, fake.calls[-1].injected) == (504, True)


def test_faults_are_only_what_discord_can_do() -> None:
    fake = FakeDiscord(spec_path=None)
    with pytest.raises(ValueError, match="global"):
        fake.rate_limit_requests("PATCH", WEBHOOK_ORIGINAL, scope="global")
    with pytest.raises(ValueError, match="serves no"):
        fake.fail_requests("PUT", WEBHOOK_ORIGINAL)
    with pytest.raises(ValueError, match="simulates"):
        fake.fail_requests("POST", CHANNEL_MESSAGES, status=418)
    fault = fake.rate_limit_requests("POST", CHANNEL_MESSAGES, scope="global")
    assert fault.failure.headers["X-RateLimit-Global"] == "true"
    assert fault.failure.body["global"] is True


async def test_sends_edits_and_deletes_in_a_channel_share_its_bucket(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(limits=RateLimits(channel_messages=Limit(4, 60.0))) as fake:
        route = f"/channels/{fake.channel_id}/messages"
        first = await call(http, fake, "POST", route, {"content": "a"})
        second = await call(http, fake, "POST", route, {"content": "b"})
        edit_a = await call(http, fake, "PATCH", f"{route}/{first[1]['id']}", {"content": "a!"})
        delete_b = await call(http, fake, "DELETE", f"{route}/{second[1]['id']}")
        edit_a_again = await call(
            http, fake, "PATCH", f"{route}/{first[1]['id']}", {"content": "?"}
        )
        assert [r[0] for r in (first, second, edit_a, delete_b, edit_a_again)] == [
            200,
            200,
            200,
            204,
            429,
        ]
        buckets = {r[2].headers["X-RateLimit-Bucket"] for r in (first, edit_a, delete_b)}
        assert len(buckets) == 1
        assert edit_a_again[2].headers["X-RateLimit-Scope"] == "user"
        dm = await call(
            http, fake, "POST", f"/channels/{fake.dm_channel_id()}/messages", {"content": "x"}
        )
        assert dm[0] == 200  # another channel, another bucket
        assert [m.content for m in fake.transcript()] == ["a!"]


# People's messages, replies, intents and permissions


class ChatClient(discord.Client):
    """Keeps every message it receives (:attr:`seen`); answers a message that mentions it
    with a reply, typing first (``mention_author`` as :attr:`ping_author` says)."""

    def __init__(self, *, intents: discord.Intents | None = None) -> None:
        super().__init__(
            intents=intents or discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.01,
        )
        self.seen: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.ping_author = False
        self.replied: asyncio.Queue[discord.Message | discord.HTTPException] = asyncio.Queue()
        self.threads: asyncio.Queue[discord.Thread] = asyncio.Queue()

    async def on_message(self, message: discord.Message) -> None:
        if self.user is None or message.author.id == self.user.id:
            return
        self.seen.put_nowait(message)
        if self.user in message.mentions:
            try:
                async with message.channel.typing():
                    sent = await message.reply("pong", mention_author=self.ping_author)
            except discord.HTTPException as error:
                self.replied.put_nowait(error)
            else:
                self.replied.put_nowait(sent)

    async def on_thread_create(self, thread: discord.Thread) -> None:
        self.threads.put_nowait(thread)


async def bot_post(http: aiohttp.ClientSession, fake: FakeDiscord, content: str) -> int:
    status, body, _ = await call(
        http, fake, "POST", f"/channels/{fake.channel_id}/messages", {"content": content}
    )
    assert status == 200, body
    return int(body["id"])


async def test_a_reply_to_the_bot_reaches_it_with_content_and_without_the_intent(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake() as fake:
        client = ChatClient()
        async with running(client, fake):
            alice, bob = fake.users
            question = await bot_post(http, fake, "what next?")
            reply = fake.post_message(alice, "tell me more", reply_to=question)
            got = await settled(client.seen.get())
            assert got.id == reply.id
            assert got.type is discord.MessageType.reply
            assert got.content == "tell me more"
            assert client.user in got.mentions
            assert got.reference is not None
            assert got.reference.message_id == question
            assert isinstance(got.reference.resolved, discord.Message)
            assert got.reference.resolved.content == "what next?"
            assert isinstance(await settled(client.replied.get()), discord.Message)

            fake.post_message(bob, "chatting among ourselves")
            plain = await settled(client.seen.get())
            assert (plain.content, plain.mentions) == ("", [])  # no MESSAGE_CONTENT

            fake.post_message(bob, "quietly", reply_to=question, ping_reply=False)
            quiet = await settled(client.seen.get())
            assert quiet.content == ""  # an unpinged reply is no mention
            assert quiet.reference is not None
            assert quiet.reference.message_id == question

            fake.post_message(bob, "hello there", mention_bot=True)
            mentioned = await settled(client.seen.get())
            assert mentioned.content == f"<@{fake.bot_user_id}> hello there"
        assert reply.notified.users == {fake.bot_user_id}
        assert reply.reply_to == question


async def test_message_content_intent_shows_every_message() -> None:
    async with running_fake(privileged_intents=MESSAGE_CONTENT) as fake:
        intents = discord.Intents.default()
        intents.message_content = True
        client = ChatClient(intents=intents)
        async with running(client, fake):
            fake.post_message(fake.users[1], "anyone?", attachments=[("a.txt", b"hi")])
            got = await settled(client.seen.get())
            assert got.content == "anyone?"
            assert [a.filename for a in got.attachments] == ["a.txt"]


async def test_no_message_events_without_the_messages_intents() -> None:
    async with running_fake(commands=[ASK]) as fake:
        intents = discord.Intents.default()
        intents.guild_messages = False
        intents.dm_messages = False
        client = ChatClient(intents=intents)
        async with running(client, fake):
            fake.post_message(fake.user, "hi", mention_bot=True)
            fake.post_message(fake.user, "hi in private", channel_id=fake.dm_channel_id())
            # An interaction after them arrives; the messages never did.
            handle = fake.dispatch_interaction("ask", {"prompt": "x"})
            await fake.wait_for(lambda: bool(fake.gateway.events("INTERACTION_CREATE")))
        assert fake.gateway.events("MESSAGE_CREATE") == []
        assert client.seen.empty()
        assert handle.id


async def test_a_dm_reaches_the_bot_with_its_content() -> None:
    async with running_fake() as fake:
        client = ChatClient()
        async with running(client, fake):
            fake.post_message(fake.user, "just us", channel_id=fake.dm_channel_id())
            got = await settled(client.seen.get())
            assert got.content == "just us"
            assert isinstance(got.channel, discord.DMChannel)


async def test_the_bots_reply_types_first_references_and_pings_only_when_asked() -> None:
    async with running_fake() as fake:
        client = ChatClient()
        async with running(client, fake):
            alice = fake.user
            asked = fake.post_message(alice, "ping?", mention_bot=True)
            quiet = await settled(client.replied.get())
            client.ping_author = True
            asked_again = fake.post_message(alice, "again?", mention_bot=True)
            loud = await settled(client.replied.get())
        assert isinstance(quiet, discord.Message)
        assert isinstance(loud, discord.Message)
        [first] = fake.replies_to(asked.id)
        [second] = fake.replies_to(asked_again.id)
        assert (first.content, first.author_id, first.reply_to) == (
            "pong",
            fake.bot_user_id,
            asked.id,
        )
        assert not first.notified.any
        assert second.notified.users == {alice.id}
        posts = [c for c in fake.calls if c.route in (CHANNEL_MESSAGES, TYPING)]
        assert [c.route for c in posts] == [TYPING, CHANNEL_MESSAGES] * 2
        assert posts[1].response["referenced_message"]["id"] == str(asked.id)
        assert posts[1].response["message_reference"] == {
            "type": 0,
            "message_id": str(asked.id),
            "channel_id": str(fake.channel_id),
            "guild_id": str(fake.guild_id),
        }
        assert [t[:2] for t in fake.typing] == [(fake.channel_id, fake.bot_user_id)] * 2
        typing_events = fake.gateway.events("TYPING_START")  # default intents include typing
        assert [e["user_id"] for e in typing_events] == [str(fake.bot_user_id)] * 2


async def test_reply_references_are_checked(http: aiohttp.ClientSession) -> None:
    async with running_fake() as fake:
        route = f"/channels/{fake.channel_id}/messages"
        target = await bot_post(http, fake, "target")
        reply = {"content": "re", "message_reference": {"message_id": str(target)}}
        status, body, _ = await call(http, fake, "POST", route, reply)
        assert (status, body["type"], body["referenced_message"]["content"]) == (200, 19, "target")

        missing = {"content": "re", "message_reference": {"message_id": "1"}}
        status, body, _ = await call(http, fake, "POST", route, missing)
        assert (status, body["code"]) == (400, 50035)
        assert body["errors"]["message_reference"]["_errors"][0]["code"] == (
            "MESSAGE_REFERENCE_UNKNOWN_MESSAGE"
        )
        lenient = {
            "content": "plain",
            "message_reference": {"message_id": "1", "fail_if_not_exists": False},
        }
        status, body, _ = await call(http, fake, "POST", route, lenient)
        assert (status, body["type"], "message_reference" in body) == (200, 0, False)

        other = f"/channels/{fake.dm_channel_id()}/messages"
        status, body, _ = await call(http, fake, "POST", other, reply)
        assert (status, body["code"]) == (400, 50035)  # the message is in another channel

        fake.delete_message(target)
        fake.clock.advance(5)
        status, body, _ = await call(http, fake, "GET", f"{route}/{int(fake.transcript()[0].id)}")
        assert (status, body["referenced_message"]) == (200, None)


@pytest.mark.parametrize(
    ("deny", "status", "code"),
    [
        (READ_MESSAGE_HISTORY, 403, 160002),
        (SEND_MESSAGES, 403, 50013),
        (VIEW_CHANNEL, 403, 50001),
    ],
    ids=["no history", "no send", "no view"],
)
async def test_a_reply_needs_the_channel_permissions(
    http: aiohttp.ClientSession, deny: int, status: int, code: int
) -> None:
    async with running_fake() as fake:
        route = f"/channels/{fake.channel_id}/messages"
        target = await bot_post(http, fake, "target")
        fake.set_permissions(deny=deny)
        reply = {"content": "re", "message_reference": {"message_id": str(target)}}
        answer = await call(http, fake, "POST", route, reply)
        assert (answer[0], answer[1]["code"]) == (status, code)
        fake.set_permissions()  # the overwrite removed
        assert (await call(http, fake, "POST", route, reply))[0] == 200


async def test_the_real_client_sees_a_permission_change_and_its_reply_is_refused() -> None:
    async with running_fake() as fake:
        client = ChatClient()
        async with running(client, fake):
            await settled(client.wait_until_ready())
            guild = client.get_guild(fake.guild_id)
            channel = client.get_channel(fake.channel_id)
            assert guild is not None
            assert isinstance(channel, discord.TextChannel)
            assert channel.permissions_for(guild.me).read_message_history
            fake.set_permissions(deny=READ_MESSAGE_HISTORY)
            await fake.wait_for(lambda: bool(fake.gateway.events("CHANNEL_UPDATE")))
            fake.post_message(fake.user, "reply please", mention_bot=True)
            refused = await settled(client.replied.get())
            assert not channel.permissions_for(guild.me).read_message_history
        assert isinstance(refused, discord.Forbidden)
        assert (refused.code, refused.text) == (
            160002,
            "Cannot reply without permission to read message history",
        )


async def test_reading_a_message_over_rest_follows_the_message_content_intent(
    http: aiohttp.ClientSession,
) -> None:
    for enabled, expected in ((0, ""), (MESSAGE_CONTENT, "secret plans")):
        async with running_fake(privileged_intents=enabled) as fake:
            posted = fake.post_message(fake.user, "secret plans")
            mentioned = fake.post_message(fake.user, "hey", mention_bot=True)
            route = f"/channels/{fake.channel_id}/messages"
            status, body, _ = await call(http, fake, "GET", f"{route}/{posted.id}")
            assert (status, body["content"]) == (200, expected)
            _, body, _ = await call(http, fake, "GET", f"{route}/{mentioned.id}")
            assert body["content"] == f"<@{fake.bot_user_id}> hey"


async def test_people_can_only_post_what_the_client_allows() -> None:
    async with running_fake() as fake:
        alice, bob = fake.users
        with pytest.raises(ValueError, match="50006"):
            fake.post_message(alice, "   ")
        with pytest.raises(ValueError, match="50035"):
            fake.post_message(alice, "x" * 2001)
        with pytest.raises(LookupError):
            fake.post_message(alice, "hi", channel_id=fake.dm_channel_id(bob))
        with pytest.raises(LookupError):
            fake.post_message(alice, "re", reply_to=12345)
        fake.set_permissions(deny=SEND_MESSAGES, target=alice)
        with pytest.raises(LookupError):
            fake.post_message(alice, "muted")
        assert fake.post_message(bob, "fine").content == "fine"


# Threads


async def test_a_thread_under_the_channel_carries_messages_both_ways() -> None:
    async with running_fake(commands=[ASK]) as fake:
        client = ChatClient()
        async with running(client, fake):
            await settled(client.wait_until_ready())
            thread_id = fake.create_thread("questions")
            thread = await settled(client.threads.get())
            assert (thread.id, thread.parent_id, thread.name) == (
                thread_id,
                fake.channel_id,
                "questions",
            )
            fake.post_message(fake.user, "in here", channel_id=thread_id, mention_bot=True)
            got = await settled(client.seen.get())
            assert got.channel.id == thread_id
            assert isinstance(await settled(client.replied.get()), discord.Message)
        [asked, answer] = fake.transcript(thread_id)
        assert (answer.content, answer.reply_to) == ("pong", asked.id)
        assert fake.transcript() == []  # nothing leaked into the parent


async def test_sending_in_a_thread_needs_send_messages_in_threads(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        thread_id = fake.create_thread("t")
        in_thread = f"/channels/{thread_id}/messages"
        in_parent = f"/channels/{fake.channel_id}/messages"
        fake.set_permissions(deny=SEND_MESSAGES_IN_THREADS)  # on the parent
        assert (await call(http, fake, "POST", in_thread, {"content": "x"}))[1]["code"] == 50013
        assert (await call(http, fake, "POST", in_parent, {"content": "x"}))[0] == 200
        fake.set_permissions(deny=SEND_MESSAGES)  # threads still work
        assert (await call(http, fake, "POST", in_thread, {"content": "y"}))[0] == 200
        assert (await call(http, fake, "POST", in_parent, {"content": "y"}))[1]["code"] == 50013
        assert (await call(http, fake, "POST", f"/channels/{thread_id}/typing"))[0] == 204
        with pytest.raises(ValueError, match="overwrites"):
            fake.set_permissions(thread_id, deny=SEND_MESSAGES)
        handle = fake.dispatch_interaction("ask", {"prompt": "here"}, channel_id=thread_id)
        assert handle.payload["channel"]["parent_id"] == str(fake.channel_id)
        assert not int(handle.payload["app_permissions"]) & SEND_MESSAGES


async def test_an_ask_in_a_thread_is_answered_there() -> None:
    async with running_fake() as fake:
        thread_id = fake.create_thread("follow-ups")
        client = AskClient(answers=("there",))
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            await settled(client.wait_until_ready())
            known = client.get_channel(thread_id)  # from GUILD_CREATE's active threads
            assert isinstance(known, discord.Thread)
            assert known.parent_id == fake.channel_id
            fake.dispatch_interaction("ask", {"prompt": "?"}, channel_id=thread_id)
            await settled(client.asked.wait())
        assert [m.content for m in fake.transcript(thread_id)] == ["there: ?"]
        assert fake.transcript() == []


# Modals


class QuestionModal(discord.ui.Modal, title="Follow up"):
    question: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Your question", style=discord.TextStyle.paragraph, custom_id="question"
    )
    note: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Anything else", custom_id="note", required=False
    )

    def __init__(self, *, update: bool) -> None:
        super().__init__(custom_id="follow-up")
        self.update = update

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = f"you asked: {self.question.value} ({self.note.value or 'no note'})"
        if self.update:
            await interaction.response.edit_message(content=text, view=None)
        else:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send(text)


class FollowUpView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Follow up", custom_id="follow")
    async def follow(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.send_modal(QuestionModal(update=True))


class ModalClient(discord.Client):
    """``/ask`` opens the question modal; :meth:`offer` posts a channel message with a
    "Follow up" button that opens it too."""

    def __init__(self) -> None:
        super().__init__(
            intents=discord.Intents.default(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.01,
        )
        self.tree = app_commands.CommandTree(self)

        @self.tree.command(name="ask", description="Ask a question")
        async def ask(interaction: discord.Interaction, prompt: str) -> None:
            await interaction.response.send_modal(QuestionModal(update=False))

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def offer(self, channel_id: int) -> discord.Message:
        channel = self.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        return await channel.send("want more?", view=FollowUpView())


async def test_a_modal_opens_and_its_submission_is_answered() -> None:
    async with running_fake() as fake:
        client = ModalClient()
        async with running(client, fake):
            await fake.wait_for(lambda: bool(fake.command_syncs))
            opened = fake.dispatch_interaction("ask", {"prompt": "x"})
            assert await opened.acknowledged() == 9
            assert opened.modal is not None
            assert (opened.modal["title"], opened.modal["custom_id"]) == ("Follow up", "follow-up")
            submitted = fake.submit_modal(opened, {"question": "why?"})
            assert submitted.payload["type"] == 5
            assert submitted.payload["data"]["custom_id"] == "follow-up"
            answer = await submitted.answered()
        assert answer is not None
        assert answer.content == "you asked: why? (no note)"
        assert fake.transcript()[0].interaction_id == submitted.id
        with pytest.raises(LookupError, match="closed"):
            fake.submit_modal(opened, {"question": "again"})
        if spec_available():
            assert fake.spec_violations == []
            assert fake.response_violations == []


async def test_a_button_on_a_channel_message_opens_a_modal_that_updates_the_message() -> None:
    async with running_fake() as fake:
        client = ModalClient()
        async with running(client, fake):
            await settled(client.wait_until_ready())
            offer = await client.offer(fake.channel_id)
            press = fake.press_button(offer.id, "follow")
            assert press.payload["message"]["id"] == str(offer.id)
            assert await press.acknowledged() == 9
            submitted = fake.submit_modal(press, {"question": "how?", "note": "thanks"})
            assert submitted.payload["message"]["id"] == str(offer.id)
            assert await submitted.acknowledged() == 7
        [message] = fake.transcript()
        assert (message.id, message.content, message.components) == (
            offer.id,
            "you asked: how? (thanks)",
            [],
        )
        if spec_available():
            assert fake.spec_violations == []
            assert fake.response_violations == []


async def test_a_person_can_only_submit_what_the_modal_allows(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "x"})
        text_input = {"type": 4, "custom_id": "q", "style": 2, "max_length": 10}
        modal = {
            "custom_id": "m",
            "title": "Ask",
            "components": [
                {"type": 18, "label": "Question", "component": text_input},
                {"type": 10, "content": "Be nice"},
            ],
        }
        status, _, _ = await acknowledge(
            http, fake, handle.id, handle.token, {"type": 9, "data": modal}
        )
        assert status == 200
        with pytest.raises(ValueError, match="required"):
            fake.submit_modal(handle, {})
        with pytest.raises(ValueError, match="no text input"):
            fake.submit_modal(handle, {"q": "ok", "other": "x"})
        with pytest.raises(ValueError, match="characters"):
            fake.submit_modal(handle, {"q": "x" * 11})
        with pytest.raises(LookupError, match="shown"):
            fake.submit_modal(handle, {"q": "ok"}, user=fake.users[1])
        submitted = fake.submit_modal(handle, {"q": "ok"})
        assert submitted.payload["data"]["components"] == [
            {
                "type": 18,
                "id": 1,
                "component": {"type": 4, "id": 2, "custom_id": "q", "value": "ok"},
            },
            {"type": 10, "id": 3},
        ]


def _modal(**changes: Any) -> dict[str, Any]:
    text_input = {"type": 4, "custom_id": "q", "style": 1, "label": "Question"}
    data: dict[str, Any] = {
        "custom_id": "m",
        "title": "Ask",
        "components": [{"type": 1, "components": [text_input]}],
    }
    data.update(changes)
    return {"type": 9, "data": data}


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        (_modal(title="x" * 46), ["title"], "BASE_TYPE_BAD_LENGTH"),
        (_modal(components=[]), ["components"], "BASE_TYPE_BAD_LENGTH"),
        (
            _modal(components=[{"type": 10, "content": "hi"}] * 6),
            ["components"],
            "BASE_TYPE_BAD_LENGTH",
        ),
        (_modal(custom_id=None), ["custom_id"], "BASE_TYPE_REQUIRED"),
        (
            _modal(
                components=[{"type": 1, "components": [{"type": 4, "custom_id": "q", "style": 1}]}]
            ),
            ["components", "0", "components", "0", "label"],
            "BASE_TYPE_REQUIRED",
        ),
        (
            _modal(
                components=[
                    {
                        "type": 18,
                        "label": "A",
                        "component": {"type": 4, "custom_id": "q", "style": 1},
                    },
                    {
                        "type": 18,
                        "label": "B",
                        "component": {"type": 4, "custom_id": "q", "style": 2},
                    },
                ]
            ),
            ["components", "1", "component", "custom_id"],
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        ),
        (
            _modal(
                components=[
                    {
                        "type": 18,
                        "label": "A",
                        "component": {"type": 4, "custom_id": "q", "style": 1, "max_length": 4001},
                    }
                ]
            ),
            ["components", "0", "component", "max_length"],
            "NUMBER_TYPE_MAX",
        ),
    ],
    ids=[
        "long title",
        "no components",
        "six components",
        "no custom_id",
        "row input without label",
        "duplicate ids",
        "max_length",
    ],
)
async def test_a_modal_discord_would_not_show_is_invalid_form_body(
    http: aiohttp.ClientSession, body: dict[str, Any], path: list[str], code: str
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        handle = fake.dispatch_interaction("ask", {"prompt": "x"})
        status, answer, _ = await acknowledge(http, fake, handle.id, handle.token, body)
        assert (status, answer["code"]) == (400, 50035)
        node = answer["errors"]
        for key in path:
            node = node[key]
        assert node["_errors"][0]["code"] == code
        assert handle.callback_type is None
        ok = await acknowledge(http, fake, handle.id, handle.token, _modal())
        assert ok[0] == 200
        assert handle.modal is not None


async def test_a_modal_submit_cannot_open_a_modal_or_update_without_a_message(
    http: aiohttp.ClientSession,
) -> None:
    async with running_fake(commands=[ASK]) as fake:
        opened = fake.dispatch_interaction("ask", {"prompt": "x"})
        await acknowledge(http, fake, opened.id, opened.token, _modal())
        submitted = fake.submit_modal(opened, {"q": "v"})
        invalid = "INTERACTION_RESPONSE_TYPE_INVALID"
        for kind in (9, 6, 7):
            status, answer, _ = await acknowledge(
                http, fake, submitted.id, submitted.token, {"type": kind, "data": {"content": "x"}}
            )
            assert (status, answer["errors"]["type"]["_errors"][0]["code"]) == (400, invalid)
        status, _, _ = await acknowledge(http, fake, submitted.id, submitted.token, {"type": 5})
        assert status == 200
