"""The completion helper against a local OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest

from bot.config import load_settings
from bot.model import llm
from tests.fakes.openai_server import (
    ApiError,
    FakeOpenAI,
    Hang,
    Refusal,
    Reply,
    StreamGate,
    StreamReply,
    bad_gateway_page,
    context_length_exceeded,
    insufficient_quota,
    invalid_api_key,
    model_not_found,
    rate_limited,
    server_error,
    start_fake_openai,
)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with start_fake_openai() as fake:
        yield fake


def completer_for(
    server: FakeOpenAI,
    *,
    timeout: float = 10.0,
    max_retries: int = 0,
    max_tokens: int | None = None,
) -> tuple[openai.AsyncOpenAI, llm.Completer]:
    client = openai.AsyncOpenAI(
        base_url=server.base_url, api_key="sk-test", timeout=timeout, max_retries=max_retries
    )
    completer = llm.Completer(
        client, model="gpt-4o-mini", system_prompt="Be brief.", max_output_tokens=max_tokens
    )
    return client, completer


async def complete(
    server: FakeOpenAI, prompt: str = "Hi", *, timeout: float = 10.0, max_retries: int = 0
) -> llm.Answer:
    client, completer = completer_for(server, timeout=timeout, max_retries=max_retries)
    async with client:
        return await completer.complete(prompt)


async def test_answer_text_finish_reason_and_usage(server: FakeOpenAI) -> None:
    server.script(Reply("Hello there!"))
    answer = await complete(server, "Say hello")
    assert answer.text == "Hello there!"
    assert answer.finish_reason == "stop"
    assert not answer.truncated
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


async def test_sends_system_prompt_then_user_prompt(server: FakeOpenAI) -> None:
    server.script(Reply("ok"))
    await complete(server, "What is 2+2?")
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
    server: FakeOpenAI, behaviour: ApiError, expected: type[llm.CompletionError]
) -> None:
    server.script(behaviour)
    with pytest.raises(expected) as caught:
        await complete(server)
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
        await complete(server, "my secret question")
    request_id = server.requests[0].request_id
    assert any(request_id in record.getMessage() for record in caplog.records)
    assert all("my secret question" not in record.getMessage() for record in caplog.records)
    assert all("sk-test" not in record.getMessage() for record in caplog.records)


async def test_timeout(server: FakeOpenAI) -> None:
    server.script(Hang())
    with pytest.raises(llm.TimedOut):
        await complete(server, timeout=0.2)


async def test_sdk_retries_are_used(server: FakeOpenAI) -> None:
    server.script(rate_limited(retry_after_ms=1), Reply("second time lucky"))
    answer = await complete(server, max_retries=2)
    assert answer.text == "second time lucky"
    assert len(server.requests) == 2


async def test_connection_refused_is_unavailable() -> None:
    async with start_fake_openai() as fake:
        base_url = fake.base_url
    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    async with client:
        with pytest.raises(llm.ProviderUnavailable):
            await llm.Completer(client, model="m", system_prompt="s").complete("hi")


async def collect(completer: llm.Completer, prompt: str = "Hi") -> list[llm.Chunk]:
    return [chunk async for chunk in completer.stream(prompt)]


async def test_stream_yields_text_then_finish_reason_and_usage(server: FakeOpenAI) -> None:
    server.script(StreamReply(["Hel", "lo", " world"]))
    client, completer = completer_for(server)
    async with client:
        chunks = await collect(completer)
    assert "".join(chunk.text for chunk in chunks) == "Hello world"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert any(chunk.usage is not None for chunk in chunks)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


async def test_stream_of_a_long_answer_reports_length(server: FakeOpenAI) -> None:
    server.script(StreamReply(["a", " b"], finish_reason="length"))
    client, completer = completer_for(server)
    async with client:
        chunks = await collect(completer)
    assert chunks[-1].finish_reason == "length" or any(c.finish_reason == "length" for c in chunks)


async def test_stream_dropped_midway_raises_after_the_text(server: FakeOpenAI) -> None:
    server.script(StreamReply(["one", " two", " three"], drop_after=2))
    client, completer = completer_for(server)
    received: list[str] = []

    async def read() -> None:
        async for chunk in completer.stream("count"):
            received.append(chunk.text)

    async with client:
        with pytest.raises(llm.ProviderUnavailable):
            await read()
    assert "".join(received) == "one two"


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
    server: FakeOpenAI, behaviour: ApiError, expected: type[llm.CompletionError]
) -> None:
    server.script(behaviour)
    client, completer = completer_for(server)
    async with client:
        with pytest.raises(expected):
            await collect(completer)


async def test_closing_the_stream_cancels_the_request(server: FakeOpenAI) -> None:
    gate: StreamGate = server.gated_stream()
    client, completer = completer_for(server)
    async with client:
        stream = completer.stream("write a novel")
        first = asyncio.ensure_future(anext(stream))
        request = await gate.started()
        await gate.send("Once")
        assert (await first).text == "Once"
        await stream.aclose()
        assert await request.finished() == "client_disconnected"
