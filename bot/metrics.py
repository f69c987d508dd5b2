"""Prometheus metrics, in a registry of the bot's own (never the process-global one)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)


class Metrics:
    """Counters and histograms for asks, tokens, the queue and Discord rate limits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.asks = Counter(
            "bot_asks", "Asks by how they ended.", ["outcome"], registry=self.registry
        )
        self.ack_seconds = Histogram(
            "bot_ack_seconds",
            "Time from receiving an ask to acknowledging it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_text_seconds = Histogram(
            "bot_first_text_seconds",
            "Time from receiving an ask to the first answer text shown.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.done_seconds = Histogram(
            "bot_done_seconds",
            "Time from receiving an ask to its final message.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "bot_tokens", "Model tokens used, by kind.", ["kind"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "bot_queue_depth", "Asks waiting for a model slot.", registry=self.registry
        )
        self.running = Gauge(
            "bot_running_asks", "Asks holding a model slot.", registry=self.registry
        )
        self.concurrency_limit = Gauge(
            "bot_concurrency_limit",
            "Model calls allowed at once now (adaptive unless pinned).",
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "bot_redis_up",
            "1 while Redis (REDIS_URL) answers, 0 while this process uses its own stores.",
            registry=self.registry,
        )
        self.redis_fallbacks = Counter(
            "bot_redis_fallbacks",
            "Store calls served by this process's own stores because Redis was away.",
            registry=self.registry,
        )
        self.discord_429s = Counter(
            "bot_discord_rate_limited",
            "Discord responses with status 429.",
            registry=self.registry,
        )

    def track_gate(
        self,
        running: Callable[[], int],
        queued: Callable[[], int],
        limit: Callable[[], int] | None = None,
    ) -> None:
        """Read the gauges from the ask gate at scrape time (`limit`: e.g. `gate.limit`)."""
        self.running.set_function(lambda: float(running()))
        self.queue_depth.set_function(lambda: float(queued()))
        if limit is not None:
            self.concurrency_limit.set_function(lambda: float(limit()))

    def discord_trace(self) -> aiohttp.TraceConfig:
        """An aiohttp trace for the Discord client's HTTP session that counts 429s."""
        trace = aiohttp.TraceConfig()

        async def on_request_end(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
        ) -> None:
            if params.response.status == 429:
                self.discord_429s.inc()

        trace.on_request_end.append(on_request_end)
        return trace

    def serve(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Expose `/metrics` on `host:port`; returns a function that stops the server."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join()

        return stop
