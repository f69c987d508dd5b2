"""The fake OpenAI server, checked against the real ``openai`` SDK over real HTTP.

If the SDK parses what the fake sends the way it parses OpenAI, tests built on the fake tell
the truth about the bot. These tests also pin down which SDK exception each failure becomes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fakes.openai_server import (
    ApiError,
    Delay,
    FakeOpenAI,
    Hang,
    RawError,
    Refusal,
    Reply,
    StreamGateClosed,
    StreamReply,
    Usage,
    bad_gateway_page,
    context_length_exceeded,
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
