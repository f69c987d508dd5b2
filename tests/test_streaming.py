"""`LiveReply` on its own: what each message shows while an answer grows, whatever the text."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.answers import replies
from bot.answers.attachment import capped
from bot.answers.chunking import split_message
from bot.answers.formatting import final_parts
from bot.answers.messages import Attachment, DeliveryFailed, MessageGone
from bot.answers.streaming import FINAL_ATTEMPTS, WRITING_MARKER, LiveReply

LIMIT = 200


@dataclass
class Shown:
    index: int
    content: str
    view: discord.ui.View | None


@dataclass
class Recorder:
    """A `Messages` that checks Discord's limit and records every create and edit."""

    limit: int = LIMIT
    cap: int | None = None
    attached: discord.File | None = None
    shown: list[tuple[str, discord.ui.View | None]] = field(default_factory=list)
    writes: list[Shown] = field(default_factory=list)
    finished: list[str] | None = None
    file: Attachment | None = None
    """The file the last `finish` attached."""
    wrote: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by every accepted write."""

    @property
    def count(self) -> int:
        return len(self.shown)

    @property
    def message_ids(self) -> list[int]:
        return list(range(len(self.shown)))

    def showing(self, index: int) -> tuple[str, discord.ui.View | None]:
        return self.shown[index]

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        assert 0 < len(content) <= self.limit, content
        assert index <= len(self.shown)
        assert self.cap is None or index < self.cap
        if index == len(self.shown):
            self.shown.append((content, view))
        else:
            self.shown[index] = (content, view)
        self.writes.append(Shown(index, content, view))
        self.wrote.set()

    async def finish(
        self,
        parts: Sequence[str],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        self.finished = list(parts)
        self.file = file
        for index, part in enumerate(parts):
            shown = (part, view if index == len(parts) - 1 else None)
            if index == len(self.shown) or self.shown[index] != shown:
                await self.show(index, *shown)
        assert len(self.shown) == len(parts)


class Marker(discord.ui.View):
    """Stands for the Stop button; never sent anywhere."""


async def stream(text: str, cuts: Sequence[int], *, note: str | None = None) -> Recorder:
    """Feed `text` to a `LiveReply` in pieces ending at `cuts`, letting it render between."""
    views: list[discord.ui.View] = []

    def view() -> discord.ui.View:
        views.append(Marker(timeout=None))
        return views[-1]

    recorder = Recorder()
    live = LiveReply(recorder, interval=0.0, view_factory=view, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    for end in [*sorted(set(cuts)), len(text)]:
        live.update(text[:end])
        for _ in range(3):
            await asyncio.sleep(0)  # the renderer runs between pieces, as with a network
    await live.close(final_parts(text, note, LIMIT), renderer)
    return recorder


def check(recorder: Recorder, final: list[str]) -> None:
    """Sealed messages are written once and kept; live ones carry the marker and a view."""
    assert recorder.shown == [(part, None) for part in final]
    sealed: set[int] = set()
    for write in recorder.writes:
        assert write.index not in sealed, f"message {write.index} written after sealing"
        if write.content.endswith(WRITING_MARKER):
            assert write.view is not None
            assert all(index < write.index for index in sealed)
        else:
            assert write.view is None
            assert write.content == final[write.index]
            sealed.add(write.index)
    assert sealed == set(range(len(final)))


WORDS = st.sampled_from(
    ["word", "longerword", " ", "\n", "\n\n", "```", "```python\n", "~~~", "> ", ">>> ", "."]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(WORDS, min_size=1, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=1500), max_size=30),
)
async def test_streamed_messages_end_as_the_split_answer(words: list[str], cuts: list[int]) -> None:
    text = "".join(words)
    if not text.strip():
        return
    recorder = await stream(text, [cut for cut in cuts if cut < len(text)])
    check(recorder, split_message(text, LIMIT))


@settings(max_examples=50, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=200), cut=st.integers(min_value=1))
async def test_an_answer_cut_short_keeps_its_settled_messages(words: list[str], cut: int) -> None:
    text = "".join(words)
    if not text.strip():
        return
    recorder = await stream(text, range(0, len(text), 1 + cut % 40), note="*(Stopped.)*")
    final = final_parts(text, "*(Stopped.)*", LIMIT)
    check(recorder, final)
    assert final[-1].endswith("*(Stopped.)*")


async def test_growing_message_closes_an_open_fence_before_the_marker() -> None:
    text = "Here:\n\n```python\nprint('hi')\n"
    recorder = await stream(text, [len(text) - 1])
    live = [write.content for write in recorder.writes if write.view is not None]
    assert live
    assert all(content.endswith(f"\n```{WRITING_MARKER}") for content in live)


async def test_growing_message_with_a_long_fence_run_still_fits() -> None:
    # A ten-backtick fence left open: closing it while the message grows takes 11 characters.
    text = "``````````text\n" + "line of code\n" * 40
    recorder = await stream(text, range(len(text)))
    check(recorder, split_message(text, LIMIT))


async def test_text_arriving_together_is_shown_in_one_write() -> None:
    recorder = Recorder()
    live = LiveReply(recorder, interval=0.0, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    for text in ["one", "one two", "one two three"]:
        live.update(text)
    for _ in range(3):
        await asyncio.sleep(0)
    await live.close(["one two three"], renderer)
    assert [write.content for write in recorder.writes] == [
        "one two three" + WRITING_MARKER,
        "one two three",
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(WORDS, min_size=1, max_size=400),
    step=st.integers(min_value=1, max_value=60),
    cap=st.integers(min_value=1, max_value=4),
)
async def test_a_capped_answer_never_needs_more_messages_than_its_cap(
    words: list[str], step: int, cap: int
) -> None:
    """Past the cap, the last allowed message shows the growing end, then the whole answer
    attached; the recorder refuses any write past the cap."""
    text = "".join(words)
    if not text.strip():
        return
    recorder = Recorder(cap=cap)
    live = LiveReply(recorder, interval=0.0, view_factory=lambda: Marker(timeout=None), limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    for end in [*range(step, len(text), step), len(text)]:
        live.update(text[:end])
        for _ in range(3):
            await asyncio.sleep(0)
    parts, file = capped(split_message(text, LIMIT), text, cap)
    await live.close(parts, renderer, None, file)
    assert [content for content, _ in recorder.shown] == parts
    if len(split_message(text, LIMIT)) <= cap:
        assert recorder.file is None
    else:
        assert recorder.file is not None
        assert parts[-1] == replies.WHOLE_ANSWER_ATTACHED
        assert recorder.file.content == text.encode()


async def test_a_thinking_model_shows_a_status_until_its_answer_replaces_it() -> None:
    recorder = Recorder()
    live = LiveReply(recorder, interval=0.0, view_factory=lambda: Marker(timeout=None), limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    live.think()
    await recorder.wrote.wait()
    status, view = recorder.shown[0]
    assert re.fullmatch(re.escape(replies.THINKING) + r" \d+ s", status)
    assert view is not None  # the Stop button works while it thinks
    assert live.first_shown_at is None  # a status is not answer text

    recorder.wrote.clear()
    live.update("Forty")
    await recorder.wrote.wait()
    assert recorder.shown == [("Forty" + WRITING_MARKER, view)]
    assert live.first_shown_at is not None
    reasoning = Attachment(replies.REASONING_FILE, b"six times seven\n")
    await live.close(["Forty-two."], renderer, file=reasoning)
    assert recorder.shown == [("Forty-two.", None)]
    assert recorder.file == reasoning


# --- Pacing of the final content, and writes Discord refuses ------------------------------------


@dataclass
class Flaky(Recorder):
    """A `Recorder` whose next writes fail as scripted: each entry is raised by one call."""

    failures: list[Exception] = field(default_factory=list)
    attempts: int = 0

    async def show(self, index: int, content: str, view: discord.ui.View | None = None) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        await super().show(index, content, view)


def counting_views() -> tuple[list[discord.ui.View], Callable[[], discord.ui.View]]:
    views: list[discord.ui.View] = []

    def view() -> discord.ui.View:
        views.append(Marker(timeout=None))
        return views[-1]

    return views, view


async def test_the_final_content_is_not_held_back_by_the_edit_interval() -> None:
    # An hour between edits: had the final edit waited out the pace, this would hang.
    recorder = Recorder()
    live = LiveReply(recorder, interval=3600.0, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    live.update("The first words")
    await recorder.wrote.wait()
    live.update("The first words and the rest")
    async with asyncio.timeout(30):
        await live.close(["The first words and the rest."], renderer)
    assert recorder.shown == [("The first words and the rest.", None)]


async def test_a_progress_edit_discord_refuses_is_retried_with_the_latest_text() -> None:
    recorder = Flaky(failures=[DeliveryFailed("503")])
    live = LiveReply(recorder, interval=0.0, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    live.update("Partial")
    await recorder.wrote.wait()
    await live.close(["Partial and final."], renderer)
    assert recorder.attempts >= 2
    assert recorder.shown == [("Partial and final.", None)]


async def test_a_final_write_is_tried_again_then_given_up_with_its_buttons_stopped() -> None:
    views, view = counting_views()
    recorder = Flaky(failures=[])
    live = LiveReply(recorder, interval=0.0, view_factory=view, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    live.update("Partial")
    await recorder.wrote.wait()
    recorder.failures = [DeliveryFailed("500")] * FINAL_ATTEMPTS
    with pytest.raises(DeliveryFailed):
        await live.close(["Partial and final."], renderer)
    assert recorder.attempts == 1 + FINAL_ATTEMPTS
    assert views
    assert all(v.is_finished() for v in views)


async def test_a_deleted_message_ends_rendering_at_once_with_its_buttons_stopped() -> None:
    views, view = counting_views()
    recorder = Flaky()
    live = LiveReply(recorder, interval=0.0, view_factory=view, limit=LIMIT)
    renderer = asyncio.create_task(live.run())
    live.update("Partial")
    await recorder.wrote.wait()
    recorder.failures = [MessageGone("deleted")]
    live.update("Partial and more")
    with pytest.raises(MessageGone):
        await renderer
    assert recorder.attempts == 2
    assert views
    assert all(v.is_finished() for v in views)
