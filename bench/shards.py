"""Our bot as one process against two, on two gateway shards sharing Redis, under one burst.

    .venv/bin/python bench/shards.py [--asks 400] [--guilds 4] [--latency 1.6]
        [--layouts one,two,sqlite] [--repeat 1] [--env KEY=VALUE ...]

The layouts, each a column, run one after another, each against a fresh local Discord
(tests.fakes.discord: Discord's default rate limits, no OpenAPI check, `/gateway/bot`
recommending 2 shards with `max_concurrency` 2) and a fresh scripted model
(tests.fakes.openai_server), both running in this process, and one real Redis server
(tests.redis_server, emptied of keys and scripts before every layout):

- one: one process running both shards (SHARD_COUNT=2, no SHARD_IDS) with REDIS_URL, so
  every ask does the same Redis work as in "two";
- two: two processes, SHARD_COUNT=2 with SHARD_IDS=0 and SHARD_IDS=1, the same REDIS_URL,
  each with its own DATA_PATH (as two containers would have);
- sqlite: one process running both shards without REDIS_URL (SQLite and memory), a
  reference for what Redis costs.

The model gate is per process (adaptive, from 256 answers at once), so two processes may
run twice as many answers at once as one; `--env MAX_CONCURRENT_ASKS=N` pins it in every
process.

Every layout has `--guilds` servers (half on each shard, by `(guild_id >> 22) % 2`), the
commands registered globally once by `python -m bot sync` (the real path; the bots then
sync nothing at start), and `--env` settings on top of its own. `--asks` asks go round
robin over the servers, each from a different member (so no per-user limit refuses one),
all in the same instant. The model takes `--latency` seconds per answer, a short answer
streamed in 20 pieces (as bench/burst.py).

Figures, per layout:

- answers shown exactly: asks whose reply ended up showing exactly the model's answer.
  The bench waits for each ask until it shows that, or the bot has logged its ask line
  (refused, say), or it can show nothing: Discord (and the fake) refuse an
  acknowledgement after 3 s. It says what the asks not shown show instead;
- outcomes: the `outcome=` of every ask's log line, over all the layout's processes
  (anything but "answered" is a refusal, busy, or a failure);
- wall / model latency: first INTERACTION_CREATE to the last answer's final write, over
  `--latency` (1.0 is the floor);
- ack p50/p99: INTERACTION_CREATE until the fake accepted the callback;
- mean ask done: the mean `done_ms` of the asks' log lines, the bot's own measure from
  receiving an interaction to having settled it;
- Redis round trips per ask: this bench reads `INFO all` from its own connection just
  before the burst and just after the last answer; the increase of
  `total_reads_processed` (each a read of a client's request from its socket: one per
  command sent and answered on its own, one for a whole pipeline or MULTI/EXEC), less
  this bench's own reads (its second INFO, its PINGs, the end of its PING connection),
  over asks. A pool's connection set-up commands during the burst are in it;
- Redis commands per ask: the increase of the sum of every command's `calls` in
  `INFO commandstats`, less this bench's INFO and PING commands (the bot sends neither
  while running), over asks. Redis counts the commands a Lua script runs as well as the
  EVALSHA, so this is more than the round trips; the calls per command are printed
  under the table;
- of which connection set-up: the HELLO and CLIENT commands redis-py sends on each new
  connection, per ask (a pool growing to meet the burst; near 0 once it is warm);
- PING round trip p50/p99: a separate process (so this bench's busy event loop does not
  delay it) sends PING over its own loopback connection every 20 ms during the burst and
  times each reply: the network and Redis's queue, without a client library;
- Redis wire time per ask: round trips per ask x PING p50;
- Redis CPU per ask: the increase of `used_cpu_user` + `used_cpu_sys` over asks (this
  bench's few hundred PINGs included): what Redis itself spends on an ask;
- Redis share, by PING p50: Redis wire time per ask over mean ask done: the part of an
  ask its round trips take on the wire and in Redis, as if each waited alone. Under load
  the bot waits longer for a reply, which also waits for the bot's own busy event loop
  (and, with more calls at once than the pool has connections, for a free one): compare
  acks and mean ask done with the "no Redis" column for what Redis costs the bot;
- Redis share, by its CPU: Redis CPU per ask over mean ask done, the part Redis itself
  works on an ask (a lower bound);
- bot CPU per answer: the CPU time of all the layout's bot processes (all threads) during
  the burst, over asks; CPU per process: each process's, in seconds;
- peak RSS per process: each bot process's high-water mark (VmHWM), start-up included;
- REST calls per answer, 429s, fakes' CPU / wall: as in bench/burst.py (the fakes share
  one core of this process: near 1.0 they, not the bot, set the pace);
- Redis fallback warnings: the bots' "Redis ... is unreachable" lines, one each time a
  process found Redis away (a call failed or took over REDIS_TIMEOUT, waiting for a free
  pooled connection included) and fell back to its own stores; their most common causes
  are printed under the table. Asks served meanwhile did less Redis work, so the Redis
  figures of a layout with fallbacks are lower than Redis would cost it.

Each number is the median over `--repeat` runs, the layouts of one repeat run back to back;
answers shown, outcomes, the per-process figures and the lines under the table are from
each layout's worst run (the fewest answers shown).

Times depend on how busy the machine is (two cores run the fakes, Redis and the bots);
CPU and Redis commands per ask much less so. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from burst import (  # noqa: E402
    ANSWER,
    PIECES,
    PROMPT,
    Run,
    _pieces,
    _setting,
    explain_unshown,
    is_shown,
    measure,
)
from harness import (  # noqa: E402
    KIB,
    OUR_BOT,
    bot_process,
    child_env,
    cpu_seconds,
    percentile,
    status_kib,
    tail,
)

from tests.fakes.discord import FakeDiscord, InteractionHandle  # noqa: E402
from tests.fakes.discord.state import CALLBACK_WINDOW  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI, StreamReply, start_fake_openai, tokenize  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SHARD_COUNT = 2
# Every wait on the fakes; generous, so a slow machine prints figures, not errors.
WAIT = 120.0
PING_INTERVAL = 0.02
LOGGED = re.compile(rb" ask interaction=(\d+) ")
# How often the bench reads the bots' new log lines while it waits for the last asks.
FOLLOW_INTERVAL = 0.25
ASK_LINE = re.compile(r" ask interaction=\d+ .*?outcome=(\S+) .*?done_ms=(\d+)")
REDIS_AWAY = re.compile(r"Redis at \S+ is unreachable \((.*)\): limits")
# Commands this bench sends to Redis itself; the bot sends neither while running.
OWN_COMMANDS = ("cmdstat_info", "cmdstat_ping")
# What redis-py sends on each new connection of a pool (HELLO, CLIENT SETNAME/SETINFO).
SET_UP_COMMANDS = ("hello", "client")

# Times one PING after another over a bare loopback socket (no client library, so exactly
# one command per sample) until SIGTERM, then prints the round trips as a JSON list.
PINGER = r"""
import json, signal, socket, sys, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
samples = []
with socket.create_connection((host, port)) as connection:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print("ready", flush=True)
    while not stopping:
        started = time.perf_counter()
        connection.sendall(b"PING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += connection.recv(64)
        samples.append(time.perf_counter() - started)
        time.sleep(interval)
print(json.dumps(samples), flush=True)
"""


@dataclass(frozen=True)
class Layout:
    """One column: the shards of each bot process, and whether they share Redis."""

    name: str
    processes: tuple[tuple[int, ...] | None, ...]
    """Each process's SHARD_IDS (None: unset, the process runs all SHARD_COUNT shards)."""
    redis: bool


LAYOUTS = {
    "one": Layout("1 process", (None,), redis=True),
    "two": Layout("2 processes", ((0,), (1,)), redis=True),
    "sqlite": Layout("1, no Redis", (None,), redis=False),
}


# --- Redis as this bench reads it ------------------------------------------------------------


@dataclass(frozen=True)
class RedisSnapshot:
    """What one `INFO all` said (one command, so one read of this bench's)."""

    calls: dict[str, int]
    """`cmdstat_<name>`: calls so far, commands run by scripts included."""
    reads: int
    """total_reads_processed: requests read from clients' sockets so far."""
    cpu: float
    """used_cpu_user + used_cpu_sys so far, seconds."""


def redis_snapshot(client: redis.Redis) -> RedisSnapshot:
    info = client.info("all")
    return RedisSnapshot(
        calls={
            name: int(value["calls"])
            for name, value in info.items()
            if name.startswith("cmdstat_") and isinstance(value, dict)
        },
        reads=int(info["total_reads_processed"]),
        cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    )


@dataclass(frozen=True)
class RedisCost:
    """What the bots asked of Redis during one burst."""

    calls: dict[str, int]
    """Per command (without `cmdstat_`), the bots' calls during the burst."""
    round_trips: int
    cpu: float
    pings: list[float]


def redis_cost(before: RedisSnapshot, after: RedisSnapshot, pings: list[float]) -> RedisCost:
    calls = {
        name.removeprefix("cmdstat_"): count - before.calls.get(name, 0)
        for name, count in after.calls.items()
        if name not in OWN_COMMANDS and count > before.calls.get(name, 0)
    }
    # Ours: the second INFO (an INFO's own read is in what it says), every PING, and the
    # end of the PING connection.
    own_reads = 1 + len(pings) + 1
    return RedisCost(calls, after.reads - before.reads - own_reads, after.cpu - before.cpu, pings)


def forget_everything(server: RedisServer) -> None:
    """Every key and every loaded script gone, so each layout starts Redis cold alike."""
    server.flush()
    with redis.Redis.from_url(server.url, socket_timeout=10) as client:
        client.script_flush()


class Pinger:
    """The PING-timing process (`PINGER`) for the length of a block."""

    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self._child: asyncio.subprocess.Process | None = None
        self.samples: list[float] = []

    async def __aenter__(self) -> Pinger:
        self._child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PINGER,
            "127.0.0.1",
            str(self._server.port),
            str(PING_INTERVAL),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._child.stdout is not None
        async with asyncio.timeout(WAIT):
            await self._child.stdout.readline()
        return self

    async def __aexit__(self, *_: object) -> None:
        child = self._child
        assert child is not None
        assert child.stdout is not None
        child.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            output = await child.stdout.read()
            await child.wait()
        self.samples = json.loads(output) if child.returncode == 0 and output else []


# --- One layout ------------------------------------------------------------------------------


@dataclass
class Result:
    """What one burst cost one layout."""

    run: Run
    cpu: list[float | None]
    """Each bot process's CPU seconds during the burst."""
    peaks_kib: list[int | None]
    outcomes: Counter[str] = field(default_factory=Counter)
    done_ms: list[int] = field(default_factory=list)
    redis_away: Counter[str] = field(default_factory=Counter)
    """The causes of the bots' "Redis ... is unreachable" lines, counted."""
    redis: RedisCost | None = None
    handles: list[InteractionHandle] = field(default_factory=list)


def base_settings(discord: FakeDiscord, model: FakeOpenAI, data: Path) -> dict[str, str]:
    """What points a bot at the fakes; no DISCORD_GUILD_ID, so it syncs nothing at start."""
    return {
        "DISCORD_TOKEN": discord.token,
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-bench-key",
        "DATA_PATH": str(data),
    }


async def sync_globally(discord: FakeDiscord, settings: Mapping[str, str], cwd: Path) -> None:
    """`python -m bot sync` once: the commands, registered for every server."""
    with tempfile.TemporaryFile() as output:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *OUR_BOT,
            "sync",
            cwd=cwd,
            env=child_env(discord, settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
        async with asyncio.timeout(WAIT):
            status = await child.wait()
        if status != 0 or not discord.commands():
            raise RuntimeError(f"sync exited with {status}:\n{tail(output)}")


def shards_ready(discord: FakeDiscord, shards: Sequence[int]) -> Callable[[], bool]:
    def check() -> bool:
        ready = discord.gateway.ready_shards()
        return all((shard, SHARD_COUNT) in ready for shard in shards)

    return check


async def run_layout(
    layout: Layout,
    asks: int,
    guilds: int,
    latency: float,
    extra: Mapping[str, str],
    server: RedisServer,
) -> Result:
    chunks = ["".join(piece) for piece in _pieces(tokenize(ANSWER), PIECES)]
    members = [f"member{number:03d}" for number in range(1, asks + 1)]
    reply = StreamReply(chunks, interval=latency / len(chunks))
    fake = FakeDiscord(
        user_names=members,
        spec_path=None,
        wait_timeout=WAIT,
        recommended_shards=SHARD_COUNT,
        max_concurrency=SHARD_COUNT,
    )
    async with fake as discord, start_fake_openai(default=reply) as model:
        servers = [
            discord.add_guild_on_shard(number % SHARD_COUNT, SHARD_COUNT, name=f"Server {number}")
            for number in range(guilds)
        ]
        channels = [discord.guild_channel_id(guild) for guild in servers]
        with tempfile.TemporaryDirectory() as scratch, ExitStack() as files:
            root = Path(scratch)
            await sync_globally(discord, base_settings(discord, model, root / "sync"), root)
            forget_everything(server)
            outputs: list[IO[bytes]] = []
            children: list[asyncio.subprocess.Process] = []
            # Leaving this block stops the bots, so their last log lines are written.
            async with AsyncExitStack() as bots:
                for number, shards in enumerate(layout.processes):
                    settings = {
                        **base_settings(discord, model, root / f"data{number}"),
                        "SHARD_COUNT": str(SHARD_COUNT),
                        **({"SHARD_IDS": ",".join(map(str, shards))} if shards else {}),
                        **({"REDIS_URL": server.url} if layout.redis else {}),
                        **extra,
                    }
                    output = files.enter_context(tempfile.TemporaryFile())
                    mine = shards if shards is not None else range(SHARD_COUNT)
                    child = await bots.enter_async_context(
                        bot_process(
                            discord,
                            OUR_BOT,
                            child_env(discord, settings),
                            root,
                            output,
                            connected=shards_ready(discord, list(mine)),
                        )
                    )
                    outputs.append(output)
                    children.append(child)
                result = await burst(
                    layout, discord, model, server, children, outputs, asks, channels
                )
            for written in outputs:
                read_log(written, result)
            for number, (written, shards) in enumerate(zip(outputs, layout.processes, strict=True)):
                # Ask n went to server n % guilds, which is on shard (n % guilds) % SHARD_COUNT.
                its = [
                    handle
                    for ask, handle in enumerate(result.handles)
                    if shards is None or ask % guilds % SHARD_COUNT in shards
                ]
                if not all(is_shown(handle) for handle in its):
                    explain_unshown(f"{layout.name}, process {number}", its, written)
        return result


async def burst(
    layout: Layout,
    discord: FakeDiscord,
    model: FakeOpenAI,
    server: RedisServer,
    children: Sequence[asyncio.subprocess.Process],
    outputs: Sequence[IO[bytes]],
    asks: int,
    channels: Sequence[int],
) -> Result:
    client = redis.Redis.from_url(server.url, socket_timeout=10) if layout.redis else None
    try:
        before = redis_snapshot(client) if client else None
        calls_before = len(discord.calls)
        cpu_before = [cpu_seconds(child.pid) for child in children]
        fakes_before = time.process_time()
        pinger = Pinger(server)
        async with AsyncExitStack() as pinging:
            if client:
                await pinging.enter_async_context(pinger)
            handles = [
                discord.dispatch_interaction(
                    "ask",
                    {"prompt": PROMPT.format(number=number)},
                    user=member,
                    channel_id=channels[number % len(channels)],
                )
                for number, member in enumerate(discord.users[:asks])
            ]
            logs = AskLines(outputs)
            watching = asyncio.create_task(logs.follow(discord))
            try:
                await discord.wait_for(all_settled(discord, handles, logs.settled))
                async with asyncio.timeout(WAIT):
                    await model.wait_idle()
            except TimeoutError:
                print(f"  ({layout.name}: not every ask was settled within {WAIT:g} s)")
            finally:
                watching.cancel()
        cpu_after = [cpu_seconds(child.pid) for child in children]
        fakes_cpu = time.process_time() - fakes_before
        after = redis_snapshot(client) if client else None
    finally:
        if client:
            client.close()
    cpu = [
        None if start is None or end is None else end - start
        for start, end in zip(cpu_before, cpu_after, strict=True)
    ]
    peaks = [status_kib(child.pid, "VmHWM") for child in children]
    known = [seconds for seconds in cpu if seconds is not None]
    total_cpu = sum(known) if len(known) == len(cpu) else None
    run = measure(
        discord,
        model,
        handles,
        discord.calls[calls_before:],
        0.0 if total_cpu is not None else None,
        total_cpu,
        max((peak for peak in peaks if peak is not None), default=None),
        fakes_cpu,
    )
    cost = redis_cost(before, after, pinger.samples) if before and after else None
    return Result(run, cpu, peaks, redis=cost, handles=handles)


class AskLines:
    """The interactions whose ask line the bots have logged, read while they write."""

    def __init__(self, outputs: Sequence[IO[bytes]]) -> None:
        self._outputs = outputs
        self._read = [0] * len(outputs)
        self._partial = [b""] * len(outputs)
        self.settled: set[int] = set()

    def read(self) -> None:
        for index, output in enumerate(self._outputs):
            # pread leaves the file's offset, which the bot process writes at, alone.
            while chunk := os.pread(output.fileno(), 1 << 16, self._read[index]):
                self._read[index] += len(chunk)
                *lines, self._partial[index] = (self._partial[index] + chunk).split(b"\n")
                for line in lines:
                    if found := LOGGED.search(line):
                        self.settled.add(int(found.group(1)))

    async def follow(self, discord: FakeDiscord) -> None:
        """Read what is new every `FOLLOW_INTERVAL`, and have the fake's waits re-check
        (also after the callback window, when nothing else may change)."""
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            self.read()
            discord.world.changes.notify()


def all_settled(
    discord: FakeDiscord, handles: Sequence[InteractionHandle], logged: set[int]
) -> Callable[[], bool]:
    """A predicate that holds once every ask shows its answer, has been settled by the bot
    (its ask line is in `logged`: answered otherwise, refused, failed) or can no longer
    show anything (not acknowledged within Discord's callback window); cheap to re-check."""
    pending = list(handles)

    def settled(handle: InteractionHandle) -> bool:
        interaction = handle.interaction
        expired = (
            interaction.acknowledged_at is None
            and discord.world.since_dispatch(interaction) > CALLBACK_WINDOW
        )
        return expired or is_shown(handle) or handle.id in logged

    def check() -> bool:
        # Answers come in any order; dropping settled ones from the end keeps re-checks cheap.
        while pending and settled(pending[-1]):
            pending.pop()
        return not pending

    return check


def read_log(output: IO[bytes], result: Result) -> None:
    """Add one process's ask lines and Redis warnings to `result`."""
    output.seek(0)
    for line in output.read().decode(errors="replace").splitlines():
        found = ASK_LINE.search(line)
        if found:
            result.outcomes[found.group(1)] += 1
            result.done_ms.append(int(found.group(2)))
        elif away := REDIS_AWAY.search(line):
            result.redis_away[away.group(1)] += 1


# --- The table -------------------------------------------------------------------------------


def _mean_done(result: Result) -> float | None:
    return statistics.fmean(result.done_ms) if result.done_ms else None


def _round_trips(result: Result) -> float | None:
    return None if result.redis is None else result.redis.round_trips / result.run.asks


def _commands(result: Result) -> float | None:
    cost = result.redis
    return None if cost is None else sum(cost.calls.values()) / result.run.asks


def _set_up(result: Result) -> float | None:
    cost = result.redis
    if cost is None:
        return None
    return sum(cost.calls.get(name, 0) for name in SET_UP_COMMANDS) / result.run.asks


def _redis_cpu_ms(result: Result) -> float | None:
    return None if result.redis is None else result.redis.cpu * 1000 / result.run.asks


def _ping(result: Result, fraction: float) -> float | None:
    if result.redis is None or not result.redis.pings:
        return None
    return percentile(result.redis.pings, fraction) * 1000


def _share(per_ask_ms: float | None, result: Result) -> float | None:
    """`per_ask_ms` as a percentage of the mean ask done."""
    done = _mean_done(result)
    return None if per_ask_ms is None or not done else per_ask_ms / done * 100


def _by_ping(result: Result) -> float | None:
    trips, ping = _round_trips(result), _ping(result, 0.5)
    return None if trips is None or ping is None else trips * ping


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _each(values: Sequence[float | int | None], scale: float, digits: int) -> str:
    return " + ".join(_number(None if v is None else v / scale, digits) for v in values)


def _outcomes(result: Result) -> str:
    counts = Counter(result.outcomes)
    missing = result.run.asks - sum(counts.values())
    if missing:
        counts["(no line)"] = missing
    return ", ".join(f"{name} {count}" for name, count in counts.most_common())


@dataclass(frozen=True)
class Row:
    """A figure: a `number`, shown as its median over the runs, or a `text`, shown as in
    the worst run (the fewest answers shown), so a failure always shows."""

    label: str
    unit: str
    number: Callable[[Result, float], float | None] | None = None
    digits: int = 0
    text: Callable[[Result, float], str] | None = None

    def cell(self, results: Sequence[Result], latency: float) -> str:
        if self.number is not None:
            value = self.number
            known = [v for r in results if (v := value(r, latency)) is not None and v == v]
            return _number(statistics.median(known) if known else None, self.digits)
        assert self.text is not None
        return self.text(worst(results), latency)


def worst(results: Sequence[Result]) -> Result:
    return min(results, key=lambda result: result.run.shown)


def _bot_cpu_ms(result: Result) -> float | None:
    return None if result.run.cpu is None else result.run.cpu * 1000 / result.run.asks


ROWS = (
    Row("answers shown exactly", "of asks", text=lambda r, _: f"{r.run.shown}/{r.run.asks}"),
    Row("outcomes", "asks", text=lambda r, _: _outcomes(r)),
    Row("wall / model latency", "x", lambda r, latency: r.run.wall / latency, 2),
    Row("ack p50", "ms", lambda r, _: percentile(r.run.acks, 0.5) * 1000),
    Row("ack p99", "ms", lambda r, _: percentile(r.run.acks, 0.99) * 1000),
    Row("mean ask done", "ms", lambda r, _: _mean_done(r)),
    Row("Redis round trips per ask", "requests read", lambda r, _: _round_trips(r), 2),
    Row("Redis commands per ask", "scripts' included", lambda r, _: _commands(r), 2),
    Row("  of which connection set-up", "commands", lambda r, _: _set_up(r), 2),
    Row("PING round trip p50", "ms", lambda r, _: _ping(r, 0.5), 2),
    Row("PING round trip p99", "ms", lambda r, _: _ping(r, 0.99), 2),
    Row("Redis wire time per ask", "ms, by PING p50", lambda r, _: _by_ping(r), 2),
    Row("Redis CPU per ask", "ms", lambda r, _: _redis_cpu_ms(r), 2),
    Row("Redis share, by PING p50", "% of ask done", lambda r, _: _share(_by_ping(r), r), 3),
    Row("Redis share, by its CPU", "% of ask done", lambda r, _: _share(_redis_cpu_ms(r), r), 3),
    Row("bot CPU per answer", "ms, all processes", lambda r, _: _bot_cpu_ms(r), 2),
    Row("CPU per process", "s", text=lambda r, _: _each(r.cpu, 1, 2)),
    Row("peak RSS per process", "MiB", text=lambda r, _: _each(r.peaks_kib, KIB, 0)),
    Row("REST calls per answer", "requests", lambda r, _: r.run.calls / r.run.asks, 2),
    Row("429 responses", "whole run", lambda r, _: r.run.rate_limited),
    Row("fakes' CPU / wall", "cores", lambda r, _: r.run.fakes_cpu / max(r.run.wall, 1e-9), 2),
    Row(
        "Redis fallback warnings",
        "lines",
        lambda r, _: r.redis_away.total() if r.redis else None,
    ),
)


def report(results: Mapping[str, Sequence[Result]], latency: float) -> None:
    cells = {name: [row.cell(runs, latency) for row in ROWS] for name, runs in results.items()}
    widths = {
        name: max(len(name), *(len(cell) for cell in column)) + 3 for name, column in cells.items()
    }
    label = max(len(row.label) for row in ROWS) + 2
    print(f"  {'':<{label}}" + "".join(f"{name:>{widths[name]}}" for name in cells))
    for index, row in enumerate(ROWS):
        line = "".join(f"{column[index]:>{widths[name]}}" for name, column in cells.items())
        print(f"  {row.label:<{label}}{line}  {row.unit}")
    print()
    for name, runs in results.items():
        result = worst(runs)
        if result.redis is None:
            continue
        asks = result.run.asks
        parts = sorted(result.redis.calls.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{command} {calls / asks:.2f}" for command, calls in parts)
        print(f"  Redis commands per ask, {name}: {listed or 'none'}")
        for cause, count in result.redis_away.most_common(3):
            print(f"  Redis fallbacks, {name}: {count} x {cause!r}")
    print()


# --- Main ------------------------------------------------------------------------------------


async def main(arguments: argparse.Namespace) -> None:
    layouts = [LAYOUTS[name] for name in arguments.layouts]
    extra = dict(arguments.env)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    settings = " ".join(f"{key}={value}" for key, value in extra.items())
    print(
        f"{arguments.asks} asks at once over {arguments.guilds} servers on {SHARD_COUNT} shards, "
        f"every ask from a different member; model latency {arguments.latency:g} s per "
        f"answer{'; settings ' + settings if settings else ''}; median of "
        f"{arguments.repeat} run(s) per cell.\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.1f} "
        "at the start.\n"
    )
    started = time.perf_counter()
    results: dict[str, list[Result]] = {layout.name: [] for layout in layouts}
    with RedisServer() as server:
        for _ in range(arguments.repeat):
            for layout in layouts:
                results[layout.name].append(
                    await run_layout(
                        layout, arguments.asks, arguments.guilds, arguments.latency, extra, server
                    )
                )
    report(results, arguments.latency)
    print(f"The bench took {time.perf_counter() - started:.0f} s.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--asks", type=int, default=400, help="asks in the burst")
    parser.add_argument(
        "--guilds", type=int, default=4, help="servers, alternately on shard 0 and 1"
    )
    parser.add_argument("--latency", type=float, default=1.6, help="model seconds per answer")
    parser.add_argument("--repeat", type=int, default=1, help="runs per layout (median shown)")
    parser.add_argument(
        "--layouts", type=_layouts, default=list(LAYOUTS), help="one,two,sqlite or some of them"
    )
    parser.add_argument(
        "--env",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every bot process (repeatable)",
    )
    arguments = parser.parse_args(argv)
    if arguments.guilds < SHARD_COUNT:
        parser.error(f"--guilds must be at least {SHARD_COUNT}, so both shards have servers")
    return arguments


def _layouts(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown layout(s): {', '.join(unknown)}")
    return names


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
