"""The completion helper against a local OpenAI-compatible server over real HTTP.

Most tests run on both HTTP libraries the client can sit on (aiohttp, the default, and
httpx2): the errors a user and an operator see must not depend on which one it is.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import aiohttp
import httpx2
import openai
import pytest
from aiohttp import web
from dotenv import dotenv_values
from hypothesis import assume, given
from hypothesis import strategies as st

from bot.config import ConfigError, load_settings
from bot.model import llm, vision
from bot.model.reasoning import CLOSE_TAG, OPEN_TAG, Split, ThinkParser, split_reasoning
from tests.fakes.openai_server import (
    ApiError,
    FakeOpenAI,
    Hang,
    ImageRejection,
    ReasoningField,
    Refusal,
    Reply,
    StreamGate,
    StreamReply,
    bad_gateway_page,
    context_length_exceeded,
    images_rejected,
    insufficient_quota,
    invalid_api_key,
    model_not_found,
    rate_limited,
    server_error,
    start_fake_openai,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with start_fake_openai() as fake:
        yield fake


@pytest.fixture(params=["aiohttp", "httpx2"])
def transport(request: pytest.FixtureRequest) -> llm.Transport:
    name: llm.Transport = request.param
    return name


@dataclass
class Attempts:
    """An `AttemptObserver` that keeps what it was told."""

    seen: list[tuple[int | None, float]] = field(default_factory=list)

    def attempt_done(self, status: int | None, seconds: float) -> None:
        self.seen.append((status, seconds))

    @property
    def statuses(self) -> list[int | None]:
        return [status for status, _ in self.seen]


def client_for(
    base_url: str, transport: llm.Transport, *, timeout: float = 10.0
) -> openai.AsyncOpenAI:
    settings = load_settings(
        {"DISCORD_TOKEN": "t", "OPENAI_API_KEY": "sk-test", "OPENAI_TIMEOUT": str(timeout)}
    )
    return llm.make_client(settings, base_url=base_url, transport=transport)


def completer_for(
    server: FakeOpenAI | str,
    transport: llm.Transport = "aiohttp",
    *,
    timeout: float = 10.0,
    max_retries: int = 0,
    max_tokens: int | None = None,
    observer: llm.AttemptObserver | None = None,
) -> tuple[openai.AsyncOpenAI, llm.Completer]:
    base_url = server if isinstance(server, str) else server.base_url
    client = client_for(base_url, transport, timeout=timeout)
    completer = llm.Completer(
        client,
        model="gpt-4o-mini",
        system_prompt="Be brief.",
        max_output_tokens=max_tokens,
        timeout=timeout,
        max_retries=max_retries,
        observer=observer,
    )
    return client, completer


async def complete(
    server: FakeOpenAI | str,
    transport: llm.Transport = "aiohttp",
    prompt: str = "Hi",
    *,
    timeout: float = 10.0,
    max_retries: int = 0,
    observer: llm.AttemptObserver | None = None,
) -> llm.Answer:
    client, completer = completer_for(
        server, transport, timeout=timeout, max_retries=max_retries, observer=observer
    )
    async with client:
        return await completer.complete(prompt)


async def collect(completer: llm.Completer, prompt: str = "Hi") -> list[llm.Chunk]:
    return [chunk async for chunk in completer.stream(prompt)]


async def read_into(
    received: list[str], completer: llm.Completer, *, deadline: float | None = None
) -> None:
    """Read a stream, keeping its text in `received` whatever ends it."""
    async for chunk in completer.stream("count", deadline=deadline):
        received.append(chunk.text)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- Answers ----------------------------------------------------------------------------------


async def test_answer_text_finish_reason_and_usage(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(Reply("Hello there!"))
    answer = await complete(server, transport, "Say hello")
    assert answer.text == "Hello there!"
    assert answer.finish_reason == "stop"
    assert not answer.truncated
    reported = server.requests[0].usage
    assert reported is not None
    assert answer.usage == llm.Usage(reported.prompt_tokens, reported.completion_tokens)


async def test_sends_system_prompt_then_user_prompt(server: FakeOpenAI) -> None:
    server.script(Reply("ok"))
    await complete(server, prompt="What is 2+2?")
    body = server.requests[0].json
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ]


async def test_output_cap_is_sent_and_a_cut_answer_is_marked_truncated(server: FakeOpenAI) -> None:
    server.script(Reply("one two three four five six"))
    client, completer = completer_for(server, max_tokens=3)
    async with client:
        answer = await completer.complete("count")
    assert server.requests[0].json["max_completion_tokens"] == 3
    assert answer.truncated


async def test_compatible_servers_get_max_tokens(server: FakeOpenAI) -> None:
    settings = load_settings(
        {"DISCORD_TOKEN": "t", "OPENAI_BASE_URL": server.base_url, "MAX_OUTPUT_TOKENS": "50"}
    )
    async with llm.make_client(settings) as client:
        await llm.Completer.from_settings(client, settings).complete("hi")
    body = server.requests[0].json
    assert body["max_tokens"] == 50
    assert "max_completion_tokens" not in body


# --- The client is built from our settings, never from the environment ------------------------


@pytest.fixture
def hostile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything the SDK or its HTTP library would read from the environment, set badly."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("all_proxy", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca-bundle.pem")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent/certs")
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-junk")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_junk")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-junk")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Injected: yes\nOpenAI-Organization: org-hdr")


@pytest.mark.usefixtures("hostile_environment")
async def test_the_environment_cannot_redirect_or_change_the_client(
    transport: llm.Transport,
) -> None:
    async with start_fake_openai(api_key="sk-ours") as fake:
        settings = load_settings(
            {"DISCORD_TOKEN": "t", "OPENAI_API_KEY": "sk-ours", "OPENAI_BASE_URL": fake.base_url}
        )
        fake.script(Reply("plain"), StreamReply(["stre", "amed"]))
        async with llm.make_client(settings, transport=transport) as client:
            completer = llm.Completer.from_settings(client, settings)
            answer = await completer.complete("hi")
            chunks = await collect(completer)

    assert answer.text == "plain"
    assert "".join(chunk.text for chunk in chunks) == "streamed"
    assert len(fake.requests) == 2
    for request in fake.requests:
        assert request.status == 200
        for header in ("openai-organization", "openai-project", "x-injected"):
            assert header not in request.headers


@pytest.mark.usefixtures("hostile_environment")
@pytest.mark.parametrize("environment_url", ["", "http://127.0.0.1:9/v1"])
def test_with_no_base_url_set_the_client_goes_to_openai(
    monkeypatch: pytest.MonkeyPatch, environment_url: str
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", environment_url)
    settings = load_settings({"DISCORD_TOKEN": "t", "OPENAI_API_KEY": "sk-ours"})

    client = llm.make_client(settings)

    # Never used: no traffic may leave the machine.
    assert str(client.base_url) == "https://api.openai.com/v1/"
    assert (client.organization, client.project) == (None, None)


def test_a_dotenv_made_from_the_example_talks_to_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    values = dotenv_values(ROOT / ".env.example")
    values.update(DISCORD_TOKEN="discord-token", OPENAI_API_KEY="sk-ours")
    for name, value in values.items():
        monkeypatch.setenv(name, value or "")
    # What python-dotenv leaves in the environment for the empty line.
    assert values["OPENAI_BASE_URL"] == ""

    client = llm.make_client(load_settings(os.environ))

    assert str(client.base_url) == "https://api.openai.com/v1/"
    assert client.api_key == "sk-ours"


# --- Failures ---------------------------------------------------------------------------------


ERROR_CASES: list[tuple[ApiError | object, type[llm.CompletionError]]] = [
    (rate_limited(retry_after=7), llm.RateLimited),
    (insufficient_quota(), llm.ProviderMisconfigured),
    (server_error(500), llm.ProviderUnavailable),
    (server_error(503), llm.ProviderUnavailable),
    (bad_gateway_page(), llm.ProviderUnavailable),
    (context_length_exceeded(), llm.PromptTooLong),
    (invalid_api_key(), llm.ProviderMisconfigured),
    (model_not_found(), llm.ProviderMisconfigured),
    (Reply(""), llm.EmptyAnswer),
    (Reply(None), llm.EmptyAnswer),
    (Reply("   \n "), llm.EmptyAnswer),
    (Refusal("I can't help with that."), llm.Refused),
]


@pytest.mark.parametrize(("behaviour", "expected"), ERROR_CASES)
async def test_each_failure_maps_to_one_error_type(
    server: FakeOpenAI,
    transport: llm.Transport,
    behaviour: ApiError,
    expected: type[llm.CompletionError],
) -> None:
    server.script(behaviour)
    with pytest.raises(expected) as caught:
        await complete(server, transport)
    assert type(caught.value) is expected


async def test_rate_limit_carries_retry_after_and_request_id(server: FakeOpenAI) -> None:
    server.script(rate_limited(retry_after=7))
    with pytest.raises(llm.RateLimited) as caught:
        await complete(server)
    assert caught.value.retry_after == 7
    assert caught.value.request_id == server.requests[0].request_id


async def test_failure_is_logged_with_request_id(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(server_error(500))
    with pytest.raises(llm.ProviderUnavailable):
        await complete(server, prompt="my secret question")
    request_id = server.requests[0].request_id
    assert any(request_id in record.getMessage() for record in caplog.records)
    assert all("my secret question" not in record.getMessage() for record in caplog.records)
    assert all("sk-test" not in record.getMessage() for record in caplog.records)


async def test_timeout(server: FakeOpenAI, transport: llm.Transport) -> None:
    server.script(Hang())
    with pytest.raises(llm.TimedOut):
        await complete(server, transport, timeout=0.2)


async def test_connection_refused_names_the_url_and_the_cause(
    transport: llm.Transport, caplog: pytest.LogCaptureFixture
) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    observer = Attempts()
    with pytest.raises(llm.ProviderUnavailable) as caught:
        await complete(base_url, transport, observer=observer)

    detail = str(caught.value)
    assert "connection refused" in detail
    assert f"POST {base_url}/chat/completions" in detail
    assert any(detail in record.getMessage() for record in caplog.records)
    assert observer.statuses == [None]


async def test_a_plain_http_server_behind_https_is_a_tls_error(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    base_url = server.base_url.replace("http://", "https://")
    with pytest.raises(llm.ProviderUnavailable) as caught:
        await complete(base_url, transport)

    assert "TLS error" in str(caught.value)
    assert base_url in str(caught.value)
    assert server.requests == ()


async def test_a_base_url_without_v1_is_a_misconfiguration(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    base_url = server.base_url.removesuffix("/v1")
    with pytest.raises(llm.ProviderMisconfigured) as caught:
        await complete(base_url, transport, max_retries=2)

    detail = str(caught.value)
    assert "check that OPENAI_BASE_URL ends in /v1" in detail
    assert f"{base_url}/chat/completions" in detail
    assert len(server.requests) == 1


@pytest.fixture
async def ollama_root() -> AsyncIterator[str]:
    """A server answering every path as Ollama's root does without /v1: a plain-text 404."""

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
async def test_ollama_without_v1_is_a_misconfiguration(
    ollama_root: str, transport: llm.Transport, streamed: bool
) -> None:
    client, completer = completer_for(ollama_root, transport, max_retries=2)
    ask = collect(completer) if streamed else completer.complete("hi")
    async with client:
        with pytest.raises(llm.ProviderMisconfigured) as caught:
            await ask

    assert "check that OPENAI_BASE_URL ends in /v1" in str(caught.value)
    assert f"POST {ollama_root}/chat/completions" in str(caught.value)


async def test_an_unknown_model_points_at_the_model_setting(server: FakeOpenAI) -> None:
    server.script(model_not_found("gpt-nope"))
    with pytest.raises(llm.ProviderMisconfigured) as caught:
        await complete(server)
    assert "OPENAI_MODEL" in str(caught.value)
    assert "/v1" not in str(caught.value).split(";")[-1]


REQUEST = httpx2.Request("POST", "https://llm.example.invalid/v1/chat/completions")


E = TypeVar("E", bound=BaseException)


def chained(outermost: E, *causes: BaseException) -> E:
    """`outermost` raised from `causes[0]`, raised from `causes[1]`, ..."""
    chain: tuple[BaseException, ...] = (outermost, *causes)
    for outer, inner in itertools.pairwise(chain):
        outer.__cause__ = inner
    return outermost


class _ConnectionKey:
    """What aiohttp's connector errors read from their connection key."""

    host = "llm.example.invalid"
    port = 443
    ssl = True


def _aiohttp_dns_error() -> aiohttp.ClientConnectorDNSError:
    gaierror = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return aiohttp.ClientConnectorDNSError(_ConnectionKey(), gaierror)  # type: ignore[arg-type]


def _certificate_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    return error


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (
            chained(
                openai.APIConnectionError(request=REQUEST),
                httpx2.ConnectError("[Errno -2] Name or service not known"),
                socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            ),
            llm.ProviderUnavailable,
            "DNS lookup failed: Name or service not known",
        ),
        (
            chained(
                openai.APITimeoutError(request=REQUEST),
                httpx2.ConnectTimeout("Cannot connect to host"),
                _aiohttp_dns_error(),
            ),
            llm.ProviderUnavailable,
            "DNS lookup failed: Name or service not known",
        ),
        (
            chained(
                openai.APIConnectionError(request=REQUEST),
                httpx2.ConnectError("certificate verify failed"),
                _certificate_error(),
            ),
            llm.ProviderUnavailable,
            "TLS error: self-signed certificate",
        ),
        (
            chained(
                openai.APITimeoutError(request=REQUEST),
                httpx2.ConnectTimeout("Cannot connect to host"),
                ConnectionRefusedError(111, "Connect call failed"),
            ),
            llm.ProviderUnavailable,
            "connection refused",
        ),
        (
            chained(
                openai.APITimeoutError(request=REQUEST),
                httpx2.ConnectTimeout("Server disconnected"),
                aiohttp.ServerDisconnectedError(),
            ),
            llm.ProviderUnavailable,
            "connection failed: Server disconnected",
        ),
        (
            chained(
                openai.APITimeoutError(request=REQUEST),
                httpx2.ReadTimeout("Timeout on reading data from socket"),
                aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
            ),
            llm.TimedOut,
            "did not answer in time",
        ),
        (
            chained(
                openai.APITimeoutError(request=REQUEST), httpx2.ReadTimeout(""), TimeoutError()
            ),
            llm.TimedOut,
            "did not answer in time",
        ),
        (openai.APITimeoutError(request=REQUEST), llm.TimedOut, "did not answer in time"),
    ],
    ids=[
        "dns",
        "dns-aiohttp",
        "tls",
        "refused-aiohttp",
        "disconnected-aiohttp",
        "read-timeout-aiohttp",
        "read-timeout",
        "timeout",
    ],
)
def test_connection_failures_name_their_cause(
    exc: openai.APIConnectionError, expected: type[llm.CompletionError], words: str
) -> None:
    error = llm.translate_error(exc)

    assert type(error) is expected
    assert words in str(error)
    assert "(POST https://llm.example.invalid/v1/chat/completions)" in str(error)


def test_urls_in_errors_show_no_credentials_or_query() -> None:
    request = httpx2.Request("POST", "https://user:hunter2@llm.example.invalid/v1/x?key=sk-1")
    exc = chained(
        openai.APIConnectionError(request=request),
        ConnectionRefusedError(111, "Connect call failed"),
    )

    detail = str(llm.translate_error(exc))

    assert "hunter2" not in detail
    assert "sk-1" not in detail
    assert "(POST https://llm.example.invalid/v1/x)" in detail


# --- Retries, inside one deadline -------------------------------------------------------------


def soon(error: ApiError) -> ApiError:
    """`error` asking for an immediate retry."""
    return replace(error, headers={**error.headers, "retry-after-ms": "1"})


async def test_retries_until_an_answer_and_reports_each_attempt(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(rate_limited(retry_after_ms=1), soon(server_error(500)), Reply("third time"))
    observer = Attempts()

    answer = await complete(server, transport, max_retries=2, observer=observer)

    assert answer.text == "third time"
    assert [r.headers.get("x-stainless-retry-count") for r in server.requests] == ["0", "1", "2"]
    assert observer.statuses == [429, 500, 200]
    assert all(seconds >= 0 for _, seconds in observer.seen)


async def test_gives_up_after_the_retries_with_the_last_error(server: FakeOpenAI) -> None:
    server.script(*[soon(server_error(503))] * 4)
    observer = Attempts()

    with pytest.raises(llm.ProviderUnavailable) as caught:
        await complete(server, max_retries=2, observer=observer)

    assert len(server.requests) == 3
    assert observer.statuses == [503, 503, 503]
    assert "after 3 attempts" in str(caught.value)
    assert caught.value.request_id == server.requests[-1].request_id


async def test_a_dropped_connection_is_retried(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(StreamReply(["never", " sent"], drop_after=0), Reply("back again"))
    observer = Attempts()

    answer = await complete(server, transport, max_retries=1, observer=observer)

    assert answer.text == "back again"
    assert observer.statuses == [None, 200]


@pytest.mark.parametrize(
    "failure",
    [
        insufficient_quota(),
        invalid_api_key(),
        context_length_exceeded(),
        replace(soon(server_error(500)), headers={"x-should-retry": "false"}),
    ],
    ids=["quota", "key", "context", "told-not-to"],
)
async def test_what_cannot_pass_is_not_retried(server: FakeOpenAI, failure: ApiError) -> None:
    server.script(failure, Reply("never asked for"))
    with pytest.raises(llm.CompletionError):
        await complete(server, max_retries=2)
    assert len(server.requests) == 1


async def test_a_retry_after_beyond_the_deadline_fails_at_once(server: FakeOpenAI) -> None:
    server.script(rate_limited(retry_after=120), Reply("two minutes later"))
    observer = Attempts()

    with pytest.raises(llm.RateLimited) as caught:
        await complete(server, timeout=2, max_retries=2, observer=observer)

    assert caught.value.retry_after == 120
    assert len(server.requests) == 1
    assert observer.statuses == [429]


async def test_a_backoff_beyond_the_deadline_fails_at_once(server: FakeOpenAI) -> None:
    # No retry-after: the first backoff (0.375 to 0.5 s) is longer than the whole deadline.
    server.script(server_error(500), Reply("too late"))
    with pytest.raises(llm.ProviderUnavailable):
        await complete(server, timeout=0.2, max_retries=5)
    assert len(server.requests) == 1


async def test_a_hanging_provider_gets_one_attempt_within_the_deadline(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(Hang(), Hang(), Hang())
    observer = Attempts()

    with pytest.raises(llm.TimedOut) as caught:
        await complete(server, transport, timeout=0.2, max_retries=2, observer=observer)

    assert "OPENAI_TIMEOUT" in str(caught.value)
    assert len(server.requests) == 1
    assert await server.requests[0].finished() == "client_disconnected"
    assert observer.statuses == [None]


async def test_the_callers_deadline_wins_when_earlier(server: FakeOpenAI) -> None:
    server.script(Hang())
    client, completer = completer_for(server, timeout=30)
    async with client:
        deadline = asyncio.get_running_loop().time() + 0.2
        with pytest.raises(llm.TimedOut) as caught:
            await completer.complete("hi", deadline=deadline)

    assert "caller's deadline" in str(caught.value)
    assert await server.requests[0].finished() == "client_disconnected"


async def test_a_deadline_already_past_sends_nothing(server: FakeOpenAI) -> None:
    observer = Attempts()
    client, completer = completer_for(server, observer=observer)
    async with client:
        deadline = asyncio.get_running_loop().time() - 1
        with pytest.raises(llm.TimedOut):
            await completer.complete("hi", deadline=deadline)
        with pytest.raises(llm.TimedOut):
            await collect_with_deadline(completer, deadline)
    assert server.requests == ()
    assert observer.seen == []


async def collect_with_deadline(completer: llm.Completer, deadline: float) -> list[llm.Chunk]:
    return [chunk async for chunk in completer.stream("hi", deadline=deadline)]


async def test_an_observer_that_fails_does_not_fail_the_answer(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def attempt_done(self, status: int | None, seconds: float) -> None:
            raise RuntimeError("observer bug")

    server.script(Reply("fine"))
    with caplog.at_level(logging.ERROR):
        answer = await complete(server, observer=Broken())
    assert answer.text == "fine"
    assert any("observer" in record.getMessage() for record in caplog.records)


async def test_from_settings_uses_timeout_retries_and_observer(server: FakeOpenAI) -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": "t",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_MAX_RETRIES": "1",
            "OPENAI_TIMEOUT": "5",
        }
    )
    server.script(soon(server_error(502)), soon(server_error(502)), Reply("never"))
    observer = Attempts()
    async with llm.make_client(settings, base_url=server.base_url) as client:
        completer = llm.Completer.from_settings(client, settings, observer=observer)
        with pytest.raises(llm.ProviderUnavailable):
            await completer.complete("hi")
    assert observer.statuses == [502, 502]


# --- Streaming --------------------------------------------------------------------------------


async def test_stream_yields_text_then_finish_reason_and_usage(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(StreamReply(["Hel", "lo", " world"]))
    observer = Attempts()
    client, completer = completer_for(server, transport, observer=observer)
    async with client:
        chunks = await collect(completer)
    assert "".join(chunk.text for chunk in chunks) == "Hello world"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    reported = server.requests[0].usage
    assert reported is not None
    assert [c.usage for c in chunks if c.usage] == [
        llm.Usage(reported.prompt_tokens, reported.completion_tokens)
    ]
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert observer.statuses == [200]


async def test_stream_of_a_long_answer_reports_length(server: FakeOpenAI) -> None:
    server.script(StreamReply(["a", " b"], finish_reason="length"))
    client, completer = completer_for(server)
    async with client:
        chunks = await collect(completer)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


async def test_stream_dropped_midway_raises_after_the_text(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(StreamReply(["one", " two", " three"], drop_after=2))
    client, completer = completer_for(server, transport, max_retries=2)
    received: list[str] = []

    async with client:
        with pytest.raises(llm.ProviderUnavailable):
            await read_into(received, completer)
    assert "".join(received) == "one two"
    # Text already shown cannot be taken back: a broken stream is not retried.
    assert len(server.requests) == 1


async def test_stream_that_ends_without_a_finish_reason_is_interrupted(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(StreamReply(["one", " two", " three"], end_after=2))
    client, completer = completer_for(server, transport)
    received: list[str] = []

    async with client:
        with pytest.raises(llm.ProviderUnavailable) as caught:
            await read_into(received, completer)

    assert "".join(received) == "one two"
    assert "ended early" in str(caught.value)
    assert caught.value.request_id == server.requests[0].request_id
    # The provider reported no usage for it, and none reached the caller.
    assert server.requests[0].usage is None


async def test_stream_that_ends_before_any_text_is_interrupted_not_empty(
    server: FakeOpenAI,
) -> None:
    server.script(StreamReply(["never"], end_after=0))
    client, completer = completer_for(server)
    async with client:
        with pytest.raises(llm.ProviderUnavailable):
            await collect(completer)


async def test_stream_cut_after_its_finish_reason_is_a_whole_answer(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    gate = server.gated_stream()
    client, completer = completer_for(server, transport)
    async with client:
        reading = asyncio.ensure_future(collect(completer))
        await gate.send("whole")
        await gate.send_finish_reason("stop")
        await gate.drop()
        chunks = await reading

    assert "".join(chunk.text for chunk in chunks) == "whole"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]


async def test_stream_is_retried_until_it_starts(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(rate_limited(retry_after_ms=1), StreamReply(["at ", "last"]))
    observer = Attempts()
    client, completer = completer_for(server, transport, max_retries=1, observer=observer)
    async with client:
        chunks = await collect(completer)
    assert "".join(chunk.text for chunk in chunks) == "at last"
    assert observer.statuses == [429, 200]


async def test_a_trickling_stream_ends_at_the_deadline(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    # Each token comes quickly, so no single read ever waits long; the answer as a whole
    # would take ten seconds.
    pieces = ["tick"] * 500
    server.script(StreamReply(pieces, interval=0.02))
    client, completer = completer_for(server, transport, timeout=0.3, max_retries=2)
    received: list[str] = []

    async with client:
        with pytest.raises(llm.TimedOut) as caught:
            await read_into(received, completer)

    assert len(received) < len(pieces)
    assert "".join(received) == "tick" * len(received)
    assert caught.value.request_id == server.requests[0].request_id
    assert len(server.requests) == 1
    assert await server.requests[0].finished() == "client_disconnected"


async def test_a_stream_stalled_midway_ends_at_the_deadline_after_its_text(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    gate = server.gated_stream()
    client, completer = completer_for(server, transport, timeout=30)
    received: list[str] = []

    async with client:
        deadline = asyncio.get_running_loop().time() + 0.3
        reading = asyncio.ensure_future(read_into(received, completer, deadline=deadline))
        await gate.send("Hello")
        with pytest.raises(llm.TimedOut):
            await reading

    assert received == ["Hello"]
    assert await (await gate.started()).finished() == "client_disconnected"


async def test_a_stream_that_never_starts_times_out(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(Hang())
    client, completer = completer_for(server, transport, timeout=0.2)
    async with client:
        with pytest.raises(llm.TimedOut):
            await collect(completer)


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (rate_limited(retry_after=3), llm.RateLimited),
        (context_length_exceeded(), llm.PromptTooLong),
        (Reply(""), llm.EmptyAnswer),
        (Refusal("No."), llm.Refused),
    ],
)
async def test_stream_failures_map_like_completions(
    server: FakeOpenAI,
    transport: llm.Transport,
    behaviour: ApiError,
    expected: type[llm.CompletionError],
) -> None:
    server.script(behaviour)
    client, completer = completer_for(server, transport)
    async with client:
        with pytest.raises(expected):
            await collect(completer)


async def test_closing_the_stream_cancels_the_request(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    gate: StreamGate = server.gated_stream()
    client, completer = completer_for(server, transport)
    async with client:
        stream = completer.stream("write a novel")
        first = asyncio.ensure_future(anext(stream))
        request = await gate.started()
        await gate.send("Once")
        assert (await first).text == "Once"
        await stream.aclose()
        assert await request.finished() == "client_disconnected"


# --- Reasoning: the parser --------------------------------------------------------------------


def consume(splits: Iterable[Split]) -> tuple[str, str]:
    """What a consumer of `Chunk`s ends up with: (answer text, reasoning)."""
    text, reasoning = "", ""
    for split in splits:
        if split.text_was_reasoning:
            text = ""
        text += split.text
        reasoning += split.reasoning
    return text, reasoning


def parse_in_pieces(content: str, cuts: Iterable[int]) -> list[Split]:
    parser = ThinkParser()
    bounds = [0, *sorted(set(cut % (len(content) + 1) for cut in cuts)), len(content)]
    splits = [parser.feed(content[a:b]) for a, b in itertools.pairwise(bounds)]
    return [*splits, parser.finish()]


# Text made of tags, their pieces and a little else, so that tags are often split and whole.
_TAGGY = st.lists(
    st.sampled_from([OPEN_TAG, CLOSE_TAG, "<th", "ink>", "</", "<", ">", "a", "b.", " ", "\n"]),
    max_size=16,
).map("".join)
_PLAIN = st.text(alphabet="ab <>/\n.", max_size=30)
_WHITESPACE = st.text(alphabet=" \n\t", max_size=3)
_CUTS = st.lists(st.integers(min_value=0, max_value=200), max_size=12)


@given(content=_TAGGY, cuts=_CUTS)
def test_any_chunking_reads_like_the_whole(content: str, cuts: list[int]) -> None:
    assert consume(parse_in_pieces(content, cuts)) == split_reasoning(content)


@given(
    lead=_WHITESPACE,
    thought=_PLAIN,
    gap=_WHITESPACE,
    answer=_PLAIN,
    cuts=_CUTS,
)
def test_a_think_block_is_reasoning_and_never_answer_text(
    lead: str, thought: str, gap: str, answer: str, cuts: list[int]
) -> None:
    assume(CLOSE_TAG not in thought and not answer[:1].isspace())
    content = f"{lead}{OPEN_TAG}{thought}{CLOSE_TAG}{gap}{answer}"
    splits = parse_in_pieces(content, cuts)

    # Text once given out is never taken back: no piece of the block ever showed as answer.
    assert not any(split.text_was_reasoning for split in splits)
    assert "".join(split.text for split in splits) == answer
    assert "".join(split.reasoning for split in splits) == thought


@given(lead=_WHITESPACE, thought=_PLAIN, gap=_WHITESPACE, answer=_PLAIN, cuts=_CUTS)
def test_a_closing_tag_alone_makes_what_came_before_reasoning(
    lead: str, thought: str, gap: str, answer: str, cuts: list[int]
) -> None:
    # DeepSeek-R1's and Qwen3's thinking templates put `<think>` in the prompt.
    assume(CLOSE_TAG not in thought and not (lead + thought).lstrip().startswith("<"))
    assume(not answer[:1].isspace())
    content = f"{lead}{thought}{CLOSE_TAG}{gap}{answer}"

    assert consume(parse_in_pieces(content, cuts)) == (answer, lead + thought)


@given(answer=_PLAIN, cuts=_CUTS)
def test_an_answer_without_tags_is_untouched(answer: str, cuts: list[int]) -> None:
    assume(CLOSE_TAG not in answer and not answer.lstrip().startswith(OPEN_TAG))
    splits = parse_in_pieces(answer, cuts)

    assert consume(splits) == (answer, "")
    assert "".join(split.text for split in splits) == answer


@given(answer=st.text(alphabet="ab.<", min_size=1, max_size=40).filter(lambda t: t[0] != "<"))
def test_at_most_a_tag_is_held_back(answer: str) -> None:
    parser = ThinkParser()
    given_out = ""
    for end, character in enumerate(answer, start=1):
        given_out += parser.feed(character).text
        assert len(given_out) >= end - (len(CLOSE_TAG) - 1)
    given_out += parser.finish().text
    assert given_out == answer


def test_a_partial_tag_is_never_given_out_as_text() -> None:
    parser = ThinkParser()
    pieces = ["  <", "th", "ink", ">Hmm", ".</", "thi", "nk>", "\n\n", "Yes", " <thi", "nk> stays"]
    splits = [parser.feed(piece) for piece in pieces] + [parser.finish()]

    assert [split.text for split in splits if split.text] == ["Yes", " <thi", "nk> stays"]
    assert "".join(split.reasoning for split in splits) == "Hmm."


def test_a_closing_tag_is_the_answers_own_when_reasoning_came_separately() -> None:
    parser = ThinkParser()
    parser.separate_reasoning()

    assert consume([parser.feed("Close it with </think>."), parser.finish()]) == (
        "Close it with </think>.",
        "",
    )


def test_a_lone_opening_tag_that_never_closes_is_all_reasoning() -> None:
    assert split_reasoning("<think>I ran out of tokens") == ("", "I ran out of tokens")


def test_what_only_looks_like_a_tag_is_answer_text() -> None:
    assert split_reasoning("<3 you") == ("<3 you", "")
    assert split_reasoning("<th") == ("<th", "")
    assert split_reasoning("<thinking>no</thinking>") == ("<thinking>no</thinking>", "")


# --- Reasoning: through the Completer ---------------------------------------------------------


async def read_all(
    completer: llm.Completer,
    request: str | list[llm.ChatMessage] = "2+2?",
    chunks: list[llm.Chunk] | None = None,
) -> tuple[str, str, list[llm.Chunk]]:
    """Stream an answer as a consumer would: (answer text, reasoning, the chunks).

    `chunks` keeps what arrived when the stream raises.
    """
    chunks = [] if chunks is None else chunks
    async for chunk in completer.stream(request):
        chunks.append(chunk)
    text, reasoning = "", ""
    for chunk in chunks:
        if chunk.text_was_reasoning:
            text = ""
        text += chunk.text
        reasoning += chunk.reasoning
    return text, reasoning, chunks


INLINE_PIECES = ["\n<thi", "nk>", "Two and", " two.</th", "ink>", "\n\n", "Four", "."]


async def test_an_inline_think_block_streams_as_reasoning_then_the_answer(
    server: FakeOpenAI, transport: llm.Transport
) -> None:
    server.script(StreamReply(INLINE_PIECES))
    client, completer = completer_for(server, transport)
    async with client:
        text, reasoning, chunks = await read_all(completer)

    assert (text, reasoning) == ("Four.", "Two and two.")
    # Thinking is visible as it happens, before any answer text.
    first_text = next(i for i, chunk in enumerate(chunks) if chunk.text)
    assert any(chunk.reasoning for chunk in chunks[:first_text])
    assert all("<" not in chunk.text for chunk in chunks)
    assert not any(chunk.text_was_reasoning for chunk in chunks)


async def test_an_inline_think_block_is_kept_out_of_a_whole_answer(server: FakeOpenAI) -> None:
    server.script(Reply("<think>Two and two.</think>\n\nFour."))
    answer = await complete(server)

    assert (answer.text, answer.reasoning) == ("Four.", "Two and two.")


async def test_a_closing_tag_alone_takes_back_the_text_before_it(server: FakeOpenAI) -> None:
    server.script(StreamReply(["Two and", " two.", "</think>", "\n\n", "Four."]))
    client, completer = completer_for(server)
    async with client:
        text, reasoning, chunks = await read_all(completer)

    assert (text, reasoning) == ("Four.", "Two and two.")
    taken_back = [chunk for chunk in chunks if chunk.text_was_reasoning]
    assert len(taken_back) == 1
    assert taken_back[0].reasoning == "Two and two."


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
async def test_reasoning_in_its_own_field_is_not_the_answer(
    server: FakeOpenAI, transport: llm.Transport, field_name: ReasoningField
) -> None:
    server.script(
        StreamReply("Four.", reasoning="Two and two.", reasoning_field=field_name),
        Reply("Four.", reasoning="Two and two.", reasoning_field=field_name),
    )
    client, completer = completer_for(server, transport)
    async with client:
        text, reasoning, chunks = await read_all(completer)
        answer = await completer.complete("2+2?")

    assert (text, reasoning) == ("Four.", "Two and two.")
    first_text = next(i for i, chunk in enumerate(chunks) if chunk.text)
    assert "".join(chunk.reasoning for chunk in chunks[:first_text]) == "Two and two."
    assert (answer.text, answer.reasoning) == ("Four.", "Two and two.")
    assert answer.usage is not None
    assert answer.usage.reasoning_tokens == 3
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.reasoning_tokens == 3


async def test_reasoning_sent_in_both_fields_is_counted_once() -> None:
    # OpenRouter-style gateways copy the same text into both names.
    async def both(request: web.Request) -> web.Response:
        message = {
            "role": "assistant",
            "content": "Four.",
            "reasoning": "Two and two.",
            "reasoning_content": "Two and two.",
        }
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", both)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        answer = await complete(f"http://127.0.0.1:{port}/v1")
    finally:
        await runner.cleanup()

    assert (answer.text, answer.reasoning) == ("Four.", "Two and two.")


async def test_reasoning_chunks_arrive_while_the_model_is_still_thinking(
    server: FakeOpenAI,
) -> None:
    gate = server.gated_stream()
    client, completer = completer_for(server)
    async with client:
        chunks = aiter(completer.stream("2+2?"))
        # The generator sends the request when first asked for a chunk.
        reading = asyncio.ensure_future(anext(chunks))
        await gate.started()
        await gate.send("<think>")
        await gate.send("Hmm")
        first = await reading
        await gate.send_reasoning(", two and two")
        second = await anext(chunks)
        await gate.send("</think>Four.")
        third = await anext(chunks)
        await gate.finish()
        rest = [chunk async for chunk in chunks]

    assert (first.reasoning, first.text) == ("Hmm", "")
    assert (second.reasoning, second.text) == (", two and two", "")
    assert third.text == "Four."
    assert rest[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "script",
    [
        StreamReply(["<think>", "All", " thought", "</think>"]),
        StreamReply([], reasoning="All thought"),
        Reply(None, reasoning="All thought", reasoning_field="reasoning"),
    ],
)
@pytest.mark.parametrize("streamed", [True, False])
async def test_a_model_that_only_reasoned_gave_no_answer(
    server: FakeOpenAI, script: StreamReply | Reply, streamed: bool
) -> None:
    server.script(script)
    client, completer = completer_for(server)
    answering = read_all(completer) if streamed else completer.complete("2+2?")
    async with client:
        with pytest.raises(llm.EmptyAnswer) as caught:
            await answering

    assert caught.value.reasoned
    assert "reasoned but wrote no answer" in str(caught.value)


async def test_running_out_of_tokens_while_reasoning_says_so(server: FakeOpenAI) -> None:
    server.script(StreamReply("Four.", reasoning="one two three four five"))
    client, completer = completer_for(server, max_tokens=3)
    async with client:
        with pytest.raises(llm.EmptyAnswer) as caught:
            await read_all(completer)

    assert "ran out of output tokens while reasoning" in str(caught.value)


async def test_a_stream_broken_mid_thought_keeps_what_it_thought(server: FakeOpenAI) -> None:
    server.script(StreamReply(["<think>", "Two and", " two.</thi"], drop_after=3))
    client, completer = completer_for(server)
    chunks: list[llm.Chunk] = []
    async with client:
        with pytest.raises(llm.ProviderUnavailable):
            await read_all(completer, chunks=chunks)

    assert "".join(chunk.reasoning for chunk in chunks) == "Two and two.</thi"
    assert not any(chunk.text for chunk in chunks)


async def test_text_held_back_for_a_possible_tag_is_given_at_the_end(server: FakeOpenAI) -> None:
    server.script(StreamReply(["<", "3"]), StreamReply(["I <", "/thin"]))
    client, completer = completer_for(server)
    async with client:
        heart = await read_all(completer)
        cut = await read_all(completer)

    assert heart[:2] == ("<3", "")
    assert cut[:2] == ("I </thin", "")


# --- Images -----------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(24)


@pytest.mark.parametrize(
    ("model", "sees"),
    [
        ("gpt-4o-mini", True),
        ("gpt-4.1-nano", True),
        ("gpt-5", True),
        ("o1", True),
        ("o3", True),
        ("o4-mini", True),
        ("claude-3-5-sonnet-latest", True),
        ("claude-sonnet-4-5", True),
        ("anthropic/claude-opus-4.1", True),
        ("google/gemini-2.5-flash", True),
        ("llava:13b", True),
        ("qwen2.5vl:7b", True),
        ("Qwen/Qwen2.5-VL-7B-Instruct", True),
        ("qwen-vl-max", True),
        ("llama3.2-vision", True),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", True),
        ("gemma3:12b", True),
        ("pixtral-12b", True),
        ("minicpm-v", True),
        ("gpt-3.5-turbo", False),
        ("gpt-4", False),
        ("o1-mini", False),
        ("o3-mini", False),
        ("llama3.1:8b", False),
        ("meta-llama/Llama-3.3-70B-Instruct", False),
        ("qwen2.5:7b", False),
        ("qwen3:8b", False),
        ("deepseek-r1:14b", False),
        ("mistral:7b", False),
        ("gemma3:1b", False),
        ("SmolLM2-135M-Instruct.Q4_1", False),
        ("my-finetune", None),
        ("gpt-oss-20b", False),
    ],
)
def test_which_models_see_images_by_name(model: str, sees: bool | None) -> None:
    assert vision.sees_images_by_name(model) is sees


@pytest.mark.parametrize(
    ("setting", "model", "sees"),
    [
        ("auto", "gpt-4o-mini", True),
        ("auto", "gpt-3.5-turbo", False),
        ("auto", "my-finetune", None),
        ("", "my-finetune", None),
        ("true", "gpt-3.5-turbo", True),
        ("false", "gpt-4o", False),
    ],
)
def test_vision_setting_decides_what_the_completer_sends(
    setting: str, model: str, sees: bool | None
) -> None:
    settings = load_settings(
        {"DISCORD_TOKEN": "t", "OPENAI_API_KEY": "k", "OPENAI_MODEL": model, "VISION": setting}
    )
    client = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")

    assert llm.Completer.from_settings(client, settings).sees_images is sees


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("VISION", "AUTO", None),
        ("VISION", "yes", True),
        ("VISION", "off", False),
        ("SHOW_REASONING", "", "false"),
        ("SHOW_REASONING", "false", "false"),
        ("SHOW_REASONING", "File", "file"),
    ],
)
def test_new_settings_are_read(variable: str, raw: str, expected: object) -> None:
    settings = load_settings({"DISCORD_TOKEN": "t", variable: raw})
    assert getattr(settings, variable.lower()) == expected


@pytest.mark.parametrize(("variable", "raw"), [("VISION", "maybe"), ("SHOW_REASONING", "chat")])
def test_new_settings_reject_other_values(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({"DISCORD_TOKEN": "t", variable: raw})


def test_user_message_carries_text_then_images_as_data_urls() -> None:
    message = vision.user_message("What is this?", [vision.Image(PNG, "image/png")])

    assert message == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {
                "type": "image_url",
                "image_url": {
                    "url": "data:image/png;base64," + base64.b64encode(PNG).decode(),
                    "detail": "auto",
                },
            },
        ],
    }
    assert vision.user_message("Just text") == {"role": "user", "content": "Just text"}


@pytest.mark.parametrize(("data", "media_type"), [(PNG, "image/bmp"), (b"", "image/png")])
def test_only_real_images_of_accepted_types_make_parts(data: bytes, media_type: str) -> None:
    with pytest.raises(ValueError, match="image"):
        vision.Image(data, media_type)


def test_an_images_bytes_stay_out_of_its_repr() -> None:
    assert "PNG" not in repr(vision.Image(PNG, "image/png"))


def test_stripping_images_keeps_the_text_and_the_other_messages() -> None:
    png = vision.Image(PNG, "image/png")
    conversation: list[llm.ChatMessage] = [
        {"role": "system", "content": "Be brief."},
        vision.user_message("What is this?", [png, png]),
        {"role": "assistant", "content": "A cat."},
        vision.user_message("", [png]),
    ]

    stripped = vision.without_images(conversation)
    marked = vision.without_images(conversation, placeholder="[an image]")

    assert vision.has_images(conversation)
    assert not vision.has_images(stripped)
    assert stripped == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": ""},
    ]
    assert marked[1] == {"role": "user", "content": "What is this?\n\n[an image]\n\n[an image]"}
    assert vision.has_images(conversation), "the original is left as it was"


async def test_images_reach_a_model_that_sees(server: FakeOpenAI, transport: llm.Transport) -> None:
    client, completer = completer_for(server, transport)
    message = vision.user_message("What is this?", [vision.Image(PNG, "image/jpeg")])
    async with client:
        with pytest.raises(llm.ProviderMisconfigured) as broken:
            await completer.complete([message])  # PNG bytes sent as JPEG: a broken image
        answer = await completer.complete(
            [vision.user_message("What is this?", [vision.Image(PNG, "image/png")])]
        )

    assert not isinstance(broken.value, llm.ImagesNotSupported)
    assert completer.sees_images is True, "a broken image says nothing of the model"
    assert answer.text == "What is this?"
    sent = server.requests[-1].images
    assert [base64.b64decode(image["url"].split(",", 1)[1]) for image in sent] == [PNG]


@pytest.mark.parametrize("rejection", ["openai", "vllm", "llama.cpp", "ollama"])
@pytest.mark.parametrize("streamed", [True, False])
async def test_a_model_refusing_images_is_remembered_and_the_text_still_answered(
    rejection: ImageRejection, streamed: bool
) -> None:
    attempts = Attempts()
    with_image = [vision.user_message("What is this?", [vision.Image(PNG, "image/png")])]
    async with start_fake_openai(text_only=rejection) as server:
        client = client_for(server.base_url, "aiohttp")
        completer = llm.Completer(
            client,
            model="my-finetune",
            system_prompt="",
            max_retries=2,
            observer=attempts,
        )

        async def ask(messages: list[llm.ChatMessage]) -> str:
            if streamed:
                return (await read_all(completer, messages))[0]
            return (await completer.complete(messages)).text

        async with client:
            assert completer.sees_images is None
            with pytest.raises(llm.ImagesNotSupported) as refused:
                await ask(with_image)
            assert completer.sees_images is False
            with pytest.raises(llm.ImagesNotSupported):
                await ask(with_image)  # known now: nothing is sent
            text = await ask(vision.without_images(with_image))

    assert isinstance(refused.value, llm.ProviderMisconfigured)
    assert refused.value.request_id == server.requests[0].request_id
    assert len(server.requests) == 2, "never retried, and not sent again once known"
    assert not server.requests[1].images
    assert attempts.statuses[0] in (400, 500)
    assert len(attempts.statuses) == 2
    assert text == "What is this?"


async def test_vision_off_sends_no_images(server: FakeOpenAI) -> None:
    client = client_for(server.base_url, "aiohttp")
    completer = llm.Completer(client, model="gpt-4o", system_prompt="", vision=False)
    async with client:
        with pytest.raises(llm.ImagesNotSupported):
            await completer.complete(
                [vision.user_message("What is this?", [vision.Image(PNG, "image/png")])]
            )

    assert server.requests == ()


async def test_an_image_like_error_without_images_is_not_about_images(server: FakeOpenAI) -> None:
    server.script(images_rejected("llama.cpp"))
    client, completer = completer_for(server)
    async with client:
        with pytest.raises(llm.CompletionError) as caught:
            await completer.complete("hi")

    assert not isinstance(caught.value, llm.ImagesNotSupported)
    assert completer.sees_images is True
