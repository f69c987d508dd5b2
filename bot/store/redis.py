"""The stores in Redis, shared by every bot process pointed at one server.

RedisUsageStore         daily token counts and holds (`bot.fair_use.budgets.UsageStore`)
RedisConversationStore  the turns of conversations (`bot.conversation.turns.ConversationStore`)
RedisSettingsStore      servers' and channels' settings (`bot.conversation.settings.SettingsStore`)

Each store is made on a `redis.asyncio.Redis` client that the entry point builds, and closes,
once per process: a store never opens or closes a connection, so its `close` does nothing.
The client may be built with `decode_responses` either way; the stores read bytes and text
alike. Timeouts and retries are the client's (set them when building it). Build it on a
`redis.asyncio.BlockingConnectionPool`: the default pool raises `MaxConnectionsError` when a
burst of asks needs more than its 100 connections at once, where a blocking one makes them
wait (up to its `timeout`) for a free connection.

Every decision that reads and then writes (reserving under a limit, saving a turn under a
parent that may just have been forgotten) is one Lua script: Redis runs a script alone, so
no other process can act between its read and its write, and each call is one round trip.
The scripts name keys they compute from their arguments, so the stores need one Redis server
(or a primary with replicas), not a Redis Cluster.

Keys, all under the store's prefix (default "askbot:"), and their expiry:

    usage:<day>:user:<id>       string, the tokens counted that day     2 days from its last write
    usage:<day>:guild:<id>      string, the server's count that day     2 days from its last write
    holds:<day>:user:<id>       sorted set of `<hold id>:<tokens>`,     its longest hold's lifetime
    holds:<day>:guild:<id>        scored by the hold's `expires_at`     (from the `now` reserving)
    settled:<hold id>           string, a settle that found no hold     the hold lifetime
    usage:<day>:keys            set of that day's counts and holds keys 2 days from its last write
    usage:days                  set of the days with keys, for prune    2 days from its last write
    turns:next                  string, the last turn id given out      never (ids are never reused)
    turn:<id>                   hash of the turn's fields               the retention from its save
    turn:<id>:messages          set of the answer's message ids         as its turn
    message:<message id>        string, the turn id                     as its turn
    turn:<id>:children          set of the turns continuing it          the retention from its
                                                                        newest child's save
    user:<user id>:turns        set of the person's turn ids            the retention from their
                                                                        newest save
    turns:by_time               sorted set of turn ids by created_at    the retention from the
                                  (Unix microseconds), for prune        newest save
    settings:<guild id>         hash: `model`, `prompt`,                never (kept until reset)
                                  `prompt:<channel id>`
    settings:<guild id>:by      hash, the same fields: "<user id> <unix seconds>" of the change

With no retention (`retention=None`) turns are kept until forgotten or pruned, without expiry.

Turn ids start from Redis's clock in milliseconds (13 digits) whenever `turns:next` is
missing, so even a Redis that lost its data (no persistence, a flush) never hands out an id
that an old Follow up button may still carry. Usage counts and conversations lost that way
are simply gone; turn on Redis persistence (RDB or AOF) to keep them across its restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from bot.conversation.settings import ServerSettings
from bot.conversation.turns import NewTurn, Turn, TurnId
from bot.fair_use.budgets import HOLD_LIFETIME, Reservation, Scope, Totals

__all__ = [
    "DEFAULT_PREFIX",
    "RedisConversationStore",
    "RedisSettingsStore",
    "RedisUsageStore",
]

DEFAULT_PREFIX = "askbot:"

# A day's counts are read until the day after it (see `DailyBudgets.prune`), so two days
# from the last write keeps them for as long as anything may read them, and no longer.
DAY_TTL = timedelta(days=2)

# How many turns one prune script deletes, so a large prune never holds Redis for long.
PRUNE_BATCH = 200

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- usage ------------------------------------------------------------------------------------

# The counts of one day: KEYS are usage:days, usage:<day>:keys, then the user's count and
# (inside a server) the server's; ARGV the day, the tokens and the day keys' TTL in seconds.
# Shared by `add` and `settle`.
_COUNT = """
local function count(counts, day, tokens, ttl)
  for _, key in ipairs(counts) do
    redis.call('INCRBY', key, tokens)
    redis.call('EXPIRE', key, ttl)
    redis.call('SADD', KEYS[2], key)
  end
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('SADD', KEYS[1], day)
  redis.call('EXPIRE', KEYS[1], ttl)
end
"""

_ADD = (
    _COUNT
    + """
count({unpack(KEYS, 3)}, ARGV[1], ARGV[2], ARGV[3])
"""
)

# KEYS: usage:days, usage:<day>:keys, the hold's settled:<hold id>, then the user's count and
# holds and (inside a server) the server's. ARGV: day, now, member, expires_at, the hold's TTL
# in ms, the user's limit and the server's ('' for none), the day keys' TTL in seconds.
# Returns the first spent scope, or nothing after adding the member to every holds set. A
# hold already settled (its ask was cancelled while this was on its way) is not taken.
_RESERVE = """
local day, now, member, expires_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hold_ttl, day_ttl = tonumber(ARGV[5]), ARGV[8]
local limits = {ARGV[6], ARGV[7]}
local scopes = {'user', 'guild'}
local pairs_count = (#KEYS - 3) / 2
if redis.call('EXISTS', KEYS[3]) == 1 then
  return false
end
for i = 1, pairs_count do
  local limit = limits[i]
  if limit ~= '' then
    local used = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
    for _, held in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3 + 2 * i], '(' .. now, '+inf')) do
      used = used + tonumber(string.match(held, ':(%d+)$'))
    end
    if used >= tonumber(limit) then
      return scopes[i]
    end
  end
end
for i = 1, pairs_count do
  local holds = KEYS[3 + 2 * i]
  redis.call('ZADD', holds, expires_at, member)
  if redis.call('PTTL', holds) < hold_ttl then
    redis.call('PEXPIRE', holds, hold_ttl)
  end
  redis.call('SADD', KEYS[2], holds)
end
redis.call('EXPIRE', KEYS[2], day_ttl)
redis.call('SADD', KEYS[1], day)
redis.call('EXPIRE', KEYS[1], day_ttl)
return false
"""

# KEYS as for `_RESERVE`. ARGV: day, the tokens (0 only drops the hold), the day keys' TTL,
# member, the hold lifetime in ms. A hold found in no set either expired, was pruned, or
# has not been taken yet (a reserve cancelled on its way, overtaken by this settle): the
# settled:<hold id> mark, kept for a hold's lifetime, stops that reserve from taking it.
_SETTLE = (
    _COUNT
    + """
local counts = {}
local removed = 0
for i = 4, #KEYS, 2 do
  removed = removed + redis.call('ZREM', KEYS[i + 1], ARGV[4])
  counts[#counts + 1] = KEYS[i]
end
if removed == 0 then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
end
if tonumber(ARGV[2]) > 0 then
  count(counts, ARGV[1], ARGV[2], ARGV[3])
end
"""
)

# KEYS: usage:days. ARGV: the key prefix, the first day kept, and `now` ('' for none).
# Drops every key of the days before the first kept, and with `now` the holds expired by
# then; returns how many counts and distinct holds (one per reservation) were dropped.
_PRUNE_USAGE = """
local prefix, before, now = ARGV[1], ARGV[2], ARGV[3]
local holds_prefix = prefix .. 'holds:'
local function is_holds(key)
  return string.sub(key, 1, #holds_prefix) == holds_prefix
end
local dropped = 0
for _, day in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local index = prefix .. 'usage:' .. day .. ':keys'
  local holds = {}
  if day < before then
    for _, key in ipairs(redis.call('SMEMBERS', index)) do
      if is_holds(key) then
        for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
          holds[member] = true
        end
      else
        dropped = dropped + redis.call('EXISTS', key)
      end
      redis.call('DEL', key)
    end
    redis.call('DEL', index)
    redis.call('SREM', KEYS[1], day)
  elseif now ~= '' then
    for _, key in ipairs(redis.call('SMEMBERS', index)) do
      if is_holds(key) then
        for _, member in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
          holds[member] = true
        end
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        -- Emptied, or dropped by its expiry: the next prune need not look at it again.
        if redis.call('EXISTS', key) == 0 then
          redis.call('SREM', index, key)
        end
      end
    end
  end
  for _ in pairs(holds) do
    dropped = dropped + 1
  end
end
return dropped
"""


class RedisUsageStore:
    """A `UsageStore` in Redis, shared by every process on the same server and prefix.

    `RedisUsageStore(client)`: the client is the entry point's, which closes it. `add`,
    `totals`, `reserve`, `settle` and `prune` are one round trip each. Expired holds stop
    counting at the `now` a reservation passes (the processes' clocks, as with SQLite);
    Redis's own clock only decides when keys are dropped.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        day_ttl: timedelta = DAY_TTL,
        hold_lifetime: timedelta = HOLD_LIFETIME,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._day_ttl = int(day_ttl.total_seconds())
        self._hold_lifetime = hold_lifetime // timedelta(milliseconds=1)
        self._add = client.register_script(_ADD)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._prune = client.register_script(_PRUNE_USAGE)

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        keys = [*self._day_keys(day), *self._counts(day, user_id, guild_id)]
        await self._add(keys, [day, tokens, self._day_ttl])

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        user_key = self._count(day, Scope.USER, user_id)
        if guild_id is None:
            user = await self._client.get(user_key)
            return Totals(user=_integer(user), guild=0)
        user, guild = await self._client.mget([user_key, self._count(day, Scope.GUILD, guild_id)])
        return Totals(user=_integer(user), guild=_integer(guild))

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        hold_ttl = max(1000, int((reservation.expires_at - now) * 1000) + 1)
        spent = await self._reserve(
            self._hold_keys(reservation),
            [
                reservation.day,
                repr(float(now)),
                _member(reservation),
                repr(float(reservation.expires_at)),
                hold_ttl,
                "" if user_limit is None else user_limit,
                "" if guild_limit is None else guild_limit,
                self._day_ttl,
            ],
        )
        return None if spent is None else Scope(as_text(spent))

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        await self._settle(
            self._hold_keys(reservation),
            [reservation.day, tokens, self._day_ttl, _member(reservation), self._hold_lifetime],
        )

    async def prune(self, before: str, now: float | None = None) -> int:
        dropped = await self._prune(
            [self._prefix + "usage:days"],
            [self._prefix, before, "" if now is None else repr(float(now))],
        )
        return int(dropped)

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""

    def _day_keys(self, day: str) -> list[str]:
        return [self._prefix + "usage:days", f"{self._prefix}usage:{day}:keys"]

    def _count(self, day: str, scope: Scope, scope_id: int) -> str:
        return f"{self._prefix}usage:{day}:{scope.value}:{scope_id}"

    def _holds(self, day: str, scope: Scope, scope_id: int) -> str:
        return f"{self._prefix}holds:{day}:{scope.value}:{scope_id}"

    def _counts(self, day: str, user_id: int, guild_id: int | None) -> list[str]:
        keys = [self._count(day, Scope.USER, user_id)]
        if guild_id is not None:
            keys.append(self._count(day, Scope.GUILD, guild_id))
        return keys

    def _hold_keys(self, reservation: Reservation) -> list[str]:
        """The day's keys, the hold's settled mark, then each scope's count key and holds
        key: the user's, and the server's in one."""
        day = reservation.day
        keys = [*self._day_keys(day), f"{self._prefix}settled:{reservation.id}"]
        keys.append(self._count(day, Scope.USER, reservation.user_id))
        keys.append(self._holds(day, Scope.USER, reservation.user_id))
        if reservation.guild_id is not None:
            keys.append(self._count(day, Scope.GUILD, reservation.guild_id))
            keys.append(self._holds(day, Scope.GUILD, reservation.guild_id))
        return keys


def _member(reservation: Reservation) -> str:
    """The hold's member of a holds set: unique by its id, carrying its tokens."""
    return f"{reservation.id}:{reservation.tokens}"


# --- conversations ----------------------------------------------------------------------------

# Helpers shared by the conversation scripts; ARGV[1] is always the key prefix.
_TURN_HELPERS = """
local prefix = ARGV[1]
local function turn_key(id)
  return prefix .. 'turn:' .. id
end
local function keep(key, ttl)
  if ttl ~= '' and tonumber(ttl) > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end
-- Give the turn each message id not already taken by another turn.
local function link(id, ttl, first)
  local messages = turn_key(id) .. ':messages'
  for i = first, #ARGV do
    local taken
    if ttl ~= '' and tonumber(ttl) > 0 then
      taken = redis.call('SET', prefix .. 'message:' .. ARGV[i], id, 'NX', 'PX', ttl)
    else
      taken = redis.call('SET', prefix .. 'message:' .. ARGV[i], id, 'NX')
    end
    if taken then
      redis.call('SADD', messages, ARGV[i])
    end
  end
  keep(messages, ttl)
end
-- Delete a turn with its message ids; its children become roots. 1 if it existed.
local function delete_turn(id)
  local key = turn_key(id)
  local existed = redis.call('EXISTS', key)
  local fields = redis.call('HMGET', key, 'user', 'parent')
  for _, child in ipairs(redis.call('SMEMBERS', key .. ':children')) do
    if redis.call('HGET', turn_key(child), 'parent') == id then
      redis.call('HSET', turn_key(child), 'parent', '')
    end
  end
  for _, message in ipairs(redis.call('SMEMBERS', key .. ':messages')) do
    local message_key = prefix .. 'message:' .. message
    if redis.call('GET', message_key) == id then
      redis.call('DEL', message_key)
    end
  end
  redis.call('DEL', key, key .. ':children', key .. ':messages')
  redis.call('ZREM', prefix .. 'turns:by_time', id)
  if fields[1] then
    redis.call('SREM', prefix .. 'user:' .. fields[1] .. ':turns', id)
  end
  if fields[2] and fields[2] ~= '' then
    redis.call('SREM', turn_key(fields[2]) .. ':children', id)
  end
  return existed
end
"""

# ARGV: prefix, the retention in ms ('' for none), then the turn's fields in the order of the
# HSET below, then its message ids. Returns the new id and the parent kept ('' when it was gone).
_SAVE = (
    _TURN_HELPERS
    + """
local ttl, parent = ARGV[2], ARGV[3]
if parent ~= '' and redis.call('EXISTS', turn_key(parent)) == 0 then
  parent = ''
end
local counter = prefix .. 'turns:next'
if redis.call('EXISTS', counter) == 0 then
  -- A first save, or Redis lost its data: start from its clock in milliseconds, above every
  -- id handed out before (unless that was over a thousand turns a second).
  local time = redis.call('TIME')
  local start = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('SET', counter, string.format('%.0f', start), 'NX')
end
local id = tostring(redis.call('INCR', counter))
local key = turn_key(id)
redis.call('HSET', key, 'parent', parent, 'user', ARGV[4], 'name', ARGV[5], 'guild', ARGV[6],
  'channel', ARGV[7], 'private', ARGV[8], 'prompt', ARGV[9], 'answer', ARGV[10],
  'model', ARGV[11], 'prompt_tokens', ARGV[12], 'answer_tokens', ARGV[13],
  'created_at', ARGV[14])
keep(key, ttl)
local mine = prefix .. 'user:' .. ARGV[4] .. ':turns'
redis.call('SADD', mine, id)
keep(mine, ttl)
redis.call('ZADD', prefix .. 'turns:by_time', ARGV[14], id)
keep(prefix .. 'turns:by_time', ttl)
if parent ~= '' then
  redis.call('SADD', turn_key(parent) .. ':children', id)
  keep(turn_key(parent) .. ':children', ttl)
end
link(id, ttl, 15)
return {id, parent}
"""
)

# ARGV: prefix, the turn id, then message ids. 1 when the turn exists (and took them), else 0.
_ADD_MESSAGES = (
    _TURN_HELPERS
    + """
local id = ARGV[2]
local left = redis.call('PTTL', turn_key(id))
if left == -2 then
  return 0
end
link(id, left > 0 and tostring(left) or '', 3)
return 1
"""
)

# ARGV: prefix, 'turn' or 'message', the turn or message id, the most turns to return.
# Walks from the turn up its parents; returns {parent_missing, id, fields, id, fields, ...}
# nearest first, where parent_missing is 1 when the oldest returned names a parent that is
# gone (expired: a deleted parent is already cleared).
_CHAIN = (
    _TURN_HELPERS
    + """
local id = ARGV[3]
if ARGV[2] == 'message' then
  id = redis.call('GET', prefix .. 'message:' .. id)
  if not id then
    return {0}
  end
end
local most = tonumber(ARGV[4])
local found = {0}
local count = 0
while id and id ~= '' do
  local fields = redis.call('HGETALL', turn_key(id))
  if #fields == 0 then
    if count > 0 then
      found[1] = 1
    end
    break
  end
  found[#found + 1] = id
  found[#found + 1] = fields
  count = count + 1
  id = redis.call('HGET', turn_key(id), 'parent')
  if count == most then
    if id and id ~= '' and redis.call('EXISTS', turn_key(id)) == 0 then
      found[1] = 1
    end
    break
  end
end
return found
"""
)

# ARGV: prefix, the user id. Deletes every turn of the person; returns how many existed.
_FORGET = (
    _TURN_HELPERS
    + """
local mine = prefix .. 'user:' .. ARGV[2] .. ':turns'
local deleted = 0
for _, id in ipairs(redis.call('SMEMBERS', mine)) do
  deleted = deleted + delete_turn(id)
end
redis.call('DEL', mine)
return deleted
"""
)

# ARGV: prefix, the cut-off (Unix microseconds, exclusive), the batch size. Deletes up to a
# batch of the turns created before the cut-off; returns {deleted, looked at}.
_PRUNE_TURNS = (
    _TURN_HELPERS
    + """
local ids = redis.call('ZRANGEBYSCORE', prefix .. 'turns:by_time', '-inf', '(' .. ARGV[2],
  'LIMIT', 0, tonumber(ARGV[3]))
local deleted = 0
for _, id in ipairs(ids) do
  deleted = deleted + delete_turn(id)
end
return {deleted, #ids}
"""
)


class RedisConversationStore:
    """A `ConversationStore` in Redis, shared by every process on the same server and prefix.

    `RedisConversationStore(client, retention)`: every turn's keys expire `retention` after
    it is saved (None: never), so Redis drops old conversations even when nobody prunes;
    `prune` deletes what is older than its cut-off and has not expired yet, and turns the
    children of what it deletes into roots. Ids come from one counter (INCR), so no two
    processes ever hand out the same one. Every call is one round trip (one script or one command),
    `chain` included; `prune` is one per `PRUNE_BATCH` turns.
    """

    def __init__(
        self, client: Redis, retention: timedelta | None, *, prefix: str = DEFAULT_PREFIX
    ) -> None:
        if retention is not None and retention <= timedelta(0):
            raise ValueError(f"retention must be positive or None (got {retention})")
        self._client = client
        self._prefix = prefix
        self._ttl = "" if retention is None else str(retention // timedelta(milliseconds=1))
        self._save = client.register_script(_SAVE)
        self._add_messages = client.register_script(_ADD_MESSAGES)
        self._chain = client.register_script(_CHAIN)
        self._forget = client.register_script(_FORGET)
        self._prune = client.register_script(_PRUNE_TURNS)

    async def save(self, turn: NewTurn, message_ids: Sequence[int] = ()) -> Turn:
        values = [
            "" if turn.parent_id is None else turn.parent_id,
            turn.user_id,
            turn.display_name,
            "" if turn.guild_id is None else turn.guild_id,
            turn.channel_id,
            int(turn.private),
            turn.prompt,
            turn.answer,
            turn.model,
            turn.prompt_tokens,
            turn.answer_tokens,
            _microseconds(turn.created_at),
        ]
        turn_id, parent = await self._save([], [self._prefix, self._ttl, *values, *message_ids])
        parent_text = as_text(parent)
        saved = {field.name: getattr(turn, field.name) for field in fields(NewTurn)}
        saved["parent_id"] = int(parent_text) if parent_text else None
        return Turn(**saved, id=int(turn_id))

    async def add_messages(self, turn_id: TurnId, message_ids: Sequence[int]) -> bool:
        added = await self._add_messages([], [self._prefix, turn_id, *message_ids])
        return bool(added)

    async def turn(self, turn_id: TurnId) -> Turn | None:
        found = await self._walk("turn", turn_id, 1)
        return found[0] if found else None

    async def turn_for_message(self, message_id: int) -> Turn | None:
        found = await self._walk("message", message_id, 1)
        return found[0] if found else None

    async def chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1 (got {max_turns})")
        return list(reversed(await self._walk("turn", turn_id, max_turns)))

    async def forget_user(self, user_id: int) -> int:
        return int(await self._forget([], [self._prefix, user_id]))

    async def prune(self, older_than: datetime) -> int:
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ValueError("older_than must carry a time zone")
        cut_off = _microseconds(older_than)
        deleted = 0
        while True:
            batch, looked_at = await self._prune([], [self._prefix, cut_off, PRUNE_BATCH])
            deleted += int(batch)
            if int(looked_at) < PRUNE_BATCH:
                return deleted

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""

    async def _walk(self, start: str, start_id: int, most: int) -> list[Turn]:
        """The turns from one (by turn or message id) up its parents, nearest first."""
        reply = await self._chain([], [self._prefix, start, start_id, most])
        parent_missing, rest = int(reply[0]), reply[1:]
        turns = [
            _turn_from(int(turn_id), _pairs(hash_fields))
            for turn_id, hash_fields in zip(rest[::2], rest[1::2], strict=True)
        ]
        if turns and parent_missing:
            turns[-1] = replace(turns[-1], parent_id=None)
        return turns


def _turn_from(turn_id: int, saved: dict[str, str]) -> Turn:
    return Turn(
        user_id=int(saved["user"]),
        display_name=saved["name"],
        guild_id=int(saved["guild"]) if saved["guild"] else None,
        channel_id=int(saved["channel"]),
        private=saved["private"] == "1",
        prompt=saved["prompt"],
        answer=saved["answer"],
        model=saved["model"],
        prompt_tokens=int(saved["prompt_tokens"]),
        answer_tokens=int(saved["answer_tokens"]),
        parent_id=int(saved["parent"]) if saved["parent"] else None,
        created_at=_EPOCH + timedelta(microseconds=int(saved["created_at"])),
        id=turn_id,
    )


def _microseconds(moment: datetime) -> int:
    """An aware time as whole Unix microseconds: exact, unlike a float of seconds."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


# --- settings ---------------------------------------------------------------------------------

# KEYS: settings:<guild>, settings:<guild>:by. ARGV: field, value ('' with remove), who,
# 'set' or 'remove'.
_SET_SETTING = """
if ARGV[4] == 'remove' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
"""

# KEYS: settings:<guild>, settings:<guild>:by. Returns how many settings there were.
_RESET_SETTINGS = """
local count = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return count
"""


class RedisSettingsStore:
    """A `SettingsStore` in Redis: one hash per server, kept until reset, and beside it one
    recording who changed each setting and when. One round trip per call."""

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._set = client.register_script(_SET_SETTING)
        self._reset = client.register_script(_RESET_SETTINGS)

    async def server(self, guild_id: int) -> ServerSettings:
        saved = await self._client.hgetall(self._key(guild_id))
        model = prompt = None
        channels: dict[int, str] = {}
        for name, value in saved.items():
            field, text = as_text(name), as_text(value)
            if field == "model":
                model = text
            elif field == "prompt":
                prompt = text
            elif field.startswith("prompt:"):
                channels[int(field.removeprefix("prompt:"))] = text
        return ServerSettings(model, prompt, channels)

    async def set_model(self, guild_id: int, model: str | None, *, by: int) -> None:
        await self._write(guild_id, "model", model, by)

    async def set_prompt(
        self, guild_id: int, channel_id: int | None, prompt: str | None, *, by: int
    ) -> None:
        field = f"prompt:{channel_id}" if channel_id else "prompt"
        await self._write(guild_id, field, prompt, by)

    async def reset(self, guild_id: int, *, by: int) -> int:
        key = self._key(guild_id)
        return int(await self._reset([key, key + ":by"]))

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""

    def _key(self, guild_id: int) -> str:
        return f"{self._prefix}settings:{guild_id}"

    async def _write(self, guild_id: int, field: str, value: str | None, by: int) -> None:
        key = self._key(guild_id)
        changed = f"{by} {datetime.now(UTC).timestamp():.3f}"
        action = "remove" if value is None else "set"
        await self._set([key, key + ":by"], [field, value or "", changed, action])


# --- replies ----------------------------------------------------------------------------------


def as_text(value: object) -> str:
    """A reply as text, whether the client decodes replies or hands back bytes."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _integer(value: object) -> int:
    return 0 if value is None else int(as_text(value))


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """HGETALL's flat reply inside a script, [field, value, ...], as a dict of text."""
    return {
        as_text(field): as_text(value) for field, value in zip(flat[::2], flat[1::2], strict=True)
    }
