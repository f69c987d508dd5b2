"""Reasoning models end to end: what Discord shows while the model thinks, and after.

The scripted model sends reasoning both ways real servers do: inline between `<think>` and
`</think>` in the content (Ollama, llama.cpp) and in a delta field of its own
(`reasoning_content` from vLLM and DeepSeek, `reasoning` from OpenRouter). Either way the
reasoning never reaches the answer, its messages or the conversation a follow-up continues;
with SHOW_REASONING=file it is attached to the answer's last message as `reasoning.md`.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from bot.answers import replies
from bot.answers.streaming import WRITING_MARKER
from bot.config import load_settings
from bot.model.llm import Completer
from bot.terminal import Terminal
from tests.fakes.discord import FakeDiscord, InteractionHandle, VisibleMessage
from tests.fakes.openai_server import FakeOpenAI, Reply, StreamGate, StreamReply
from tests.stack import FOLLOW_UP, Stack, button_labels, no_live_buttons, run_stack

STATUS = re.compile(re.escape(replies.THINKING) + r" \d+ s")
REASONING = "The user wants a number. Six times seven is forty-two, so I will say that."
ANSWER = "The answer is 42."


@pytest.fixture(autouse=True)
async def channel_left_clean(fake_discord: FakeDiscord) -> AsyncIterator[None]:
    """After each test: no rule broken, and no message left loading, thinking or writing."""
    yield
    assert not fake_discord.spec_violations
    assert not fake_discord.internal_errors
    for message in fake_discord.transcript():
        assert not message.loading
        assert WRITING_MARKER not in message.content
        assert not STATUS.search(message.content)
        assert no_live_buttons(message)


def thinking(messages: list[VisibleMessage]) -> bool:
    """The answer shows only the status, with its Stop button."""
    return (
        len(messages) == 1
        and STATUS.fullmatch(messages[0].content) is not None
        and "Stop" in button_labels(messages[0].components)
    )


def no_reasoning_in(messages: list[VisibleMessage]) -> bool:
    return not any("forty-two" in message.content for message in messages)


def attachment_data(discord: FakeDiscord, message: VisibleMessage) -> dict[str, bytes]:
    stored = discord.world.messages[message.id]
    return {attachment.filename: attachment.data for attachment in stored.attachments}


def text_input_id(modal: dict[str, Any]) -> str:
    """The custom id of the one text input of a modal the bot showed."""
    for component in modal["components"]:
        child = component.get("component") or (component.get("components") or [{}])[0]
        if child.get("type") == 4:
            return str(child["custom_id"])
    raise LookupError("the modal has no text input")


async def follow_up(stack: Stack, answer: VisibleMessage, question: str) -> InteractionHandle:
    """Press the answer's Follow up button and submit `question` in its modal."""
    custom_id = next(
        str(component["custom_id"])
        for row in answer.components
        for component in row["components"]
        if component.get("label") == FOLLOW_UP
    )
    press = stack.discord.press_button(answer.id, custom_id)
    await stack.discord.wait_for(lambda: press.modal is not None)
    assert press.modal is not None
    return stack.discord.submit_modal(press, {text_input_id(press.modal): question})


def user_texts(body: dict[str, Any]) -> str:
    return "\n".join(str(message.get("content")) for message in body["messages"])


async def test_status_shows_while_the_model_reasons_in_its_own_field(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("What is six times seven?")
    request = await gate.started()
    await gate.send_reasoning("The user wants a number. ")

    await stack.discord.wait_for(lambda: thinking(stack.messages_of(handle)))
    assert request.outcome is None  # still reasoning: the status is not the answer
    await gate.send_reasoning("Six times seven is forty-two, so I will say that.")
    await gate.send("The answer")
    await stack.discord.wait_for(
        lambda: any("The answer" in m.content for m in stack.messages_of(handle))
    )
    assert no_reasoning_in(stack.messages_of(handle))
    await gate.send(" is 42.")
    await gate.finish()

    asked = await stack.finished(handle)
    assert asked.outcome == "answered"
    assert asked.contents == [ANSWER]
    assert asked.messages[0].attachments == []  # SHOW_REASONING is off by default


async def test_status_shows_while_the_model_reasons_inline(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("What is six times seven?")
    await gate.started()
    await gate.send("<think>")
    await gate.send("The user wants a number. Six times seven is forty-two.")

    await stack.discord.wait_for(lambda: thinking(stack.messages_of(handle)))
    await gate.send("</think>\n\n")
    await gate.send(ANSWER)
    await gate.finish()

    asked = await stack.finished(handle)
    assert asked.contents == [ANSWER]


async def test_text_that_turns_out_to_be_reasoning_is_taken_back(stack: Stack) -> None:
    # A chat template that opens `<think>` itself: the model sends only the closing tag.
    gate = stack.model.gated_stream()
    handle = stack.send("What is six times seven?")
    await gate.started()
    await gate.send("Six times seven is forty-two, so I will say that.")
    await stack.discord.wait_for(lambda: not no_reasoning_in(stack.messages_of(handle)))
    await gate.send("</think>")
    await gate.send(ANSWER)
    await gate.finish()

    asked = await stack.finished(handle)
    assert asked.contents == [ANSWER]


@pytest.mark.parametrize(
    "reply",
    [
        StreamReply(ANSWER, reasoning=REASONING),
        StreamReply(ANSWER, reasoning=REASONING, reasoning_field="reasoning"),
        StreamReply(f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"),
    ],
    ids=["reasoning_content", "reasoning", "inline"],
)
async def test_reasoning_never_reaches_the_answer_or_the_conversation(
    stack: Stack, reply: StreamReply
) -> None:
    stack.model.script(reply)
    asked = await stack.ask("What is six times seven?")
    assert asked.outcome == "answered"
    assert asked.contents == [ANSWER]

    handle = await follow_up(stack, asked.messages[-1], "And times eight?")
    followed = await stack.finished(handle)
    assert followed.outcome == "answered"
    history = user_texts(stack.model.requests[-1].json)
    assert ANSWER in history  # the earlier answer is in the conversation...
    assert "forty-two" not in history  # ...its reasoning is not


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "not_streamed"])
async def test_reasoning_attached_as_a_file_when_asked(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, streamed: bool
) -> None:
    if streamed:
        fake_openai.script(StreamReply(f"<think>{REASONING}</think>{ANSWER}"))
    else:
        fake_openai.script(Reply(ANSWER, reasoning=REASONING))
    overrides = {"SHOW_REASONING": "file", "STREAM_RESPONSES": str(streamed).lower()}
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await stack.ask("What is six times seven?")

    assert asked.contents == [ANSWER]
    assert asked.messages[-1].attachments == [replies.REASONING_FILE]
    assert attachment_data(fake_discord, asked.messages[-1]) == {
        replies.REASONING_FILE: f"{REASONING}\n".encode()
    }
    assert FOLLOW_UP in button_labels(asked.messages[-1].components)


async def test_no_file_for_a_model_that_does_not_reason(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(StreamReply(ANSWER))
    async with run_stack(fake_discord, fake_openai, tmp_path, {"SHOW_REASONING": "file"}) as stack:
        asked = await stack.ask("What is six times seven?")
    assert asked.contents == [ANSWER]
    assert asked.messages[-1].attachments == []


async def test_reasoning_attached_to_an_answer_in_the_channel(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(StreamReply(ANSWER, reasoning=REASONING))
    async with run_stack(fake_discord, fake_openai, tmp_path, {"SHOW_REASONING": "file"}):
        question = fake_discord.post_message(
            fake_discord.user, "What is six times seven?", mention_bot=True
        )
        await fake_discord.wait_for(
            lambda: any(reply.attachments for reply in fake_discord.replies_to(question.id))
        )
        answer = fake_discord.replies_to(question.id)
    assert [message.content for message in answer] == [ANSWER]
    assert attachment_data(fake_discord, answer[0]) == {
        replies.REASONING_FILE: f"{REASONING}\n".encode()
    }


# --- The terminal ---------------------------------------------------------------------------


class Screen(io.StringIO):
    """A terminal's stderr: a tty, so the status shows; each write can be waited for."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str, /) -> int:
        self.changed.set()
        return super().write(text)

    async def showing(self, text: str) -> None:
        async with asyncio.timeout(30):
            while text not in self.getvalue():
                self.changed.clear()
                await self.changed.wait()


async def in_terminal(
    model: FakeOpenAI, prompt: str, err: io.StringIO, *, stream: bool, show_reasoning: str
) -> tuple[int, str]:
    settings = load_settings(
        {
            "OPENAI_BASE_URL": model.base_url,
            "STREAM_RESPONSES": str(stream).lower(),
            "STREAM_EDIT_INTERVAL": "0.01",
            "SHOW_REASONING": show_reasoning,
        },
        require_discord=False,
    )
    out = io.StringIO()
    async with openai.AsyncOpenAI(base_url=model.base_url, api_key="k", max_retries=0) as client:
        terminal = Terminal(Completer.from_settings(client, settings), settings, out=out, err=err)
        status = await terminal.answer(prompt)
    return status, out.getvalue()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not_streamed"])
@pytest.mark.parametrize(
    "reply",
    [
        StreamReply(ANSWER, reasoning=REASONING),
        StreamReply(f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"),
        StreamReply(f"{REASONING}</think>{ANSWER}"),
    ],
    ids=["field", "inline", "opened_by_the_template"],
)
async def test_the_terminal_prints_the_answer_alone(
    fake_openai: FakeOpenAI, reply: StreamReply, stream: bool
) -> None:
    fake_openai.script(reply)
    err = Screen()
    status, out = await in_terminal(
        fake_openai, "What is six times seven?", err, stream=stream, show_reasoning="file"
    )
    assert status == 0
    assert out.startswith(f"{ANSWER}\n")
    assert "forty-two" not in out + err.getvalue()
    assert f"{replies.REASONING_FILE}: {len(REASONING) + 1} bytes" in err.getvalue()


async def test_the_terminal_shows_the_status_on_stderr_while_the_model_thinks(
    fake_openai: FakeOpenAI,
) -> None:
    gate: StreamGate = fake_openai.gated_stream()
    err = Screen()
    answering = asyncio.create_task(
        in_terminal(
            fake_openai, "What is six times seven?", err, stream=True, show_reasoning="false"
        )
    )
    await gate.started()
    await gate.send_reasoning(REASONING)
    await err.showing(replies.THINKING.removeprefix("-# "))
    await gate.send(ANSWER)
    await gate.finish()
    status, out = await answering

    assert status == 0
    assert out.startswith(f"{ANSWER}\n")
    assert "Thinking" not in out  # the status is never part of the answer
