"""The stores of one bot process, local or shared, built from the settings.

`local_stores` is the single-process bot: usage, conversations and settings in the SQLite
file of DATA_PATH, per-user limits, IDENTIFY turns and shard claims in memory.
`shared_stores` puts all of them in Redis for every process of the bot, each with the
local one behind it while Redis is away (`bot.store.failover`). `make_redis` builds this
process's one Redis client from the validated settings only: redis-py reads no environment
of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.config import Settings
from bot.conversation.retention import retention
from bot.conversation.settings import SettingsStore
from bot.conversation.turns import ConversationStore
from bot.discord_app.identify import IdentifyTurns, LocalIdentifyTurns
from bot.discord_app.shard_claims import LocalShardClaims, ShardClaims
from bot.fair_use.budgets import UsageStore
from bot.fair_use.limits import Cooldown, PerUserCap
from bot.fair_use.user_limits import LocalUserLimits, UserLimits
from bot.metrics import Metrics
from bot.store.failover import (
    RETRY_SECONDS,
    Failover,
    FailoverConversationStore,
    FailoverIdentifyTurns,
    FailoverSettingsStore,
    FailoverShardClaims,
    FailoverUsageStore,
    FailoverUserLimits,
)
from bot.store.redis import RedisConversationStore, RedisSettingsStore, RedisUsageStore
from bot.store.redis_limits import RedisIdentifyTurns, RedisShardClaims, RedisUserLimits
from bot.store.sqlite import (
    SqliteConversationStore,
    SqliteDatabase,
    SqliteSettingsStore,
    SqliteUsageStore,
)

__all__ = [
    "MAX_CONNECTIONS",
    "Stores",
    "local_stores",
    "make_redis",
    "redis_address",
    "shared_stores",
]

MAX_CONNECTIONS = 100
"""Redis connections one process may hold; more calls at once wait their turn for one."""


@dataclass(frozen=True)
class Stores:
    """Everything one process keeps beyond a single ask."""

    usage: UsageStore
    conversations: ConversationStore
    settings: SettingsStore
    user_limits: UserLimits
    identify_turns: IdentifyTurns
    shard_claims: ShardClaims
    failover: Failover | None = None
    """Where calls go now, when the stores are shared (None: local stores only)."""


def local_stores(settings: Settings, database: SqliteDatabase) -> Stores:
    """This process's own stores: SQLite in `database`, limits in memory."""
    return Stores(
        usage=SqliteUsageStore(database),
        conversations=SqliteConversationStore(database),
        settings=SqliteSettingsStore(database),
        user_limits=_local_user_limits(settings),
        identify_turns=LocalIdentifyTurns(),
        shard_claims=LocalShardClaims(),
    )


def shared_stores(
    settings: Settings,
    client: redis.Redis,
    database: SqliteDatabase,
    metrics: Metrics,
    *,
    retry_seconds: float = RETRY_SECONDS,
) -> Stores:
    """The stores in Redis through `client`, with `local_stores` behind them; while Redis
    is away, a PING every `retry_seconds` asks whether it is back."""
    assert settings.redis_url is not None, "shared stores need REDIS_URL"
    local = local_stores(settings, database)
    failover = Failover(
        redis_address(settings.redis_url.reveal()),
        metrics,
        client.ping,
        retry_seconds=retry_seconds,
    )
    return Stores(
        usage=FailoverUsageStore(RedisUsageStore(client), local.usage, failover),
        conversations=FailoverConversationStore(
            RedisConversationStore(client, retention(settings)), local.conversations, failover
        ),
        settings=FailoverSettingsStore(RedisSettingsStore(client), local.settings, failover),
        user_limits=FailoverUserLimits(
            RedisUserLimits(client, settings.ask_cooldown, settings.max_asks_per_user),
            local.user_limits,
            failover,
        ),
        identify_turns=FailoverIdentifyTurns(
            RedisIdentifyTurns(client), local.identify_turns, failover
        ),
        shard_claims=FailoverShardClaims(RedisShardClaims(client), local.shard_claims, failover),
        failover=failover,
    )


def _local_user_limits(settings: Settings) -> LocalUserLimits:
    cooldown = Cooldown(settings.ask_cooldown) if settings.ask_cooldown is not None else None
    return LocalUserLimits(cooldown, PerUserCap(settings.max_asks_per_user))


def make_redis(settings: Settings) -> redis.Redis:
    """This process's Redis client: one pool of at most `MAX_CONNECTIONS`, REDIS_TIMEOUT on
    connecting and on every command, and one quick retry (a pooled connection may have died
    with a Redis restart; a fresh one then answers).

    Waiting for a free connection has no timeout of its own: during a burst of asks every
    connection is busy with a command that answers (or times out) within REDIS_TIMEOUT, and a
    busy pool must not pass for Redis being away.
    """
    assert settings.redis_url is not None, "make_redis needs REDIS_URL"
    timeout = settings.redis_timeout
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url.reveal(),
        max_connections=MAX_CONNECTIONS,
        timeout=None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        client_name="discord-ask-bot",
    )
    return redis.Redis.from_pool(pool)


def redis_address(url: str) -> str:
    """Where `url` points, for log lines: host and port, or the socket path; never the
    password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}"
