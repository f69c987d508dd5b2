"""`/ask` end to end: the real bot, real discord.py and openai SDK, local Discord and model."""

from __future__ import annotations

from tests.fakes.openai_server import Reply
from tests.stack import Stack


async def test_short_answer_replaces_thinking(stack: Stack) -> None:
    stack.model.script(Reply("Paris is the capital of France."))
    asked = await stack.ask("What is the capital of France?")
    assert asked.outcome == "answered"
    assert asked.contents == ["Paris is the capital of France."]
    assert not asked.messages[0].loading
