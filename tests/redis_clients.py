"""Redis clients for the tests, built as a bot process should build its one client.

A `BlockingConnectionPool`: redis-py's default asyncio pool raises `MaxConnectionsError` once
its 100 connections are in use, where this one makes a burst of concurrent calls wait for a
free connection (up to `timeout`). Explicit timeouts, so a test never hangs on a lost server.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["redis_client"]


def redis_client(url: str, *, max_connections: int = 10, **options: Any) -> Redis:
    """A client on its own pool (closed with the client) of at most `max_connections`."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=5,
        **options,
    )
    return Redis.from_pool(pool)
