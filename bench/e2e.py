"""The whole bot under a burst: many people run `/ask` at the same moment.

    .venv/bin/python bench/e2e.py [--asks 200] [--latency 1.0]

The real bot runs against the local Discord (tests.fakes.discord) and a scripted model
(tests.fakes.openai_server) that takes `--latency` seconds per answer, with
STREAM_RESPONSES=false and MAX_CONCURRENT_ASKS = MAX_QUEUED_ASKS = `--asks`. Then `--asks`
different members run `/ask` in the same instant, and the run ends when every one of them
sees an answer. It runs twice:

- in this process (`tests.stack.run_stack`, the code path of `python -m bot`), sharing
  one event loop and one CPU with both fakes;
- as its own process (`python -m tests.fakes.launch`), so its CPU and memory are its own.

Prints, for each: acknowledgement latency (INTERACTION_CREATE sent until the fake received
the callback), the time until each answer is shown, the burst's wall time over the model's
latency (1.0 is the floor), REST calls per answer (start-up calls left out), 429 responses,
CPU per answer and peak RSS. Discord's rate limits are the fake's defaults, the figures
Discord's headers report; 429s are counted, never avoided. The fake's OpenAPI check of
every body is off: checking is the tests' job, and here it would only slow the fake down.
Times depend on how busy the machine is; CPU per answer much less so. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: the fakes live in the repository's `tests` package.
    sys.path.insert(0, str(ROOT))

from tests.fakes.discord import (  # noqa: E402
    FakeDiscord,
    InteractionHandle,
    point_discord_py_at,
)
from tests.fakes.openai_server import Delay, FakeOpenAI, Reply, start_fake_openai  # noqa: E402
from tests.stack import run_stack, stack_settings  # noqa: E402

ANSWER = (
    "The sky looks blue because air scatters short wavelengths of sunlight far more than "
    "long ones, so blue light reaches your eyes from every direction of the sky."
)
# Every wait on the fake; generous, so a slow machine reports figures instead of failing.
WAIT = 90.0
KIB = 1024  # ru_maxrss and /proc figures are in KiB on Linux
N = TypeVar("N", int, float)


@dataclass(frozen=True)
class Burst:
    """What one burst of asks cost, as the fakes and the operating system saw it."""

    acks: list[float]
    """Per ask, seconds from INTERACTION_CREATE to the callback's arrival."""
    answers: list[float]
    """Per ask, seconds from INTERACTION_CREATE to the request that showed the answer."""
    wall: float
    """Seconds from the first INTERACTION_CREATE to the last answer shown."""
    calls: Counter[str]
    """Requests after start-up, by method, route and status."""
    rate_limited: int
    """429 responses over the whole run, start-up included."""
    asks: int
    shown: int
    """Asks whose message ended up showing exactly the model's answer."""
    cpu: float | None
    """CPU seconds spent during the burst, all threads, if known."""
    overflows: int | None
    """Connections refused by a full listen queue during the burst, system-wide."""
    peak_rss_kib: int
    rss_note: str


@dataclass(frozen=True)
class Sample:
    """Counters read just before a burst, to subtract afterwards."""

    calls: int
    cpu: float | None
    overflows: int | None


def overrides(asks: int) -> dict[str, str]:
    return {
        "STREAM_RESPONSES": "false",
        "MAX_CONCURRENT_ASKS": str(asks),
        "MAX_QUEUED_ASKS": str(asks),
    }


@asynccontextmanager
async def fakes(asks: int, latency: float) -> AsyncIterator[tuple[FakeDiscord, FakeOpenAI]]:
    """A Discord with `asks` members, and a model that answers ANSWER after `latency` s."""
    members = [f"member{number:03d}" for number in range(1, asks + 1)]
    async with (
        FakeDiscord(user_names=members, spec_path=None, wait_timeout=WAIT) as discord,
        start_fake_openai(default=Delay(latency, then=Reply(ANSWER))) as model,
    ):
        yield discord, model


def is_answered(handle: InteractionHandle) -> bool:
    original = handle.original()
    return original is not None and not original.loading


def all_answered(handles: Sequence[InteractionHandle]) -> Callable[[], bool]:
    """A predicate, cheap to re-check after every change, that holds once all are answered."""
    pending = list(handles)

    def check() -> bool:
        # Answers come in any order; dropping answered ones from the end keeps re-checks cheap.
        while pending and is_answered(pending[-1]):
            pending.pop()
        return not pending

    return check


async def burst(discord: FakeDiscord, asks: int) -> list[InteractionHandle]:
    """Every member runs /ask in the same instant; returns once every answer is shown."""
    handles = [
        discord.dispatch_interaction(
            "ask", {"prompt": f"Why is the sky blue? ({number})"}, user=member
        )
        for number, member in enumerate(discord.users[:asks])
    ]
    await discord.wait_for(all_answered(handles))
    return handles


def measure(
    discord: FakeDiscord,
    handles: Sequence[InteractionHandle],
    before: Sample,
    after: Sample,
    peak_rss_kib: int,
    rss_note: str,
) -> Burst:
    calls = discord.calls[before.calls :]
    answered_at: dict[int, float] = {}
    for call in calls:
        # The last successful request of an interaction is the one that showed its answer.
        ok = 200 <= call.status < 300
        if ok and call.interaction_id is not None and call.since_dispatch is not None:
            answered_at[call.interaction_id] = call.since_dispatch
    acks = []
    answers = []
    first_dispatch = min(handle.interaction.dispatched_at for handle in handles)
    last_answer = first_dispatch
    for handle in handles:
        interaction = handle.interaction
        if interaction.acknowledged_at is not None:
            acks.append(interaction.acknowledged_at - interaction.dispatched_at)
        if handle.id in answered_at:
            answers.append(answered_at[handle.id])
            last_answer = max(last_answer, interaction.dispatched_at + answered_at[handle.id])
    shown = sum(
        1
        for handle in handles
        if (original := handle.original()) is not None and original.content == ANSWER
    )
    return Burst(
        acks=acks,
        answers=answers,
        wall=last_answer - first_dispatch,
        calls=Counter(f"{call.method} {call.route} -> {call.status}" for call in calls),
        rate_limited=discord.rate_limited,
        asks=len(handles),
        shown=shown,
        cpu=_difference(before.cpu, after.cpu),
        overflows=_difference(before.overflows, after.overflows),
        peak_rss_kib=peak_rss_kib,
        rss_note=rss_note,
    )


def _difference(before: N | None, after: N | None) -> N | None:
    return None if before is None or after is None else after - before


async def in_process(asks: int, latency: float) -> Burst:
    """The bot on this process's event loop, beside both fakes."""
    async with fakes(asks, latency) as (discord, model):
        with point_discord_py_at(discord), tempfile.TemporaryDirectory() as data:
            async with run_stack(discord, model, Path(data), overrides(asks)):
                before = Sample(len(discord.calls), time.process_time(), listen_overflows())
                handles = await burst(discord, asks)
                after = Sample(len(discord.calls), time.process_time(), listen_overflows())
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            note = "this process: the bot and both fakes"
            return measure(discord, handles, before, after, peak, note)


async def own_process(asks: int, latency: float) -> Burst:
    """The bot as `python -m tests.fakes.launch`: its own interpreter, event loop and memory."""
    async with fakes(asks, latency) as (discord, model):
        with tempfile.TemporaryDirectory() as data, tempfile.TemporaryFile() as output:
            # Started in the empty data directory, so no .env of the checkout is read.
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {
                **os.environ,
                **discord.env(),
                **stack_settings(discord, model, Path(data), overrides(asks)),
                "LOG_LEVEL": "WARNING",
                "PYTHONPATH": path,
            }
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.fakes.launch",
                cwd=data,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
            try:
                await _until_ready(discord, child, output)
                connected = status_kib(child.pid, "VmRSS")
                before = Sample(len(discord.calls), cpu_seconds(child.pid), listen_overflows())
                handles = await burst(discord, asks)
                after = Sample(len(discord.calls), cpu_seconds(child.pid), listen_overflows())
                peak = status_kib(child.pid, "VmHWM")
            finally:
                if child.returncode is None:
                    child.send_signal(signal.SIGTERM)
                    async with asyncio.timeout(WAIT):
                        await child.wait()
            if child.returncode != 0:
                raise RuntimeError(f"the bot exited with {child.returncode}:\n{_tail(output)}")
    if peak is None:  # no /proc: the only child this process has waited for
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    note = "the bot's process alone"
    if connected is not None:
        note += f", {connected / KIB:.0f} MiB once connected"
    return measure(discord, handles, before, after, peak, note)


async def _until_ready(
    discord: FakeDiscord, child: asyncio.subprocess.Process, output: IO[bytes]
) -> None:
    """Wait until the bot has registered its commands and connected, or has exited."""
    ready = asyncio.create_task(
        discord.wait_for(
            lambda: bool(discord.commands(discord.guild_id)) and discord.gateway.readies_sent > 0
        )
    )
    exited = asyncio.create_task(child.wait())
    done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    exited.cancel()
    if exited in done:
        raise RuntimeError(f"the bot exited with {child.returncode}:\n{_tail(output)}")
    ready.result()


def _tail(output: IO[bytes]) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")[-3000:]


def status_kib(pid: int, field: str) -> int | None:
    """A `/proc/<pid>/status` memory figure such as VmHWM (peak RSS), in KiB; Linux only."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of process `pid` so far, all threads; Linux only."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of the line; this split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_overflows() -> int | None:
    """Connections the kernel dropped so far because a listen queue was full; Linux only.

    System-wide (TcpExt ListenOverflows). Each drop costs the client a retransmitted
    SYN, a second later.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters = dict(zip(names.split(), values.split(), strict=True))
            return int(counters.get("ListenOverflows", "0"))
    return None


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest sample with `fraction` of all samples at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report(latency: float, runs: Sequence[tuple[str, Burst]]) -> None:
    def row(label: str, cells: Sequence[str], unit: str = "") -> None:
        print(f"{label:<28}" + "".join(f"{cell:>14}" for cell in cells) + f"  {unit}".rstrip())

    def milliseconds(samples: Sequence[float], fraction: float) -> str:
        return f"{percentile(samples, fraction) * 1000:.0f}" if samples else "-"

    def optional(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    row("", [name for name, _ in runs])
    row("answers shown", [f"{run.shown}/{run.asks}" for _, run in runs])
    row("acknowledgement p50", [milliseconds(run.acks, 0.5) for _, run in runs], "ms")
    row("acknowledgement p99", [milliseconds(run.acks, 0.99) for _, run in runs], "ms")
    row("answer shown p50", [milliseconds(run.answers, 0.5) for _, run in runs], "ms")
    row("answer shown p99", [milliseconds(run.answers, 0.99) for _, run in runs], "ms")
    row("wall time / model latency", [f"{run.wall / latency:.2f}" for _, run in runs], "x")
    row(
        "REST calls per answer",
        [f"{sum(run.calls.values()) / run.asks:.2f}" for _, run in runs],
        "requests",
    )
    row("429 responses", [str(run.rate_limited) for _, run in runs], "whole run")
    row(
        "CPU per answer",
        [optional(run.cpu, 1000 / run.asks, 1) for _, run in runs],
        "ms (in-process: bot and fakes)",
    )
    row("peak RSS", [f"{run.peak_rss_kib / KIB:.0f}" for _, run in runs], "MiB")
    row(
        "listen-queue overflows",
        [optional(run.overflows) for _, run in runs],
        "each delays a connection 1 s",
    )
    print()
    print("Times are from INTERACTION_CREATE as the fake sent it. Peak RSS:")
    for name, run in runs:
        print(f"  {name}: {run.rss_note}")
    print("  (the launcher also imports the fake's package, a few MiB the bot alone would not)")
    print("Requests after start-up:")
    for name, run in runs:
        print(f"  {name}:")
        for call, count in sorted(run.calls.items()):
            print(f"    {count:5d}  {call}")


async def main(asks: int, latency: float) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpus = os.cpu_count() or 1
    print(
        f"{asks} members run /ask at once; the model answers in {latency:g} s. "
        f"Python {sys.version.split()[0]}, {cpus} CPUs, load average {optional_load(load)}"
    )
    if load is not None and load >= cpus:
        print("The machine is busy: times include waiting for a CPU.")
    print()
    started = time.perf_counter()
    runs = [
        ("in-process", await in_process(asks, latency)),
        ("own process", await own_process(asks, latency)),
    ]
    report(latency, runs)
    print(f"\nThe bench took {time.perf_counter() - started:.0f} s.")


def optional_load(load: float | None) -> str:
    return "unknown" if load is None else f"{load:.1f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=200, help="members asking at once")
    parser.add_argument("--latency", type=float, default=1.0, help="model seconds per answer")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.asks, arguments.latency))
