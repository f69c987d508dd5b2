"""Streamed answers end to end: what the channel shows while the model writes, and after.

The model's stream is stepped from the test (`gated_stream`), so each assertion about the
channel mid-stream is made while the stream is provably still open. Every message write
the bot made is in `FakeDiscord.calls`, in order: they show how edits were paced.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from bot.answers import replies
from bot.answers.chunking import settled_count
from bot.answers.formatting import final_parts
from bot.answers.streaming import WRITING_MARKER
from bot.discord_app.stop_button import ONLY_ASKER
from bot.model import llm
from tests.fakes.discord import Call, FakeDiscord, InteractionHandle, VisibleMessage
from tests.fakes.openai_server import FakeOpenAI, StreamGate, StreamReply
from tests.stack import FOLLOW_UP, Stack, button_labels, no_live_buttons, run_stack

FOLLOWUP = "/webhooks/{webhook_id}/{webhook_token}"
WEBHOOK_MESSAGE_ROUTES = (
    FOLLOWUP,
    "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
    "/webhooks/{webhook_id}/{webhook_token}/messages/@original",
)
DEFERRED_UPDATE = 6
CHANNEL_MESSAGE = 4


@pytest.fixture(autouse=True)
async def channel_left_clean(fake_discord: FakeDiscord) -> AsyncIterator[None]:
    """After each test (and after the bot has stopped): no 429, no rule broken, and no
    message left loading, marked as still writing, or carrying a button."""
    yield
    assert fake_discord.rate_limited == 0
    assert not fake_discord.spec_violations
    assert not fake_discord.internal_errors
    for message in fake_discord.transcript():
        assert not message.loading
        assert WRITING_MARKER not in message.content
        assert no_live_buttons(message)


# --- What the channel shows ------------------------------------------------------------------


def writes_by_message(discord: FakeDiscord, handle: InteractionHandle) -> dict[int, list[Call]]:
    """Every accepted create or edit of the messages of `handle`, per message id, in order."""
    writes: dict[int, list[Call]] = {}
    for call in discord.calls:
        if (
            call.interaction_id != handle.id
            or call.status != 200
            or call.method not in ("POST", "PATCH")
            or call.route not in WEBHOOK_MESSAGE_ROUTES
        ):
            continue
        writes.setdefault(int(call.response["id"]), []).append(call)
    return writes


def content_of(call: Call) -> str:
    content = call.body["content"]
    assert isinstance(content, str)
    return content


def is_live(message: VisibleMessage) -> bool:
    """Shows the "still writing" marker and a Stop button."""
    return message.content.endswith(WRITING_MARKER) and stop_button_of(message) is not None


def stop_button_of(message: VisibleMessage) -> str | None:
    for row in message.components:
        for component in row.get("components") or []:
            if component.get("label") == "Stop":
                custom_id = component["custom_id"]
                assert isinstance(custom_id, str)
                return custom_id
    return None


def without_marker(content: str) -> str:
    assert content.endswith(WRITING_MARKER), content
    return content.removesuffix(WRITING_MARKER)


async def shown(
    stack: Stack, handle: InteractionHandle, ready: Callable[[list[VisibleMessage]], bool]
) -> list[VisibleMessage]:
    """Wait until the messages of `handle` satisfy `ready`; return them."""
    await stack.discord.wait_for(lambda: ready(stack.messages_of(handle)))
    return stack.messages_of(handle)


async def showing_live(stack: Stack, handle: InteractionHandle, text: str) -> VisibleMessage:
    """Wait until the last message of `handle` shows `text` (as written so far) and is live."""
    messages = await shown(
        stack,
        handle,
        lambda found: bool(found) and is_live(found[-1]) and text in found[-1].content,
    )
    return messages[-1]


async def stream_in(gate: StreamGate, text: str, size: int) -> None:
    for start in range(0, len(text), size):
        await gate.send(text[start : start + size])


# --- Answers used below ------------------------------------------------------------------------


def paragraph(topic: int, sentences: int) -> str:
    return " ".join(
        f"Point {topic}.{index} adds one more careful detail to the explanation."
        for index in range(sentences)
    )


def code_block(topic: int, lines: int) -> str:
    body = "\n".join(
        f"def step_{topic}_{index}(value: int) -> int:\n    return value * {index} + {topic}"
        for index in range(lines)
    )
    return f"```python\n{body}\n```"


def long_answer_with_code() -> str:
    # Each code block is too long for one message, so some are cut inside.
    sections = [f"{paragraph(topic, 8)}\n\n{code_block(topic, 36)}" for topic in range(3)]
    return "\n\n".join([*sections, "That is the whole program."])


def split_inside_code(parts: Sequence[str]) -> bool:
    """Whether some message boundary falls inside a code block (closed, then reopened)."""
    return any(part.startswith("```python\n") for part in parts[1:])


# --- First text, growth, the marker ----------------------------------------------------------


async def test_first_text_shows_while_the_stream_is_still_open(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Say hello")
    request = await gate.started()
    await gate.send("Hello")

    live = await showing_live(stack, handle, "Hello")
    assert not live.loading  # "thinking…" is gone as soon as there is text
    assert live.content == "Hello" + WRITING_MARKER
    assert len(stack.messages_of(handle)) == 1
    assert request.outcome is None  # the model is still writing

    await gate.send(" there, how can I help?")
    await gate.finish()
    asked = await stack.finished(handle)
    assert asked.outcome == "answered"
    assert asked.contents == ["Hello there, how can I help?"]


async def test_channel_follows_a_slow_stream_piece_by_piece(stack: Stack) -> None:
    pieces = ["The", " capital", " of", " France", " is", " Paris."]
    gate = stack.model.gated_stream()
    handle = stack.send("What is the capital of France?")
    await gate.started()
    written = ""
    for piece in pieces:
        await gate.send(piece)
        written += piece
        live = await showing_live(stack, handle, written)
        assert without_marker(live.content) == written
    await gate.finish()

    asked = await stack.finished(handle)
    assert asked.contents == ["The capital of France is Paris."]
    writes = writes_by_message(stack.discord, handle)
    assert list(writes) == [asked.messages[0].id]
    shown_texts = [content_of(call) for call in writes[asked.messages[0].id]]
    # Every piece was on screen before the next one arrived, then the final edit.
    assert [without_marker(text) for text in shown_texts[:-1]] == [
        "".join(pieces[: count + 1]) for count in range(len(pieces))
    ]
    assert shown_texts[-1] == "The capital of France is Paris."


async def test_timed_stream_shows_only_growing_prefixes_of_the_answer(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    answer = paragraph(1, 12)
    fake_openai.script(StreamReply(answer, interval=0.01))
    interval = 0.1
    overrides = {"STREAM_EDIT_INTERVAL": str(interval)}
    async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
        handle = stack.send("Explain it slowly")
        asked = await stack.finished(handle)

    assert asked.outcome == "answered"
    assert asked.contents == [answer]
    [calls] = writes_by_message(fake_discord, handle).values()
    *progress, final = calls
    assert content_of(final) == answer
    # The Stop button goes with the marker; the last message offers a follow-up.
    assert button_labels(final.body["components"]) == [FOLLOW_UP]
    for call in progress:
        assert answer.startswith(without_marker(content_of(call)))
        assert call.body["components"], "a message still growing carries the Stop button"
    # Progress edits of one message are never closer together than STREAM_EDIT_INTERVAL
    # (the fake records each call after handling it, and the bot paces from when the
    # previous edit came back, so the recorded gaps can only be longer). The final edit is
    # not paced: it goes as soon as the model is done.
    for before, after in itertools.pairwise(progress):
        assert before.since_dispatch is not None
        assert after.since_dispatch is not None
        assert after.since_dispatch - before.since_dispatch >= interval - 0.001


async def test_deltas_arriving_while_an_edit_waits_are_coalesced(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    words = [f" word{index}" for index in range(60)]
    gate = fake_openai.gated_stream()
    async with run_stack(fake_discord, fake_openai, tmp_path, {"STREAM_EDIT_INTERVAL": "1.5"}) as (
        stack
    ):
        handle = stack.send("Count to sixty")
        await gate.started()
        await gate.send("Counting:")
        await showing_live(stack, handle, "Counting:")
        # Sixty deltas, sent within the message's edit interval (each takes a loopback
        # round trip), while the bot waits to edit it again.
        for word in words:
            await gate.send(word)
        await showing_live(stack, handle, "word59")
        [calls] = writes_by_message(fake_discord, handle).values()
        # One edit carries them all: the text is read after the wait, not before it.
        assert [content_of(call) for call in calls] == [
            "Counting:" + WRITING_MARKER,
            "Counting:" + "".join(words) + WRITING_MARKER,
        ]
        await gate.finish()
        asked = await stack.finished(handle)

    answer = "Counting:" + "".join(words)
    assert asked.contents == [answer]
    [calls] = writes_by_message(fake_discord, handle).values()
    assert len(calls) == 3
    assert content_of(calls[-1]) == answer


async def test_each_answer_paces_its_own_messages(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """An answer waiting to edit its message never holds up another answer's first text."""
    first_gate = fake_openai.gated_stream()
    second_gate = fake_openai.gated_stream()
    async with run_stack(fake_discord, fake_openai, tmp_path, {"STREAM_EDIT_INTERVAL": "3"}) as (
        stack
    ):
        first = stack.send("First question")
        await first_gate.started()
        await first_gate.send("One")
        await showing_live(stack, first, "One")
        await first_gate.send(" more")  # this edit now waits out the first message's interval

        second = stack.send("Second question")
        await second_gate.started()
        await second_gate.send("Two")
        await showing_live(stack, second, "Two")
        [first_message] = stack.messages_of(first)
        assert without_marker(first_message.content) == "One"  # still waiting its turn

        await first_gate.finish()
        await second_gate.finish()
        assert (await stack.finished(first)).contents == ["One more"]
        assert (await stack.finished(second)).contents == ["Two"]


# --- Endings other than a complete answer ----------------------------------------------------


async def test_stream_dropped_midway_keeps_the_text_and_adds_one_note(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Tell me about rivers")
    request = await gate.started()
    await gate.send("Rivers flow downhill")
    await gate.send(" towards the sea")
    await showing_live(stack, handle, "towards the sea")
    await gate.drop()

    asked = await stack.finished(handle)
    assert asked.outcome == "interrupted"
    assert await request.finished() == "dropped"
    note = replies.interrupted_note(llm.ProviderUnavailable("connection dropped"))
    assert asked.contents == [f"Rivers flow downhill towards the sea\n\n{note}"]
    assert asked.contents[0].count("interrupted") == 1


async def test_stream_dropped_before_any_text_shows_only_the_error(stack: Stack) -> None:
    stack.model.script(StreamReply("Never seen", drop_after=0))
    asked = await stack.ask("Tell me about lakes")
    assert asked.outcome == "unavailable"
    assert asked.contents == [replies.error_message(llm.ProviderUnavailable("dropped"))]


async def test_dropped_code_block_is_closed_before_the_note(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Show me a loop")
    await gate.started()
    await gate.send("Here:\n\n```python\nfor item in items:\n")
    live = await showing_live(stack, handle, "for item in items:")
    # While written, the open block is closed so the marker renders as text.
    assert without_marker(live.content) == "Here:\n\n```python\nfor item in items:\n```"
    await gate.drop()

    asked = await stack.finished(handle)
    note = replies.interrupted_note(llm.ProviderUnavailable("connection dropped"))
    assert asked.contents == [f"Here:\n\n```python\nfor item in items:\n```\n\n{note}"]


async def test_length_limit_adds_the_cut_off_note(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    handle = stack.send("Write a long essay")
    await gate.started()
    await gate.send("Essays begin with a thesis and")
    await showing_live(stack, handle, "thesis and")
    await gate.finish("length")

    asked = await stack.finished(handle)
    assert asked.outcome == "truncated"
    assert asked.contents == [f"Essays begin with a thesis and\n\n{replies.TRUNCATED_NOTE}"]


# --- The Stop button -------------------------------------------------------------------------


async def test_asker_stops_the_generation_and_keeps_the_partial_answer(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    alice = stack.discord.users[0]
    handle = stack.send("Tell me a long story", user=alice)
    request = await gate.started()
    await gate.send("Once upon a time")
    live = await showing_live(stack, handle, "Once upon a time")
    button = stop_button_of(live)
    assert button is not None

    press = stack.discord.press_button(live.id, button, user=alice)
    # The press changes nothing by itself; the answer's own edit removes the button.
    assert await press.acknowledged() == DEFERRED_UPDATE
    assert await request.finished() == "client_disconnected"  # the model request is cancelled
    asked = await stack.finished(handle)

    assert asked.outcome == "stopped"
    assert asked.contents == [f"Once upon a time\n\n{replies.STOPPED_NOTE}"]
    assert no_live_buttons(asked.messages[0])


async def test_someone_else_cannot_stop_the_generation(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    alice, bob = stack.discord.users[:2]
    handle = stack.send("Tell me a short story", user=alice)
    request = await gate.started()
    await gate.send("Once upon a time")
    live = await showing_live(stack, handle, "Once upon a time")
    button = stop_button_of(live)
    assert button is not None

    press = stack.discord.press_button(live.id, button, user=bob)
    assert await press.acknowledged() == CHANNEL_MESSAGE
    refusal = await press.answered()
    assert refusal is not None
    assert refusal.content == ONLY_ASKER
    assert refusal.ephemeral
    assert refusal.visible_to == bob.id
    assert all(m.content != ONLY_ASKER for m in stack.discord.transcript(viewer=alice))

    # The generation goes on, the button still there for the asker.
    await gate.send(", there was a bot.")
    live = await showing_live(stack, handle, "there was a bot.")
    assert request.outcome is None
    await gate.finish()
    asked = await stack.finished(handle)
    assert asked.outcome == "answered"
    assert asked.contents == ["Once upon a time, there was a bot."]
    assert await request.finished() == "answered"


async def test_stop_on_a_later_message_keeps_every_earlier_one(stack: Stack) -> None:
    answer = "\n\n".join(paragraph(topic, 10) for topic in range(6))
    gate = stack.model.gated_stream()
    alice = stack.discord.users[0]
    handle = stack.send("Explain everything", user=alice)
    request = await gate.started()
    written = answer[:2400]
    await stream_in(gate, written, 200)
    messages = await shown(stack, handle, lambda found: len(found) == 2 and is_live(found[1]))
    assert stop_button_of(messages[0]) is None  # only the message being written has it
    button = stop_button_of(messages[1])
    assert button is not None

    stack.discord.press_button(messages[1].id, button, user=alice)
    assert await request.finished() == "client_disconnected"
    asked = await stack.finished(handle)
    assert asked.outcome == "stopped"
    assert asked.contents == final_parts(written, replies.STOPPED_NOTE)


# --- Crossing the message limit --------------------------------------------------------------


def sealing_checks(discord: FakeDiscord, handle: InteractionHandle, final: Sequence[str]) -> None:
    """Each message but the last got its final content once, without the marker, and was
    never edited after that; the last one was live until its final edit."""
    writes = writes_by_message(discord, handle)
    assert len(writes) == len(final)
    for (message_id, calls), expected in zip(writes.items(), final, strict=True):
        contents = [content_of(call) for call in calls]
        sealing = next(i for i, text in enumerate(contents) if not text.endswith(WRITING_MARKER))
        assert sealing == len(calls) - 1, f"message {message_id} edited after it was sealed"
        assert contents[sealing] == expected


async def test_answer_outgrowing_a_message_seals_it_and_continues_below(stack: Stack) -> None:
    answer = "\n\n".join(paragraph(topic, 9) for topic in range(8))
    final = final_parts(answer)
    assert len(final) >= 3
    gate = stack.model.gated_stream()
    handle = stack.send("Explain everything")
    await gate.started()

    written = answer[:3000]
    await stream_in(gate, written, 150)
    assert settled_count(written) == 1
    messages = await shown(stack, handle, lambda found: len(found) == 2 and is_live(found[1]))
    # Mid-stream, the sealed message already reads exactly as it will in the end.
    assert messages[0].content == final[0]
    assert no_live_buttons(messages[0])
    assert final[1].startswith(without_marker(messages[1].content))

    await stream_in(gate, answer[3000:], 150)
    await gate.finish()
    asked = await stack.finished(handle)
    assert asked.contents == final
    sealing_checks(stack.discord, handle, final)


async def test_code_block_open_at_the_seal_is_closed_and_reopened(stack: Stack) -> None:
    answer = f"{paragraph(0, 4)}\n\n{code_block(0, 60)}\n\nThat is all."
    final = final_parts(answer)
    assert len(final) == 2
    assert split_inside_code(final)
    gate = stack.model.gated_stream()
    handle = stack.send("Write a long program")
    await gate.started()

    # Stop mid-code, well past the first message: the block is open where it was sealed.
    written = answer[:2600]
    assert "```" not in answer[2000:2600]
    await stream_in(gate, written, 100)
    messages = await shown(stack, handle, lambda found: len(found) == 2 and is_live(found[1]))
    assert messages[0].content == final[0]
    assert messages[0].content.endswith("\n```")  # closed at the seal
    live = without_marker(messages[1].content)
    assert live.startswith("```python\n")  # reopened, with its language
    assert live.endswith("\n```")  # and closed again while still growing

    await stream_in(gate, answer[2600:], 100)
    await gate.finish()
    asked = await stack.finished(handle)
    assert asked.contents == final
    sealing_checks(stack.discord, handle, final)


async def test_many_messages_at_once_are_sealed_in_order(stack: Stack) -> None:
    answer = long_answer_with_code()
    final = final_parts(answer)
    assert len(final) >= 4
    assert split_inside_code(final)
    gate = stack.model.gated_stream()
    handle = stack.send("Everything, at once")
    await gate.started()
    await gate.send(answer[:9])
    await showing_live(stack, handle, answer[:9])
    await gate.send(answer[9:])  # one delta spanning several messages
    await gate.finish()

    asked = await stack.finished(handle)
    assert asked.contents == final
    sealing_checks(stack.discord, handle, final)


async def test_streamed_transcript_equals_the_non_streamed_one(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    answer = long_answer_with_code()
    final = final_parts(answer)
    assert len(final) >= 4
    assert split_inside_code(final)
    pieces = [answer[start : start + 37] for start in range(0, len(answer), 37)]
    contents: dict[str, list[str]] = {}
    for streaming in ("true", "false"):
        fake_openai.script(StreamReply(pieces, interval=0.001))
        overrides = {"STREAM_RESPONSES": streaming}
        async with run_stack(fake_discord, fake_openai, tmp_path, overrides) as stack:
            asked = await stack.ask("Write the program", user=fake_discord.users[0])
        assert asked.outcome == "answered"
        contents[streaming] = asked.contents

    assert contents["true"] == contents["false"] == final


async def test_with_streaming_off_the_answer_is_posted_once(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    answer = long_answer_with_code()
    fake_openai.script(StreamReply(answer, interval=0.0))
    async with run_stack(fake_discord, fake_openai, tmp_path, {"STREAM_RESPONSES": "false"}) as (
        stack
    ):
        handle = stack.send("Write the program")
        asked = await stack.finished(handle)
    assert asked.contents == final_parts(answer)
    writes = writes_by_message(fake_discord, handle)
    # One write per message: no progress edits, no marker, no button.
    assert [len(calls) for calls in writes.values()] == [1] * len(asked.contents)
    assert all(WRITING_MARKER not in content_of(calls[0]) for calls in writes.values())
    assert fake_openai.requests[-1].json.get("stream") is not True


async def test_private_answer_streams_only_to_the_asker(stack: Stack) -> None:
    gate = stack.model.gated_stream()
    alice, bob = stack.discord.users[:2]
    handle = stack.send("A private question", user=alice, private=True)
    await gate.started()
    await gate.send("Just for you")
    live = await showing_live(stack, handle, "Just for you")
    assert live.ephemeral
    assert live.visible_to == alice.id
    assert all("Just for you" not in m.content for m in stack.discord.transcript(viewer=bob))
    await gate.send(", privately.")
    await gate.finish()
    asked = await stack.finished(handle)
    assert asked.contents == ["Just for you, privately."]
    assert all(message.ephemeral for message in asked.messages)
