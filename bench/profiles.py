"""Where a bot process spends its CPU: a cProfile file or py-spy samples, by package.

Two sources, one summary:

- `summarize_cprofile(path)`: a `python -m cProfile -o path ...` file, exact but slowed
  down by the profiler (every call is timed);
- `py_spy(binary, pid, path)`: samples a running process from outside (`py-spy record
  --pid`, raw collapsed stacks) while the `async with` block runs, without pausing it;
  `summarize_samples(path)` reads them. Only samples of busy threads are taken, so the
  shares are shares of the CPU the process used.

Both print self time by package (where the CPU was actually spent; the shares add up to
100 %) and the costliest functions. The py-spy summary adds inclusive shares: the samples
with a package anywhere on the stack, i.e. everything done on its behalf.
"""

from __future__ import annotations

import asyncio
import os
import pstats
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    # First, as an import runs a module's code: lazy imports at first use, for one.
    ("imports", ("<frozen importlib", "builtins.__import__", "__build_class__")),
    ("openai SDK", ("/openai/",)),
    ("httpx2 / httpcore", ("/httpx2/", "/httpx/", "/httpcore", "/h11/", "/anyio/", "/sniffio/")),
    ("pydantic", ("/pydantic", "/pydantic_core/")),
    ("discord.py", ("/discord/",)),
    ("aiohttp / yarl / multidict", ("/aiohttp/", "/yarl/", "/multidict/", "/propcache/")),
    ("our code (bot/)", (f"{ROOT}{os.sep}bot{os.sep}",)),
    ("json", ("/json/", "_json", "orjson")),
    ("logging", ("/logging/",)),
    ("asyncio / selectors", ("/asyncio/", "/selectors.py", "select.epoll", "<method 'poll'")),
    ("ssl / socket", ("/ssl.py", "/socket.py", "_socket", "_ssl")),
    ("sqlite", ("/sqlite3/", "sqlite3.")),
    ("regex / re", ("/regex/", "/re/", "_sre", "regex.")),
)
# One py-spy frame: "function (file:line)" or "function (file)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def package_of(where: str) -> str:
    """The package a frame (its file and function, in any format) belongs to."""
    for name, markers in PACKAGES:
        if any(marker in where for marker in markers):
            return name
    return "other"


def short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.replace(str(ROOT) + os.sep, "")


def _print_shares(title: str, shares: Mapping[str, float], total: float, unit: str) -> None:
    print(f"  {title}:")
    for name, amount in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"    {amount / total:6.1%}  {amount:9.3f} {unit}  {name}")


# --- cProfile --------------------------------------------------------------------------------


def summarize_cprofile(path: Path, top: int = 25) -> None:
    """Self time by package, and the costliest functions by cumulative time."""
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for _, _, tottime, _, _ in raw.values()) or 1e-9
    by_package: dict[str, float] = {}
    for (filename, _, function), (_, _, tottime, _, _) in raw.items():
        package = package_of(f"{filename}:{function}")
        by_package[package] = by_package.get(package, 0.0) + tottime
    _print_shares(
        f"self time by package ({total:.2f} s in all, profiler overhead included)",
        by_package,
        total,
        "s",
    )
    print(f"  top {top} by cumulative time:")
    rows = sorted(raw.items(), key=lambda item: -item[1][3])
    shown = 0
    for (filename, line, function), (_, calls, tottime, cumtime, _) in rows:
        if function in ("<module>", "<built-in method builtins.exec>") or "runpy" in filename:
            continue
        where = f"{short(filename)}:{line}({function})"
        print(f"    {cumtime:7.3f} s cum {tottime:7.3f} s self {calls:8d} calls  {where}")
        shown += 1
        if shown == top:
            break
    print()


# --- py-spy ----------------------------------------------------------------------------------


@asynccontextmanager
async def py_spy(binary: str, pid: int, path: Path, rate: int = 200) -> AsyncIterator[None]:
    """Sample process `pid` into `path` (collapsed stacks) while the block runs."""
    sampler = await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--full-filenames",
        "--nonblocking",
        "--rate",
        str(rate),
        "--output",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert sampler.stdout is not None
    # It says "Sampling process ..." once it is attached; before that nothing is recorded.
    async with asyncio.timeout(30):
        while b"Sampling" not in (line := await sampler.stdout.readline()):
            if not line:
                raise RuntimeError(f"py-spy could not attach to {pid}")
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        async with asyncio.timeout(60):
            await sampler.communicate()


# Where a callback of the event loop (or of a worker thread) starts: frames above it belong
# to the loop, not to the work it is doing.
BOUNDARIES = frozenset({"BaseEventLoop._run_once", "Handle._run", "_WorkItem.run"})
# Packages a leaf frame is charged to as itself; any other standard library frame is
# charged to the nearest of these that called it.
CHARGEABLE = frozenset(
    {
        "imports",
        "openai SDK",
        "httpx2 / httpcore",
        "pydantic",
        "discord.py",
        "aiohttp / yarl / multidict",
        "our code (bot/)",
        "json",
        "logging",
        "sqlite",
    }
)
EVENT_LOOP = "event loop itself (asyncio, selectors)"


def summarize_samples(path: Path, top: int = 25) -> None:
    """Where the samples' CPU went, by package and by function."""
    charged: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _work_frames([_frame(frame) for frame in stack.split(";")])
        total += count
        charged[_charged(frames)] += count
        for package in {package_of(f"{file}:{function}") for function, file in frames}:
            inclusive[package] += count
        function, file = frames[-1]
        own[f"{function} ({short(file)})"] += count
        for name in {f"{function} ({short(file)})" for function, file in frames}:
            cumulative[name] += count
    if not total:
        print("  (no samples)\n")
        return
    _print_shares(
        f"self samples by package, the standard library charged to its caller ({total} in all)",
        charged,
        total,
        "samples",
    )
    _print_shares(
        "inclusive: samples with the package anywhere on the stack", inclusive, total, "samples"
    )
    print(f"  top {top} functions by inclusive (cumulative) samples:")
    for where, count in cumulative.most_common(top):
        print(f"    {count / total:6.1%}  {where}")
    print(f"  top {top} functions by self samples:")
    for where, count in own.most_common(top):
        print(f"    {count / total:6.1%}  {where}")
    print()


def _work_frames(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The frames below the innermost loop or worker boundary: the work, not the loop."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index][0] in BOUNDARIES:
            return frames[index:]
    return frames


def _charged(frames: list[tuple[str, str]]) -> str:
    for function, file in reversed(frames):
        package = package_of(f"{file}:{function}")
        if package in CHARGEABLE:
            return package
    return EVENT_LOOP


def _frame(text: str) -> tuple[str, str]:
    found = FRAME.match(text.strip())
    return (found["function"], found["file"]) if found else (text, "")
