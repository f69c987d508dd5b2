"""Shared state in Redis, with this process's own stores behind it while Redis is away.

With REDIS_URL set, every store the bot uses is one of the wrappers here: each call goes
to the Redis store while Redis answers, and to the process's own store (SQLite in
DATA_PATH, limits in memory) while it does not, so no ask fails because Redis blinked.

`Failover` decides where a call goes. The first failure logs one warning, sets the
`bot_redis_up` gauge to 0 and sends calls to the local stores (each counted in
`bot_redis_fallbacks`); every `RETRY_SECONDS` a PING asks whether Redis is back, and the
first answer logs one line and sends everything back. A failure is any Redis error:
refused or lost connections, timeouts (REDIS_TIMEOUT) and errors Redis answers with
(out of memory, a read-only replica).

What holds across processes while Redis is away, and what comes back:
- cooldowns, asks in flight and budgets count per process, from zero; Redis's own counts
  carry on when it returns (holds taken in Redis before it went expire by themselves);
- conversations started meanwhile are kept in this process's SQLite file and continue
  there, even after Redis returns (their turn ids are below `SHARED_TURN_IDS`, so every
  call for them goes to the local store); a follow-up to an older conversation starts
  afresh while Redis is away;
- server settings are read as saved locally (usually none: the defaults) and cannot be
  changed: a write raises `SettingsUnavailable`, and `/settings` says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import NoReturn, TypeVar

import redis.exceptions

from bot.conversation.settings import ServerSettings, SettingsStore, SettingsUnavailable
from bot.conversation.turns import ConversationStore, NewTurn, Turn, TurnId
from bot.discord_app.identify import IdentifyTurns
from bot.discord_app.shard_claims import ShardClaims
from bot.fair_use.budgets import Reservation, Scope, Totals, UsageStore
from bot.fair_use.user_limits import UserLimits, UserRefusal, UserSlot
from bot.metrics import Metrics

__all__ = [
    "RETRY_SECONDS",
    "SHARED_TURN_IDS",
    "Failover",
    "FailoverConversationStore",
    "FailoverIdentifyTurns",
    "FailoverSettingsStore",
    "FailoverShardClaims",
    "FailoverUsageStore",
    "FailoverUserLimits",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 5.0
"""How often one call tries Redis again while it is away."""

SHARED_TURN_IDS = 2**40
"""Below every turn id the Redis store gives (they start from its clock in milliseconds,
about 1.7e12 in 2025); the local stores' ids count from 1 and stay far below it."""


class Failover:
    """Where store calls go: Redis while it answers, this process's own stores meanwhile.

    `probe` (a PING) is what tells, every `retry_seconds` while Redis is away, whether it
    is back; calls never wait for Redis meanwhile. `aclose` stops the probing.
    """

    def __init__(
        self,
        where: str,
        metrics: Metrics,
        probe: Callable[[], Awaitable[object]],
        *,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._where = where
        self._metrics = metrics
        self._probe = probe
        self._retry_seconds = retry_seconds
        self._shared = asyncio.Event()
        self._shared.set()
        self._probing: asyncio.Task[None] | None = None
        metrics.redis_up.set(1)

    @property
    def shared(self) -> bool:
        """Whether calls go to Redis now."""
        return self._shared.is_set()

    async def until_shared(self) -> None:
        """Return once calls go to Redis (at once while they do)."""
        await self._shared.wait()

    async def run(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        """`shared()` on Redis, or `local()` when Redis is away or fails now."""
        if self._shared.is_set():
            try:
                return await shared()
            except redis.exceptions.RedisError as error:
                self._lost(error)
        self._metrics.redis_fallbacks.inc()
        return await local()

    async def attempt(self, shared: Callable[[], Awaitable[T]], otherwise: T) -> T:
        """`shared()` on Redis, or `otherwise` when Redis is away or fails now: for calls
        that have no local counterpart (what Redis would forget by itself anyway)."""

        async def fallback() -> T:
            return otherwise

        return await self.run(shared, fallback)

    async def aclose(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.wait({self._probing})

    def _lost(self, error: redis.exceptions.RedisError) -> None:
        if not self._shared.is_set():
            return
        self._shared.clear()
        self._metrics.redis_up.set(0)
        log.warning(
            "Redis at %s is unreachable (%s): limits, budgets and new conversations are "
            "kept by this process until it is back",
            self._where,
            _describe(error),
        )
        self._probing = asyncio.create_task(self._until_back())

    async def _until_back(self) -> None:
        while True:
            # Nothing announces that Redis is back: asking is the only way to know.
            await asyncio.sleep(self._retry_seconds)
            try:
                await self._probe()
            except redis.exceptions.RedisError:
                continue
            self._shared.set()
            self._metrics.redis_up.set(1)
            log.info("Redis at %s is reachable again: state is shared again", self._where)
            return


def _describe(error: redis.exceptions.RedisError) -> str:
    text = str(error).strip() or type(error).__name__
    # redis-py's connection errors repeat the address; the line names it once already.
    return text.splitlines()[0][:200]


class FailoverUsageStore:
    """A `UsageStore` in Redis, with a local one while Redis is away."""

    def __init__(self, shared: UsageStore, local: UsageStore, failover: Failover) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover
        # Holds taken locally settle locally, wherever Redis is by then.
        self._local_holds: set[str] = set()

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        await self._failover.run(
            lambda: self._shared.add(day, user_id, guild_id, tokens),
            lambda: self._local.add(day, user_id, guild_id, tokens),
        )

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        return await self._failover.run(
            lambda: self._shared.totals(day, user_id, guild_id),
            lambda: self._local.totals(day, user_id, guild_id),
        )

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        async def locally() -> Scope | None:
            spent = await self._local.reserve(reservation, user_limit, guild_limit, now)
            if spent is None:
                self._local_holds.add(reservation.id)
            return spent

        return await self._failover.run(
            lambda: self._shared.reserve(reservation, user_limit, guild_limit, now), locally
        )

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        if reservation.id in self._local_holds:
            self._local_holds.discard(reservation.id)
            await self._local.settle(reservation, tokens)
            return
        # Settled locally when Redis is away: the tokens still count somewhere, and the
        # hold in Redis expires by itself.
        await self._failover.run(
            lambda: self._shared.settle(reservation, tokens),
            lambda: self._local.settle(reservation, tokens),
        )

    async def prune(self, before: str, now: float | None = None) -> int:
        pruned = await self._local.prune(before, now)
        return pruned + await self._failover.attempt(lambda: self._shared.prune(before, now), 0)

    async def close(self) -> None:
        await self._shared.close()
        await self._local.close()


class FailoverConversationStore:
    """A `ConversationStore` in Redis, with a local one for conversations started while
    Redis was away (their ids are below `SHARED_TURN_IDS`)."""

    def __init__(
        self, shared: ConversationStore, local: ConversationStore, failover: Failover
    ) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover

    async def save(self, turn: NewTurn, message_ids: Sequence[int] = ()) -> Turn:
        if turn.parent_id is not None and not _is_shared(turn.parent_id):
            return await self._local.save(turn, message_ids)
        # While Redis is away a follow-up of a shared conversation has no parent here and
        # starts afresh (the local store saves a missing parent's child as a root).
        return await self._failover.run(
            lambda: self._shared.save(turn, message_ids),
            lambda: self._local.save(turn, message_ids),
        )

    async def add_messages(self, turn_id: TurnId, message_ids: Sequence[int]) -> bool:
        if not _is_shared(turn_id):
            return await self._local.add_messages(turn_id, message_ids)
        return await self._failover.attempt(
            lambda: self._shared.add_messages(turn_id, message_ids), False
        )

    async def turn(self, turn_id: TurnId) -> Turn | None:
        if not _is_shared(turn_id):
            return await self._local.turn(turn_id)
        return await self._failover.attempt(lambda: self._shared.turn(turn_id), None)

    async def turn_for_message(self, message_id: int) -> Turn | None:
        # Message ids are Discord's, unique everywhere: either store may hold one.
        found = await self._failover.attempt(
            lambda: self._shared.turn_for_message(message_id), None
        )
        return found or await self._local.turn_for_message(message_id)

    async def chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        if not _is_shared(turn_id):
            return await self._local.chain(turn_id, max_turns)
        return await self._failover.attempt(lambda: self._shared.chain(turn_id, max_turns), [])

    async def forget_user(self, user_id: int) -> int:
        """Forgets in both stores; while Redis is away only the local one is reached, and
        the count says so."""
        forgotten = await self._local.forget_user(user_id)
        return forgotten + await self._failover.attempt(
            lambda: self._shared.forget_user(user_id), 0
        )

    async def prune(self, older_than: datetime) -> int:
        pruned = await self._local.prune(older_than)
        return pruned + await self._failover.attempt(lambda: self._shared.prune(older_than), 0)

    async def close(self) -> None:
        await self._shared.close()
        await self._local.close()


def _is_shared(turn_id: TurnId) -> bool:
    return turn_id >= SHARED_TURN_IDS


class FailoverSettingsStore:
    """A `SettingsStore` in Redis; read locally while Redis is away, and not written."""

    def __init__(self, shared: SettingsStore, local: SettingsStore, failover: Failover) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover

    async def server(self, guild_id: int) -> ServerSettings:
        return await self._failover.run(
            lambda: self._shared.server(guild_id), lambda: self._local.server(guild_id)
        )

    async def set_model(self, guild_id: int, model: str | None, *, by: int) -> None:
        await self._failover.run(
            lambda: self._shared.set_model(guild_id, model, by=by), _unavailable
        )

    async def set_prompt(
        self, guild_id: int, channel_id: int | None, prompt: str | None, *, by: int
    ) -> None:
        await self._failover.run(
            lambda: self._shared.set_prompt(guild_id, channel_id, prompt, by=by), _unavailable
        )

    async def reset(self, guild_id: int, *, by: int) -> int:
        return await self._failover.run(lambda: self._shared.reset(guild_id, by=by), _unavailable)


async def _unavailable() -> NoReturn:
    # A setting saved locally would vanish once Redis returns; better to say so now.
    raise SettingsUnavailable("Redis, where settings are kept, is unreachable")


class FailoverUserLimits:
    """`UserLimits` in Redis, in this process's memory while Redis is away."""

    def __init__(self, shared: UserLimits, local: UserLimits, failover: Failover) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover

    @property
    def max_per_user(self) -> int:
        return self._local.max_per_user

    async def admit(self, user_id: int) -> UserSlot | UserRefusal:
        async def shared() -> UserSlot | UserRefusal:
            admitted = await self._shared.admit(user_id)
            if isinstance(admitted, UserRefusal):
                return admitted
            return _SharedSlot(admitted, self._failover)

        return await self._failover.run(shared, lambda: self._local.admit(user_id))


class _SharedSlot:
    """A place taken in Redis: given back there if Redis answers; otherwise it expires."""

    def __init__(self, slot: UserSlot, failover: Failover) -> None:
        self._slot = slot
        self._failover = failover

    async def release(self) -> None:
        await self._failover.attempt(self._slot.release, None)

    async def withdraw(self) -> None:
        await self._failover.attempt(self._slot.withdraw, None)


class FailoverIdentifyTurns:
    """`IdentifyTurns` across processes through Redis; within this process meanwhile."""

    def __init__(self, shared: IdentifyTurns, local: IdentifyTurns, failover: Failover) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover

    async def wait_turn(self, bucket: int) -> None:
        await self._failover.run(
            lambda: self._shared.wait_turn(bucket), lambda: self._local.wait_turn(bucket)
        )


class FailoverShardClaims:
    """`ShardClaims` through Redis; granted unchecked while Redis is away (a process cannot
    wait for a shard on a state nobody can read)."""

    def __init__(self, shared: ShardClaims, local: ShardClaims, failover: Failover) -> None:
        self._shared = shared
        self._local = local
        self._failover = failover

    async def claim(self, shard_id: int, shard_count: int) -> None:
        await self._failover.run(
            lambda: self._shared.claim(shard_id, shard_count),
            lambda: self._local.claim(shard_id, shard_count),
        )

    async def release_all(self) -> None:
        await self._failover.attempt(self._shared.release_all, None)
