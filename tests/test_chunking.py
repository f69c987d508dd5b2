"""Splitting answers into Discord messages: properties over generated Markdown, then cases.

Every message of every split is read with `tests.discord_markdown`, a model of how Discord's
client reads code, and checked to render on its own the way the whole answer reads.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.answers.chunking import INLINE_CODE_REACH, MIN_LIMIT, settled_count, split_message
from tests.discord_markdown import Reading, read, read_answer

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
FLAG_FR = "\U0001f1eb\U0001f1f7"
THUMB = "\U0001f44d\U0001f3fd"
E_ACUTE = "e\u0301"
URL = "https://example.com/docs/page?query=split&lang=en#section"
# Whitespace an answer may start a line with: Python's str.isspace() takes all of it.
ODD_SPACE = ["", " ", "   ", "\t", "\u00a0", "\u3000", " \t\u00a0"]

REOPENING = re.compile(r"```([0-9A-Za-z_+\-.#]*)\n")


def align(parts: Sequence[str], text: str) -> list[tuple[int, int, int]] | None:
    """Where each part's text comes from: `(markup before it, start, end)` in `text`, or None.

    A part reads as added markup around the next slice of `text`: before it `>>> ` or `> `,
    then possibly a reopened fence (``` with one of the answer's languages, a newline); after
    it possibly a newline and ```. Between slices only whitespace may be missing.
    """
    reopenings = {"", "```\n"} | {match[0] for match in REOPENING.finditer(text)}
    prefixes = {quote + fence for quote in ("", ">>> ", "> ") for fence in reopenings}
    # (cursor in text, alignment so far)
    states: list[tuple[int, list[tuple[int, int, int]]]] = [(0, [])]
    for part in parts:
        reached: dict[int, list[tuple[int, int, int]]] = {}
        for cursor, done in states:
            for prefix in prefixes:
                for suffix in ("", "\n```"):
                    if len(prefix) + len(suffix) >= len(part):
                        continue
                    if not (part.startswith(prefix) and part.endswith(suffix)):
                        continue
                    core = part[len(prefix) : len(part) - len(suffix)]
                    position = cursor
                    while True:
                        if text.startswith(core, position):
                            end = position + len(core)
                            reached.setdefault(end, [*done, (len(prefix), position, end)])
                        if position == len(text) or not text[position].isspace():
                            break
                        position += 1
        states = list(reached.items())
    for cursor, done in states:
        if not text[cursor:].strip():
            return done
    return None


def check_rendering(text: str, parts: Sequence[str], limit: int) -> None:
    """Each part renders on its own, and shows as code exactly what the answer does."""
    alignment = align(parts, text)
    assert alignment is not None, "text lost or changed"
    answer = read_answer(text)
    if not within_reach(text, answer, limit):
        return
    for part, (markup, start, end) in zip(parts, alignment, strict=True):
        reading = read(part)
        assert not reading.unclosed, f"opens a code block it does not close: {part!r}"
        for position in range(start, end):
            if text[position].isspace():
                continue
            shown = markup + position - start
            as_code = position in answer.code
            assert (shown in reading.code) == as_code, (
                f"{text[position]!r} at {position} should {'' if as_code else 'not '}be code",
                part,
            )
        for opening, closing in answer.inline:
            if start <= opening and closing <= end:
                assert reading.in_inline(markup + opening - start), part


EMPTY_BLOCK = re.compile(r"```(?:[0-9A-Za-z_+\-.#]+\n)?\n*(?=```)")


def within_reach(text: str, answer: Reading, limit: int) -> bool:
    """Whether Discord pairs nothing further apart than the splitter looks (see chunking).

    Discord pairs a stray backtick with one any distance later, and an empty code block with
    any later ```, reading everything between as code; the splitter only within
    `INLINE_CODE_REACH`. Inline code longer than the zone a message is cut in (a fifth of what
    markup leaves) may have to be cut, and then cannot render as in the answer either.
    """
    longest = min(INLINE_CODE_REACH, (limit - 12 - limit // 4) // 5)
    if any(end - start > longest for start, end in answer.inline):
        return False
    for start, end in answer.blocks:
        empty = EMPTY_BLOCK.match(text, start)
        if empty is not None and end - len("```") >= empty.end() + INLINE_CODE_REACH:
            return False
    return True


def clusters(text: str) -> set[str]:
    return set(regex.findall(r"\X", text))


# --- Markdown-ish answers ----------------------------------------------------------------

SPECIAL = st.sampled_from(
    [
        FAMILY,
        FLAG_FR,
        FLAG_FR * 3,
        THUMB,
        E_ACUTE,
        f"caf{E_ACUTE}",
        URL,
        "<@123456789012345678>",
        "<@!42>",
        "<@&77>",
        "<#99>",
        "<:smile:123456>",
        "<a:dance:654321>",
        "<t:1700000000:R>",
        "`inline code`",
        "`a b c d e`",
        "``a ` b``",
        "`` ``` ``",
        "```x = 1```",
        "\\`",
        "**bold**",
        "@everyone",
    ]
)
CLUSTER = st.sampled_from([FAMILY, FLAG_FR, THUMB, E_ACUTE, "a", "z"])
# Words are mostly drawn whole rather than letter by letter: it keeps generation fast.
WORD = st.one_of(
    st.sampled_from(
        [
            *["a", "I", "the", "model", "answer", "Discord", "message", "split", "résumé"],
            *["straße", "naïve", "Привет", "数据", "x²", "don't", "e.g.", "(see", "below)", "—"],
        ]
    ),
    st.text(string.ascii_letters + "éßж", min_size=1, max_size=10),
    st.builds(str.__mul__, st.sampled_from(string.ascii_letters), st.integers(20, 250)),
    # No room for a soft cut, and clusters to keep whole.
    st.builds(
        lambda pattern, times: "".join(pattern) * times,
        st.lists(CLUSTER, min_size=1, max_size=4),
        st.integers(3, 40),
    ),
    SPECIAL,
)
GAP = st.sampled_from([" "] * 8 + ["\n", "\n\n", ". ", "! ", "? ", ".\n", "\t", "\r\n", "  "])
PROSE = st.lists(st.tuples(WORD, GAP), min_size=1, max_size=20).map(
    lambda pairs: "".join(word + gap for word, gap in pairs).strip() or "text"
)
CODE_TOKEN = st.one_of(
    st.sampled_from(["def", "f(x):", "return", "x", "=", "1", "{", "}", "[i]", "#", "'s'", "+="]),
    st.sampled_from(["x = 1", ">>> 1 + 1", "> not a quote", FAMILY, '"""', "`tick`", "<@1>"]),
    st.text(
        string.ascii_letters + string.digits + "_=()[]{}<>:#'\".,+-*/", min_size=1, max_size=12
    ),
)
CODE_LINES = [
    *["def handler(event):", "    return event.data", "        if value is None:", "x = 1"],
    *['    print(f"{name}: {value}")', ">>> sorted(items)", "[1, 2, 3]", "> quoted in code"],
    *["    # a comment with https://example.com/x", "        total += row[i]  # sum", "}"],
    # Fence lines inside code: CommonMark would nest them, Discord closes the block.
    *["~~~", "```", "```python", "    ```"],
]
OPENER = st.sampled_from(
    ["```", "```python", "```py", "```c++", "```python extra", "````js", "`````", "~~~", "~~~~text"]
)
CLOSER = st.sampled_from(["```", "```", "````", "`````", "~~~", "    ```", ""])


def code_lines(*, blank_lines: bool) -> st.SearchStrategy[str]:
    """Code lines; whitespace-only ones too if `blank_lines`."""
    indent = st.sampled_from(["", "    ", "        ", "\t", "\u3000"])
    tokens = st.lists(CODE_TOKEN, min_size=0 if blank_lines else 1, max_size=6)
    return st.one_of(
        st.sampled_from(CODE_LINES + (["", "    "] if blank_lines else [])),
        st.tuples(indent, tokens).map(lambda line: line[0] + " ".join(line[1])),
    )


@st.composite
def code_blocks(draw: st.DrawFn, lines: st.SearchStrategy[str]) -> str:
    indent = draw(st.sampled_from(ODD_SPACE))
    opener = indent + draw(OPENER)
    body = draw(st.lists(lines, min_size=1, max_size=30))
    closer = draw(CLOSER)
    return "\n".join([opener, *body, closer] if closer else [opener, *body])


def blocks(*, blank_lines: bool) -> st.SearchStrategy[str]:
    return st.one_of(
        PROSE,
        PROSE,
        code_blocks(code_lines(blank_lines=blank_lines)),
        PROSE.map(lambda text: "> " + text.replace("\n", " ")),
        PROSE.map(lambda text: ">>> " + text),
    )


# Built once: building strategies inside a draw costs more than drawing from them.
BLOCKS = {blank_lines: blocks(blank_lines=blank_lines) for blank_lines in (False, True)}


@st.composite
def answers(draw: st.DrawFn, *, blank_lines: bool = True) -> str:
    """Prose, code blocks, quotes; code may hold whitespace-only lines if `blank_lines`."""
    parts = draw(st.lists(BLOCKS[blank_lines], min_size=1, max_size=8))
    separators = draw(st.lists(st.sampled_from(["\n", "\n\n"]), min_size=len(parts)))
    text = "".join(part + separator for part, separator in zip(parts, separators, strict=False))
    lead = draw(st.sampled_from(["", "", ">>> ", *ODD_SPACE[1:], "\n\u3000"]))
    return lead + text * draw(st.integers(1, 3))


LIMITS = st.sampled_from([MIN_LIMIT, 120, 137, 200, 300, 2000])


def minimum_fill(text: str, limit: int) -> int:
    """Text each message but the last is sure to take from a generated answer.

    A message holds at most `>>> `, a reopened fence line and a closing fence on top of its
    text; the splitter cuts in the last fifth of what is left. That fifth always holds a valid
    cut in answers without blank lines in code: their whitespace runs (at most 9 characters),
    fence lines (at most 16) and grapheme clusters (at most 7 code points) are all shorter than
    it (at least 12 characters at the smallest limit).
    """
    longest = max((len(match[0]) for match in REOPENING.finditer(text)), default=0)
    room = limit - (4 + longest + 4)
    return room - room // 5


# --- Properties --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(text=answers(), limit=LIMITS)
def test_every_message_fits_and_renders_on_its_own(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert bool(parts) == bool(text.strip())
    assert all(len(part) <= limit for part in parts)
    assert all(part.strip() for part in parts), "empty or whitespace-only message"
    assert all(part == part.strip("\n") for part in parts), "padded with blank lines"
    if text.startswith(">>> "):
        assert all(part.startswith(">>> ") for part in parts), "the block quote ended"
    check_rendering(text, parts, limit)


@settings(max_examples=100, deadline=None)
@given(text=answers(), limit=LIMITS)
def test_grapheme_clusters_are_never_split(text: str, limit: int) -> None:
    allowed = clusters(text) | clusters(">` \n")
    for part in split_message(text, limit):
        assert clusters(part) <= allowed, part


@settings(max_examples=100, deadline=None)
@given(text=answers(blank_lines=False), limit=LIMITS)
def test_message_count_stays_near_the_minimum(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    if parts:
        # Every message but the last takes at least `fill` characters of the answer.
        fill = minimum_fill(text, limit)
        assert len(parts) <= (len(text) - 1) // fill + 1


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(
        st.lists(st.text(string.ascii_letters, min_size=1, max_size=7), min_size=1, max_size=5),
        min_size=1,
        max_size=800,
    )
)
def test_prose_with_short_lines_is_within_one_message_of_the_minimum(
    lines: list[list[str]],
) -> None:
    text = "\n".join(" ".join(words) for words in lines)  # lines of at most 39 characters
    parts = split_message(text)
    # A line break always lies within the last 40 characters of a full message.
    assert len(parts) <= (len(text) - 1) // (2000 - 40) + 1
    assert len(parts) <= math.ceil(len(text) / 2000) + 1


def cut_kind(text: str, end: int, reading: Reading) -> int:
    """How good a cut at `end` is: 3 paragraph break, 2 line break, 1 sentence end, 0 space."""
    gap_end = end
    while gap_end < len(text) and text[gap_end].isspace():
        gap_end += 1
    gap = text[end:gap_end]
    edge = any(close == end or opening == gap_end for opening, close in reading.blocks)
    if gap.count("\n") >= 2 or ("\n" in gap and edge):
        return 3
    if "\n" in gap:
        return 2
    return 1 if text[end - 1] in ".!?" and gap[:1] in (" ", "\t") else 0


PLAIN_WORD = st.sampled_from(["a", "model", "answer", "Discord", "message", "straße", "数据"])
PLAIN_GAP = st.sampled_from([" "] * 3 + [". ", "! ", "\n", "\n\n", "\n\n"])
PLAIN_PROSE = st.lists(st.tuples(PLAIN_WORD, PLAIN_GAP), min_size=1, max_size=120).map(
    lambda pairs: "".join(word + gap for word, gap in pairs).strip() or "text"
)
PLAIN_CODE = st.lists(st.sampled_from(CODE_LINES[:6]), min_size=1, max_size=12).map(
    lambda lines: "\n".join(["```python", *lines, "```"])
)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(st.one_of(PLAIN_PROSE, PLAIN_PROSE, PLAIN_CODE), min_size=1, max_size=8),
    limit=LIMITS,
)
def test_the_best_kind_of_cut_in_reach_is_taken(blocks: list[str], limit: int) -> None:
    # Long paragraphs, line breaks and sentence ends around code blocks; nothing to protect.
    text = "\n\n".join(blocks)
    answer = read_answer(text)
    alignment = align(parts := split_message(text, limit), text)
    assert alignment is not None
    for part, (markup, start, end) in zip(parts[:-1], alignment, strict=False):
        # The narrowest zone the splitter cuts in: the last fifth of the room left by the
        # markup before the text (with code in the message, it starts earlier).
        room = limit - markup
        low = start + room - room // 5
        outside_code = [
            candidate
            for candidate in range(low, start + room + 1)
            if candidate < len(text)
            and text[candidate].isspace()
            and not text[candidate - 1].isspace()
            and not any(opening < candidate < close for opening, close in answer.blocks)
        ]
        best = max((cut_kind(text, candidate, answer) for candidate in outside_code), default=0)
        assert cut_kind(text, end, answer) >= best, (part[-40:], text[end : end + 40])


@settings(max_examples=100, deadline=None)
@given(
    whole=answers(),
    at=st.floats(0, 1),
    more=st.one_of(st.just(""), answers(), st.text(), st.sampled_from(["`", "``", "```", "\n"])),
    limit=LIMITS,
)
def test_settled_messages_never_change(whole: str, at: float, more: str, limit: int) -> None:
    # The answer so far is cut anywhere, in code, in a fence, in an emoji...
    text = whole[: int(len(whole) * at)]
    settled = settled_count(text, limit)
    parts = split_message(text, limit)
    assert settled <= max(len(parts) - 1, 0)
    assert split_message(whole + more, limit)[:settled] == parts[:settled]
    assert split_message(text + more, limit)[:settled] == parts[:settled]


def test_a_message_is_not_settled_while_the_text_can_still_change_it() -> None:
    # Inline code opened near the end of the first message and not closed yet: the cut may go
    # inside it for now, but once the model closes it, the cut moves before it.
    head = exactly(1985, WORDS)
    text = f"{head} `git commit --amend --no-edit"
    assert len(text) > 2000
    assert split_message(text)[0] != split_message(text + "` and push.")[0]
    assert settled_count(text) == 0


# --- Cases -------------------------------------------------------------------------------


SENTENCES = "The model wrote a long answer. It keeps going, sentence after sentence! Why? "
WORDS = "words and more words without any end in sight "


def prose(length: int, source: str = SENTENCES) -> str:
    """Text of about `length` characters, cut from `source` repeated."""
    return (source * (length // len(source) + 1))[:length].rstrip()


def exactly(length: int, source: str = SENTENCES) -> str:
    """Text of exactly `length` characters ending in a visible one."""
    text = prose(length, source)
    return text + "y" * (length - len(text))


def test_exactly_the_limit_is_one_message() -> None:
    text = exactly(2000)
    assert len(text) == 2000
    assert split_message(text) == [text]


def test_one_more_than_the_limit_is_two_messages() -> None:
    text = exactly(2001)
    parts = split_message(text)
    assert len(parts) == 2
    assert " ".join(parts) == text


@pytest.mark.parametrize("text", ["", " ", "\n\n", " \t\r\n "])
def test_nothing_to_say_gives_no_message(text: str) -> None:
    assert split_message(text) == []


def test_surrounding_blank_lines_are_dropped() -> None:
    assert split_message("\n \nHello there.  \n\n") == ["Hello there."]
    assert split_message("\n\n    indented code\n") == ["    indented code"]


@pytest.mark.parametrize("limit", [0, 1, 50, MIN_LIMIT - 1])
def test_too_small_limit_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        split_message("hello", limit)
    with pytest.raises(ValueError, match="limit"):
        settled_count("hello", limit)


def test_code_block_cut_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"    total += values[{i}]  # step {i}" for i in range(120))
    text = f"Here is the loop:\n\n```python\ndef total(values):\n{code}\n```\nDone."
    parts = split_message(text)
    assert len(parts) >= 2
    assert parts[0].startswith("Here is the loop:")
    assert parts[0].endswith("\n```")
    assert parts[1].startswith("```python\n    total += ")  # indentation kept
    assert parts[-1].endswith("```\nDone.")
    code_lines = [line for part in parts for line in part.splitlines()]
    assert all(line in code_lines for line in code.splitlines())


def test_an_unclosed_code_block_is_closed_in_the_last_message_too() -> None:
    text = "```js\n" + "\n".join(f"console.log({i});" for i in range(300))
    parts = split_message(text)
    assert len(parts) >= 2
    assert all(part.endswith("\n```") for part in parts)
    assert parts[-1].startswith("```js\n")
    assert parts[-1].endswith("console.log(299);\n```")


def test_a_short_unclosed_code_block_is_closed() -> None:
    assert split_message("Try:\n```python\nprint(1)") == ["Try:\n```python\nprint(1)\n```"]


def test_the_closing_of_an_unclosed_block_counts_against_the_limit() -> None:
    code = "\n".join(f"line {i:04}" for i in range(1000))
    text = f"```\n{code}"[:2000]
    parts = split_message(text)
    assert len(parts) == 2
    assert all(len(part) <= 2000 for part in parts)
    assert all(part.endswith("\n```") for part in parts)


def test_no_message_is_an_empty_code_block() -> None:
    # The last code line could end the first message (1996 characters, and 4 for the closing
    # fence), but then the next one would be just the reopened block and its closing line.
    code = "\n".join(f"value_{i} = {i}" for i in range(130))
    last_line = "x" * (1996 - len("```\n") - len(code) - 1)
    text = f"```\n{code}\n{last_line}\n\n```\nafter"
    parts = split_message(text)
    assert len(parts) == 2
    assert all("```\n```" not in part for part in parts)
    assert parts[1] == f"```\n{last_line}\n\n```\nafter"


def test_code_in_a_block_quote_reopens_inside_the_quote() -> None:
    code = "\n".join(f"print({i})" for i in range(300))
    parts = split_message(f">>> Try this:\n```python\n{code}\n```")
    assert len(parts) >= 2
    assert all(part.startswith(">>> ```python\nprint(") for part in parts[1:])


def test_block_quote_continues_in_the_next_message() -> None:
    text = "Before the quote.\n>>> " + prose(4500)
    parts = split_message(text)
    assert len(parts) == 3
    assert parts[0].startswith("Before the quote.\n>>> ")
    assert all(part.startswith(">>> ") for part in parts[1:])


def test_python_prompt_inside_code_is_not_a_block_quote() -> None:
    text = "```python\n" + "\n".join(f">>> print({i})\n{i}" for i in range(400)) + "\n```"
    parts = split_message(text)
    assert len(parts) >= 2
    assert all(part.startswith("```python\n>>> ") for part in parts)


def test_quote_line_cut_in_the_middle_continues_as_a_quote() -> None:
    text = "Intro.\n> " + prose(2500) + "\nAfter."
    parts = split_message(text)
    assert len(parts) == 2
    assert parts[0].startswith("Intro.\n> ")
    assert parts[1].startswith("> ")
    assert parts[1].endswith("\nAfter.")


@pytest.mark.parametrize(
    "token",
    [
        URL,
        "<@123456789012345678>",
        "<@!123456789012345678>",
        "<@&123456789012345678>",
        "<#123456789012345678>",
        "<:blobwave:123456789012345678>",
        "<a:blobdance:123456789012345678>",
        "<t:1700000000:R>",
    ],
)
def test_a_token_glued_across_the_cut_moves_whole(token: str) -> None:
    # No space anywhere near the cut: only a hard cut is possible, and it goes before the token.
    text = "x" * 1990 + token + "y" * 100
    parts = split_message(text)
    assert parts == [text[:1990], text[1990:]]


def test_inline_code_across_the_cut_moves_whole() -> None:
    code = "`git commit --amend --no-edit`"
    head = exactly(1985, WORDS)
    text = f"{head} {code} and then push."
    parts = split_message(text)
    assert parts[0] == head
    assert parts[1].startswith(code)


@pytest.mark.parametrize(("cluster", "before"), [(FAMILY, 1997), (FLAG_FR, 1999), (THUMB, 1999)])
def test_emoji_at_the_cut_stays_whole(cluster: str, before: int) -> None:
    text = "a" * before + cluster * 20
    parts = split_message(text)
    assert "".join(parts) == text
    assert parts[0] == "a" * before
    assert clusters(parts[1]) == {cluster}


def test_combining_marks_stay_with_their_letter() -> None:
    text = E_ACUTE * 1500
    parts = split_message(text)
    assert "".join(parts) == text
    assert all(clusters(part) == {E_ACUTE} for part in parts)


def test_a_very_long_word_is_cut_hard() -> None:
    text = "z" * 5000
    assert [len(part) for part in split_message(text)] == [2000, 2000, 1000]


def test_mass_mentions_survive_as_text() -> None:
    text = "@everyone " * 500
    parts = split_message(text)
    assert len(parts) == 3
    assert " ".join(parts) == text.strip()


def test_a_late_line_break_beats_an_early_blank_line() -> None:
    lines = "\n".join(f"{i:04} a line of a list" for i in range(120))
    text = "Short intro.\n\n" + lines
    parts = split_message(text)
    assert len(parts[0]) > 1900


def test_a_blank_line_near_the_end_beats_a_later_line_break() -> None:
    first = "\n".join(f"{i:04} a line of the first list" for i in range(60))
    second = "\n".join(f"{i:04} a line of the second list" for i in range(60))
    text = f"{first}\n\n{second}"
    assert 1600 < len(first) < 2000
    assert split_message(text)[0] == first


def test_sentence_end_beats_a_later_space() -> None:
    head = exactly(1900, WORDS)
    text = f"{head}. And then the tail goes on and on without any period at all" + " more" * 80
    assert split_message(text)[0] == f"{head}."


def test_long_prose_needs_about_the_minimum() -> None:
    text = prose(100_000)
    parts = split_message(text)
    assert len(parts) <= math.ceil(len(text) / 2000) + 1


def test_streaming_seals_messages_that_never_change() -> None:
    code = "\n".join(f"    print('row {i}')" for i in range(60))
    text = "\n\n".join([prose(1500), f"```python\n{code}\n```", ">>> " + prose(3000)]) * 2
    sealed: list[str] = []
    for length in [*range(0, len(text), 53), len(text)]:
        current = split_message(text[:length])
        assert current[: len(sealed)] == sealed, "a sealed message changed"
        sealed = current[: settled_count(text[:length])]
    final = split_message(text)
    assert sealed == final[:-1]


def test_settled_count_of_a_long_answer_is_all_but_the_last() -> None:
    text = prose(9000)
    assert settled_count(text) == len(split_message(text)) - 1


@pytest.mark.parametrize("text", ["", "short", prose(2100)])
def test_short_answers_have_nothing_settled(text: str) -> None:
    assert settled_count(text) == 0


# --- Code as Discord reads it --------------------------------------------------------------


def renders(text: str, limit: int = 2000) -> list[str]:
    """The split of `text`, after checking every message against Discord's reading."""
    parts = split_message(text, limit)
    check_rendering(text, parts, limit)
    return parts


CODE = "\n".join(f"    total += values[{i}]  # step {i}" for i in range(120))


def test_a_four_backtick_fence_opens_and_closes_as_three_and_a_stray_backtick() -> None:
    text = f"````js\n{CODE}\n````\nafter"
    parts = renders(text)
    assert len(parts) >= 2
    # Discord shows "`js" as the first line of code, so the block has no language to reopen.
    assert all(part.startswith("```\n    total") for part in parts[1:])
    assert parts[-1].endswith("\n````\nafter")


def test_tildes_are_no_fence() -> None:
    text = "~~~\n" + CODE + "\n~~~\nafter"
    parts = renders(text)
    assert len(parts) >= 2
    assert not any("```" in part for part in parts)


@pytest.mark.parametrize("space", ODD_SPACE)
def test_whitespace_before_the_first_fence_changes_nothing(space: str) -> None:
    text = f"{space}```python\n{CODE}\n{space}```\n\n{prose(600)}"
    parts = renders(text)
    assert all(part.endswith("\n```") for part in parts[:-1])
    assert parts[-1].endswith(prose(600))
    assert not read(parts[-1]).unclosed


def test_a_fence_in_the_middle_of_a_line_is_one() -> None:
    # Discord opens a block at ``` anywhere, so a cut just before it starts the next message
    # with a block that the message must close.
    text = f"{exactly(1995, WORDS)} ```print('a long line of code that goes on and on')"
    parts = renders(text + "\nstill code\n```\nprose")
    assert parts[1].startswith("```print(")
    parts = renders(text)
    assert parts[1].startswith("```print(")
    assert parts[1].endswith("\n```")


def test_a_paired_fence_in_prose_after_a_mid_line_cut_is_kept() -> None:
    text = f"{exactly(1990, WORDS)} ```x = 1``` and then `y` and " + prose(400)
    parts = renders(text)
    assert parts[1].startswith("```x = 1``` and then `y`")


@pytest.mark.parametrize("limit", [MIN_LIMIT, 150, 200, 300])
@pytest.mark.parametrize("opener", ["```", "```python", "````", "```c++", "```python extra"])
def test_small_limits_keep_every_character_of_fences_and_code(opener: str, limit: int) -> None:
    code = "\n".join(f"x_{i} = {i}" for i in range(40))
    text = f"Before.\n{opener}\n{code}\n```\nAfter, with `inline` code.\n> quoted ```x```"
    parts = renders(text, limit)
    assert len(parts) >= 2
    assert all(len(part) <= limit for part in parts)


def test_a_paragraph_break_at_the_end_of_the_room_beats_a_sentence_end() -> None:
    # The message holds code, but is cut in prose: a closing fence takes no room there.
    head = "```\nx = 1\n```\n" + prose(1900)
    head = head + "y" * (1998 - len(head))
    text = f"{head}\n\n{prose(600)}"
    assert split_message(text)[0] == head


def test_inline_code_covering_the_cut_zone_moves_whole() -> None:
    code = "`" + "git commit --amend --no-edit && git push --force-with-lease" + "`"
    text = f"{exactly(60, WORDS)} {code} done."
    parts = renders(text, MIN_LIMIT)
    assert parts[0] == exactly(60, WORDS)
    assert parts[1].startswith(code)


def test_an_empty_block_is_read_as_discord_reads_it() -> None:
    # With a ``` soon after, Discord pairs the empty block's opening with it...
    text = "```python\n```\nnot prose\n```\n" + prose(3000)
    parts = renders(text)
    assert not read(parts[0]).unclosed
    # ...and without one, it is just an empty block: what follows is prose.
    text = "```python\n```\n" + prose(3000)
    parts = renders(text)
    assert all("```" not in part for part in parts[1:])


def test_a_backslash_escapes_a_fence() -> None:
    text = "Type \\``` to show backticks. " + prose(3000)
    parts = renders(text)
    assert all("```" not in part for part in parts[1:])


def test_code_in_quote_lines_is_kept_whole() -> None:
    quoted = "> ```py\n> x = 1\n> ```"
    text = exactly(1980, WORDS) + "\n" + quoted + "\nafter"
    parts = renders(text)
    assert parts[1].startswith(quoted)
