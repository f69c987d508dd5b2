"""Conversations end to end: replies to answers, the Follow up button and its modal, /forget.

The real bot runs on the local Discord and the scripted model server. Each test asserts on
what people see in the channel and on the messages the model was sent: a follow-up carries
the earlier turns of its own chain (user turns labelled `【Name】 text`), nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bot.answers import replies
from bot.conversation.context import render_system
from tests.fakes.discord import (
    CHANNEL_MESSAGE,
    CHANNEL_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    FakeDiscord,
    User,
    VisibleMessage,
)
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import FakeOpenAI, Reply, StreamReply, context_length_exceeded
from tests.stack import Asked, Replied, Stack, follow_up_button, run_stack

SYSTEM = "You are a helpful assistant."
NOT_STREAMED = {"STREAM_RESPONSES": "false", "SYSTEM_PROMPT": SYSTEM}
STREAMED = {"STREAM_RESPONSES": "true", "SYSTEM_PROMPT": SYSTEM}
CHAT = "/v1/chat/completions"
CHANNEL_WRITE_ROUTES = (CHANNEL_MESSAGES, CHANNEL_MESSAGE)


@pytest.fixture
async def stack(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Stack]:
    """The bot with whole answers (streaming is checked where it matters)."""
    async with run_stack(fake_discord, fake_openai, tmp_path, NOT_STREAMED) as running:
        yield running


def people(discord: FakeDiscord) -> tuple[User, User]:
    alice, bob = discord.users[:2]
    return alice, bob


def chat_requests(model: FakeOpenAI) -> list[list[dict[str, Any]]]:
    """The `messages` of every chat request the model server received, in order."""
    return [
        list(request.json["messages"])
        for request in model.requests
        if request.path == CHAT and isinstance(request.body, dict)
    ]


def conversation(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each message after the system prompt."""
    assert messages[0]["role"] == "system"
    return [(message["role"], str(message["content"])) for message in messages[1:]]


def last_request(model: FakeOpenAI) -> list[tuple[str, str]]:
    return conversation(chat_requests(model)[-1])


def bot_posts(discord: FakeDiscord) -> list[str]:
    """Every message the bot tried to post or edit in a channel (not interactions)."""
    return [
        f"{call.method} {call.path} -> {call.status}"
        for call in discord.calls
        if call.route in (CHANNEL_MESSAGES, CHANNEL_MESSAGE) and call.method in ("POST", "PATCH")
    ]


async def first_answer(stack: Stack, user: User, prompt: str, answer: str) -> Asked:
    stack.model.script(Reply(answer))
    asked = await stack.ask(prompt, user=user)
    assert asked.outcome == "answered"
    assert asked.contents == [answer]
    return asked


def has_follow_up(message: VisibleMessage) -> bool:
    return follow_up_button(message) is not None


# --- Replies -------------------------------------------------------------------------------


async def test_a_reply_continues_with_the_earlier_turns_streamed_as_a_reply(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with run_stack(fake_discord, fake_openai, tmp_path, STREAMED) as stack:
        alice, _ = people(fake_discord)
        stack.model.script(Reply("Paris."))
        first = await stack.ask("What is the capital of France?", user=alice)
        assert first.contents == ["Paris."]
        assert has_follow_up(first.messages[-1])

        gate = stack.model.gated_stream()
        asked = fake_discord.post_message(
            alice, "And its population?", reply_to=first.messages[-1].id
        )
        await gate.started()
        # "Ask-bot is typing…" shows before anything is posted.
        await fake_discord.wait_for(
            lambda: any(
                channel == fake_discord.channel_id and user == fake_discord.bot_user_id
                for channel, user, _ in fake_discord.typing
            )
        )
        assert fake_discord.replies_to(asked.id) == []
        await gate.send("About two")
        await fake_discord.wait_for(
            lambda: any("About two" in m.content for m in fake_discord.replies_to(asked.id))
        )
        live = fake_discord.replies_to(asked.id)
        assert not has_follow_up(live[-1]), "the button comes with the finished answer"
        await gate.send(" million people.")
        await gate.finish()
        replied = await stack.replied(asked)

    assert replied.outcome == "answered"
    assert replied.contents == ["About two million people."]
    assert replied.messages[0].reply_to == asked.id
    assert replied.messages[0].interaction_id is None
    assert has_follow_up(replied.messages[-1])
    assert not replied.messages[0].notified.users, "the answer pings nobody"
    sent = chat_requests(fake_openai)[-1]
    assert sent[0] == {"role": "system", "content": render_system(SYSTEM)}
    assert conversation(sent) == [
        ("user", "【Alice】 What is the capital of France?"),
        ("assistant", "Paris."),
        ("user", "【Alice】 And its population?"),
    ]


async def test_a_reply_to_a_reply_answer_keeps_the_whole_chain(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a colour.", "Blue.")
    stack.model.script(Reply("Green."))
    second = await stack.post(alice, "Another?", reply_to=first.messages[-1].id)
    stack.model.script(Reply("Red."))
    third = await stack.post(alice, "One more?", reply_to=second.messages[-1].id)
    assert third.contents == ["Red."]
    assert last_request(stack.model) == [
        ("user", "【Alice】 Name a colour."),
        ("assistant", "Blue."),
        ("user", "【Alice】 Another?"),
        ("assistant", "Green."),
        ("user", "【Alice】 One more?"),
    ]


async def test_a_fresh_ask_carries_no_history(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a colour.", "Blue.")
    stack.model.script(Reply("Green."))
    await stack.post(alice, "Another?", reply_to=first.messages[-1].id)
    await first_answer(stack, alice, "What is 2 + 2?", "4.")
    # A fresh question goes as it is: no labels, no earlier turns.
    assert last_request(stack.model) == [("user", "What is 2 + 2?")]


async def test_a_branch_from_an_older_answer_carries_only_its_chain(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a fruit.", "Apple.")
    stack.model.script(Reply("Banana."))
    second = await stack.post(alice, "Another?", reply_to=first.messages[-1].id)
    assert second.contents == ["Banana."]
    # Back to the first answer: the "Another?" branch is not part of this one.
    stack.model.script(Reply("Red or green."))
    branch = await stack.post(alice, "What colour is it?", reply_to=first.messages[-1].id)
    assert branch.contents == ["Red or green."]
    assert last_request(stack.model) == [
        ("user", "【Alice】 Name a fruit."),
        ("assistant", "Apple."),
        ("user", "【Alice】 What colour is it?"),
    ]
    # And the branch continues on its own.
    stack.model.script(Reply("Yes."))
    await stack.post(alice, "Always?", reply_to=branch.messages[-1].id)
    assert [text for _, text in last_request(stack.model)] == [
        "【Alice】 Name a fruit.",
        "Apple.",
        "【Alice】 What colour is it?",
        "Red or green.",
        "【Alice】 Always?",
    ]


async def test_a_reply_to_a_message_that_is_not_the_bots_is_ignored(stack: Stack) -> None:
    alice, bob = people(stack.discord)
    said = stack.discord.post_message(bob, "I like tea.")
    ignored = stack.discord.post_message(alice, "Me too.", reply_to=said.id)
    # Events reach the bot in order: once a later ask is answered it has seen the reply.
    await first_answer(stack, alice, "Hello?", "Hello!")
    assert len(chat_requests(stack.model)) == 1
    assert stack.discord.replies_to(ignored.id) == []
    assert stack.log.message_future(ignored.id).done() is False


async def test_a_mention_without_a_reply_starts_a_new_conversation(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    await first_answer(stack, alice, "Name a fruit.", "Apple.")
    stack.model.script(Reply("Hi Alice."))
    replied = await stack.post(alice, "hello there", mention_bot=True)
    assert replied.outcome == "answered"
    assert replied.contents == ["Hi Alice."]
    assert replied.messages[0].reply_to == replied.asked.id
    assert has_follow_up(replied.messages[-1])
    # The mention is stripped and nothing of the earlier conversation comes along.
    assert last_request(stack.model) == [("user", "hello there")]


async def test_two_users_conversations_in_one_channel_never_mix(stack: Stack) -> None:
    alice, bob = people(stack.discord)
    a1 = await first_answer(stack, alice, "Alice's secret is 1234.", "Noted, Alice.")
    b1 = await first_answer(stack, bob, "Bob likes jazz.", "Noted, Bob.")
    stack.model.script(Reply("A"), Reply("B"))
    a2 = await stack.post(alice, "What is my secret?", reply_to=a1.messages[-1].id)
    alice_sent = last_request(stack.model)
    b2 = await stack.post(bob, "What do I like?", reply_to=b1.messages[-1].id)
    bob_sent = last_request(stack.model)
    assert alice_sent == [
        ("user", "【Alice】 Alice's secret is 1234."),
        ("assistant", "Noted, Alice."),
        ("user", "【Alice】 What is my secret?"),
    ]
    assert bob_sent == [
        ("user", "【Bob】 Bob likes jazz."),
        ("assistant", "Noted, Bob."),
        ("user", "【Bob】 What do I like?"),
    ]
    assert a2.messages[0].reply_to == a2.asked.id
    assert b2.messages[0].reply_to == b2.asked.id
    # Bob joining Alice's public conversation sees it labelled as hers, and his own words
    # as his; Alice's next follow-up stays on her branch.
    stack.model.script(Reply("C"), Reply("D"))
    await stack.post(bob, "Can I join?", reply_to=a2.messages[-1].id)
    assert [text for _, text in last_request(stack.model)][-1] == "【Bob】 Can I join?"
    assert "【Bob】 Bob likes jazz." not in [text for _, text in last_request(stack.model)]
    await stack.post(alice, "Thanks.", reply_to=a2.messages[-1].id)
    assert "【Bob】 Can I join?" not in [text for _, text in last_request(stack.model)]


# --- The Follow up button ------------------------------------------------------------------


async def test_the_button_opens_a_modal_and_continues_in_its_response(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    press = stack.press_follow_up(first.messages[-1], user=alice)
    assert await press.acknowledged() == 9  # a modal
    assert press.modal is not None
    assert "Follow up" in str(press.modal["title"])
    stack.model.script(Reply("It is red."))
    followed = await stack.follow_up(first.messages[-1], "What colour is it?", user=alice)
    assert followed.outcome == "answered"
    # The modal submit's own response, deferred at once like /ask.
    assert followed.handle.callback_type == 5
    assert followed.contents == ["It is red."]
    assert not followed.messages[0].ephemeral
    assert has_follow_up(followed.messages[-1])
    assert last_request(stack.model) == [
        ("user", "【Alice】 Name a planet."),
        ("assistant", "Mars."),
        ("user", "【Alice】 What colour is it?"),
    ]
    # The button of the follow-up continues from there.
    stack.model.script(Reply("Yes."))
    await stack.follow_up(followed.messages[-1], "Always?", user=alice)
    assert len(last_request(stack.model)) == 5


async def test_a_private_answers_follow_up_stays_private(stack: Stack) -> None:
    alice, bob = people(stack.discord)
    stack.model.script(Reply("Your secret is safe."))
    first = await stack.ask("Keep this: 42.", user=alice, private=True)
    assert first.messages[0].ephemeral
    assert has_follow_up(first.messages[-1])
    stack.model.script(Reply("It was 42."))
    followed = await stack.follow_up(first.messages[-1], "What was it?", user=alice)
    assert followed.contents == ["It was 42."]
    assert all(message.ephemeral for message in followed.messages)
    assert all(message.visible_to == alice.id for message in followed.messages)
    assert [m.id for m in stack.discord.transcript(viewer=bob)] == []


async def test_a_follow_up_by_button_is_answered_where_the_bot_cannot_post(
    stack: Stack,
) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    stack.discord.set_permissions(deny=SEND_MESSAGES | READ_MESSAGE_HISTORY)
    stack.model.script(Reply("It is red."))
    followed = await stack.follow_up(first.messages[-1], "What colour?", user=alice)
    assert followed.outcome == "answered"
    assert followed.contents == ["It is red."]


# --- Channel permissions and threads -------------------------------------------------------


@pytest.mark.parametrize(
    "denied", [SEND_MESSAGES, READ_MESSAGE_HISTORY], ids=["send_messages", "read_history"]
)
async def test_a_reply_where_the_bot_may_not_post_logs_one_line_and_posts_nothing(
    stack: Stack, denied: int, caplog: pytest.LogCaptureFixture
) -> None:
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    stack.discord.set_permissions(deny=denied)
    requests_before = len(stack.model.requests)
    with caplog.at_level(logging.INFO, logger="bot"):
        asked = stack.discord.post_message(alice, "What colour?", reply_to=first.messages[-1].id)
        replied = await stack.replied(asked)
    assert replied.outcome == "forbidden"
    # Checked before asking: no tokens are spent on an answer nobody could see.
    assert len(stack.model.requests) == requests_before
    assert replied.messages == []
    assert stack.discord.replies_to(asked.id) == []
    lines = [r.getMessage() for r in caplog.records if "cannot answer in channel" in r.getMessage()]
    assert len(lines) == 1
    needed = "Send Messages" if denied == SEND_MESSAGES else "Read Message History"
    assert needed in lines[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The bot keeps working: the next ask is answered.
    await first_answer(stack, alice, "Still there?", "Yes.")


async def test_replies_in_a_thread_are_answered_in_the_thread(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    thread = stack.discord.create_thread("planets", owner=alice)
    stack.model.script(Reply("Mars is red."))
    opened = await stack.post(alice, "Tell me about Mars.", mention_bot=True, channel_id=thread)
    assert opened.contents == ["Mars is red."]
    assert all(message.channel_id == thread for message in opened.messages)
    stack.model.script(Reply("Two moons."))
    replied = await stack.post(alice, "Moons?", reply_to=opened.messages[-1].id, channel_id=thread)
    assert replied.contents == ["Two moons."]
    assert replied.messages[0].channel_id == thread
    assert last_request(stack.model) == [
        ("user", "【Alice】 Tell me about Mars."),
        ("assistant", "Mars is red."),
        ("user", "【Alice】 Moons?"),
    ]
    # Nothing of it reached the parent channel.
    assert [m.content for m in stack.discord.transcript() if m.author_id != alice.id] == []


async def test_a_thread_needs_send_messages_in_threads(stack: Stack) -> None:
    alice, _ = people(stack.discord)
    thread = stack.discord.create_thread("planets", owner=alice)
    stack.discord.set_permissions(deny=SEND_MESSAGES_IN_THREADS)
    stack.model.script(Reply("Mars is red."))
    replied = await stack.post(alice, "Mars?", mention_bot=True, channel_id=thread)
    assert replied.outcome == "forbidden"
    assert replied.messages == []


# --- Long conversations --------------------------------------------------------------------


async def test_a_long_conversation_in_a_small_window_keeps_being_answered(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    small = {**NOT_STREAMED, "CONTEXT_TOKENS": "600", "MAX_OUTPUT_TOKENS": "100"}
    async with run_stack(fake_discord, fake_openai, tmp_path, small) as stack:
        alice, _ = people(fake_discord)
        words = " ".join(["word"] * 40)
        last = await first_answer(stack, alice, f"Turn 0: {words}", f"Answer 0: {words}")
        replied: Replied | None = None
        for turn in range(1, 12):
            stack.model.script(Reply(f"Answer {turn}: {words}"))
            replied = await stack.post(
                alice, f"Turn {turn}: {words}", reply_to=(replied or last).messages[-1].id
            )
            assert replied.outcome == "answered", turn
    assert replied is not None
    sent = last_request(fake_openai)
    # The newest prompt always goes; the oldest turns were dropped in whole pairs.
    assert sent[-1] == ("user", f"【Alice】 Turn 11: {words}")
    assert ("user", f"【Alice】 Turn 0: {words}") not in sent
    assert [role for role, _ in sent] == ["user", "assistant"] * (len(sent) // 2) + ["user"]
    assert replied.contents[-1].endswith(replies.OLDER_TURNS_LEFT_OUT)
    assert replied.contents[0].startswith("Answer 11:")


async def test_a_provider_saying_too_long_gets_one_retry_with_half_the_history(
    stack: Stack,
) -> None:
    alice, _ = people(stack.discord)
    previous: VisibleMessage = (await first_answer(stack, alice, "Turn 0", "Answer 0")).messages[-1]
    for turn in range(1, 4):
        stack.model.script(Reply(f"Answer {turn}"))
        previous = (await stack.post(alice, f"Turn {turn}", reply_to=previous.id)).messages[-1]
    before = len(chat_requests(stack.model))
    stack.model.script(context_length_exceeded(limit=50, requested=80), Reply("Answer 4"))
    replied = await stack.post(alice, "Turn 4", reply_to=previous.id)
    assert replied.outcome == "answered"
    assert replied.contents[0].startswith("Answer 4")
    full, retried = (conversation(m) for m in chat_requests(stack.model)[before:])
    assert len(full) == 9  # four turns and the new prompt
    assert retried[-1] == ("user", "【Alice】 Turn 4")
    assert len(retried) < len(full)
    assert retried == full[len(full) - len(retried) :]

    # When even the shorter request is too long, the person is told, once.
    stack.model.script(context_length_exceeded(), context_length_exceeded())
    told = await stack.post(alice, "Turn 5", reply_to=replied.messages[-1].id)
    assert told.outcome != "answered"
    assert len(told.messages) == 1
    assert "Traceback" not in told.contents[0]
    assert len(chat_requests(stack.model)) == before + 4


# --- Restarts, /forget ---------------------------------------------------------------------


async def test_a_conversation_survives_a_restart(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    alice, _ = people(fake_discord)
    async with run_stack(fake_discord, fake_openai, tmp_path, NOT_STREAMED) as stack:
        first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    async with run_stack(fake_discord, fake_openai, tmp_path, NOT_STREAMED) as stack:
        stack.model.script(Reply("It is red."))
        followed = await stack.follow_up(first.messages[-1], "What colour?", user=alice)
        assert followed.contents == ["It is red."]
        assert last_request(fake_openai) == [
            ("user", "【Alice】 Name a planet."),
            ("assistant", "Mars."),
            ("user", "【Alice】 What colour?"),
        ]
        stack.model.script(Reply("Two."))
        replied = await stack.post(alice, "How many moons?", reply_to=first.messages[-1].id)
        assert replied.contents == ["Two."]
        assert last_request(fake_openai)[-1] == ("user", "【Alice】 How many moons?")
        assert len(last_request(fake_openai)) == 3


async def forget(stack: Stack, user: User) -> str:
    handle = stack.discord.dispatch_interaction("forget", user=user)
    answered = await handle.answered()
    assert answered is not None
    assert answered.ephemeral
    return answered.content


async def test_forget_removes_the_conversation(stack: Stack) -> None:
    alice, bob = people(stack.discord)
    first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    stack.model.script(Reply("Red."))
    second = await stack.post(alice, "Colour?", reply_to=first.messages[-1].id)
    bobs = await first_answer(stack, bob, "Name a river.", "The Nile.")

    assert await forget(stack, alice) == replies.forgotten(2)
    assert await forget(stack, alice) == replies.forgotten(0)

    # The button says the conversation is gone, to the presser alone; no model call.
    requests = len(chat_requests(stack.model))
    press = stack.press_follow_up(second.messages[-1], user=alice)
    told = await press.answered()
    assert told is not None
    assert told.ephemeral
    assert told.content == replies.FOLLOW_UP_GONE
    assert press.modal is None

    # A reply to a forgotten answer is not continued: the bot no longer knows that
    # message as its answer, and /forget said so. Nothing is sent to the model.
    ignored = stack.discord.post_message(alice, "Still there?", reply_to=second.messages[-1].id)
    await first_answer(stack, bob, "Still here?", "Yes.")  # the bot has seen the reply
    assert len(chat_requests(stack.model)) == requests + 1
    assert stack.discord.replies_to(ignored.id) == []
    # Mentioning the bot in it starts afresh, with nothing of the forgotten turns.
    stack.model.script(Reply("Hello."))
    fresh = await stack.post(alice, "And now?", reply_to=second.messages[-1].id, mention_bot=True)
    assert fresh.contents == ["Hello."]
    assert last_request(stack.model) == [("user", "And now?")]

    # Bob's conversation is untouched.
    stack.model.script(Reply("Africa."))
    bob_followed = await stack.follow_up(bobs.messages[-1], "Where?", user=bob)
    assert bob_followed.contents == ["Africa."]
    assert len(last_request(stack.model)) == 3


# --- Pacing --------------------------------------------------------------------------------


async def test_answers_streaming_at_once_in_one_channel_stay_within_its_bucket(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    names = [f"person{n}" for n in range(6)]
    pieces = [f"piece {n} " for n in range(12)]
    fake_openai.default = StreamReply(pieces, interval=0.02)
    async with (
        running_fake(user_names=names) as fake_discord,
        run_stack(fake_discord, fake_openai, tmp_path, STREAMED) as stack,
    ):
        asked = [
            fake_discord.post_message(person, "a question", mention_bot=True)
            for person in fake_discord.users
        ]
        answered = [await stack.replied(message) for message in asked]
        assert [a.outcome for a in answered] == ["answered"] * len(asked)
        assert all(a.contents == ["".join(pieces).strip()] for a in answered)
        assert all(has_follow_up(a.messages[-1]) for a in answered)
        # Six answers shared the channel's one bucket, and Discord never said 429.
        assert fake_discord.rate_limited == 0
        writes = [call for call in fake_discord.calls if call.route in CHANNEL_WRITE_ROUTES]
        assert len(writes) >= len(asked)


async def test_a_reply_with_its_ping_off_is_not_sent_to_the_model_empty(stack: Stack) -> None:
    """Without the ping the bot is not mentioned, so Discord sends it the reply without its
    text (no Message Content intent): there is nothing to answer."""
    alice, _ = people(stack.discord)
    first = await first_answer(stack, alice, "Name a planet.", "Mars.")
    quiet = stack.discord.post_message(
        alice, "What colour?", reply_to=first.messages[-1].id, ping_reply=False
    )
    await first_answer(stack, alice, "Still there?", "Yes.")  # the bot has seen the reply
    assert len(chat_requests(stack.model)) == 2
    assert stack.discord.replies_to(quiet.id) == []
