"""The Prometheus endpoint: what an operator scraping `/metrics` learns about the bot.

Unit tests cover `Metrics` on its own; the end-to-end tests run the bot with
`METRICS_PORT` set and read `/metrics` over HTTP after real asks.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.__main__ import StartupError, open_fair_use
from bot.config import load_settings
from bot.fair_use.limits import AskGate
from bot.metrics import Metrics
from tests.fakes.discord import FakeDiscord, RateLimits, point_discord_py_at
from tests.fakes.openai_server import FakeOpenAI, Usage
from tests.fakes.openai_server import Reply as ModelReply
from tests.stack import run_stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(port: int) -> Samples:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/plain"
        return parse(await response.text())


# --- Metrics on its own -----------------------------------------------------------------------


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.asks.labels("answered").inc()

    assert first.registry.get_sample_value("bot_asks_total", {"outcome": "answered"}) == 1
    assert second.registry.get_sample_value("bot_asks_total", {"outcome": "answered"}) is None
    assert REGISTRY.get_sample_value("bot_asks_total", {"outcome": "answered"}) is None


def test_queue_gauges_are_read_from_the_gate_when_scraped() -> None:
    metrics = Metrics()
    state = {"running": 0, "queued": 0}
    metrics.track_gate(lambda: state["running"], lambda: state["queued"])
    state.update(running=3, queued=7)

    assert metrics.registry.get_sample_value("bot_running_asks") == 3
    assert metrics.registry.get_sample_value("bot_queue_depth") == 7


def test_the_concurrency_limit_is_read_from_the_gate_when_scraped() -> None:
    metrics = Metrics()
    gate = AskGate(max_concurrent=256, max_queued=10)
    metrics.track_gate(lambda: gate.running, lambda: gate.queued, lambda: gate.limit)
    assert metrics.registry.get_sample_value("bot_concurrency_limit") == 256
    gate.resize(12)  # the provider pushed back
    assert metrics.registry.get_sample_value("bot_concurrency_limit") == 12


@pytest.fixture
async def discord_like_server() -> AsyncIterator[str]:
    """Answers /limited with 429 and anything else with 200, as Discord might."""

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/limited":
            return web.json_response({"message": "You are being rate limited."}, status=429)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_the_discord_trace_counts_429s_only(discord_like_server: str) -> None:
    metrics = Metrics()
    async with aiohttp.ClientSession(trace_configs=[metrics.discord_trace()]) as session:
        for path in ("/ok", "/limited", "/ok", "/limited"):
            async with session.get(discord_like_server + path):
                pass

    assert metrics.registry.get_sample_value("bot_discord_rate_limited_total") == 2


async def test_serve_exposes_metrics_on_the_given_address_until_stopped() -> None:
    metrics = Metrics()
    metrics.asks.labels("refused").inc(2)
    port = free_port()
    stop = metrics.serve(port, "127.0.0.1")
    try:
        samples = await scrape(port)
    finally:
        stop()

    assert value(samples, "bot_asks_total", outcome="refused") == 2
    # Stopped means nothing listens there any more (REUSEADDR looks past closed connections).
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


# --- End to end -------------------------------------------------------------------------------


async def test_metrics_after_some_asks(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    settings = {"METRICS_PORT": str(port), "MAX_CONCURRENT_ASKS": "1", "MAX_PROMPT_CHARS": "100"}
    async with run_stack(fake_discord, fake_openai, tmp_path, settings) as stack:
        stack.model.script(ModelReply("Four.", usage=Usage(prompt_tokens=40, completion_tokens=9)))
        assert (await stack.ask("What is two plus two?")).outcome == "answered"
        assert (await stack.ask("x" * 101)).outcome == "prompt_too_long"

        # One ask holding the only slot and one waiting for it.
        gate = stack.model.gated_stream()
        running = stack.send("Slow one")
        await gate.started()
        waiting = stack.send("Patient one", user=stack.discord.users[1])
        await stack.discord.wait_for(
            lambda: any("in line" in m.content for m in stack.messages_of(waiting))
        )
        busy = await scrape(port)
        await gate.send("Done.")
        await gate.finish()
        await stack.finished(running)
        await stack.finished(waiting)
        after = await scrape(port)
        logged_tokens = sum(
            int(match.group(1))
            for line in stack.log.lines
            if (match := re.search(r"^ask .* tokens=(\d+)$", line))
        )

    assert f"metrics on http://127.0.0.1:{port}/metrics" in stack.log.lines
    assert value(busy, "bot_running_asks") == 1
    assert value(busy, "bot_queue_depth") == 1
    assert value(after, "bot_running_asks") == 0
    assert value(after, "bot_queue_depth") == 0

    assert value(after, "bot_asks_total", outcome="answered") == 3
    assert value(after, "bot_asks_total", outcome="prompt_too_long") == 1
    # Only accepted asks are acknowledged with a defer; every ask has a done time, and
    # those that showed text a first-text time.
    assert value(after, "bot_ack_seconds_count") == 3
    assert value(after, "bot_done_seconds_count") == 4
    assert value(after, "bot_first_text_seconds_count") == 3
    assert value(after, "bot_done_seconds_bucket", le="+Inf") == 4
    assert value(after, "bot_done_seconds_sum") > 0
    # The provider's counts for the first answer (40 + 9), and for the two others.
    prompt_tokens = value(after, "bot_tokens_total", kind="prompt")
    completion_tokens = value(after, "bot_tokens_total", kind="completion")
    assert prompt_tokens > 40
    assert completion_tokens > 9
    assert prompt_tokens + completion_tokens == logged_tokens
    assert value(after, "bot_discord_rate_limited_total") == 0


async def test_metrics_count_discords_429s(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # One request a second for the bot token: the start-up requests run into it.
    async with FakeDiscord(limits=RateLimits(global_per_second=1)) as fake:
        with point_discord_py_at(fake):
            port = free_port()
            async with run_stack(fake, fake_openai, tmp_path, {"METRICS_PORT": str(port)}):
                samples = await scrape(port)

    assert fake.rate_limited >= 1
    assert value(samples, "bot_discord_rate_limited_total") == fake.rate_limited


async def test_a_busy_metrics_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(
            {
                "DISCORD_TOKEN": "t",
                "OPENAI_API_KEY": "k",
                "DATA_PATH": str(tmp_path),
                "METRICS_PORT": str(port),
            }
        )
        with pytest.raises(StartupError, match="METRICS_PORT"):
            async with open_fair_use(settings):
                pass
