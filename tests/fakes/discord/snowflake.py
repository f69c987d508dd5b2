"""Discord snowflake ids: the creation time in the top bits, strictly increasing."""

from __future__ import annotations

from .clock import Clock

DISCORD_EPOCH_MS = 1_420_070_400_000


class Snowflakes:
    """Hands out ids that sort by creation, like Discord's.

    Ids are unique per instance; two ids made in the same millisecond differ in the
    low bits, which Discord uses for a per-process increment.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        milliseconds = int(self._clock.wall() * 1000) - DISCORD_EPOCH_MS
        candidate = milliseconds << 22
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate
