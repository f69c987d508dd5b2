"""Our bot against a minimal baseline bot, side by side, under bursts of `/ask`.

    .venv/bin/python bench/burst.py [--bursts 50,200] [--modes streamed,plain]
        [--latency 1.6] [--repeat 1] [--env KEY=VALUE ...] [--no-default]
        [--profile DIR [--py-spy PATH]]

Each bot runs as its own process (so its CPU and memory are its own) against the local
Discord (tests.fakes.discord, Discord's default rate limits, no OpenAPI check) and the
scripted model (tests.fakes.openai_server), both running in this process, fresh for every
run. The model takes `--latency` seconds per answer: a short answer in 20 pieces spread
over that time, streamed or, to a non-streamed request, sent whole at the end. Every ask
comes from a different member, all in the same instant.

The bots:

- baseline: bench/baseline_bot.py, plain discord.py + openai with no limits (a yardstick);
- ours: `python -m bot` on its default settings, only pointed at the fakes;
- ours + `--env` settings, if any are given, as one more column (e.g.
  `--env MAX_CONCURRENT_ASKS=250`; a PYTHONPATH given this way goes before the repository's,
  e.g. a directory of optional packages); `--no-default` leaves out the plain "ours".

"streamed" runs both bots with STREAM_RESPONSES unset (both stream by default), "plain"
with STREAM_RESPONSES=false.

Figures, per burst and mode:

- wall / model latency: first INTERACTION_CREATE to the last answer's final write, over
  `--latency` (1.0 is the floor);
- ack p50/p99: INTERACTION_CREATE until the fake accepted the callback;
- model done -> final visible p50/p99: from the model server finishing the answer (its
  last byte sent, recorded server-side) to the fake Discord accepting that ask's last
  message write (send or edit);
- REST calls per answer: every request after start-up, over the number of asks;
- 429s: rate-limited responses over the whole run, start-up included;
- CPU per answer: the bot process's CPU time (all threads) during the burst, over asks;
- peak RSS: the bot process's high-water mark (VmHWM), start-up included;
- fakes' CPU / wall: CPU time of this process (both fakes) over the wall time, in cores;
  near 1.0 the fakes, not the bot, set the pace.

Each cell is the median over `--repeat` runs (answers shown: the worst run), the columns of
one repeat run back to back. Asks whose answer never shows are reported with what they show
instead; Discord (and the fake) refuse an acknowledgement after 3 s, so on a machine too
busy to acknowledge in time those asks show nothing.

`--profile DIR` then runs our bot (default settings) once more per burst and mode, profiled,
and prints where its CPU went by package and function (bench/profiles.py); those runs are
not in the table. Without `--py-spy` the whole process runs under cProfile (start-up
included, and slowed by the profiler) into DIR/ours-<burst>-<mode>.prof; with `--py-spy
PATH` (`pip install py-spy` anywhere; it need not be in the project's environment) that
binary samples the running bot during the burst only, into DIR/ours-<burst>-<mode>.py-spy.txt.

Times depend on how busy the machine is; CPU per answer much less so. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from harness import (  # noqa: E402
    KIB,
    OUR_BOT,
    bot_process,
    child_env,
    cpu_seconds,
    percentile,
    script_against_fake,
    status_kib,
    tail,
)
from profiles import py_spy, summarize_cprofile, summarize_samples  # noqa: E402

from tests.fakes.discord import Call, FakeDiscord, InteractionHandle  # noqa: E402
from tests.fakes.openai_server import (  # noqa: E402
    CHAT_PATH,
    FakeOpenAI,
    StreamReply,
    start_fake_openai,
    tokenize,
)

ANSWER = (
    "The sky looks blue because air scatters short wavelengths of sunlight far more than "
    "long ones, so blue light reaches your eyes from every direction."
)
PIECES = 20
PROMPT = "Why is the sky blue? (#{number})"
NUMBERED = re.compile(r"\(#(\d+)\)")
WEBHOOK_WRITE = re.compile(r"^(POST|PATCH) /webhooks/")
# Every wait on the fakes; generous, so a slow machine prints figures, not errors.
WAIT = 120.0
MODES = {"streamed": {}, "plain": {"STREAM_RESPONSES": "false"}}


@dataclass(frozen=True)
class Bot:
    """One column: how to start a bot, and its settings beyond pointing it at the fakes."""

    name: str
    arguments: tuple[str, ...]
    settings: Mapping[str, str]
    python_path: tuple[str, ...] = ()


def baseline() -> Bot:
    return Bot("baseline", script_against_fake(BENCH / "baseline_bot.py"), {})


def ours(extra: Mapping[str, str] | None = None) -> Bot:
    settings = dict(extra or {})
    python_path = tuple(p for p in settings.pop("PYTHONPATH", "").split(os.pathsep) if p)
    name = "ours" if not extra else "ours " + " ".join(f"{k}={v}" for k, v in extra.items())
    return Bot(name, OUR_BOT, settings, python_path)


def profiled(bot: Bot, path: Path) -> Bot:
    arguments = ("-m", "cProfile", "-o", str(path), *bot.arguments)
    return Bot(bot.name + " (profiled)", arguments, bot.settings, bot.python_path)


# --- One run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one burst cost one bot, as the fakes and /proc saw it."""

    asks: int
    shown: int
    """Asks whose reply ended up showing exactly the model's answer."""
    wall: float
    acks: list[float]
    done_to_visible: list[float]
    calls: int
    rate_limited: int
    cpu: float | None
    peak_rss_kib: int | None
    fakes_cpu: float
    """CPU time of this process (both fakes) during the burst."""


def settings_for(bot: Bot, discord: FakeDiscord, model: FakeOpenAI, data: Path) -> dict[str, str]:
    """Only what points a bot at the fakes, then the mode's and the column's settings."""
    return {
        "DISCORD_TOKEN": discord.token,
        "DISCORD_GUILD_ID": str(discord.guild_id),
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-bench-key",
        "DATA_PATH": str(data),
        **bot.settings,
    }


Sampler = Callable[[int], AbstractAsyncContextManager[None]]
"""Given the bot's process id, what to run around the burst (a profiler attaching to it)."""


async def run_burst(
    bot: Bot, asks: int, latency: float, mode: str, sampler: Sampler | None = None
) -> Run:
    chunks = ["".join(piece) for piece in _pieces(tokenize(ANSWER), PIECES)]
    members = [f"member{number:03d}" for number in range(1, asks + 1)]
    reply = StreamReply(chunks, interval=latency / len(chunks))
    column = Bot(bot.name, bot.arguments, {**MODES[mode], **bot.settings}, bot.python_path)
    async with (
        FakeDiscord(user_names=members, spec_path=None, wait_timeout=WAIT) as discord,
        start_fake_openai(default=reply) as model,
    ):
        with tempfile.TemporaryDirectory() as data, tempfile.TemporaryFile() as output:
            env = child_env(
                discord, settings_for(column, discord, model, Path(data)), column.python_path
            )
            # Started in the empty data directory, so no .env of the checkout is read.
            async with bot_process(discord, column.arguments, env, Path(data), output) as child:
                calls_before = len(discord.calls)
                cpu_before = cpu_seconds(child.pid)
                fakes_before = time.process_time()
                async with sampler(child.pid) if sampler else nullcontext():
                    handles = [
                        discord.dispatch_interaction(
                            "ask", {"prompt": PROMPT.format(number=number)}, user=member
                        )
                        for number, member in enumerate(discord.users[:asks])
                    ]
                    try:
                        await discord.wait_for(all_shown(handles))
                        async with asyncio.timeout(WAIT):
                            await model.wait_idle()
                    except TimeoutError:
                        print(f"  ({column.name}: not every answer was shown within {WAIT:g} s)")
                cpu_after = cpu_seconds(child.pid)
                fakes_cpu = time.process_time() - fakes_before
                peak = status_kib(child.pid, "VmHWM")
                calls = discord.calls[calls_before:]
            run = measure(discord, model, handles, calls, cpu_before, cpu_after, peak, fakes_cpu)
            if run.shown < run.asks:
                explain_unshown(column.name, handles, output)
            return run


def explain_unshown(name: str, handles: Sequence[InteractionHandle], output: IO[bytes]) -> None:
    """What the asks whose answer never showed ended up showing, and the bot's last warnings."""
    seen = Counter(
        "(nothing)" if (original := handle.original()) is None else original.text[:70]
        for handle in handles
        if not is_shown(handle)
    )
    unacknowledged = sum(1 for handle in handles if handle.interaction.acknowledged_at is None)
    print(
        f"  ({name}: {sum(seen.values())} answer(s) not shown, "
        f"{unacknowledged} ask(s) never acknowledged; they show:"
    )
    for text, count in seen.most_common(5):
        print(f"     {count:4d} x {text!r}")
    lines = tail(output, 200_000).splitlines()
    warnings = [line for line in lines if " WARNING " in line or " ERROR " in line]
    for line in warnings[-8:]:
        print(f"     bot: {line[:160]}")
    print("  )")


def _pieces(tokens: list[str], count: int) -> list[list[str]]:
    size = -(-len(tokens) // count)
    return [tokens[start : start + size] for start in range(0, len(tokens), size)]


def is_shown(handle: InteractionHandle) -> bool:
    original = handle.original()
    return original is not None and original.content == ANSWER


def all_shown(handles: Sequence[InteractionHandle]) -> Callable[[], bool]:
    """A predicate, cheap to re-check after every change, that holds once all are shown."""
    pending = list(handles)

    def check() -> bool:
        # Answers come in any order; dropping shown ones from the end keeps re-checks cheap.
        while pending and is_shown(pending[-1]):
            pending.pop()
        return not pending

    return check


def measure(
    discord: FakeDiscord,
    model: FakeOpenAI,
    handles: Sequence[InteractionHandle],
    calls: Sequence[Call],
    cpu_before: float | None,
    cpu_after: float | None,
    peak_rss_kib: int | None,
    fakes_cpu: float,
) -> Run:
    by_number = {number: handle for number, handle in enumerate(handles)}
    model_done: dict[int, float] = {}
    for request in model.requests:
        if request.path != CHAT_PATH or request.outcome != "answered":
            continue
        prompts = [m.get("content") for m in request.json["messages"] if m.get("role") == "user"]
        found = NUMBERED.search(str(prompts[-1])) if prompts else None
        if found and request.ended_at is not None:
            number = int(found.group(1))
            model_done[by_number[number].id] = request.ended_at
    final_write: dict[int, float] = {}
    dispatched = {handle.id: handle.interaction.dispatched_at for handle in handles}
    for call in calls:
        ok = 200 <= call.status < 300
        write = WEBHOOK_WRITE.match(f"{call.method} {call.route}") is not None
        if ok and write and call.interaction_id in dispatched and call.since_dispatch is not None:
            # The last accepted write of an interaction is the one that showed its answer.
            final_write[call.interaction_id] = dispatched[call.interaction_id] + call.since_dispatch
    acks = [
        handle.interaction.acknowledged_at - handle.interaction.dispatched_at
        for handle in handles
        if handle.interaction.acknowledged_at is not None
    ]
    start = min(dispatched.values())
    return Run(
        asks=len(handles),
        shown=sum(1 for handle in handles if is_shown(handle)),
        wall=max(final_write.values(), default=start) - start,
        acks=acks,
        done_to_visible=[
            final_write[key] - done for key, done in model_done.items() if key in final_write
        ],
        calls=len(calls),
        rate_limited=discord.rate_limited,
        cpu=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
        peak_rss_kib=peak_rss_kib,
        fakes_cpu=fakes_cpu,
    )


# --- The table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    value: Callable[[Run, float], float | None]
    digits: int = 0
    worst: bool = False
    """Show the lowest value over the repeats rather than the median (a failure must show)."""


FIGURES = (
    Figure(
        "answers shown exactly", "of asks, worst run", lambda run, _: run.shown / run.asks, 2, True
    ),
    Figure("wall / model latency", "x", lambda run, latency: run.wall / latency, 2),
    Figure("ack p50", "ms", lambda run, _: percentile(run.acks, 0.5) * 1000),
    Figure("ack p99", "ms", lambda run, _: percentile(run.acks, 0.99) * 1000),
    Figure(
        "model done -> final p50", "ms", lambda run, _: percentile(run.done_to_visible, 0.5) * 1000
    ),
    Figure(
        "model done -> final p99", "ms", lambda run, _: percentile(run.done_to_visible, 0.99) * 1000
    ),
    Figure("REST calls per answer", "requests", lambda run, _: run.calls / run.asks, 2),
    Figure("429 responses", "whole run", lambda run, _: run.rate_limited),
    Figure(
        "CPU per answer",
        "ms",
        lambda run, _: None if run.cpu is None else run.cpu * 1000 / run.asks,
        2,
    ),
    Figure(
        "peak RSS",
        "MiB",
        lambda run, _: None if run.peak_rss_kib is None else run.peak_rss_kib / KIB,
    ),
    # Near 1.0 the fakes, not the bot, set the pace: they share one core of this process.
    Figure("fakes' CPU / wall", "cores", lambda run, _: run.fakes_cpu / max(run.wall, 1e-9), 2),
)


def summary(figure: Figure, runs: Sequence[Run], latency: float) -> float | None:
    """The figure's median over the runs (its minimum for a `worst` figure)."""
    known = [value for run in runs if (value := figure.value(run, latency)) is not None]
    if not known:
        return None
    return min(known) if figure.worst else statistics.median(known)


def cell(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or value != value or base != base:
        return "-"
    if base == 0:
        return "=" if value == 0 else "inf"
    return f"{value / base:.2f}"


def report(
    title: str, bots: Sequence[Bot], runs: Mapping[str, Sequence[Run]], latency: float
) -> None:
    headers = [bots[0].name]
    for bot in bots[1:]:
        headers += [bot.name, "÷ base"]
    widths = [max(10, len(header) + 2) for header in headers]
    print(title)
    print(f"  {'':<26}" + "".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)))
    for figure in FIGURES:
        base = summary(figure, runs[bots[0].name], latency)
        cells = [cell(base, figure.digits)]
        for bot in bots[1:]:
            value = summary(figure, runs[bot.name], latency)
            cells += [cell(value, figure.digits), ratio(value, base)]
        line = "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"  {figure.label:<26}{line}  {figure.unit}")
    print()


# --- Main ------------------------------------------------------------------------------------


async def main(arguments: argparse.Namespace) -> None:
    bots = [baseline(), ours()]
    if arguments.env:
        bots.append(ours(dict(arguments.env)))
    if arguments.no_default:
        del bots[1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Model latency {arguments.latency:g} s per answer; every ask from a different member; "
        f"median of {arguments.repeat} run(s) per cell.\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.1f} "
        "at the start.\n"
    )
    started = time.perf_counter()
    for asks in arguments.bursts:
        for mode in arguments.modes:
            runs: dict[str, list[Run]] = {bot.name: [] for bot in bots}
            for _ in range(arguments.repeat):
                for bot in bots:
                    runs[bot.name].append(await run_burst(bot, asks, arguments.latency, mode))
            report(f"{asks} at once, {mode}", bots, runs, arguments.latency)
    if arguments.profile is not None:
        arguments.profile.mkdir(parents=True, exist_ok=True)
        for asks in arguments.bursts:
            for mode in arguments.modes:
                await profile(arguments, asks, mode)
    print(f"The bench took {time.perf_counter() - started:.0f} s.")


async def profile(arguments: argparse.Namespace, asks: int, mode: str) -> None:
    """One more burst of our bot (default settings), profiled; prints where its CPU went."""
    directory: Path = arguments.profile.resolve()
    if arguments.py_spy:
        path = directory / f"ours-{asks}-{mode}.py-spy.txt"

        def sampler(pid: int) -> AbstractAsyncContextManager[None]:
            return py_spy(arguments.py_spy, pid, path)

        await run_burst(ours(), asks, arguments.latency, mode, sampler)
        print(f"py-spy samples of ours during the burst, {asks} at once, {mode}: {path}")
        summarize_samples(path)
    else:
        path = directory / f"ours-{asks}-{mode}.prof"
        await run_burst(profiled(ours(), path), asks, arguments.latency, mode)
        print(f"cProfile of ours, start-up and shutdown included, {asks} at once, {mode}: {path}")
        summarize_cprofile(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--bursts", type=_numbers, default=[50, 200], help="asks at once, comma-separated"
    )
    parser.add_argument(
        "--modes", type=_modes, default=list(MODES), help="streamed,plain or one of them"
    )
    parser.add_argument("--latency", type=float, default=1.6, help="model seconds per answer")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median shown)")
    parser.add_argument(
        "--env",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for one more column of our bot (repeatable)",
    )
    parser.add_argument(
        "--no-default",
        action="store_true",
        help="leave out the column of our bot on default settings (needs --env)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR", help="also profile our bot"
    )
    parser.add_argument(
        "--py-spy",
        default=None,
        metavar="PATH",
        help="with --profile: sample with this py-spy binary during the burst, not cProfile",
    )
    return parser.parse_args(argv)


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _modes(text: str) -> list[str]:
    modes = [part for part in text.split(",") if part]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s): {', '.join(unknown)}")
    return modes


def _setting(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
