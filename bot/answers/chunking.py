"""Split a Markdown answer into messages that each fit, and render, in one Discord message.

`split_message` is greedy: every cut is decided from a bounded window of text after the start
of the message being built (`limit + _LOOKAHEAD` characters), never from the rest of the
answer. That is what lets `settled_count` say which messages of a still-growing answer can no
longer change, and it keeps the work linear in the length of the answer.
"""

from __future__ import annotations

import bisect
import dataclasses
import sys
from collections.abc import Iterator
from typing import Final

import regex

MIN_LIMIT: Final = 100
"""The smallest `limit` accepted. A message cut inside a quoted code block spends up to
`4 + 2 * (limit // 4 + 1)` characters on `>>> `, the reopened fence line and the closing
fence; below this there would be too little room left for the answer itself."""

# Characters read past the end of a message when choosing its cut: enough to see a whole fence
# line (at most _MAX_FENCE_LINE) starting inside the message, and a mention or inline code
# closing just after it.
_LOOKAHEAD: Final = 128
_MAX_FENCE_LINE: Final = 80
# A cut is looked for in the last 1/_ZONE of the room in a message, so every message but the
# last is at least 4/5 full and the message count stays near ceil(len(text) / limit).
_ZONE: Final = 5
_NEVER: Final = sys.maxsize

_FENCE_LINE = regex.compile(r"(>>> )?( {0,3}(`{3,}|~{3,})([^\n]*))")
_QUOTE_MARKER = regex.compile(r"(?m)^>>> ")
_SENTENCE_END = regex.compile(r"[.!?](?=[ \t])")
_VISIBLE = regex.compile(r"\S")
_CLUSTER = regex.compile(r"\X")
# Things a cut inside would break: URLs, mentions, custom emoji, timestamps, slash-command
# mentions, masked links and inline code.
_ATOMIC = regex.compile(
    r"https?://[^\s<>]+"
    r"|<(?:@[!&]?\d+|#\d+|a?:\w+:\d+|t:-?\d+(?::[tTdDfFR])?|/[^\s<>:]+(?: [^\s<>:]+)*:\d+)>"
    r"|\[[^\]\n]*\]\([^)\s]*\)"
    r"|(`+)[^\n]+?(?<!`)\1(?!`)"
)


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Split `text` into Discord messages of at most `limit` characters (code points) each.

    Each message renders on its own:

    - a fenced code block (```, ~~~ or longer runs) cut between two messages is closed at the
      end of the first by a newline and its fence run, and reopened at the start of the second
      by its opening line exactly as written (for example "```python") and a newline; the
      fences count against `limit`. A code block the answer leaves open (a cut-off answer
      often does) is closed the same way at the end of the last message;
    - once a `>>> ` block quote has started (outside code), every later message starts with
      `>>> `; a `> ` quote line cut in its middle continues with `> `.

    Nothing is lost. Each message is `added prefix + text[a:b] + added suffix`, where the added
    prefix is `>>> `, `> ` or nothing, followed by a reopened fence line and newline when the
    message starts inside a code block, and the added suffix is a newline and closing fence, or
    nothing. The slices `text[a:b]` follow each other in order, and what lies between two of
    them, before the first or after the last is whitespace only (`str.isspace`): at a cut the
    whitespace on both sides is dropped, except the indentation of the line the next message
    starts with, which is kept (it matters in code) when it is at most `limit // 4` (and at
    most 80) characters long, and a space that carries a combining mark.

    Where a message is cut: only in the last fifth of the room it has. There, at the latest
    blank line (or line break just outside a code block), else the latest line break, else the
    latest sentence end (".", "!" or "?" then a space), else the latest space. Without any of
    them, at the latest boundary between grapheme clusters, preferring one outside a URL,
    mention, custom emoji, timestamp, masked link or inline code. A cut never splits a fence
    line or a quote marker, nor leaves a message ending in an opening fence line; it avoids
    leaving the next one starting with a closing fence line (an empty code block).

    Every message but the last thus holds at least 4/5 of its room, which bounds the count by
    about 5/4 of `ceil(len(text) / limit)`; on typical answers it is a few percent above that
    minimum, as the latest cut of some kind is rarely far from the end of the room.

    Messages are never empty or whitespace only (Discord rejects those), and carry no leading
    or trailing blank lines. An empty or whitespace-only `text` gives `[]`; text of at most
    `limit` characters is a single message.

    Limitations: a fence-like line longer than `limit // 4` (or 80) characters is not taken
    as a fence, fences inside `> ` quote lines are not tracked, and a single grapheme cluster
    longer than a message is cut between code points.

    Raises `ValueError` when `limit` is below `MIN_LIMIT`.
    """
    return [part.render(text) for part in _plan(text, limit)]


def settled_count(text: str, limit: int = 2000) -> int:
    """How many leading messages of `split_message(text, limit)` no continuation can change.

    For any string `more`, `split_message(text + more, limit)` starts with the same
    `settled_count(text, limit)` messages. A message is settled once `text` reaches 128
    characters (`_LOOKAHEAD`) past `limit` characters from its start, since its cut depends on
    nothing later; with a long enough answer that is every message but the last. The last
    message is never settled. Raises `ValueError` like `split_message`.
    """
    parts = _plan(text, limit)
    settled = 0
    for part in parts[:-1]:
        if part.start + limit + _LOOKAHEAD > len(text):
            break
        settled += 1
    return settled


def close_open_fence(text: str, limit: int = 2000) -> str:
    """`text` with a closing fence added when it ends inside a fenced code block.

    A cut-off, interrupted or still-growing answer often does; closed, the code renders as
    code and whatever follows renders as text. Fences are read as `split_message(text,
    limit)` reads them.
    """
    fences = _parse(text, limit).fences
    if not fences or fences[-1].close != _NEVER:
        return text
    separator = "" if text.endswith("\n") else "\n"
    return f"{text}{separator}{fences[-1].run}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Fence:
    """A fenced code block. Its code starts on the line after `body`."""

    start: int  # first character of the opening line
    body: int  # end of the opening line's text, before trailing whitespace
    close: int  # first character of the closing line; _NEVER if the answer never closes it
    opening: str  # the opening line as written, without a `>>> ` marker, for reopening
    run: str  # the fence characters, which also close it


@dataclasses.dataclass(frozen=True, slots=True)
class _Part:
    """One message: `prefix + text[start:end] + suffix`."""

    start: int
    end: int
    prefix: str
    suffix: str

    def render(self, text: str) -> str:
        return f"{self.prefix}{text[self.start : self.end]}{self.suffix}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Document:
    """The answer with its code blocks and `>>> ` quote located, read once."""

    text: str
    limit: int
    short: int  # longest fence line recognised, and longest indentation kept at a cut
    visible_end: int  # len(text.rstrip())
    fences: tuple[_Fence, ...]
    fence_starts: tuple[int, ...]
    fence_lines: tuple[tuple[int, int], ...]  # (start, end) of opening and closing lines
    fence_ends: frozenset[int]  # ends of closing lines
    quote: int  # start of the `>>> ` marker line; _NEVER if there is none

    def fence_at(self, position: int) -> _Fence | None:
        """The code block whose opening line starts before `position` and which is still open."""
        index = bisect.bisect_left(self.fence_starts, position) - 1
        if index >= 0 and position < self.fences[index].close:
            return self.fences[index]
        return None

    def closing_reserve(self, start: int, end: int) -> int:
        """Room to keep for a closing fence if the message from `start` to `end` is cut in code."""
        index = max(bisect.bisect_left(self.fence_starts, start) - 1, 0)
        reserve = 0
        for fence in self.fences[index:]:
            if fence.start >= end:
                break
            if fence.close > start:
                reserve = max(reserve, 1 + len(fence.run))
        return reserve

    def prefix_at(self, start: int) -> str:
        """The markup a message starting at `start` needs to render like the answer there."""
        text = self.text
        quote = ">>> " if start > self.quote else ""
        # A message starting right at a closing line (only when whitespace past the horizon
        # hid it) reopens too, so that line has a block to close.
        fence = self.fence_at(start - 1)
        if fence is not None and start > fence.body:
            return f"{quote}{fence.opening}\n"
        if not quote and start > 0 and text[start - 1] != "\n":
            line_start = text.rfind("\n", 0, start) + 1
            if text.startswith("> ", line_start):
                return "> "
        return quote

    def suffix_at(self, end: int) -> str:
        """The closing fence a message ending at `end` needs."""
        fence = self.fence_at(end)
        if fence is not None and end > fence.body:
            return f"\n{fence.run}"
        return ""

    def next_start(self, end: int) -> int:
        """Where the message after a cut at `end` starts: past the whitespace at the cut."""
        text = self.text
        start = end
        while start < len(text) and text[start].isspace():
            start += 1
        if start == len(text):
            return start
        newline = text.rfind("\n", end, start)
        if newline >= 0 and start - newline - 1 <= self.short:
            return newline + 1
        # A combining mark after a space belongs to the space's grapheme cluster: keep both.
        cluster = _CLUSTER.match(text, start - 1) if start > end else None
        if cluster is not None and cluster.end() > start:
            return start - 1
        return start


def _parse(text: str, limit: int) -> _Document:
    short = min(limit // 4, _MAX_FENCE_LINE)
    fences: list[_Fence] = []
    lines: list[tuple[int, int]] = []
    fence_ends: set[int] = set()
    # (start, body, opening line, run) of the code block being read, if any
    opened: tuple[int, int, str, str] | None = None
    for line_start in _fence_like_lines(text):
        match = _FENCE_LINE.match(text, line_start)
        # The length cap keeps a line's meaning decidable from a bounded window.
        if match is None or len(match[0]) > short:
            continue
        marker, line, run, info = match[1], match[2].rstrip(), match[3], match[4]
        start = match.start()
        end = start + len(match[0].rstrip())
        if opened is None:
            if run[0] == "`" and "`" in info:
                continue  # ```inline``` code on one line, not a fence
            opened = (start, end, line, run)
            lines.append((start, end))
        elif (
            not marker
            and run[0] == opened[3][0]
            and len(run) >= len(opened[3])
            and not info.strip()
        ):
            fences.append(_Fence(opened[0], opened[1], start, opened[2], opened[3]))
            lines.append((start, end))
            fence_ends.add(end)
            opened = None
    if opened is not None:
        fences.append(_Fence(opened[0], opened[1], _NEVER, opened[2], opened[3]))
    document = _Document(
        text=text,
        limit=limit,
        short=short,
        visible_end=len(text.rstrip()),
        fences=tuple(fences),
        fence_starts=tuple(fence.start for fence in fences),
        fence_lines=tuple(lines),
        fence_ends=frozenset(fence_ends),
        quote=_NEVER,
    )
    # Discord quotes everything after the first `>>> ` line; inside code it is just code
    # (a Python prompt, typically).
    for match in _QUOTE_MARKER.finditer(text):
        if document.fence_at(match.start()) is None:
            return dataclasses.replace(document, quote=match.start())
    return document


def _fence_like_lines(text: str) -> list[int]:
    """Starts of the lines holding ``` or ~~~, in order (a plain search beats a regex here)."""
    starts: set[int] = set()
    for mark in ("```", "~~~"):
        found = text.find(mark)
        while found >= 0:
            starts.add(text.rfind("\n", 0, found) + 1)
            line_end = text.find("\n", found)
            found = -1 if line_end < 0 else text.find(mark, line_end)
    return sorted(starts)


def _plan(text: str, limit: int) -> list[_Part]:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    document = _parse(text, limit)
    parts: list[_Part] = []
    start = document.next_start(0)
    while start < document.visible_end:
        prefix = document.prefix_at(start)
        # A code block the answer leaves open is closed in its last message too, so that
        # message renders as code like every other.
        suffix = document.suffix_at(document.visible_end)
        if len(prefix) + document.visible_end - start + len(suffix) <= limit:
            parts.append(_Part(start, document.visible_end, prefix, suffix))
            break
        end = _cut(document, start, prefix)
        parts.append(_Part(start, end, prefix, document.suffix_at(end)))
        start = document.next_start(end)
    return parts


@dataclasses.dataclass(frozen=True, slots=True)
class _Window:
    """Where a message that starts at `start` may end: up to `high`, judged from the text
    before `horizon` only."""

    document: _Document
    start: int
    high: int
    horizon: int
    spans: tuple[tuple[int, int], ...]  # URLs, mentions, inline code... sorted

    def allows(self, end: int, *, protect: bool = True) -> bool:
        """Whether the message may end at `end`, just after a visible character."""
        text = self.document.text
        if protect:
            index = bisect.bisect_left(self.spans, (end, end)) - 1
            if index >= 0 and end < self.spans[index][1]:
                return False
        lines = self.document.fence_lines
        index = bisect.bisect_left(lines, (end, end)) - 1
        if index >= 0 and end < lines[index][1]:
            return False
        if text[end - 1] == ">" and _after_bare_marker(text, end):
            return False
        fence = self.document.fence_at(end)
        if fence is not None:
            if end <= fence.body:
                return False  # an empty code block at the end of this message
            # Nor may the next message be an empty code block: it needs some code before the
            # closing line. Past the horizon, assume the worst.
            closing_known = fence.close + self.document.short < self.horizon
            stop = fence.close if closing_known else self.horizon
            if not _VISIBLE.search(text, end, stop):
                return False
        return True


def _after_bare_marker(text: str, end: int) -> bool:
    """Whether `text[:end]` ends with a line that is only `>` or `>>>`."""
    for marker in (">", ">>>"):
        line_start = end - len(marker)
        if line_start < 0:
            continue
        at_line_start = line_start == 0 or text[line_start - 1] == "\n"
        if at_line_start and text.startswith(marker, line_start):
            return True
    return False


def _cut(document: _Document, start: int, prefix: str) -> int:
    """Where the message that starts at `start` (after `prefix`) ends, before whitespace."""
    text = document.text
    room = document.limit - len(prefix)
    budget = room - document.closing_reserve(start, start + room)
    first = start
    while text[first].isspace():
        first += 1
    high = start + budget
    low = max(high - budget // _ZONE, first + 1)
    horizon = start + document.limit + _LOOKAHEAD
    window_end = min(len(text), horizon)
    # Nothing protected spans lines, so scanning from the line where the zone starts suffices.
    line_start = max(start, text.rfind("\n", start, low) + 1)
    spans = tuple(match.span() for match in _ATOMIC.finditer(text, line_start, window_end))
    window = _Window(document, start, high, horizon, spans)

    for end in _soft_cuts(document, low, high, horizon):
        if window.allows(end) and _is_boundary(text, start, end):
            return end

    for protect in (True, False):
        for end in _boundaries(text, start, low if protect else first + 1, high):
            if not text[end - 1].isspace() and window.allows(end, protect=protect):
                return end

    # A single grapheme cluster fills the room: cut it between code points.
    end = high
    while text[end - 1].isspace():
        end -= 1
    return end


def _soft_cuts(document: _Document, low: int, high: int, horizon: int) -> Iterator[int]:
    """Ends of messages at whitespace from `low` to `high`, best kind first, latest first.

    The kinds: a blank line or a line break just outside a code block, a line break, a
    sentence end, a space. A message end is the start of a whitespace run.
    """
    text = document.text
    window_end = min(len(text), horizon)
    line_breaks: list[int] = []
    search_end = window_end
    while (newline := text.rfind("\n", low, search_end)) >= 0:
        end = _gap_start(text, low, newline)
        search_end = end
        if end <= high and not text[end - 1].isspace():
            if _is_paragraph_break(document, end, horizon):
                yield end
            else:
                line_breaks.append(end)
    yield from line_breaks
    sentence_ends = [
        match.end()
        for match in _SENTENCE_END.finditer(text, low - 1, high + 1)
        if match.end() <= high
    ]
    yield from reversed(sentence_ends)
    search_end = high + 1
    while (space := max(text.rfind(" ", low, search_end), text.rfind("\t", low, search_end))) >= 0:
        end = _gap_start(text, low, space)
        search_end = end
        if not text[end - 1].isspace():
            yield end


def _gap_start(text: str, low: int, position: int) -> int:
    """Start of the whitespace run holding `position`, or `low` if it starts earlier."""
    while position > low and text[position - 1].isspace():
        position -= 1
    return position


def _is_paragraph_break(document: _Document, end: int, horizon: int) -> bool:
    """Whether the whitespace at `end`, which holds a line break, is a blank line or the edge of
    a code block, judged from the text before `horizon`."""
    text = document.text
    gap_end = end
    stop = min(len(text), horizon)
    while gap_end < stop and text[gap_end].isspace():
        gap_end += 1
    gap = text[end:gap_end]
    if gap.count("\n") >= 2:
        return True
    # Cutting just outside a code block saves closing and reopening it. Whether the next line
    # opens one is only known once all of it is within the horizon.
    if end in document.fence_ends:
        return True
    next_line = end + gap.rindex("\n") + 1
    fence = document.fence_at(next_line + 1)
    return fence is not None and fence.start == next_line and next_line + document.short < horizon


def _is_boundary(text: str, floor: int, position: int) -> bool:
    """Whether `position` lies between grapheme clusters; `floor` before it is known to."""
    pair = text[position - 1 : position + 1]
    if pair.isascii():
        return pair != "\r\n"
    begin = max(floor, text.rfind("\n", floor, position) + 1)  # a line feed ends a cluster
    if begin == position:
        return True
    for cluster in _CLUSTER.finditer(text, begin, position + 1):
        if cluster.end() >= position:
            return cluster.end() == position
    return True


def _boundaries(text: str, floor: int, low: int, high: int) -> Iterator[int]:
    """Boundaries between grapheme clusters from `high` down to `low`; `floor` is one."""
    if text[low - 1 : high + 1].isascii():
        return (end for end in range(high, low - 1, -1) if text[end - 1 : end + 1] != "\r\n")
    begin = max(floor, text.rfind("\n", floor, low) + 1)
    # Stopping the scan one past `high` still shows every boundary up to `high` correctly.
    ends = [begin, *(cluster.end() for cluster in _CLUSTER.finditer(text, begin, high + 1))]
    return (end for end in reversed(ends) if low <= end <= high)
