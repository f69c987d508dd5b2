"""Bot processes for the tests: the unmodified `python -m bot`, aimed at the local Discord.

`launched` starts `python -m tests.fakes.launch` with exactly the given settings (from an
empty directory, so no `.env` is read) and yields a `Bot` that collects its output, so a
test waits on what the process logs, never on the clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0


class Bot:
    """One bot process and everything it has written so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.errors = ""
        self._changed = asyncio.Event()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_lines(process.stdout)),
            asyncio.create_task(self._read_errors(process.stderr)),
        ]

    @property
    def output(self) -> str:
        return "\n".join(self.lines) + "\n" + self.errors

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode().rstrip("\n"))
            self._changed.set()

    async def _read_errors(self, stream: asyncio.StreamReader) -> None:
        self.errors = (await stream.read()).decode()

    async def logged(self, text: str) -> str:
        """Wait until a line containing `text` is written; return that line."""
        async with asyncio.timeout(WAIT):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.process.returncode is not None:
                    raise AssertionError(f"exited without logging {text!r}:\n{self.output}")
                self._changed.clear()
                await self._changed.wait()

    async def exit_status(self) -> int:
        """Wait for the process to end and all its output to be read."""
        async with asyncio.timeout(WAIT):
            status = await self.process.wait()
            await asyncio.gather(*self._readers)
        return status

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """What Ctrl-C in the bot's terminal sends."""
        self.process.send_signal(signal.SIGINT)


@asynccontextmanager
async def launched(
    discord_fake: FakeDiscord, settings: Mapping[str, str], cwd: Path, *args: str
) -> AsyncIterator[Bot]:
    """The bot in its own process with exactly `settings` as its configuration."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **discord_fake.env(),
        **settings,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.launch",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    bot = Bot(process)
    try:
        yield bot
    finally:
        if process.returncode is None:
            process.kill()
        await bot.exit_status()


def settings_for(
    discord_fake: FakeDiscord, model: FakeOpenAI, data: Path, **overrides: str
) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": discord_fake.token,
        "DISCORD_GUILD_ID": str(discord_fake.guild_id),
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_MAX_RETRIES": "0",
        "DATA_PATH": str(data / "data"),
        **overrides,
    }
