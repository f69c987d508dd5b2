"""Shares each channel's message rate limit between the answers streaming in it.

Channel messages, unlike interaction followups, share one rate-limit bucket per channel:
Discord allows about 5 sends, edits or deletes per 5 seconds in a channel, whoever's
answer they belong to. `ChannelPacer` keeps a token bucket per channel, a little below
that, so several answers streaming at once in one channel stay inside it:

- a progress edit (a preview of a growing answer) is skipped when the bucket is empty;
  the next one carries the newer text anyway;
- anything else (a new message, a final edit) waits for its turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

CHANNEL_WRITES = 4
"""Writes per `CHANNEL_WINDOW` seconds: one below Discord's 5, for other writes (a
refusal, a deleted message) the pacer does not see."""
CHANNEL_WINDOW = 5.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ChannelPacer:
    """A token bucket per channel: `CHANNEL_WRITES` per `CHANNEL_WINDOW`, refilled evenly."""

    def __init__(
        self,
        writes: int = CHANNEL_WRITES,
        window: float = CHANNEL_WINDOW,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(writes)
        self._rate = writes / window
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}

    def try_take(self, channel_id: int) -> bool:
        """Take a write now if the channel has one to spare; never waits."""
        bucket = self._refill(channel_id)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    async def take(self, channel_id: int) -> None:
        """Take a write, waiting until the channel has one."""
        while not self.try_take(channel_id):
            bucket = self._buckets[channel_id]
            await asyncio.sleep((1 - bucket.tokens) / self._rate)

    def _refill(self, channel_id: int) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(channel_id)
        if bucket is None:
            bucket = self._buckets[channel_id] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if len(self._buckets) > 1024:
            self._forget_full(now)
        return bucket

    def _forget_full(self, now: float) -> None:
        """Drop channels whose bucket has refilled: they are as good as new."""
        for channel_id, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self._rate >= self._capacity:
                del self._buckets[channel_id]
