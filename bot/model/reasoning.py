"""Telling a model's inline reasoning (`<think>…</think>`) from its answer, as text streams in.

Ollama, llama.cpp and many compatible servers put a reasoning model's thoughts in the answer
content itself, between `<think>` and `</think>`, before the answer. Some chat templates
(DeepSeek-R1's since January 2025, Qwen3's thinking models) end the prompt with `<think>\\n`
themselves, so the model's output holds only the closing `</think>`: everything before it was
reasoning.

`ThinkParser` is fed the content piece by piece, however the server cut it (a tag may be
split across pieces), and gives back what of it is answer text and what is reasoning:

- A `<think>` at the very start (after any whitespace) opens the reasoning; the first
  `</think>` closes it, and the whitespace after it is dropped. Everything after is answer
  text, verbatim: later tags are the answer's own.
- Content that does not start with `<think>` is answer text as it comes. If a `</think>`
  then arrives (the opening tag was in the prompt), the text before it was reasoning: the
  `Split` says so with `text_was_reasoning`, and carries that text again as reasoning.
- No partial tag is ever given out as text: at most one tag's length less one character is
  held back, plus leading whitespace until it is known whether a `<think>` follows.

The concatenated result does not depend on how the content was cut into pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

_State = Literal["start", "thinking", "closed", "answer", "plain"]


@dataclass(frozen=True)
class Split:
    """What one piece of content turned out to be.

    `text_was_reasoning`: the answer text given out before this split was reasoning after
    all; discard it (this split's `reasoning` repeats it).
    """

    text: str = ""
    reasoning: str = ""
    text_was_reasoning: bool = False

    def __bool__(self) -> bool:
        return bool(self.text or self.reasoning or self.text_was_reasoning)


class ThinkParser:
    """Separates inline reasoning from answer text in content fed piece by piece."""

    def __init__(self) -> None:
        self._state: _State = "start"
        self._held = ""
        # Answer text given out while a lone `</think>` could still turn it into reasoning.
        self._given = ""
        self._lone_close_possible = True

    def separate_reasoning(self) -> None:
        """The server sends reasoning in a field of its own: it has already taken the
        reasoning out of the content, so a lone `</think>` there is part of the answer."""
        self._lone_close_possible = False

    def feed(self, piece: str) -> Split:
        """Take the next piece of content; return what can be told of it now."""
        return self._consume(self._held + piece)

    def finish(self) -> Split:
        """The content has ended: give out whatever was held back."""
        held, self._held = self._held, ""
        match self._state:
            case "thinking":
                self._state = "plain"
                return Split(reasoning=held)
            case "start" | "answer":
                self._state = "plain"
                return Split(text=held)
            case _:
                return Split()

    def _consume(self, buffer: str) -> Split:
        self._held = ""
        match self._state:
            case "start":
                return self._at_start(buffer)
            case "thinking":
                return self._thinking(buffer)
            case "closed":
                stripped = buffer.lstrip()
                if stripped:
                    self._state = "plain"
                return Split(text=stripped)
            case "answer":
                return self._answering(buffer)
            case "plain":
                return Split(text=buffer)

    def _at_start(self, buffer: str) -> Split:
        stripped = buffer.lstrip()
        if not stripped or (len(stripped) < len(OPEN_TAG) and OPEN_TAG.startswith(stripped)):
            self._held = buffer
            return Split()
        if stripped.startswith(OPEN_TAG):
            self._state = "thinking"
            return self._thinking(stripped[len(OPEN_TAG) :])
        self._state = "answer" if self._lone_close_possible else "plain"
        return self._consume(buffer)

    def _thinking(self, buffer: str) -> Split:
        end = buffer.find(CLOSE_TAG)
        if end < 0:
            keep = _partial_tag(buffer, CLOSE_TAG)
            self._held = buffer[len(buffer) - keep :]
            return Split(reasoning=buffer[: len(buffer) - keep])
        self._state = "closed"
        after = self._consume(buffer[end + len(CLOSE_TAG) :])
        return Split(text=after.text, reasoning=buffer[:end])

    def _answering(self, buffer: str) -> Split:
        if not self._lone_close_possible:
            self._state = "plain"
            return Split(text=buffer)
        end = buffer.find(CLOSE_TAG)
        if end < 0:
            keep = _partial_tag(buffer, CLOSE_TAG)
            self._held = buffer[len(buffer) - keep :]
            text = buffer[: len(buffer) - keep]
            self._given += text
            return Split(text=text)
        given, self._given = self._given, ""
        self._state = "closed"
        after = self._consume(buffer[end + len(CLOSE_TAG) :])
        return Split(
            text=after.text, reasoning=given + buffer[:end], text_was_reasoning=bool(given)
        )


def _partial_tag(buffer: str, tag: str) -> int:
    """The length of the longest end of `buffer` that begins `tag` (but is not all of it)."""
    for length in range(min(len(tag) - 1, len(buffer)), 0, -1):
        if tag.startswith(buffer[-length:]):
            return length
    return 0


def split_reasoning(content: str) -> tuple[str, str]:
    """`(answer text, reasoning)` of a whole content string, as `ThinkParser` reads it."""
    parser = ThinkParser()
    text, reasoning = "", ""
    for split in (parser.feed(content), parser.finish()):
        if split.text_was_reasoning:
            text = ""
        text += split.text
        reasoning += split.reasoning
    return text, reasoning
