"""Final messages of an answer, including the notes for incomplete ones."""

from __future__ import annotations

import pytest

from bot.answers.chunking import close_open_fence
from bot.answers.formatting import final_parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("```python\nprint(1)\n```", "```python\nprint(1)\n```"),
        ("```python\nprint(1)", "```python\nprint(1)\n```"),
        ("```python\nprint(1)\n", "```python\nprint(1)\n```"),
        # Discord closes a block at the next ```, whatever the fence lengths: the first ```
        # of "```inner```" closes the "````md" block, the second opens one.
        ("````md\n```inner```\nstill", "````md\n```inner```\nstill\n```"),
        ("~~~\ncode", "~~~\ncode"),  # ~~~ is no fence in Discord
        ("```a\nx\n```\n```b\ny", "```a\nx\n```\n```b\ny\n```"),
        ("Say ```hi``` and `` ``` `` too", "Say ```hi``` and `` ``` `` too"),
        ("Type \\``` to show it", "Type \\``` to show it"),
        ("> ```py\n> quoted", "> ```py\n> quoted"),  # pairs only within the quote
        ("    ```py\n    indented", "    ```py\n    indented\n```"),
    ],
)
def test_close_open_fence(text: str, expected: str) -> None:
    assert close_open_fence(text) == expected


def test_a_note_after_an_open_block_in_a_quote_stays_text() -> None:
    parts = final_parts("> ```py\n> x = 1", "*(cut off)*")
    assert parts == ["> ```py\n> x = 1\n\n*(cut off)*"]


def test_note_follows_a_closed_code_block() -> None:
    parts = final_parts("Here:\n```python\nwhile True:\n    pass", "*(cut off)*")
    assert parts == ["Here:\n```python\nwhile True:\n    pass\n```\n\n*(cut off)*"]


def test_note_alone_when_there_is_no_text() -> None:
    assert final_parts("   ", "*(Stopped.)*") == ["*(Stopped.)*"]


def test_final_parts_without_note_is_the_plain_split() -> None:
    text = "word " * 1000
    parts = final_parts(text)
    assert all(len(part) <= 2000 for part in parts)
    assert len(parts) == 3


def test_parts_settled_during_a_stream_survive_the_note() -> None:
    text = ("A sentence of the answer. " * 80 + "\n\n") * 3
    with_note = final_parts(text, "*(Stopped.)*")
    plain = final_parts(text)
    assert with_note[: len(plain) - 1] == plain[:-1]
    assert with_note[-1].endswith("*(Stopped.)*")
