"""Shares each channel's message rate limit between the answers streaming in it.

Channel messages, unlike interaction followups, share one rate-limit bucket per channel:
Discord allows about 5 sends, edits or deletes per 5 seconds in a channel, whoever's
answer they belong to. `ChannelPacer` keeps the times of each channel's recent writes and
allows a little below that in any window, so several answers streaming at once in one
channel stay inside it:

- a progress edit (a preview of a growing answer) is skipped when the window is full;
  the next one carries the newer text anyway;
- anything else (a new message, a final edit) waits for its turn.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

CHANNEL_WRITES = 4
"""Writes per `CHANNEL_WINDOW` seconds: one below Discord's 5, for other writes (a
refusal, a deleted message) the pacer does not see."""
CHANNEL_WINDOW = 5.0
CHANNEL_SLACK = 0.5
"""Seconds a write is counted beyond the window: Discord's window starts when the first
write arrives, up to a round trip after it was sent, so one counted exactly `window`
seconds would let the next burst land inside the same window."""


class ChannelPacer:
    """At most `CHANNEL_WRITES` writes in any `CHANNEL_WINDOW` seconds, per channel.

    A sliding window, not a token bucket: a bucket refilled evenly lets a full burst and
    then its refill through inside one window (twice the limit), which Discord's
    fixed windows answer with a 429. Each write is counted for `window + slack` seconds.
    """

    def __init__(
        self,
        writes: int = CHANNEL_WRITES,
        window: float = CHANNEL_WINDOW,
        *,
        slack: float = CHANNEL_SLACK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writes = writes
        self._window = window + slack
        self._clock = clock
        self._recent: dict[int, deque[float]] = {}

    def try_take(self, channel_id: int) -> bool:
        """Take a write now if the channel has one to spare; never waits."""
        now = self._clock()
        recent = self._expire(channel_id, now)
        if len(recent) < self._writes:
            recent.append(now)
            return True
        return False

    async def take(self, channel_id: int) -> None:
        """Take a write, waiting until the channel has one."""
        while not self.try_take(channel_id):
            oldest = self._recent[channel_id][0]
            await asyncio.sleep(max(0.0, oldest + self._window - self._clock()))

    def _expire(self, channel_id: int, now: float) -> deque[float]:
        recent = self._recent.get(channel_id)
        if recent is None:
            if len(self._recent) > 1024:
                self._forget_idle(now)
            recent = self._recent[channel_id] = deque()
        while recent and recent[0] <= now - self._window:
            recent.popleft()
        return recent

    def _forget_idle(self, now: float) -> None:
        """Drop channels with no write in the window: they are as good as new."""
        for channel_id, recent in list(self._recent.items()):
            if not recent or recent[-1] <= now - self._window:
                del self._recent[channel_id]
