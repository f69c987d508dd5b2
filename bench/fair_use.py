"""Fair use under load: a burst of asks queueing for model slots, and what the checks cost.

    .venv/bin/python bench/fair_use.py [--asks 200] [--slots 50] [--latency 1.0]

Part 1 runs the real bot in this process (`tests.stack.run_stack`, the code path of
`python -m bot`) against the local Discord and a scripted model that takes `--latency`
seconds per answer, with MAX_CONCURRENT_ASKS=`--slots` and room in the queue for everyone
else. `--asks` different members run `/ask` in the same instant. Prints:

- queue wait: from an interaction's dispatch until the model receives its request
  (the fake's request log, matched by prompt), p50 / p90 / p99 / max;
- the bot's own figures from its one log line per ask (ack, first text, done);
- wall time (first dispatch until the last ask is logged) over the ideal, which is
  ceil(asks / slots) waves of one model latency each: 1.00 would be perfect.

Part 2 measures, per ask, the checks `/ask` runs before and after the model call (access
rules, cooldown, the gate, the budget check and the usage record, SQLite on disk in a
temporary directory), with the component figures from `bench/limits.py`.

Times depend on how busy the machine is. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: the fakes live in the repository's `tests` package.
    sys.path.insert(0, str(ROOT))

from bench.limits import (  # noqa: E402
    ASKS,
    GUILDS,
    START,
    USERS,
    bench_in_memory,
    bench_sqlite,
    guild_of,
    report,
    ticket_from,
    timed,
    user_of,
)
from bot.fair_use import access  # noqa: E402
from bot.fair_use.budgets import Budget, DailyBudgets  # noqa: E402
from bot.fair_use.limits import AskGate, Cooldown, parse_cooldown  # noqa: E402
from bot.store.sqlite import SqliteUsageStore  # noqa: E402
from tests.fakes.discord import FakeDiscord, point_discord_py_at  # noqa: E402
from tests.fakes.openai_server import (  # noqa: E402
    Delay,
    FakeOpenAI,
    RecordedRequest,
    Reply,
    start_fake_openai,
)
from tests.stack import run_stack  # noqa: E402

ANSWER = "Queues are fair when the first to arrive is the first to be served."
ASK_LINE = re.compile(r"^ask interaction=(\d+) .*ack_ms=(\S+) first_text_ms=(\S+) done_ms=(\d+)")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def describe(name: str, seconds: Sequence[float]) -> None:
    print(
        f"  {name:<34} p50 {percentile(seconds, 0.5):6.3f} s   "
        f"p90 {percentile(seconds, 0.9):6.3f} s   p99 {percentile(seconds, 0.99):6.3f} s   "
        f"max {max(seconds):6.3f} s"
    )


async def stamp_requests(model: FakeOpenAI, arrived: dict[str, float]) -> None:
    """Note when each model request arrives, by its prompt, until cancelled."""
    seen = 0
    while True:
        requests: Sequence[RecordedRequest] = await model.wait_for_requests(seen + 1)
        now = time.perf_counter()
        for request in requests[seen:]:
            arrived[request.json["messages"][-1]["content"]] = now
        seen = len(requests)


async def burst(asks: int, slots: int, latency: float, data: Path, *, stream: bool) -> None:
    print(
        f"{asks} asks at once, MAX_CONCURRENT_ASKS={slots}, MAX_QUEUED_ASKS={asks - slots}, "
        f"model latency {latency:g} s, " + ("streamed answers:" if stream else "not streamed:")
    )
    names = [f"member{number}" for number in range(asks)]
    settings = {
        "MAX_CONCURRENT_ASKS": str(slots),
        "MAX_QUEUED_ASKS": str(max(0, asks - slots)),
        # The production pace of edits to a streamed answer.
        "STREAM_EDIT_INTERVAL": "1.0",
        "STREAM_RESPONSES": "true" if stream else "false",
    }
    # The OpenAPI check of every body is the tests' job; here it would slow the fake.
    async with (
        FakeDiscord(user_names=names, spec_path=None, wait_timeout=120) as discord,
        start_fake_openai(default=Delay(latency, Reply(ANSWER))) as model,
    ):
        with point_discord_py_at(discord):
            async with run_stack(discord, model, data, settings) as stack:
                arrived: dict[str, float] = {}
                stamper = asyncio.create_task(stamp_requests(model, arrived))
                dispatched: dict[str, float] = {}
                handles = []
                calls_before = len(discord.calls)
                cpu_before = time.process_time()
                started = time.perf_counter()
                for number, user in enumerate(discord.users):
                    prompt = f"Question {number}"
                    dispatched[prompt] = time.perf_counter()
                    handles.append(stack.send(prompt, user=user))
                sent = time.perf_counter() - started
                outcomes = [
                    (await asyncio.wait_for(stack.log.future(handle.id), 120)) for handle in handles
                ]
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu_before
                stamper.cancel()
                lines = list(stack.log.lines)

    answered = sum(outcome == "answered" for outcome in outcomes)
    calls = len(discord.calls) - calls_before
    print(
        f"  answered {answered} of {asks}; {calls / asks:.1f} Discord REST calls per ask, "
        f"{discord.rate_limited} answered 429; CPU {cpu:.2f} s in this process "
        f"(the fakes included); dispatching took {sent:.2f} s"
    )
    waits = [arrived[prompt] - dispatched[prompt] for prompt in dispatched if prompt in arrived]
    describe("queue wait (dispatch to model)", waits)
    ours = {handle.id for handle in handles}
    ack, first, done = [], [], []
    for line in lines:
        match = ASK_LINE.match(line)
        if match and int(match.group(1)) in ours:
            if match.group(2) != "-":
                ack.append(int(match.group(2)) / 1000)
            if match.group(3) != "-":
                first.append(int(match.group(3)) / 1000)
            done.append(int(match.group(4)) / 1000)
    describe("bot: received to acknowledged", ack)
    describe("bot: received to first text", first)
    describe("bot: received to done", done)
    waves = math.ceil(asks / slots)
    print(
        f"  wall time {wall:.2f} s / ({waves} waves x {latency:g} s) = "
        f"{wall / (waves * latency):.2f}"
    )
    model_starts = sorted(arrived[prompt] - started for prompt in arrived)
    wave_starts = ", ".join(f"{model_starts[wave * slots]:.2f}" for wave in range(waves))
    print(f"  each wave's first model request at: {wave_starts} s")


async def checks_per_ask(directory: Path) -> None:
    print(f"Every check of one ask together, {ASKS} asks, {USERS} users in {GUILDS} servers:")
    store = await SqliteUsageStore.open(directory)
    budgets = DailyBudgets(store, Budget(user_daily_tokens=10**9, guild_daily_tokens=10**12))
    rules = access.AccessRules(
        guild_ids=frozenset(range(20_000, 20_000 + GUILDS)),
        channel_ids=frozenset({1, 2, 3}),
        role_ids=frozenset({7, 8}),
    )
    cooldown = Cooldown(parse_cooldown("3/60"))
    gate = AskGate(max_concurrent=50, max_queued=150)
    try:

        async def one_ask(ask: int) -> None:
            user, guild = user_of(ask), guild_of(ask)
            # What `/ask` does, minus Discord and the model: `_admit`, then the budget
            # check after the defer, then the usage record once the answer is in.
            access.refusal(rules, access.Origin(guild, 2, (5, 8)))
            cooldown.retry_after(user, now=float(ask))
            ticket = ticket_from(gate)
            cooldown.check_and_record(user, now=float(ask))
            now = START + timedelta(seconds=ask)
            await budgets.check(user, guild, now)
            async with ticket:
                pass
            await budgets.record(user, guild, 350, now)

        report("access + cooldown + gate + budget + record", await timed(ASKS, one_ask))
    finally:
        await store.close()


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=50)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args(argv)
    # The bot logs one line per ask at INFO; the figures are the output here.
    quiet = logging.StreamHandler()
    quiet.setLevel(logging.WARNING)
    logging.basicConfig(handlers=[quiet])
    print(f"Python {sys.version.split()[0]}, {sys.platform}")
    with tempfile.TemporaryDirectory() as directory:
        for stream in (True, False):
            data = Path(directory) / f"burst-{stream}"
            await burst(args.asks, args.slots, args.latency, data, stream=stream)
            print()
        await checks_per_ask(Path(directory) / "checks")
        print()
        await bench_in_memory()
        await bench_sqlite(Path(directory) / "components")


if __name__ == "__main__":
    asyncio.run(main())
