"""What the bot's log handler writes: every line, at every level, without secrets."""

from __future__ import annotations

import logging
import sys
from typing import Any

from bot.logs import REDACTED, Redactor

BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789"
API_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OnNlY3JldA-_secret"


def line(msg: object, *args: object, exc: BaseException | None = None) -> str:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("discord.gateway", logging.DEBUG, __file__, 1, msg, args, exc_info)
    return Redactor(secrets=[BOT_TOKEN, API_KEY]).format(record)


def test_a_gateway_payload_keeps_its_shape_but_loses_token_and_prompt() -> None:
    payload: dict[str, Any] = {
        "t": "INTERACTION_CREATE",
        "op": 0,
        "d": {
            "id": "1311",
            "token": INTERACTION_TOKEN,
            "data": {"name": "ask", "options": [{"name": "prompt", "type": 3, "value": "Hi?"}]},
        },
    }
    written = line("For Shard ID %s: WebSocket Event: %s", None, payload)

    assert INTERACTION_TOKEN not in written
    assert "Hi?" not in written
    assert "'name': 'prompt'" in written, "the payload is still readable"
    assert "INTERACTION_CREATE" in written
    assert payload["d"]["token"] == INTERACTION_TOKEN, "the logged object itself is untouched"


def test_the_identify_payload_hides_the_bot_token() -> None:
    written = line("sending %s", {"op": 2, "d": {"token": BOT_TOKEN, "intents": 1}})

    assert BOT_TOKEN not in written
    assert "'intents': 1" in written


def test_interaction_and_webhook_urls_lose_their_token() -> None:
    callback = f"https://discord.com/api/v10/interactions/1311/{INTERACTION_TOKEN}/callback"
    followup = f"https://discord.com/api/v10/webhooks/42/{INTERACTION_TOKEN}/messages/@original"
    written = line("%s %s with %s has returned %s", "POST", callback, '{"type":5}', 204)
    written += line(
        "Webhook ID %s with %s %s has returned status code %s", 42, "PATCH", followup, 200
    )

    assert INTERACTION_TOKEN not in written
    assert f"/interactions/1311/{REDACTED}/callback" in written
    assert f"/webhooks/42/{REDACTED}/messages/@original" in written


def test_tokens_in_json_text_headers_and_tracebacks_are_hidden() -> None:
    try:
        raise RuntimeError(f"login failed for {BOT_TOKEN} with key {API_KEY}")
    except RuntimeError as error:
        written = line(
            'body {"token": "%s"} headers Authorization: Bot %s',
            INTERACTION_TOKEN,
            "someothertokenvalue123",
            exc=error,
        )

    assert "Traceback" in written, "the traceback is kept"
    for secret in (BOT_TOKEN, API_KEY, INTERACTION_TOKEN, "someothertokenvalue123"):
        assert secret not in written


def test_unknown_tokens_shaped_like_discord_or_openai_ones_are_hidden() -> None:
    other_bot_token = "OTk4ODc3NjY1NTQ0MzMyMjEx.Gabcde.ZYXWVUTSRQPONMLKJIHGFEDCBA98765"
    other_key = "sk-abcdefghijklmnop1234567890"
    written = line("a leaked %s and %s", other_bot_token, other_key)

    assert other_bot_token not in written
    assert other_key not in written


def test_the_bots_own_lines_are_written_as_they_are() -> None:
    message = (
        "ask interaction=1311 user=2874 guild=9012 outcome=answered ack_ms=41 "
        "first_text_ms=812 done_ms=4210 tokens=523 prompt_tokens=20"
    )
    assert line(message).endswith(message)


def test_redaction_does_not_break_on_odd_arguments() -> None:
    written = line("%s %s %s", b"bytes", ("a", ["token", {"token": 1}]), sys.maxsize)

    assert "bytes" in written
    assert "{'token': '[redacted]'}" in written
