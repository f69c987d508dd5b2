"""Running a bot as its own process against the fakes, and reading what it cost.

Shared by the benches that start a bot with `python -m ...` beside the local Discord
(tests.fakes.discord) and the scripted model (tests.fakes.openai_server) running in the
bench's own process:

- `bot_process` starts the bot, waits until it has registered its commands and been sent
  READY (or, given `connected`, until that holds; or until it has exited), and stops it
  with SIGTERM afterwards, expecting exit status 0;
- `child_env` is the bot's whole environment: the given settings on a minimal base, so
  nothing set in the calling shell (or a `.env`, as the bot runs in an empty directory)
  changes what is measured;
- `cpu_seconds` and `status_kib` read a process's CPU time and memory from /proc.

Linux only for the /proc figures; elsewhere they are `None`.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # Run as a script: the fakes live in the repository's `tests` package.
    sys.path.insert(0, str(ROOT))

from tests.fakes.discord import FakeDiscord  # noqa: E402

KIB = 1024  # /proc memory figures are in KiB
# Variables a bot process inherits from the bench; every other one is the run's own.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
# Bounds start-up and shutdown; generous, so a busy machine prints figures, not errors.
WAIT = 90.0

OUR_BOT = ("-m", "tests.fakes.launch")
"""Our bot, `python -m bot` with discord.py aimed at the fake (see tests/fakes/launch.py)."""


def script_against_fake(path: Path) -> tuple[str, ...]:
    """Arguments that run the script at `path` as `__main__`, discord.py aimed at the fake.

    The same two endpoint attributes `tests.fakes.launch` sets, from the same variables
    (`FakeDiscord.env()`), so any discord.py bot runs unmodified.
    """
    code = (
        "import os, runpy\n"
        "from tests.fakes.discord.redirect import set_discord_py_urls\n"
        "set_discord_py_urls(os.environ['FAKE_DISCORD_URL'], os.environ['FAKE_DISCORD_GATEWAY'])\n"
        f"runpy.run_path({str(path)!r}, run_name='__main__')\n"
    )
    return ("-c", code)


def child_env(
    discord: FakeDiscord, settings: Mapping[str, str], python_path: Sequence[str] = ()
) -> dict[str, str]:
    """The environment of a bot process: `settings` on a minimal base.

    `python_path` entries go before the repository root on PYTHONPATH (a directory of
    extra packages, say).
    """
    base = {name: os.environ[name] for name in INHERITED if name in os.environ}
    path = os.pathsep.join([*python_path, str(ROOT)])
    return {**base, **discord.env(), **settings, "PYTHONPATH": path}


@asynccontextmanager
async def bot_process(
    discord: FakeDiscord,
    arguments: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    output: IO[bytes],
    connected: Callable[[], bool] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `python *arguments` until the block ends; yield it once it is connected.

    Connected means: the bot has registered its commands in the fake's first guild and one
    more READY has been sent, unless `connected` is given (a predicate on the fake, say
    that the process's shards are ready, for a bot whose commands are global).

    Its output goes to `output`, whose tail is in the error if it fails to start or does
    not exit with status 0 after SIGTERM.
    """
    readies_before = discord.gateway.readies_sent
    if connected is None:

        def connected() -> bool:
            return (
                bool(discord.commands(discord.guild_id))
                and discord.gateway.readies_sent > readies_before
            )

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        *arguments,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=output,
        stderr=output,
    )
    try:
        await _until_ready(discord, child, output, connected)
        yield child
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT):
                await child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the bot exited with {child.returncode}:\n{tail(output)}")


async def _until_ready(
    discord: FakeDiscord,
    child: asyncio.subprocess.Process,
    output: IO[bytes],
    connected: Callable[[], bool],
) -> None:
    """Wait until `connected()` holds, or the bot has exited."""
    ready = asyncio.create_task(discord.wait_for(connected))
    exited = asyncio.create_task(child.wait())
    done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    exited.cancel()
    if exited in done:
        raise RuntimeError(f"the bot exited with {child.returncode}:\n{tail(output)}")
    ready.result()


def tail(output: IO[bytes], characters: int = 3000) -> str:
    """The last `characters` of what the process wrote."""
    output.seek(0)
    return output.read().decode(errors="replace")[-characters:]


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


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest sample with `fraction` of all samples at or below it.

    NaN when there are no samples.
    """
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
