"""Discord snowflake ids: the creation time in the top bits, strictly increasing.

A guild's gateway shard is ``(guild_id >> 22) % shard_count``: the creation time picks
the shard, so :meth:`Snowflakes.next_on_shard` moves the time forward a few milliseconds
until it lands on the one asked for.
"""

from __future__ import annotations

from .clock import Clock

DISCORD_EPOCH_MS = 1_420_070_400_000
TIMESTAMP_SHIFT = 22


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that gets ``guild_id``'s events, by Discord's formula."""
    if shard_count < 1:
        raise ValueError("shard_count is at least 1")
    return (guild_id >> TIMESTAMP_SHIFT) % shard_count


def guild_id_on_shard(shard_id: int, shard_count: int, after: int) -> int:
    """The smallest realistic snowflake above ``after`` that lands on ``shard_id`` of
    ``shard_count``: a whole millisecond (low bits zero), at most ``shard_count`` ms on."""
    if not 0 <= shard_id < shard_count:
        raise ValueError(f"no shard {shard_id} of {shard_count}")
    milliseconds = (after >> TIMESTAMP_SHIFT) + 1
    milliseconds += (shard_id - milliseconds) % shard_count
    return milliseconds << TIMESTAMP_SHIFT


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
        candidate = milliseconds << TIMESTAMP_SHIFT
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate

    def next_on_shard(self, shard_id: int, shard_count: int) -> int:
        """The next id that a sharded bot gets on ``shard_id`` of ``shard_count``."""
        candidate = guild_id_on_shard(shard_id, shard_count, self.next())
        self._last = candidate
        return candidate
