"""Cold start of terminal mode on the built-in model: `python -m bot ask "…"` from nothing.

    .venv/bin/python bench/cold_start.py [--runs 3]

Each run is a fresh `python -m bot ask PROMPT` in an empty working directory (so no `.env`),
with OPENAI_API_KEY and OPENAI_BASE_URL removed from its environment, so it starts the
built-in model (llama.cpp serving SmolLM2 inside the process) before it answers. It is
watched three ways, because what a person sees first depends on where stdout goes:

    streamed, terminal   stdout is a terminal (a pseudo-terminal here): the answer is
                         printed as it grows, so the first text is the model's first words.
    streamed, pipe       stdout is a pipe or a file, where printed text cannot be taken
                         back: each Discord-sized message is printed once it is final, so
                         for a one-message answer the first text comes with the last.
    not streamed, pipe   STREAM_RESPONSES=false: the model answers in one piece, and the
                         messages are printed once it has.

For each way it prints the median over the runs of: when the model was ready (the bot's
log line saying it answers with the built-in model), when the first byte of the answer
reached stdout, when the process had exited, the answer's length, and the child's peak
RSS (from its own rusage, so runs never mix). One unmeasured run first warms the file
cache. The model samples, so answers and their lengths differ from run to run.

Then, in this process, the built-in model's time to first token (for the first request
after loading, as `ask` makes it, and after that) and tokens/s for a 100-token streamed
answer, counted from the usage the model reports (the measurement of bench/local_model.py).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import pty
import selectors
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: make the sibling bench module importable as `bench.local_model`.
    sys.path.insert(0, str(ROOT))

from bench.local_model import ANSWER_TOKENS, PROMPT, _answer  # noqa: E402
from bot.model.local_model import LocalModelServer  # noqa: E402
from bot.terminal import RULE  # noqa: E402

# bot.model.llm logs this once the built-in model answers /health, just before the prompt is sent.
MODEL_READY = b"answering with the built-in model"
PROVIDER_SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
KIB = 1024  # ru_maxrss is in KiB on Linux


@dataclass(frozen=True)
class Way:
    """One way of watching the answer."""

    name: str
    stream: bool
    terminal: bool


WAYS = (
    Way("streamed, terminal", stream=True, terminal=True),
    Way("streamed, pipe", stream=True, terminal=False),
    Way("not streamed, pipe", stream=False, terminal=False),
)


@dataclass(frozen=True)
class Run:
    """One process, with times in seconds since it was spawned."""

    model_ready: float | None
    first_text: float | None
    end: float
    answer: str
    peak_rss_kib: int
    status: int
    log: str


def command(prompt: str) -> list[str]:
    return [sys.executable, "-m", "bot", "ask", prompt]


def run_once(prompt: str, way: Way, workdir: Path) -> Run:
    """Start `python -m bot ask` and watch its stdout and log until it exits."""
    env = {name: value for name, value in os.environ.items() if name not in PROVIDER_SETTINGS}
    env["STREAM_RESPONSES"] = "true" if way.stream else "false"
    out_read, out_write = pty.openpty() if way.terminal else os.pipe()
    err_read, err_write = os.pipe()
    started = time.perf_counter()
    child = subprocess.Popen(
        command(prompt),
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out_write,
        stderr=err_write,
    )
    os.close(out_write)
    os.close(err_write)
    try:
        watched = _watch(out_read, err_read, started)
    except BaseException:
        child.kill()
        raise
    finally:
        os.close(out_read)
        os.close(err_read)
        # wait4 gives this child's own resource usage, peak RSS included.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        model_ready=watched.model_ready,
        first_text=watched.first_output,
        end=time.perf_counter() - started,
        answer=watched.output.decode(errors="replace"),
        peak_rss_kib=usage.ru_maxrss,
        status=child.returncode,
        log=watched.log.decode(errors="replace"),
    )


@dataclass
class Watched:
    """A child's stdout and log, with times in seconds since it was spawned."""

    output: bytearray = field(default_factory=bytearray)
    log: bytearray = field(default_factory=bytearray)
    first_output: float | None = None
    model_ready: float | None = None


def _watch(out: int, err: int, started: float) -> Watched:
    """Read `out` (stdout) and `err` (the log) to their ends, noting when things appeared."""
    watched = Watched()
    with selectors.DefaultSelector() as selector:
        selector.register(out, selectors.EVENT_READ)
        selector.register(err, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                try:
                    data = os.read(key.fd, 65536)
                except OSError as error:
                    # A pseudo-terminal whose other side has closed reads as EIO, not EOF.
                    if error.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    selector.unregister(key.fd)
                    continue
                now = time.perf_counter() - started
                if key.fd == out:
                    watched.output += data
                    if watched.first_output is None:
                        watched.first_output = now
                else:
                    watched.log += data
                    if watched.model_ready is None and MODEL_READY in watched.log:
                        watched.model_ready = now
    return watched


def median(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def answer_chars(run: Run) -> int:
    """Characters of answer text, leaving out the rule that closes each message."""
    lines = run.answer.replace("\r\n", "\n").splitlines()
    return sum(len(line) for line in lines if not line.startswith(RULE))


def report_cli(prompt: str, runs: int, results: dict[str, list[Run]]) -> None:
    def row(cells: Sequence[str]) -> None:
        print(f"{cells[0]:<20}" + "".join(f"{cell:>13}" for cell in cells[1:]))

    print(f"$ {shlex.join(['python', *command(prompt)[1:]])}")
    print(f"median of {runs} runs, each a fresh process; times since it was spawned\n")
    row(["", "model ready", "first text", "exited", "answer", "peak RSS"])
    for name, done in results.items():
        row(
            [
                name,
                seconds(median([run.model_ready for run in done])),
                seconds(median([run.first_text for run in done])),
                seconds(median([run.end for run in done])),
                f"{statistics.median(answer_chars(run) for run in done):.0f} chars",
                f"{statistics.median(run.peak_rss_kib for run in done) / KIB:.0f} MiB",
            ]
        )
    print(
        "\nfirst text: the first byte of the answer on stdout. In a terminal the answer is"
        "\nprinted as it grows, so that is the model's first words; to a pipe each message is"
        "\nprinted once final, so a one-message answer shows all at once, at the end."
    )


async def in_process_speed() -> None:
    """Time to first token and tokens/s of the built-in model, by its reported usage."""
    async with (
        LocalModelServer.start() as server,
        openai.AsyncOpenAI(
            base_url=server.base_url, api_key="unused", timeout=300, max_retries=0
        ) as client,
    ):
        # The first request after loading is the one `python -m bot ask` makes.
        cold_first, _, _ = await _answer(client, server.model_name)
        first, total, tokens = await _answer(client, server.model_name)
    print(
        f"\nThe built-in model in this process ({server.model.describe()}, as the bot starts it):"
        f"\n  first token   {cold_first * 1000:.0f} ms for the first request after loading,"
        f" {first * 1000:.0f} ms after that"
        f"\n  speed         {tokens / (total - first):.1f} tokens/s"
        f" ({tokens} tokens streamed as the model reports them; {ANSWER_TOKENS} asked for)"
    )


def main(runs: int) -> int:
    with tempfile.TemporaryDirectory() as empty:
        workdir = Path(empty)
        warm = run_once(PROMPT, WAYS[-1], workdir)
        if warm.status != 0:
            print(f"python -m bot ask exited with {warm.status}:\n{warm.log[-3000:]}")
            return 1
        results: dict[str, list[Run]] = {way.name: [] for way in WAYS}
        for _ in range(runs):
            # Round after round, so a busy spell on the machine spreads over every way.
            for way in WAYS:
                results[way.name].append(run_once(PROMPT, way, workdir))
    failed = [run for done in results.values() for run in done if run.status != 0]
    if failed:
        print(f"python -m bot ask exited with {failed[0].status}:\n{failed[0].log[-3000:]}")
        return 1
    report_cli(PROMPT, runs, results)
    asyncio.run(in_process_speed())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each way; medians shown")
    arguments = parser.parse_args()
    raise SystemExit(main(arguments.runs))
