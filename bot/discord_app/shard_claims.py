"""One shard, one process: a shard run twice would answer every ask in its guilds twice.

Discord lets two sessions of the same shard run side by side and sends each of them every
event, so two processes started with the same SHARD_IDS (a typo, or a new deployment
started before the old one stopped) would both answer. Before a shard's IDENTIFY, the
process claims it (`ShardClaims.claim`); while another live process holds it, this one
waits, and says so once. Claims are given back on shutdown, and lapse shortly after a
process dies.

`LocalShardClaims` is the single-process bot's (nothing to share with); with Redis,
`bot.store.redis_limits.RedisShardClaims` keeps the claims for every process.
"""

from __future__ import annotations

from typing import Protocol


class ShardClaims(Protocol):
    """Which process runs each shard."""

    async def claim(self, shard_id: int, shard_count: int) -> None:
        """Return once this process holds the shard, waiting while another one does.
        Claiming a shard already held by this process returns at once."""

    async def release_all(self) -> None:
        """Give back every shard this process holds (at shutdown)."""


class LocalShardClaims:
    """`ShardClaims` of a process that shares nothing: every claim is granted."""

    async def claim(self, shard_id: int, shard_count: int) -> None:
        return None

    async def release_all(self) -> None:
        return None
