"""Per-ask cost of the fair-use limits and of the usage store.

Run with `.venv/bin/python bench/limits.py`. Prints medians (and the 99th percentile)
in microseconds over many simulated asks spread across users and servers; asserts
nothing. The SQLite store works on a real file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.fair_use.budgets import Budget, DailyBudgets, Totals
from bot.fair_use.limits import AskGate, Cooldown, Ticket, parse_cooldown
from bot.store.sqlite import SqliteUsageStore

ASKS = 5000
USERS = 500
GUILDS = 20
START = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


def user_of(ask: int) -> int:
    return 10_000 + ask % USERS


def guild_of(ask: int) -> int:
    return 20_000 + ask % GUILDS


def report(name: str, samples_ns: list[int]) -> None:
    micros = sorted(sample / 1000 for sample in samples_ns)
    p99 = micros[int(len(micros) * 0.99) - 1]
    print(f"  {name:<46} median {statistics.median(micros):8.2f} µs   p99 {p99:8.2f} µs")


def ticket_from(gate: AskGate, show: Callable[[int], Awaitable[None]] | None = None) -> Ticket:
    ticket = gate.try_enter(on_position=show)
    if not isinstance(ticket, Ticket):
        raise RuntimeError(f"the gate refused an ask the benchmark sized it for: {ticket}")
    return ticket


async def timed(asks: int, one_ask: Callable[[int], Awaitable[None]]) -> list[int]:
    samples = []
    for ask in range(asks):
        started = time.perf_counter_ns()
        await one_ask(ask)
        samples.append(time.perf_counter_ns() - started)
    return samples


async def bench_in_memory() -> None:
    print(f"In-memory limits, {ASKS} asks over {USERS} users:")
    cooldown = Cooldown(parse_cooldown("3/60"))
    gate = AskGate(max_concurrent=4, max_queued=20)
    budgets_off = DailyBudgets(_NoStore(), Budget())

    async def cooldown_only(ask: int) -> None:
        # One ask a second overall, so each user asks every USERS seconds: all allowed.
        cooldown.check_and_record(user_of(ask), now=float(ask))

    async def gate_only(ask: int) -> None:
        async with ticket_from(gate):
            pass

    async def budget_off(ask: int) -> None:
        await budgets_off.check(user_of(ask), guild_of(ask), START)

    fresh = Cooldown(parse_cooldown("3/60"))

    async def all_limits(ask: int) -> None:
        fresh.check_and_record(user_of(ask), now=float(ask))
        await budgets_off.check(user_of(ask), guild_of(ask), START)
        async with ticket_from(gate):
            pass

    report("cooldown check_and_record", await timed(ASKS, cooldown_only))
    report("gate try_enter + enter/exit (free slot)", await timed(ASKS, gate_only))
    report("budget check, no limits set", await timed(ASKS, budget_off))
    report("cooldown + budget check + gate, together", await timed(ASKS, all_limits))

    # A busy gate: waves of asks, each wave filling every slot and place in line.
    busy = AskGate(max_concurrent=4, max_queued=20)
    wave = busy.max_concurrent + busy.max_queued

    async def queued_ask() -> None:
        async def show(place: int) -> None:
            pass

        async with ticket_from(busy, show):
            await asyncio.sleep(0)  # hand the loop to the others, like a model call

    started = time.perf_counter_ns()
    for _ in range(ASKS // wave):
        await asyncio.gather(*(queued_ask() for _ in range(wave)))
    elapsed = time.perf_counter_ns() - started
    asks = ASKS // wave * wave
    print(
        f"  {'gate with a full line of 20, places reported':<46} "
        f"mean   {elapsed / asks / 1000:8.2f} µs   (whole wave, incl. task switches)"
    )


async def bench_sqlite(directory: Path) -> None:
    print(f"SQLite usage store on disk, {ASKS} asks over {USERS} users in {GUILDS} servers:")
    store = await SqliteUsageStore.open(directory)
    budgets = DailyBudgets(store, Budget(user_daily_tokens=10**9, guild_daily_tokens=10**12))
    try:

        async def check(ask: int) -> None:
            await budgets.check(user_of(ask), guild_of(ask), START + timedelta(seconds=ask))

        async def record(ask: int) -> None:
            await budgets.record(user_of(ask), guild_of(ask), 350, START + timedelta(seconds=ask))

        async def check_and_record(ask: int) -> None:
            await check(ask)
            await record(ask)

        report("budget check (one read)", await timed(ASKS, check))
        report("record usage (one write transaction)", await timed(ASKS, record))
        report("check + record per ask", await timed(ASKS, check_and_record))
    finally:
        await store.close()


class _NoStore:
    """A store that is never read: with no limits set, `check` must not touch it."""

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        raise AssertionError("not expected")

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        raise AssertionError("not expected")

    async def prune(self, before: str) -> int:
        raise AssertionError("not expected")

    async def close(self) -> None:
        pass


async def main() -> None:
    print(f"Python {sys.version.split()[0]}, {sys.platform}")
    await bench_in_memory()
    with tempfile.TemporaryDirectory() as directory:
        await bench_sqlite(Path(directory))


if __name__ == "__main__":
    asyncio.run(main())
