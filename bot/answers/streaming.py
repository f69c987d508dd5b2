"""Shows an answer in Discord while the model is still writing it.

`LiveReply` receives the growing text and keeps the channel in step with it:

- the first text is shown as soon as it arrives; after that each message is edited
  at most once per `interval`, coalescing everything that arrived in between;
- a message still growing ends with a small "still writing" marker and carries the
  Stop button;
- once the splitter says a message can no longer change (`settled_count`), it gets
  its final content, loses the marker and the button, and is never edited again;
  the text continues in the next message;
- while a reasoning model thinks (`think()`) and no answer text has come yet, the
  first message shows a status instead ("Thinking… 12 s", `replies.thinking`), paced
  like any edit; the answer text replaces it;
- `close(parts)` writes the final messages, which are exactly what the non-streamed
  path sends for the same answer (and an optional file on the last one).

Pacing is per answer and per message: there is no global timer or lock. Only progress
is paced: the final content goes out as soon as it is known (discord.py still waits out
any rate limit it knows of).

When a write fails: `MessageGone` (deleted, token expired) ends `run()` at once, since
nobody will see more; `DeliveryFailed` on a progress edit is retried with the latest text
after a backoff, and on a final write up to `FINAL_ATTEMPTS` times before `run()` raises
it. However `run()` ends, the buttons it created are stopped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import discord

from bot.answers import replies
from bot.answers.chunking import MIN_LIMIT, close_open_fence, settled_count, split_message
from bot.answers.formatting import MESSAGE_LIMIT
from bot.answers.messages import Attachment, DeliveryFailed, Messages

log = logging.getLogger(__name__)

WRITING_MARKER = "\n-# \N{WRITING HAND} still writing\N{HORIZONTAL ELLIPSIS}"
FINAL_ATTEMPTS = 3
"""Tries of each final write that Discord refuses with a server error or rate limit
(discord.py has already retried each one itself)."""
MAX_BACKOFF = 8.0


class LiveReply:
    """The messages of one streamed answer; run `run()` as a task beside the stream."""

    def __init__(
        self,
        reply: Messages,
        *,
        interval: float,
        view_factory: Callable[[], discord.ui.View | None] = lambda: None,
        limit: int = MESSAGE_LIMIT,
    ) -> None:
        self._reply = reply
        self._interval = interval
        self._view_factory = view_factory
        self._limit = limit
        self._text = ""
        self._final: Sequence[str] | None = None
        self._final_view: discord.ui.View | None = None
        self._final_file: Attachment | None = None
        self._thinking_since: float | None = None
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._sealed = 0
        self._last_edit: dict[int, float] = {}
        self._views: dict[int, discord.ui.View | None] = {}
        self.edits = 0
        self.first_shown_at: float | None = None

    @property
    def messages(self) -> Messages:
        """The messages this answer is shown in."""
        return self._reply

    def update(self, text: str) -> None:
        """The answer so far; cheap, call it for every chunk.

        Text that does not continue the last (what looked like answer text was reasoning
        after all) rewrites the messages from the first.
        """
        if not text.startswith(self._text):
            self._sealed = 0
        self._text = text
        self._changed.set()

    def think(self) -> None:
        """The model is reasoning: until answer text comes, show how long it has been."""
        if self._thinking_since is None:
            self._thinking_since = asyncio.get_running_loop().time()
        self._changed.set()

    async def close(
        self,
        parts: Sequence[str],
        renderer: asyncio.Task[None],
        view: discord.ui.View | None = None,
        file: Attachment | None = None,
    ) -> None:
        """Stop showing progress and make the channel show exactly `parts`, the last one
        with `view` and `file`.

        Raises what `run()` raised, if it ended early or fails now.
        """
        self._final_view = view
        self._final_file = file
        self._final = parts
        self._changed.set()
        self._closing.set()
        await renderer

    async def run(self) -> None:
        """Render until `close` is called; the caller owns this task.

        Raises `MessageGone`, or `DeliveryFailed` when a final write kept failing.
        """
        loop = asyncio.get_running_loop()
        backoff = 0.0
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                if self._final is not None:
                    await self._render_final(self._final, loop)
                    return
                try:
                    await self._render_progress(loop)
                    backoff = 0.0
                except DeliveryFailed as error:
                    # Progress is only a preview: show the latest text once Discord recovers.
                    backoff = min(MAX_BACKOFF, max(backoff * 2, self._interval, 0.5))
                    log.warning("could not show an answer's progress (%s); retrying", error)
                    self._changed.set()
                    await self._wait_or_final(backoff)
        finally:
            for view in self._views.values():
                if view is not None:
                    view.stop()

    async def _wait_or_final(self, seconds: float) -> None:
        """Wait `seconds`, or less if `close` is called meanwhile."""
        if self._final is not None:
            return
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({closing}, timeout=seconds)
        finally:
            closing.cancel()

    async def _render_progress(self, loop: asyncio.AbstractEventLoop) -> None:
        # Wait out the pace of the message edited first *before* reading the text, so
        # the edit carries everything that arrived meanwhile rather than lagging behind.
        await self._pace(self._sealed, loop)
        if self._final is not None:
            return  # the final render supersedes this progress edit
        self._changed.clear()
        text = self._text
        parts = split_message(text, self._limit)
        if not parts:
            if self._thinking_since is not None and self._sealed == 0:
                status = replies.thinking(loop.time() - self._thinking_since)
                await self._show(0, status, loop, live=True, answer=False)
            return
        settled = settled_count(text, self._limit)
        cap = self._reply.cap
        if cap is not None:
            # The last message allowed shows whatever is being written: the final one
            # may be the note with the whole answer attached.
            settled = min(settled, cap - 1)
        while self._sealed < settled:
            await self._show(self._sealed, parts[self._sealed], loop, live=False)
            self._sealed += 1
        growing = parts[self._sealed] if cap is None or self._sealed < cap - 1 else parts[-1]
        if self._final is None:
            await self._show(self._sealed, self._live_text(growing), loop, live=True)

    async def _render_final(self, parts: Sequence[str], loop: asyncio.AbstractEventLoop) -> None:
        last = len(parts) - 1
        for index in range(self._sealed, last):
            show = functools.partial(self._show, index, parts[index], loop, live=False, paced=False)
            await self._retrying(show)
        finish = functools.partial(self._reply.finish, parts, self._final_view, self._final_file)
        await self._retrying(finish)

    async def _retrying(self, write: Callable[[], Awaitable[None]]) -> None:
        await write_final(write)

    async def _show(
        self,
        index: int,
        content: str,
        loop: asyncio.AbstractEventLoop,
        *,
        live: bool,
        paced: bool = True,
        answer: bool = True,
    ) -> None:
        view = self._view_for(index) if live else None
        if index < self._reply.count:
            if self._reply.showing(index) == (content, view):
                return
            if paced and await self._pace(index, loop) and live and self._final is not None:
                return  # the final render supersedes this progress edit
            self.edits += 1
        await self._reply.show(index, content, view)
        self._last_edit[index] = loop.time()
        if self.first_shown_at is None and answer:
            self.first_shown_at = self._last_edit[index]

    async def _pace(self, index: int, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait until message `index` may be edited again; say whether that took a wait.

        One edit per message per interval keeps a streamed answer well inside Discord's
        per-route rate limits.
        """
        if index >= self._reply.count:
            return False
        wait = self._last_edit.get(index, -math.inf) + self._interval - loop.time()
        if wait <= 0:
            return False
        # `close` cuts the wait short: the final content is never held back by pacing.
        await self._wait_or_final(wait)
        return True

    def _view_for(self, index: int) -> discord.ui.View | None:
        if index not in self._views:
            self._views[index] = self._view_factory()
        return self._views[index]

    def _live_text(self, part: str) -> str:
        """`part` as shown while it still grows: any open fence closed, then the marker."""
        room = self._limit - len(WRITING_MARKER)
        shown = close_open_fence(part)
        while len(shown) > room and len(part) > MIN_LIMIT:
            # Cut early enough to leave room for the closing fence this adds.
            part = split_message(part, max(MIN_LIMIT, len(part) - (len(shown) - room)))[0]
            shown = close_open_fence(part)
        # Only an absurdly long fence run gets here; a plain cut still fits the message.
        return shown[:room] + WRITING_MARKER


async def write_final(write: Callable[[], Awaitable[None]]) -> None:
    """Run `write`, again on `DeliveryFailed`, up to `FINAL_ATTEMPTS` times in all.

    For writes that must land (an answer's final messages): a progress edit is simply
    superseded by the next one instead.
    """
    for attempt in range(FINAL_ATTEMPTS):
        try:
            await write()
            return
        except DeliveryFailed as error:
            if attempt == FINAL_ATTEMPTS - 1:
                raise
            log.warning("could not write an answer's final message (%s); retrying", error)
            await asyncio.sleep(min(MAX_BACKOFF, 2.0**attempt))
