"""The fake OpenAI server, checked against the real ``openai`` SDK over real HTTP.

If the SDK parses what the fake sends the way it parses OpenAI, tests built on the fake tell
the truth about the bot. These tests also pin down which SDK exception each failure becomes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import cast

import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fakes.openai_server import (
    IMAGE_TOKENS,
    ApiError,
    Delay,
    FakeOpenAI,
    Hang,
    ImageRejection,
    RawError,
    ReasoningField,
    Refusal,
    Reply,
    StreamGateClosed,
    StreamReply,
    TextOnly,
    Usage,
    bad_gateway_page,
    context_length_exceeded,
    images_rejected,
    insufficient_quota,
    invalid_api_key,
    model_not_found,
    rate_limited,
    server_error,
    start_fake_openai,
    validate_chat_request,
)

MODEL = "gpt-4o-mini"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with start_fake_openai() as fake:
        yield fake


@pytest.fixture
async def client(server: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    # The timeout only keeps a broken test from hanging; no test relies on it firing.
    async with AsyncOpenAI(
        base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=30
    ) as sdk:
        yield sdk


async def collect(
    stream: openai.AsyncStream[ChatCompletionChunk], into: list[ChatCompletionChunk] | None = None
) -> list[ChatCompletionChunk]:
    """Read the stream to its end; ``into`` keeps what arrived if the stream breaks."""
    chunks = [] if into is None else into
    async for chunk in stream:
        chunks.append(chunk)
    return chunks


def streamed_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --- Plain completions ------------------------------------------------------------------------


async def test_reply_parses_into_content_finish_reason_and_usage(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("Hello there!", usage=Usage(prompt_tokens=9, completion_tokens=3)))

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there!"
    assert choice.message.refusal is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 3)
    assert completion.usage.total_tokens == 12
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.system_fingerprint is not None
    # The SDK exposes x-request-id so the bot can log it next to a failure report.
    assert completion._request_id == server.requests[0].request_id


@pytest.mark.parametrize(
    ("behaviour", "content", "refusal", "finish_reason"),
    [
        (Reply("Cut off mid", finish_reason="length"), "Cut off mid", None, "length"),
        (Reply(""), "", None, "stop"),
        (Reply(None), None, None, "stop"),
        (Refusal(), None, "I can't help with that.", "stop"),
    ],
    ids=["length", "empty", "null", "refusal"],
)
async def test_unusual_answers_reach_the_client_as_sent(
    server: FakeOpenAI,
    client: AsyncOpenAI,
    behaviour: Reply | Refusal,
    content: str | None,
    refusal: str | None,
    finish_reason: str,
) -> None:
    server.script(behaviour)

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    message = completion.choices[0].message
    assert (message.content, message.refusal) == (content, refusal)
    assert completion.choices[0].finish_reason == finish_reason


async def test_default_behaviour_echoes_the_last_user_message(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "echo me"}]},
        ],
    )

    assert completion.choices[0].message.content == "echo me"


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("one two three four five"))

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)

    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


async def test_delay_then_answers(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    server.script(Delay(0.01, then=Reply("late but here")))

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == "late but here"


async def test_models_are_listed(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]

    assert models == [MODEL]


# --- Streaming --------------------------------------------------------------------------------


async def test_stream_carries_the_same_answer_and_a_usage_chunk(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("Hello there, friend!", usage=Usage(prompt_tokens=9, completion_tokens=3)))

    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)

    assert streamed_text(chunks) == "Hello there, friend!"
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + [
        "stop"
    ]
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (9, 3)
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {first.id}
    assert first.id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


async def test_stream_without_include_usage_sends_no_usage(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("Hello there"))

    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = await collect(stream)

    assert streamed_text(chunks) == "Hello there"
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_stream_sends_each_piece_as_its_own_chunk(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["Hel", "lo", " 👋🏽"], finish_reason="length"))

    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = await collect(stream)

    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert pieces == ["Hel", "lo", " 👋🏽"]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_streamed_refusal_arrives_in_refusal_deltas(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Refusal("I can't help with that."))

    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = await collect(stream)

    assert streamed_text(chunks) == ""
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == "I can't help with that."


async def test_stream_reply_served_without_streaming_is_one_completion(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["a", "b", "c"]))

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == "abc"


async def test_stream_ended_early_stops_cleanly_without_a_finish_reason(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["one", " two", " three"], end_after=2))

    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)

    # No error: only the missing finish reason (and usage) says the answer is incomplete.
    assert streamed_text(chunks) == "one two"
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)
    assert all(c.usage is None for c in chunks)
    (request,) = server.requests
    assert await request.finished() == "answered"
    assert request.usage is None


async def test_stream_reply_ended_early_is_whole_when_not_streamed(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["one", " two", " three"], end_after=1))

    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == "one two three"
    assert completion.choices[0].finish_reason == "stop"


async def test_gate_end_stops_the_stream_without_a_finish_reason(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    await gate.send("partial")

    await gate.end()

    chunks = await collect(stream)
    assert streamed_text(chunks) == "partial"
    assert all(c.choices[0].finish_reason is None for c in chunks)
    assert await (await gate.started()).finished() == "answered"


async def test_gate_can_cut_a_stream_after_its_finish_reason(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    await gate.send("whole")
    await gate.send_finish_reason("stop")
    await gate.drop()

    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        await collect(stream, into=received)
    assert streamed_text(received) == "whole"
    assert received[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in received)
    assert (await gate.started()).usage is None


@pytest.mark.parametrize(
    ("stream", "include_usage", "reported"),
    [(False, False, True), (True, True, True), (True, False, False)],
    ids=["plain", "stream-with-usage", "stream-without-usage"],
)
async def test_each_request_records_the_usage_it_reported(
    server: FakeOpenAI, client: AsyncOpenAI, stream: bool, include_usage: bool, reported: bool
) -> None:
    server.script(
        Reply("Hello there, friend!", usage=Usage(prompt_tokens=9, completion_tokens=3)),
        Reply("Second answer"),
        server_error(500),
    )
    for _ in range(2):
        if stream:
            await collect(
                await client.chat.completions.create(
                    model=MODEL,
                    messages=HELLO,
                    stream=True,
                    stream_options={"include_usage": include_usage},
                )
            )
        else:
            await client.chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    first, second, failed = server.requests
    if reported:
        assert first.usage == Usage(prompt_tokens=9, completion_tokens=3)
        assert second.usage is not None
        assert second.usage.completion_tokens == 2
    else:
        assert (first.usage, second.usage) == (None, None)
    assert failed.usage is None


# --- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "error_class", "status", "code"),
    [
        (rate_limited(retry_after=7), openai.RateLimitError, 429, "rate_limit_exceeded"),
        (insufficient_quota(), openai.RateLimitError, 429, "insufficient_quota"),
        (server_error(500), openai.InternalServerError, 500, None),
        (server_error(502), openai.InternalServerError, 502, None),
        (server_error(503), openai.InternalServerError, 503, None),
        (context_length_exceeded(), openai.BadRequestError, 400, "context_length_exceeded"),
        (invalid_api_key(), openai.AuthenticationError, 401, "invalid_api_key"),
        (model_not_found(), openai.NotFoundError, 404, "model_not_found"),
    ],
    ids=["429", "quota", "500", "502", "503", "context", "401", "404"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_error_status_raises_the_matching_sdk_exception(
    server: FakeOpenAI,
    client: AsyncOpenAI,
    behaviour: ApiError,
    error_class: type[openai.APIStatusError],
    status: int,
    code: str | None,
    stream: bool,
) -> None:
    server.script(behaviour)

    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(model=MODEL, messages=HELLO, stream=stream)

    error = caught.value
    assert error.status_code == status
    assert error.code == code
    assert error.type == behaviour.type
    assert error.message.endswith(behaviour.message)
    assert error.request_id == server.requests[0].request_id


async def test_rate_limit_retry_after_is_visible_on_the_response(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(rate_limited(retry_after=7))

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.response.headers["retry-after"] == "7"


async def test_context_length_error_names_the_parameter(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(context_length_exceeded())

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.param == "messages"
    assert "maximum context length is 128000 tokens" in caught.value.message


async def test_html_gateway_page_raises_internal_server_error(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(bad_gateway_page())

    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.status_code == 502
    # A body that is not JSON leaves the message bare and the page in ``body``.
    assert caught.value.message == "Error code: 502"
    assert caught.value.code is None
    assert "502 Bad Gateway" in str(caught.value.body)


@pytest.mark.parametrize(
    "failure",
    [rate_limited(retry_after_ms=1), replace(server_error(503), headers={"retry-after-ms": "1"})],
    ids=["429", "503"],
)
async def test_sdk_retries_then_succeeds(server: FakeOpenAI, failure: ApiError | RawError) -> None:
    server.script(failure, failure, Reply("third time lucky"))

    async with AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=2) as sdk:
        completion = await sdk.chat.completions.create(model=MODEL, messages=HELLO)

    assert completion.choices[0].message.content == "third time lucky"
    retries = [r.headers.get("x-stainless-retry-count") for r in server.requests]
    assert retries == ["0", "1", "2"]


# --- Hanging, dropping, cancelling ------------------------------------------------------------


async def test_hang_ends_in_a_client_timeout(server: FakeOpenAI) -> None:
    server.script(Hang())

    async with AsyncOpenAI(
        base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=0.2
    ) as sdk:
        with pytest.raises(openai.APITimeoutError):
            await sdk.chat.completions.create(model=MODEL, messages=HELLO)

    assert await server.requests[0].finished() == "client_disconnected"


async def test_closing_the_server_releases_a_hanging_request() -> None:
    async with start_fake_openai(default=Hang()) as server:
        sdk = AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
        call = asyncio.create_task(sdk.chat.completions.create(model=MODEL, messages=HELLO))
        (request,) = await server.wait_for_requests(1)
    async with sdk:
        with pytest.raises(openai.APIConnectionError):
            await call

    assert await request.finished() == "server_closed"


async def test_dropped_stream_raises_api_connection_error(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["one", " two", " three"], drop_after=2))

    received: list[ChatCompletionChunk] = []
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    with pytest.raises(openai.APIConnectionError) as caught:
        await collect(stream, into=received)

    # Not a timeout: the bot must tell "the model went away" from "the model is slow".
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert streamed_text(received) == "one two"
    assert await server.requests[0].finished() == "dropped"


async def test_dropped_plain_request_raises_api_connection_error(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply(["never", " sent"], drop_after=0))

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert await server.requests[0].finished() == "dropped"


async def test_gated_stream_is_stepped_by_the_test(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    gate = server.gated_stream()

    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    request = await gate.started()
    assert request.json["stream"] is True
    assert server.open_streams == 1
    assert (await anext(stream)).choices[0].delta.role == "assistant"

    await gate.send("Hello")
    assert (await anext(stream)).choices[0].delta.content == "Hello"
    await gate.send(", world")
    assert (await anext(stream)).choices[0].delta.content == ", world"
    await gate.finish("length")
    rest = await collect(stream)

    assert rest[0].choices[0].finish_reason == "length"
    assert rest[1].usage is not None
    assert rest[1].usage.completion_tokens == 2
    assert await request.finished() == "answered"
    await server.wait_idle()
    assert server.open_streams == 0
    with pytest.raises(StreamGateClosed):
        await gate.send("too late")


async def test_request_records_when_its_last_byte_went_out(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    request = await gate.started()
    await gate.send("Hello")
    assert (await anext(stream)).choices[0].delta.role == "assistant"
    assert (await anext(stream)).choices[0].delta.content == "Hello"
    assert request.ended_at is None

    before_finish = time.monotonic()
    await gate.finish()
    await collect(stream)

    assert await request.finished() == "answered"
    assert request.ended_at is not None
    assert before_finish <= request.ended_at <= time.monotonic()


async def test_gate_answers_a_plain_request_at_finish(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()

    call = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HELLO))
    await gate.started()
    await gate.send("Hello")
    await gate.send(" again")
    await gate.finish()
    completion = await call

    assert completion.choices[0].message.content == "Hello again"


async def test_gate_drop_breaks_the_stream(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    await gate.send("partial")

    await gate.drop()

    with pytest.raises(openai.APIConnectionError):
        await collect(stream)
    assert await (await gate.started()).finished() == "dropped"


async def test_client_closing_a_stream_is_seen_by_the_server(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    await gate.send("Hello")
    assert (await anext(stream)).choices[0].delta.role == "assistant"
    assert (await anext(stream)).choices[0].delta.content == "Hello"

    await stream.close()

    request = await gate.started()
    assert await request.finished() == "client_disconnected"
    await server.wait_idle()
    assert server.open_streams == 0
    with pytest.raises(StreamGateClosed):
        await gate.send("nobody is listening")


async def test_cancelling_the_task_reading_a_stream_is_seen_by_the_server(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    gate = server.gated_stream()
    first_words = asyncio.Event()

    async def read() -> None:
        stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_words.set()

    reader = asyncio.create_task(read())
    await gate.send("Hello")
    await first_words.wait()

    reader.cancel()

    assert await (await gate.started()).finished() == "client_disconnected"
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_cancelled_plain_request_is_seen_by_the_server(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Hang())
    call = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=HELLO))
    (request,) = await server.wait_for_requests(1)

    call.cancel()

    assert await request.finished() == "client_disconnected"
    with pytest.raises(asyncio.CancelledError):
        await call


# --- Requests as recorded ---------------------------------------------------------------------


async def test_request_is_recorded_without_the_key(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    await client.chat.completions.create(
        model=MODEL, messages=HELLO, max_completion_tokens=50, temperature=0.5
    )

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.json == {
        "model": MODEL,
        "messages": HELLO,
        "max_completion_tokens": 50,
        "temperature": 0.5,
    }
    assert request.has_bearer_key
    assert "authorization" not in request.headers
    assert "sk-test" not in repr(request)
    assert request.status == 200


async def test_a_configured_key_rejects_others(server: FakeOpenAI) -> None:
    async with (
        start_fake_openai(api_key="sk-right-key") as keyed,
        AsyncOpenAI(base_url=keyed.base_url, api_key="sk-wrong-key", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in caught.value.message


async def test_a_configured_model_list_rejects_other_models() -> None:
    async with (
        start_fake_openai(models=["local-model"]) as limited,
        AsyncOpenAI(base_url=limited.base_url, api_key="sk-test", max_retries=0) as sdk,
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=HELLO)
        completion = await sdk.chat.completions.create(model="local-model", messages=HELLO)

    assert caught.value.code == "model_not_found"
    assert completion.choices[0].message.content == "Say hello"


async def test_unknown_path_is_a_not_found_error(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.post("/chat/complete", cast_to=object, body={})

    assert caught.value.message.endswith("Invalid URL (POST /v1/chat/complete)")


async def test_invalid_request_is_rejected_without_using_the_script(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("kept for the next valid request"))

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[])
    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.code == "empty_array"
    assert caught.value.param == "messages"
    assert completion.choices[0].message.content == "kept for the next valid request"


def asking(**extra: object) -> dict[str, object]:
    """A valid chat request body, changed by ``extra``."""
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **extra}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ("not an object", None, None),
        ({"messages": [{"role": "user", "content": "x"}]}, None, None),
        (asking(model=""), None, None),
        ({"model": MODEL}, "messages", "missing_required_parameter"),
        (asking(messages="hi"), "messages", "invalid_type"),
        (asking(messages=[{"content": "x"}]), "messages[0].role", "missing_required_parameter"),
        (asking(messages=[{"role": "bot", "content": "x"}]), "messages[0].role", "invalid_value"),
        (asking(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
        (asking(messages=[{"role": "user", "content": 3}]), "messages[0].content", "invalid_type"),
        (asking(temperature=3), "temperature", "decimal_above_max_value"),
        (asking(temperature="hot"), "temperature", "invalid_type"),
        (asking(max_tokens=0), "max_tokens", "integer_below_min_value"),
        (asking(max_completion_tokens=1.5), "max_completion_tokens", "invalid_type"),
        (asking(stream="yes"), "stream", "invalid_type"),
        (asking(stream_options={"include_usage": True}), "stream_options", None),
        (asking(bogus=1), None, None),
    ],
)
def test_validation_rejects_what_openai_rejects(
    body: object, param: str | None, code: str | None
) -> None:
    error = validate_chat_request(body)

    assert error is not None
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert (error.param, error.code) == (param, code)


def test_validation_accepts_a_full_request() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    assert validate_chat_request(body) is None


# --- Images ------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def with_image(url: str = PNG_URL, **image: object) -> list[ChatCompletionMessageParam]:
    """One user message of a text part and an image part (``image`` may be malformed)."""
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url, **image}},
        ],
    }
    return [cast(ChatCompletionMessageParam, message)]


async def test_image_parts_are_accepted_and_recorded(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=with_image(detail="low")
    )

    assert completion.choices[0].message.content == "What is this?"
    assert server.requests[0].images == [{"url": PNG_URL, "detail": "low"}]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens >= IMAGE_TOKENS


async def test_a_web_image_url_is_accepted_without_being_fetched(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    # A name that resolves nowhere: the fake must not try.
    url = "https://images.invalid/cat.png"
    await client.chat.completions.create(model=MODEL, messages=with_image(url))

    assert server.requests[0].images == [{"url": url}]


def _image_body(url: str = PNG_URL, **image: object) -> dict[str, object]:
    return asking(messages=with_image(url, **image))


_AT = "messages[0].content[1].image_url"


@pytest.mark.parametrize(
    ("body", "param", "code", "words"),
    [
        (_image_body("cat.png"), f"{_AT}.url", "invalid_value", "without the 'data:' prefix"),
        (_image_body("data:image/png;base64,"), f"{_AT}.url", "invalid_value", "empty"),
        (_image_body("data:image/png;base64,%%%"), f"{_AT}.url", "invalid_value", "invalid"),
        (
            _image_body("data:text/plain;base64,aGk="),
            f"{_AT}.url",
            "invalid_image_format",
            "Only image types",
        ),
        (
            _image_body("data:image/jpeg;base64," + base64.b64encode(PNG).decode()),
            f"{_AT}.url",
            "invalid_image_format",
            "unsupported image",
        ),
        (_image_body(detail="medium"), f"{_AT}.detail", "invalid_value", "'auto', 'low'"),
        (
            asking(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages[0].content[0].image_url",
            "missing_required_parameter",
            "Missing",
        ),
        (
            asking(messages=[{"role": "user", "content": [{"type": "video"}]}]),
            "messages[0].content[0].type",
            "invalid_value",
            "'image_url'",
        ),
        (
            asking(messages=[{"role": "system", "content": with_image()[0]["content"]}]),
            "messages[0].content[1]",
            "invalid_value",
            "only allowed for messages with role 'user'",
        ),
    ],
)
def test_image_parts_are_checked_as_openai_checks_them(
    body: object, param: str, code: str, words: str
) -> None:
    error = validate_chat_request(body)

    assert error is not None
    assert (error.status, error.type, error.param, error.code) == (
        400,
        "invalid_request_error",
        param,
        code,
    )
    assert words in error.message


@pytest.mark.parametrize(
    ("rejection", "error_type", "status", "words"),
    [
        ("openai", openai.BadRequestError, 400, "image_url is only supported by certain models"),
        ("vllm", openai.BadRequestError, 400, "gpt-4o-mini is not a multimodal model"),
        ("llama.cpp", openai.InternalServerError, 500, "image input is not supported"),
        ("ollama", openai.InternalServerError, 500, "missing data required for image input"),
    ],
)
async def test_a_text_only_server_refuses_images_in_its_own_words(
    rejection: ImageRejection, error_type: type[openai.APIStatusError], status: int, words: str
) -> None:
    async with (
        start_fake_openai(text_only=rejection) as server,
        AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client,
    ):
        server.script(Reply("kept for a request without images"))
        with pytest.raises(error_type) as caught:
            await client.chat.completions.create(model=MODEL, messages=with_image())
        completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert caught.value.status_code == status
    assert words in caught.value.message
    assert completion.choices[0].message.content == "kept for a request without images"


async def test_openai_names_the_refused_part(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    server.text_only = "openai"
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        *with_image(),
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=messages)

    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "messages.[1].content.[1].type"
    assert caught.value.code is None


async def test_a_scripted_text_only_model_answers_text_and_refuses_images(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(TextOnly("vllm", then=Reply("text is fine")), TextOnly("vllm"))
    answered = await client.chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=with_image())
    seeing = await client.chat.completions.create(model=MODEL, messages=with_image())

    assert answered.choices[0].message.content == "text is fine"
    assert seeing.choices[0].message.content == "What is this?"


def test_each_rejection_is_the_shape_its_server_sends() -> None:
    vllm = images_rejected("vllm", model="Qwen/Qwen3-8B")
    llama = images_rejected("llama.cpp")

    assert isinstance(vllm, RawError)
    assert json.loads(vllm.body)["object"] == "error"
    assert json.loads(vllm.body)["message"] == "Qwen/Qwen3-8B is not a multimodal model None"
    assert isinstance(llama, RawError)
    assert json.loads(llama.body)["error"]["type"] == "server_error"


# --- Reasoning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field_name", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_first_in_its_own_field(
    server: FakeOpenAI, client: AsyncOpenAI, field_name: ReasoningField
) -> None:
    server.script(StreamReply("Four.", reasoning="Two and two.", reasoning_field=field_name))
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)

    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [(d.model_extra or {}).get(field_name) for d in deltas]
    assert "".join(r for r in reasoning if r) == "Two and two."
    assert streamed_text(chunks) == "Four."
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not r for r in reasoning[first_content:])
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.completion_tokens == 3 + 1


async def test_reasoning_in_a_whole_completion_is_a_message_field(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(Reply("Four.", reasoning="Two and two.", reasoning_field="reasoning"))
    completion = await client.chat.completions.create(model=MODEL, messages=HELLO)

    message = completion.choices[0].message
    assert message.content == "Four."
    assert (message.model_extra or {})["reasoning"] == "Two and two."
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 3


async def test_the_token_limit_counts_reasoning_first(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.script(StreamReply("The answer.", reasoning="one two three four"))
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, max_completion_tokens=3
    )
    chunks = await collect(stream)

    assert streamed_text(chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_a_gate_sends_reasoning_pieces(server: FakeOpenAI, client: AsyncOpenAI) -> None:
    gate = server.gated_stream()
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    events = aiter(stream)
    await anext(events)  # the role chunk
    await gate.send_reasoning("Hmm.", "reasoning")
    thinking = await anext(events)
    await gate.send("Yes.")
    await gate.finish()
    rest = await collect(stream)

    assert (thinking.choices[0].delta.model_extra or {}).get("reasoning") == "Hmm."
    assert streamed_text(rest) == "Yes."


async def test_think_tags_go_out_in_the_content_exactly_as_scripted(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    pieces = ["<thi", "nk>Hmm.</th", "ink>", "Yes."]
    server.script(StreamReply(pieces))
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = await collect(stream)

    assert [c.choices[0].delta.content for c in chunks if c.choices][1:-1] == pieces


async def test_a_hidden_concurrency_limit_refuses_requests_beyond_it(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.concurrency_limit = 1
    gate = server.gated_stream()
    server.script(Reply("Second."))
    first = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    await gate.started()

    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HELLO)
    await gate.send("First.")
    await gate.finish()
    await collect(first)
    await server.wait_idle()
    answered = await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert refused.value.response.headers["retry-after-ms"] == "100"
    assert refused.value.code == "concurrency_limit_exceeded"
    # The refusal took nothing from the script: the next request got the scripted answer.
    assert answered.choices[0].message.content == "Second."
    assert [r.status for r in server.requests] == [200, 429, 200]
    assert server.peak_answering == 1
    assert server.answering == 0


async def test_a_concurrency_limit_can_refuse_with_a_503(
    server: FakeOpenAI, client: AsyncOpenAI
) -> None:
    server.concurrency_limit = 0
    server.concurrency_refusal = server_error(503)

    with pytest.raises(openai.InternalServerError) as refused:
        await client.chat.completions.create(model=MODEL, messages=HELLO)

    assert refused.value.status_code == 503
    assert server.requests[0].status == 503
