"""Split a Markdown answer into messages that each fit, and render, in one Discord message.

Code is read the way Discord's client reads it (a simple-markdown derivative; the rules and
where they come from are in tests/discord_markdown.py, which checks every message against
them), not the way CommonMark would:

- ``` anywhere, not only at a line start, opens a code block, and the next ``` at least one
  character later closes it, whatever the lengths of the two runs of backticks: a ```` line
  opens a block whose code starts with the fourth backtick, and a ```` line closes one with its
  first three and leaves a stray backtick. When the rest of the opening line is only letters,
  digits and `_+-.#`, it is the block's language. Indentation and other leading whitespace
  change nothing, and ~~~ is plain text;
- outside code, a run of one or two backticks opens inline code that ends at the next run of
  exactly as many (on a later line too); a backslash makes the next symbol, a backtick too, text;
- a `>>> ` line quotes everything after it; code inside `> ` quote lines pairs only with code
  in the same run of quote lines.

Three departures from Discord keep the reading of any part of an answer independent of what the
model writes after it, which streaming relies on (see `settled_count`):

- inline code is recognised only when it closes within `INLINE_CODE_REACH` characters of where
  it opens (Discord pairs a stray backtick with one any distance later);
- a ``` that nothing closes opens a block to the end of the answer, which the last message
  closes (Discord would show it as text; a cut-off answer is usually inside a block);
- an empty block (``` then only line breaks, or a language and line breaks, before the next
  ```) is closed by the ``` after that, as Discord reads it, only when that one comes within
  `INLINE_CODE_REACH` characters; otherwise it is read as empty.

`split_message` is greedy: every cut is decided from a bounded window of text after the start
of the message being built (`limit + _LOOKAHEAD` characters), never from the rest of the
answer. That is what lets `settled_count` say which messages of a still-growing answer can no
longer change, and it keeps the work linear in the length of the answer.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import sys
from collections.abc import Iterator
from typing import Final

import regex

MIN_LIMIT: Final = 100
"""The smallest `limit` accepted. A message cut inside a quoted code block spends up to
`4 + (4 + limit // 4) + 4` characters on `>>> `, the reopened fence line and the closing fence;
at 100 that still leaves 63 for the answer, and a cut zone (the last fifth) longer than any
whitespace run, grapheme cluster or protected token the splitter has to keep whole in practice."""

INLINE_CODE_REACH: Final = 128
"""Inline code is read as such only when its closing backticks end within this many characters
of its opening ones; longer spans are read as plain backticks."""

# Characters read past the end of a message when choosing its cut: enough to know what opens
# inline code or a code block just after it, and a mention or URL crossing its end.
_LOOKAHEAD: Final = 2 * INLINE_CODE_REACH
# Longest language tag reused when reopening a block, and longest indentation kept at a cut.
_MAX_FENCE_LINE: Final = 80
# A cut is looked for in the last 1/_ZONE of the room in a message, so every message but the
# last is at least 4/5 full and the message count stays near ceil(len(text) / limit).
_ZONE: Final = 5
_NEVER: Final = sys.maxsize
_FENCE: Final = "```"
_CLOSING: Final = "\n```"

# What the reading stops at: escapes, runs of backticks, quote markers at a line start (with
# the line break before them: a pattern whose every branch starts with one of a few characters
# is searched fast).
_TOKEN = re.compile(r"\\[^0-9A-Za-z\s]|`+|\n *>(?:>>)? ")
_LINE_QUOTE = re.compile(r" *>(?:>>)? ")
_LOCAL_TOKEN = regex.compile(r"\\[^0-9A-Za-z\s]|`+")
_ESCAPABLE = regex.compile(r"[^0-9A-Za-z\s]")
_LANGUAGE = regex.compile(r"[0-9A-Za-z_+\-.#]+(?=\n)")
_QUOTE_LINE = regex.compile(r" *> [^\n]*\n?")
# A run of exactly one or two backticks, which closes inline code opened by as many.
_CLOSERS: Final = {1: regex.compile(r"(?<!`)`(?!`)"), 2: regex.compile(r"(?<!`)``(?!`)")}
_SENTENCE_END = regex.compile(r"[.!?](?=[ \t])")
_VISIBLE = regex.compile(r"\S")
_CLUSTER = regex.compile(r"\X")
# Other things a cut inside would break: URLs, mentions, custom emoji, timestamps,
# slash-command mentions and masked links.
_ATOMIC = regex.compile(
    r"https?://[^\s<>]+"
    r"|<(?:@[!&]?\d+|#\d+|a?:\w+:\d+|t:-?\d+(?::[tTdDfFR])?|/[^\s<>:]+(?: [^\s<>:]+)*:\d+)>"
    r"|\[[^\]\n]*\]\([^)\s]*\)"
)


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Split `text` into Discord messages of at most `limit` characters (code points) each.

    Each message renders on its own, read as the module docstring says:

    - a code block cut between two messages is closed at the end of the first by a newline and
      ```, and reopened at the start of the second by ``` with the block's language (when it
      has one of at most `limit // 4`, and at most 80, characters) and a newline; these count
      against `limit`. A code block the answer leaves open (a cut-off answer often does) is
      closed the same way at the end of the last message. No message ever holds a ``` that
      opens a block it does not close;
    - once a `>>> ` block quote has started (outside code), every later message starts with
      `>>> `; a `> ` quote line cut in its middle continues with `> `.

    Nothing is lost. Each message is `added prefix + text[a:b] + added suffix`, where the added
    prefix is `>>> `, `> ` or nothing, followed by a reopened fence line and newline when the
    message starts inside a code block, and the added suffix is a newline and ```, or nothing.
    The slices `text[a:b]` follow each other in order, and what lies between two of them,
    before the first or after the last is whitespace only (`str.isspace`): at a cut the
    whitespace on both sides is dropped, except the indentation of the line the next message
    starts with, which is kept (it matters in code) when it is at most `limit // 4` (and at
    most 80) characters long, and a space that carries a combining mark.

    Where a message is cut: only in the last fifth of the room it has (the room left by the
    added prefix, and by a closing fence when the message holds code). There, at the latest
    blank line (or line break just outside a code block), else the latest line break, else the
    latest sentence end (".", "!" or "?" then a space), else the latest space, each only where
    the message with its closing fence, if it needs one, still fits. Without any of them, at
    the latest boundary between grapheme clusters. None of these is ever inside inline code, a
    code block on one line or in a quote, a URL, mention, custom emoji, timestamp or masked
    link. A cut never
    splits a run of backticks or a backslash from the symbol it escapes, never leaves a message
    ending in an opening fence or its language, or right before a closing fence, and avoids
    leaving the next one with no code before its closing fence (an empty code block).

    Only when inline code, a quoted code block, a URL or the like covers the whole of that
    fifth is the message cut earlier, at the latest cut of any kind before it (and inside it
    when there is none). Every other message but the last thus holds at least 4/5 of its room,
    which bounds the count by about 5/4 of `ceil(len(text) / limit)`; on typical answers it is
    a few percent above that minimum, as the latest cut of some kind is rarely far from the end
    of the room.

    Messages are never empty or whitespace only (Discord rejects those), and carry no leading
    or trailing blank lines. An empty or whitespace-only `text` gives `[]`; text of at most
    `limit` characters is a single message, closed if it ends inside a code block.

    Limitations: a code block inside `> ` quote lines, or inline code, longer than a message is
    cut like plain text; so is a single grapheme cluster or run of backticks longer than a
    message, between code points. A URL, bold or link hiding backticks is not seen as such.

    Raises `ValueError` when `limit` is below `MIN_LIMIT`.
    """
    return [part.render(text) for part in _plan(text, limit)]


def settled_count(text: str, limit: int = 2000) -> int:
    """How many leading messages of `split_message(text, limit)` no continuation can change.

    For any string `more`, `split_message(text + more, limit)` starts with the same
    `settled_count(text, limit)` messages. A message is settled once `text` reaches 256
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
    """`text` with a newline (unless it ends with one) and ``` added when it ends in a code block.

    A cut-off, interrupted or still-growing answer often does; closed, the code renders as
    code and whatever follows renders as text. Code is read as `split_message(text, limit)`
    reads it; a ``` inside `> ` quote lines pairs only within them, so it is never closed here.
    """
    fences = _read(text, limit).fences
    if not fences or fences[-1].close != _NEVER:
        return text
    separator = "" if text.endswith("\n") else "\n"
    return f"{text}{separator}{_FENCE}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Fence:
    """A code block outside `> ` quote lines."""

    start: int  # its opening ```
    body: int  # end of its opening run of backticks, or of its language
    close: int  # its closing ```; _NEVER if the answer never closes it
    reopen: str  # what reopens it in a later message: ```, its language, a newline


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
    """The answer with its code, inline code and quotes located, read once."""

    text: str
    limit: int
    short: int  # longest language reused, and longest indentation kept at a cut
    visible_end: int  # len(text.rstrip())
    fences: tuple[_Fence, ...]
    fence_starts: tuple[int, ...]
    fence_closes: frozenset[int]  # starts of closing fences
    fence_ends: frozenset[int]  # ends of closing fences
    spans: tuple[tuple[int, int], ...]  # inline code and quoted code, in order
    quote_lines: tuple[tuple[int, int], ...]  # `> ` lines outside code, in order
    quote: int  # start of the `>>> ` marker line; _NEVER if there is none

    def fence_at(self, position: int) -> _Fence | None:
        """The code block whose opening ``` starts before `position` and which is still open."""
        index = bisect.bisect_left(self.fence_starts, position) - 1
        if index >= 0 and position < self.fences[index].close:
            return self.fences[index]
        return None

    def holds_code(self, start: int, end: int) -> bool:
        """Whether some code block overlaps `text[start:end]`."""
        index = max(bisect.bisect_left(self.fence_starts, start) - 1, 0)
        for fence in self.fences[index:]:
            if fence.start >= end:
                return False
            if fence.close > start:
                return True
        return False

    def prefix_at(self, start: int) -> str:
        """The markup a message starting at `start` needs to render like the answer there."""
        quote = ">>> " if start > self.quote else ""
        # A message starting right at a closing fence (only when whitespace past the horizon
        # hid it) reopens too, so that fence has a block to close.
        fence = self.fence_at(start - 1)
        if fence is not None and start > fence.body:
            return f"{quote}{fence.reopen}"
        if not quote and start > 0 and self.text[start - 1] != "\n":
            index = bisect.bisect_left(self.quote_lines, (start, start)) - 1
            if index >= 0 and start < self.quote_lines[index][1]:
                return "> "
        return quote

    def suffix_at(self, end: int) -> str:
        """The closing fence a message ending at `end` needs."""
        fence = self.fence_at(end)
        if fence is not None and end >= fence.start + len(_FENCE):
            return _CLOSING
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


def _read(text: str, limit: int) -> _Document:
    """Locate code, inline code and quotes as Discord reads them (see the module docstring)."""
    short = min(limit // 4, _MAX_FENCE_LINE)
    fences: list[_Fence] = []
    spans: list[tuple[int, int]] = []
    quote_lines: list[tuple[int, int]] = []
    quote = _NEVER
    position = 0
    while (token := _next_token(text, position)) is not None:
        start, position = token.span()
        mark = token[0]
        if mark[0] == "\n":
            start += 1
            mark = mark[1:]
        if mark[0] == "\\":
            continue
        if mark[0] == "`":
            if len(mark) >= len(_FENCE):
                fence = _fence(text, start, position, short)
                fences.append(fence)
                if fence.close == _NEVER:
                    break
                position = fence.close + len(_FENCE)
                # A short block on one line (```like this```) is kept whole like inline code.
                if position - start <= INLINE_CODE_REACH and "\n" not in text[start:position]:
                    spans.append((start, position))
            elif close := _inline_end(text, start, len(mark), len(text)):
                spans.append((start, close))
                position = close
        elif quote != _NEVER:
            continue  # no quote inside the `>>> ` quote
        elif mark.endswith(">>> "):
            quote = start
        else:
            position = _read_quote_lines(text, start, spans, quote_lines)
    return _Document(
        text=text,
        limit=limit,
        short=short,
        visible_end=len(text.rstrip()),
        fences=tuple(fences),
        fence_starts=tuple(fence.start for fence in fences),
        fence_closes=frozenset(fence.close for fence in fences),
        fence_ends=frozenset(fence.close + len(_FENCE) for fence in fences),
        spans=tuple(spans),
        quote_lines=tuple(quote_lines),
        quote=quote,
    )


def _next_token(text: str, position: int) -> re.Match[str] | None:
    """The first escape, run of backticks or quote marker at a line start from `position`."""
    at_line_start = position == 0 or text[position - 1] == "\n"
    if at_line_start and (marker := _LINE_QUOTE.match(text, position)) is not None:
        return marker
    return _TOKEN.search(text, position)


def _fence(text: str, start: int, run_end: int, short: int) -> _Fence:
    """The code block opened by the ``` at `start`, which starts a run ending at `run_end`."""
    # A language follows the first three backticks directly; the length cap keeps it
    # decidable from a bounded window.
    language = None
    if run_end == start + len(_FENCE):
        language = _LANGUAGE.match(text, run_end, run_end + short + 1)
    body = run_end if language is None else language.end()
    # The code starts with the backticks past the first three, or after the newlines that
    # follow the opening, and holds at least one character.
    code = start + len(_FENCE) if language is None else body
    while text[code : code + 1] == "\n":
        code += 1
    found = text.find(_FENCE, code + 1)
    if text.startswith(_FENCE, code) and not 0 <= found < code + INLINE_CODE_REACH:
        found = code  # an empty block, unless a ``` soon after takes its place
    close = _NEVER if found < 0 else found
    reopen = _FENCE if language is None else f"{_FENCE}{language[0]}"
    return _Fence(start, body, close, f"{reopen}\n")


def _inline_end(text: str, start: int, run: int, stop: int) -> int:
    """End of the inline code opened by the first `run` backticks at `start`, or 0.

    Like Discord, the longest opening that has a closing run of exactly its length wins; the
    closing run must end before `stop` and within `INLINE_CODE_REACH`.
    """
    stop = min(stop, start + INLINE_CODE_REACH)
    for length in range(min(run, 2), 0, -1):
        found = _CLOSERS[length].search(text, start + run, stop)
        # Past `stop` the run might go on: only a run whose end is seen is a closing one.
        if found is not None and text[found.end() : found.end() + 1] != "`":
            return found.end()
    return 0


def _read_quote_lines(
    text: str, start: int, spans: list[tuple[int, int]], quote_lines: list[tuple[int, int]]
) -> int:
    """Read the run of `> ` lines at `start`; return its end.

    Discord reads the run on its own, so its code never pairs with code outside. Code blocks and
    inline code in it are only kept from cuts (they are not closed and reopened).
    """
    end = start
    while (line := _QUOTE_LINE.match(text, end)) is not None and line.end() > end:
        quote_lines.append((end, line.end()))
        end = line.end()
        if text[end - 1] != "\n":
            break
    position = start
    while (token := _LOCAL_TOKEN.search(text, position, end)) is not None:
        opening, position = token.span()
        run = len(token[0])
        if token[0][0] == "\\":
            continue
        close = -1
        if run >= len(_FENCE):
            reach = min(end, opening + INLINE_CODE_REACH)
            close = text.find(_FENCE, opening + len(_FENCE) + 1, reach)
        if close >= 0:
            spans.append((opening, close + len(_FENCE)))
            position = close + len(_FENCE)
        elif inline := _inline_end(text, opening, run, end):
            spans.append((opening, inline))
            position = inline
    return end


def _plan(text: str, limit: int) -> list[_Part]:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    document = _read(text, limit)
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
    """Where a message that starts at `start` after `prefix` characters of markup may end: up
    to `high`, judged from the text before `horizon` only."""

    document: _Document
    start: int
    prefix: int
    high: int
    horizon: int
    atomic: tuple[tuple[int, int], ...]  # URLs, mentions... sorted

    def fits(self, end: int) -> bool:
        """Whether the message ending at `end`, with the closing fence it needs, fits."""
        suffix = self.document.suffix_at(end)
        return self.prefix + end - self.start + len(suffix) <= self.document.limit

    def allows(self, end: int, *, protect: bool = True) -> bool:
        """Whether the message may end at `end`, just after a visible character."""
        document = self.document
        text = document.text
        if not self.fits(end):
            return False
        if protect and (_inside(self.atomic, end) or _inside(document.spans, end)):
            return False
        if text[end - 1] == "`" and text[end : end + 1] == "`":
            return False  # a run of backticks would change its length, and its meaning
        if text[end - 1] == "\\" and _ESCAPABLE.match(text, end):
            return False
        if text[end - 1] == ">" and _after_bare_marker(text, end):
            return False
        if end in document.fence_closes:
            return False  # the closing fence would open a block in the next message
        fence = document.fence_at(end)
        if fence is not None:
            if end <= fence.body:
                return False  # an empty code block at the end of this message
            # Nor may the next message be an empty code block: it needs some code before the
            # closing fence. Past the horizon, assume the worst.
            closing_known = fence.close + len(_FENCE) <= self.horizon
            stop = fence.close if closing_known else self.horizon
            if not _VISIBLE.search(text, end, stop):
                return False
        return True


def _inside(spans: tuple[tuple[int, int], ...], position: int) -> bool:
    """Whether `position` lies strictly inside one of the sorted, disjoint `spans`."""
    index = bisect.bisect_left(spans, (position, position)) - 1
    return index >= 0 and position < spans[index][1]


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
    high = min(start + room, document.visible_end)
    # The last fifth of the room is where to cut; a message holding code may need a closing
    # fence, so its fifth is taken from the room left after that fence.
    budget = room - (len(_CLOSING) if document.holds_code(start, high) else 0)
    first = start
    while text[first].isspace():
        first += 1
    low = max(start + budget - budget // _ZONE, first + 1)
    horizon = start + document.limit + _LOOKAHEAD
    window_end = min(len(text), horizon)
    # Nothing atomic spans lines, so scanning from the line where the zone starts suffices.
    line_start = max(start, text.rfind("\n", start, low) + 1)
    atomic = tuple(match.span() for match in _ATOMIC.finditer(text, line_start, window_end))
    window = _Window(document, start, len(prefix), high, horizon, atomic)

    for end in _soft_cuts(document, low, high, horizon):
        if window.allows(end) and _is_boundary(text, start, end):
            return end
    for end in _boundaries(text, start, low, high):
        if not text[end - 1].isspace() and window.allows(end):
            return end
    # Inline code or a link fills the zone: rather an earlier cut than one inside it.
    if low > first + 1:
        for end in _soft_cuts(document, first + 1, low - 1, horizon):
            if window.allows(end) and _is_boundary(text, start, end):
                return end
        for end in _boundaries(text, start, first + 1, low - 1):
            if not text[end - 1].isspace() and window.allows(end):
                return end
    for end in _boundaries(text, start, first + 1, high):
        if not text[end - 1].isspace() and window.allows(end, protect=False):
            return end

    # A single grapheme cluster or run of backticks fills the room: cut it between code points.
    end = high
    while end > first + 1 and (text[end - 1].isspace() or not window.fits(end)):
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
    if text.count("\n", end, gap_end) >= 2:
        return True
    # Cutting just outside a code block saves closing and reopening it. Whether the next line
    # opens one is only known once what could hide its ``` (inline code) is within the horizon.
    if end in document.fence_ends:
        return True
    fence = document.fence_at(gap_end + 1)
    return fence is not None and fence.start == gap_end and gap_end + INLINE_CODE_REACH < horizon


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
