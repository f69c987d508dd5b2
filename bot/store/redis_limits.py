"""Limits every process of the bot shares through Redis: per-user limits and IDENTIFY turns.

RedisUserLimits     the cooldown and each user's asks in flight
                    (`bot.fair_use.user_limits.UserLimits`), decided by one Lua script
RedisIdentifyTurns  one IDENTIFY per rate-limit bucket per window, bot-wide
                    (`bot.discord_app.identify.IdentifyTurns`)
RedisShardClaims    one process per shard (`bot.discord_app.shard_claims.ShardClaims`)

Keys (all under the store's prefix, `askbot:` by default):
- `cooldown:<user id>`: a sorted set of the user's recent asks scored by their time (ms),
  expiring one cooldown window after the latest;
- `asks:<user id>`: a sorted set of the user's asks in flight scored by when each place
  lapses (ms), expiring with the latest. A process that dies mid-answer never gives its
  places back; they lapse after `SLOT_LIFETIME`, longer than any ask can live;
- `identify:<bucket>`: present while the bucket's window runs (SET NX PX);
- `shard:<shard count>:<shard id>`: the process running that shard ("host pid token"),
  renewed every third of `CLAIM_LIFETIME` while it runs, deleted when it stops.

Times are Redis's own (`TIME`), so processes on machines whose clocks differ still agree.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import redis.asyncio as redis

from bot.discord_app.identify import MARGIN, WINDOW
from bot.fair_use.limits import CooldownSpec
from bot.fair_use.user_limits import UserRefusal, UserSlot
from bot.store.redis import as_text

__all__ = [
    "CLAIM_LIFETIME",
    "SLOT_LIFETIME",
    "RedisIdentifyTurns",
    "RedisShardClaims",
    "RedisUserLimits",
]

log = logging.getLogger(__name__)

SLOT_LIFETIME = 16 * 60.0
"""Seconds after which a place in flight lapses: an interaction lives 15 minutes."""

CLAIM_LIFETIME = 30.0
"""Seconds a dead process's shards stay claimed before another process may take them."""

DEFAULT_PREFIX = "askbot:"

# KEYS: the user's recent asks, their asks in flight.
# ARGV: asks per window (0: no cooldown), window (ms), cap, this ask's id, place lifetime (ms).
# Returns {0, 0} when admitted, {1, ms until the cooldown allows one} or {2, 0} for the cap.
_ADMIT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local asks, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, id, lifetime = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
if asks > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  if redis.call('ZCARD', KEYS[1]) >= asks then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {1, tonumber(oldest[2]) + window - now}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= cap then
  return {2, 0}
end
redis.call('ZADD', KEYS[2], now + lifetime, id)
redis.call('PEXPIRE', KEYS[2], lifetime)
if asks > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window)
end
return {0, 0}
"""


class RedisUserLimits:
    """`UserLimits` for every process sharing `client`; one round trip per decision."""

    def __init__(
        self,
        client: redis.Redis,
        cooldown: CooldownSpec | None,
        max_per_user: int,
        *,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if max_per_user < 1:
            raise ValueError(f"max_per_user must be at least 1 (got {max_per_user})")
        self._client = client
        self._cooldown = cooldown
        self._max_per_user = max_per_user
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT)

    @property
    def max_per_user(self) -> int:
        return self._max_per_user

    async def admit(self, user_id: int) -> UserSlot | UserRefusal:
        cooldown_key = f"{self._prefix}cooldown:{user_id}"
        asks_key = f"{self._prefix}asks:{user_id}"
        ask_id = uuid.uuid4().hex
        spec = self._cooldown
        verdict, wait_ms = await self._admit(
            keys=[cooldown_key, asks_key],
            args=[
                spec.asks if spec is not None else 0,
                round(spec.seconds * 1000) if spec is not None else 0,
                self._max_per_user,
                ask_id,
                round(SLOT_LIFETIME * 1000),
            ],
        )
        if int(verdict) == 1:
            return UserRefusal("cooldown", max(0.0, int(wait_ms) / 1000))
        if int(verdict) == 2:
            return UserRefusal("too_many")
        return _RedisSlot(self._client, cooldown_key, asks_key, ask_id)


class _RedisSlot:
    def __init__(self, client: redis.Redis, cooldown_key: str, asks_key: str, ask_id: str) -> None:
        self._client = client
        self._cooldown_key = cooldown_key
        self._asks_key = asks_key
        self._id = ask_id
        self._done = False

    async def release(self) -> None:
        if self._done:
            return
        self._done = True
        await self._client.zrem(self._asks_key, self._id)

    async def withdraw(self) -> None:
        if self._done:
            return
        self._done = True
        async with self._client.pipeline(transaction=True) as both:
            both.zrem(self._asks_key, self._id)
            both.zrem(self._cooldown_key, self._id)
            await both.execute()


class RedisIdentifyTurns:
    """`IdentifyTurns` for every process sharing `client`.

    A turn is the bucket's key, set only if absent and expiring after the window: whoever
    sets it may IDENTIFY, the others wait for the key's remaining time and try again. The
    key is never deleted early, because the window is Discord's.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        window: float = WINDOW + MARGIN,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._window_ms = round(window * 1000)

    async def wait_turn(self, bucket: int) -> None:
        key = f"{self._prefix}identify:{bucket}"
        while not await self._client.set(key, "1", nx=True, px=self._window_ms):
            remaining_ms = await self._client.pttl(key)
            if remaining_ms == -1:
                # Set without an expiry by something else: it would block the bucket forever.
                await self._client.pexpire(key, self._window_ms)
                remaining_ms = self._window_ms
            # -2: gone meanwhile, try again now. Otherwise sleeping is the protocol: the
            # wait is Discord's window, and nothing announces its end.
            await asyncio.sleep(max(remaining_ms, 0) / 1000 + 0.01)


# KEYS: the claim; ARGV: this process's token, lifetime (ms). Takes (or renews) the claim
# and returns "" unless another process holds it; then returns that process's token.
# (One script: SET with both NX and GET needs Redis 7.)
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ''
"""

# KEYS: claims; ARGV: this process's token, lifetime (ms). Renews this process's claims (and
# takes back those that lapsed meanwhile); returns how many another process holds now.
_RENEW = """
local lost = 0
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[1] then
    lost = lost + 1
  else
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  end
end
return lost
"""

# KEYS: claims; ARGV: this process's token. Deletes those still this process's.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 0
"""


class RedisShardClaims:
    """`ShardClaims` for every process sharing `client`: one key per shard, set only if
    absent (or already this process's), renewed while the process runs."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lifetime: float = CLAIM_LIFETIME,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._lifetime_ms = round(lifetime * 1000)
        self._token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._held: set[str] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def claim(self, shard_id: int, shard_count: int) -> None:
        key = f"{self._prefix}shard:{shard_count}:{shard_id}"
        said = False
        while True:
            holder = as_text(await self._claim(keys=[key], args=[self._token, self._lifetime_ms]))
            if not holder:
                break
            if not said:
                said = True
                log.warning(
                    "shard %d of %d is run by another process (%s); waiting until it stops",
                    shard_id,
                    shard_count,
                    holder,
                )
            remaining_ms = await self._client.pttl(key)
            # Its holder renews it while it runs; nothing announces that it stopped.
            await asyncio.sleep(max(min(remaining_ms, self._lifetime_ms // 3), 50) / 1000)
        if said:
            log.info("shard %d of %d is this process's now", shard_id, shard_count)
        self._held.add(key)
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._keep_renewed())

    async def release_all(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.wait({self._renewing})
            self._renewing = None
        held, self._held = sorted(self._held), set()
        if held:
            await self._release(keys=held, args=[self._token])

    async def _keep_renewed(self) -> None:
        while True:
            await asyncio.sleep(self._lifetime_ms / 3000)
            try:
                lost = await self._renew(
                    keys=sorted(self._held), args=[self._token, self._lifetime_ms]
                )
            except redis.RedisError as error:
                # Away for now: the claims may lapse; they are renewed when Redis answers.
                log.debug("could not renew shard claims (%s)", error)
                continue
            if int(lost):
                log.error(
                    "another process took %d of this process's shards while Redis could not "
                    "be reached: both now answer there; stop one of them",
                    int(lost),
                )
