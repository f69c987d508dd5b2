"""When a gateway shard may IDENTIFY: Discord's session-start rate limit, bot-wide.

Discord lets a bot start `max_concurrency` sessions per 5 seconds (from
`GET /gateway/bot`): shard `s` falls in rate-limit bucket `s % max_concurrency`, and each
bucket takes one IDENTIFY per 5 seconds. An IDENTIFY beyond that is refused with an
invalid session, which costs another wait. Every process of the bot shares the same
buckets, so processes starting together must take turns through something they all see.

`IdentifyTurns` is what the client asks before each IDENTIFY. `LocalIdentifyTurns` takes
turns within this process; `bot.store.redis_limits.RedisIdentifyTurns` takes them across
every process through one Redis key per bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

WINDOW = 5.0
"""Seconds between two IDENTIFYs in one bucket, as Discord requires."""
MARGIN = 0.25
"""Kept on top of the window: clocks and networks are not exact."""


def bucket_of(shard_id: int, max_concurrency: int) -> int:
    """The rate-limit bucket (Discord's `rate_limit_key`) of `shard_id`."""
    return shard_id % max(1, max_concurrency)


class IdentifyTurns(Protocol):
    """Turns to IDENTIFY, one per bucket per `WINDOW + MARGIN` seconds."""

    async def wait_turn(self, bucket: int) -> None:
        """Return once this process may IDENTIFY in `bucket`, which is then taken for the
        window. A turn is never given back early: the window is Discord's, not ours."""


class LocalIdentifyTurns:
    """`IdentifyTurns` within one process (enough when one process runs every shard)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._next: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def wait_turn(self, bucket: int) -> None:
        async with self._locks.setdefault(bucket, asyncio.Lock()):
            wait = self._next.get(bucket, 0.0) - self._clock()
            if wait > 0:
                # Discord's window, not synchronisation: nothing to wait on but time.
                await self._sleep(wait)
            self._next[bucket] = self._clock() + WINDOW + MARGIN
