"""CPU per model call: the SDK on httpx2 (its default) against the SDK on aiohttp.

    .venv/bin/python bench/llm_client.py [--calls 200] [--rounds 5] [--tokens 40]

The scripted model server (tests.fakes.openai_server) runs in a child process, so this
process's CPU time is the client's alone. Each round sends `--calls` concurrent requests
through `bot.model.llm.Completer` (the bot's own code path: deadline, retries off, observer
none) on a client from `make_client`, once per HTTP library, non-streamed and streamed; the
answer is `--tokens` tokens long, one server-sent event per token when streamed. Rounds
alternate the libraries so both see the same machine load; a first round warms up the
connection pools and is not counted.

Prints, per library and mode, the CPU milliseconds per call (process time ÷ calls; the
median round, and the best) and the median wall time of a round, then aiohttp ÷ httpx2.
Figures depend on how busy the machine is. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: the fakes live in the repository's `tests` package.
    sys.path.insert(0, str(ROOT))

from bot.config import load_settings  # noqa: E402
from bot.model.llm import Completer, Transport, make_client  # noqa: E402
from tests.fakes.openai_server import Reply, start_fake_openai  # noqa: E402

TRANSPORTS: tuple[Transport, ...] = ("httpx2", "aiohttp")
MODES = ("plain", "stream")
SCRIPT = Path(__file__).resolve()


@dataclass
class Figures:
    cpu_ms_per_call: list[float] = field(default_factory=list)
    wall_s: list[float] = field(default_factory=list)


async def serve(tokens: int) -> None:
    """The child: serve a fixed answer until killed."""
    answer = " ".join(f"word{n}" for n in range(tokens))
    async with start_fake_openai(default=Reply(answer)) as server:
        print(server.base_url, flush=True)
        await asyncio.Event().wait()


async def one_round(completer: Completer, mode: str, calls: int) -> tuple[float, float]:
    """Send `calls` concurrent requests; return (CPU seconds, wall seconds)."""

    async def plain() -> None:
        await completer.complete("hi")

    async def streamed() -> None:
        async for _ in completer.stream("hi"):
            pass

    ask = plain if mode == "plain" else streamed
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(ask() for _ in range(calls)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def measure(base_url: str, calls: int, rounds: int) -> dict[tuple[str, str], Figures]:
    settings = load_settings(
        {"DISCORD_TOKEN": "unused", "OPENAI_API_KEY": "sk-bench", "OPENAI_TIMEOUT": "120"}
    )
    clients = {t: make_client(settings, base_url=base_url, transport=t) for t in TRANSPORTS}
    figures: dict[tuple[str, str], Figures] = {(t, m): Figures() for t in TRANSPORTS for m in MODES}
    try:
        completers = {t: Completer.from_settings(c, settings) for t, c in clients.items()}
        for round_number in range(rounds + 1):
            for transport in TRANSPORTS:
                for mode in MODES:
                    cpu, wall = await one_round(completers[transport], mode, calls)
                    if round_number == 0:
                        continue  # warm-up: connections, first imports, caches
                    figures[transport, mode].cpu_ms_per_call.append(cpu / calls * 1000)
                    figures[transport, mode].wall_s.append(wall)
    finally:
        for client in clients.values():
            await client.close()
    return figures


def report(figures: dict[tuple[str, str], Figures], calls: int, tokens: int) -> None:
    print(f"\n{calls} concurrent calls per round, {tokens}-token answers\n")
    print(f"{'client':<10}{'mode':<8}{'CPU ms/call':>13}{'best':>8}{'wall s':>9}")
    for (transport, mode), figure in figures.items():
        print(
            f"{transport:<10}{mode:<8}"
            f"{statistics.median(figure.cpu_ms_per_call):>13.2f}"
            f"{min(figure.cpu_ms_per_call):>8.2f}"
            f"{statistics.median(figure.wall_s):>9.3f}"
        )
    print()
    for mode in MODES:
        ours = statistics.median(figures["aiohttp", mode].cpu_ms_per_call)
        default = statistics.median(figures["httpx2", mode].cpu_ms_per_call)
        print(f"aiohttp ÷ httpx2, {mode}: CPU per call {ours / default:.2f}")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        await serve(args.tokens)
        return

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--serve",
        "--tokens",
        str(args.tokens),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        base_url = (await child.stdout.readline()).decode().strip()
        if not base_url:
            raise SystemExit("the model server did not start")
        figures = await measure(base_url, args.calls, args.rounds)
    finally:
        child.terminate()
        await child.wait()
    report(figures, args.calls, args.tokens)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
