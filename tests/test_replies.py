"""User-facing wording: short, actionable, and never leaking exception text."""

from __future__ import annotations

import pytest

from bot.answers import replies
from bot.model import llm

SECRET_DETAIL = "APIStatusError: Incorrect API key provided: sk-abc123 at /v1/chat"

CASES: list[tuple[llm.CompletionError, str]] = [
    (llm.RateLimited(SECRET_DETAIL, retry_after=20), "try again in 20 seconds"),
    (llm.RateLimited(SECRET_DETAIL, retry_after=0.2), "try again in 1 second."),
    (llm.RateLimited(SECRET_DETAIL, retry_after=600), "try again in 10 minutes"),
    (llm.RateLimited(SECRET_DETAIL, retry_after=None), "try again in a minute"),
    (llm.TimedOut(SECRET_DETAIL), "took too long"),
    (llm.PromptTooLong(SECRET_DETAIL), "too long for this model"),
    (llm.ProviderMisconfigured(SECRET_DETAIL), "ask a server admin"),
    (llm.ProviderUnavailable(SECRET_DETAIL), "unavailable right now"),
    (llm.EmptyAnswer(SECRET_DETAIL), "empty answer"),
    (llm.Refused(SECRET_DETAIL), "declined"),
    (llm.CompletionError(SECRET_DETAIL), "something went wrong"),
]


@pytest.mark.parametrize(("error", "expected"), CASES)
def test_each_error_has_its_own_short_sentence(error: llm.CompletionError, expected: str) -> None:
    message = replies.error_message(error)
    assert expected in message
    assert "sk-abc123" not in message
    assert "Error" not in message
    assert len(message) < 200


def test_messages_are_distinct_per_error_kind() -> None:
    kinds = {type(error): replies.error_message(error) for error, _ in CASES}
    assert len(set(kinds.values())) == len(kinds)


def test_a_place_in_line_says_how_many_are_answered_at_once() -> None:
    sentence = replies.queue_position(3, at_once=40)

    assert "#3 in line" in sentence
    assert "answering 40 at a time" in sentence
    # One short sentence.
    assert ". " not in sentence
    assert len(sentence) < 100
