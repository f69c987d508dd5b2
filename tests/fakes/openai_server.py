"""A scripted stand-in for OpenAI's chat completions API, served over real HTTP on 127.0.0.1.

Tests point the real ``openai.AsyncOpenAI`` client at :attr:`FakeOpenAI.base_url` and script
what the model does, one behaviour per chat request, first in first out::

    async with start_fake_openai() as server:
        server.script(rate_limited(retry_after=2), Reply("Hello!"))
        ...  # the code under test calls the model
        assert (await server.wait_for_requests(2))[1].json["model"] == "gpt-4o-mini"

When the script runs out, the server's ``default`` behaviour answers (``Echo()`` unless set).

What the wire carries follows OpenAI: the ``chat.completion`` and ``chat.completion.chunk``
shapes, server-sent events ending in ``data: [DONE]``, the ``{"error": {message, type, param,
code}}`` body, and an ``x-request-id`` header on every response. Requests are checked the way
OpenAI checks them (bearer key, known parameters, model, messages, numeric ranges) before any
behaviour is taken from the script, so a malformed request does not consume a scripted answer.
A request that asks for ``max_tokens``/``max_completion_tokens`` fewer than the answer holds gets
the answer cut there with ``finish_reason: "length"``, as a real model would. One answer is
a list of pieces, and one piece counts as one token.

How the SDK (openai 3.x) surfaces each failure, for the code that has to handle it:

- an HTTP error status raises the matching ``openai.APIStatusError`` subclass
  (``RateLimitError``, ``InternalServerError``, ``BadRequestError``, ...), after the SDK's own
  retries (it retries 408, 409, 429 and 5xx, waiting ``retry-after-ms``/``retry-after`` when
  that is above 0 and at most 120 s, else backing off from 0.5 s); ``.message`` is
  ``"Error code: N - <OpenAI's message>"``, or bare ``"Error code: N"`` when the body is not
  JSON (a proxy's HTML page, then found in ``.body``);
- a client timeout raises ``openai.APITimeoutError``;
- a connection the server drops mid-stream makes the stream iterator raise
  ``openai.APIConnectionError`` whose ``__cause__`` is ``httpx2.RemoteProtocolError``;
- a dropped connection before the response head (:class:`Hang` at shutdown, a non-streamed
  ``drop_after``) raises ``openai.APIConnectionError`` once retries are spent;
- a stream that ends cleanly but early (``end_after``, :meth:`StreamGate.end`: no finish chunk,
  no usage chunk, no ``[DONE]``) raises nothing: the SDK's iterator just stops, and only the
  missing ``finish_reason`` tells the client the answer is incomplete;
- ``await stream.close()``, or cancelling the task awaiting the request or reading the stream,
  closes the connection at once, and the server records ``client_disconnected``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from aiohttp import web

FinishReason: TypeAlias = Literal["stop", "length", "content_filter"]
ReasoningField: TypeAlias = Literal["reasoning_content", "reasoning"]
"""The delta field reasoning goes out in: vLLM's and DeepSeek's, or OpenRouter's and Ollama's."""
ImageRejection: TypeAlias = Literal["openai", "vllm", "llama.cpp", "ollama"]
"""Whose words a text-only model refuses image input in (see :func:`images_rejected`)."""
Outcome: TypeAlias = Literal[
    "answered", "client_disconnected", "dropped", "server_closed", "fake_failed"
]
"""How a request ended: fully answered; the client went away first; the script dropped the
connection; the server shut down while the request was still open; or the fake itself raised
(a misused script, such as one gate queued twice; aiohttp answers 500 and logs it)."""

DEFAULT_MODELS = ("gpt-4o-mini",)
_SENT = web.RequestKey("sent_response", web.StreamResponse)
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
BACKLOG = 1024  # connections the listening socket holds until accepted


# --- Behaviours ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts to report instead of the fake's own estimate.

    ``completion_tokens`` includes ``reasoning_tokens``, as OpenAI counts them.
    """

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclass(frozen=True)
class Reply:
    """A complete answer. ``text=None`` sends ``content: null``; streamed, it goes out in tokens.

    ``reasoning`` is sent before the answer in the ``reasoning_field`` of the message (of the
    deltas, when streamed), as a server that separates a reasoning model's thoughts does.
    Inline ``<think>`` reasoning is just part of ``text``.
    """

    text: str | None
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    reasoning: str | None = None
    reasoning_field: ReasoningField = "reasoning_content"


@dataclass(frozen=True)
class Refusal:
    """The model declines: ``content: null`` and the message in ``refusal``."""

    message: str = "I can't help with that."
    usage: Usage | None = None


@dataclass(frozen=True)
class Echo:
    """Answers with the text of the last user message (the default behaviour)."""


@dataclass(frozen=True)
class StreamReply:
    """An answer in explicit pieces, one server-sent event each when streamed.

    ``pieces`` given as one string is split into word tokens. ``interval`` seconds pass before
    each piece (a non-streamed request waits the sum, then gets the whole answer).
    ``drop_after=N`` aborts the connection once N pieces are out, with no final chunk and no
    ``[DONE]``; a non-streamed request is dropped before any answer. ``end_after=N`` instead
    ends the stream properly once N pieces are out, but with no finish chunk, no usage chunk and
    no ``[DONE]`` (a server or proxy that gives up politely); a non-streamed request is answered
    whole, as there is no early ending of a JSON body that is not a broken one.

    ``reasoning`` pieces (a string is split into tokens) go out first, each in its own delta's
    ``reasoning_field``; they count as pieces for ``drop_after``, ``end_after`` and the token
    limit, and as ``reasoning_tokens`` in the usage.
    """

    pieces: str | Sequence[str]
    interval: float = 0.0
    finish_reason: FinishReason = "stop"
    drop_after: int | None = None
    usage: Usage | None = None
    end_after: int | None = None
    reasoning: str | Sequence[str] = ()
    reasoning_field: ReasoningField = "reasoning_content"

    def tokens(self) -> list[str]:
        return tokenize(self.pieces) if isinstance(self.pieces, str) else list(self.pieces)

    def reasoning_tokens(self) -> list[str]:
        return tokenize(self.reasoning) if isinstance(self.reasoning, str) else list(self.reasoning)


@dataclass(frozen=True)
class ApiError:
    """An error response in OpenAI's shape, sent before any stream starts."""

    status: int
    message: str
    type: str | None
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class RawError:
    """An error response whose body is not OpenAI's JSON, e.g. a proxy's HTML error page."""

    status: int
    body: str
    content_type: str = "text/html"


@dataclass(frozen=True)
class Hang:
    """Never answers; the request stays open until the client gives up or the server closes."""


@dataclass(frozen=True)
class TextOnly:
    """A text-only model: a request with image parts is refused as ``rejection`` words it;
    one without is answered by ``then``."""

    rejection: ImageRejection = "openai"
    then: Behaviour = field(default_factory=Echo)


@dataclass(frozen=True)
class Delay:
    """Waits ``seconds`` (simulated model latency), then behaves as ``then``."""

    seconds: float
    then: Behaviour = field(default_factory=Echo)


class StreamGateClosed(Exception):
    """The gated request is over (answered, dropped, or the client left); nothing more goes out."""


@dataclass
class _GateCommand:
    kind: Literal["piece", "reasoning", "finish_reason", "finish", "drop", "end", "closing"]
    piece: str = ""
    reasoning_field: ReasoningField = "reasoning_content"
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    done: asyncio.Future[None] | None = None


class StreamGate:
    """An answer the test hands out piece by piece, so it can look at the client mid-stream.

    Each call returns once the server has written what it was asked to write. A gate serves
    exactly one request. A non-streamed request collects the pieces and is answered at
    :meth:`finish`. After the request ends for any reason, the methods raise
    :class:`StreamGateClosed`; :meth:`RecordedRequest.finished` says why it ended.
    """

    def __init__(self) -> None:
        self._commands: asyncio.Queue[_GateCommand] = asyncio.Queue()
        self._request: asyncio.Future[RecordedRequest] = asyncio.get_running_loop().create_future()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def started(self) -> RecordedRequest:
        """Wait for the request this gate answers, and return it."""
        return await asyncio.shield(self._request)

    async def send(self, piece: str) -> None:
        """Send one content piece (one chunk when streamed)."""
        await self._submit(_GateCommand("piece", piece=piece))

    async def send_reasoning(
        self, piece: str, reasoning_field: ReasoningField = "reasoning_content"
    ) -> None:
        """Send one reasoning piece in its own field (one chunk when streamed)."""
        await self._submit(_GateCommand("reasoning", piece=piece, reasoning_field=reasoning_field))

    async def send_finish_reason(self, finish_reason: FinishReason = "stop") -> None:
        """Send only the chunk that carries the finish reason, to be followed by :meth:`drop`
        (a stream cut before its usage chunk and ``[DONE]``) or :meth:`end`. A non-streamed
        request ignores it.
        """
        await self._submit(_GateCommand("finish_reason", finish_reason=finish_reason))

    async def finish(
        self, finish_reason: FinishReason = "stop", usage: Usage | None = None
    ) -> None:
        """End the answer: the finish chunk, the usage chunk if asked for, then ``[DONE]``."""
        await self._submit(_GateCommand("finish", finish_reason=finish_reason, usage=usage))

    async def drop(self) -> None:
        """Abort the connection without a final chunk or ``[DONE]``."""
        await self._submit(_GateCommand("drop"))

    async def end(self) -> None:
        """End the stream properly but early: no finish chunk, no usage chunk, no ``[DONE]``.

        A non-streamed request is answered with what was sent, as at :meth:`finish`.
        """
        await self._submit(_GateCommand("end"))

    async def _submit(self, command: _GateCommand) -> None:
        if self._closed:
            raise StreamGateClosed
        command.done = asyncio.get_running_loop().create_future()
        self._commands.put_nowait(command)
        await command.done

    def _attach(self, request: RecordedRequest) -> None:
        self._request.set_result(request)

    def _close(self) -> None:
        """Mark the gate spent and fail every command the server will now never carry out."""
        self._closed = True
        while not self._commands.empty():
            _refuse(self._commands.get_nowait())


Behaviour: TypeAlias = (
    Reply
    | Refusal
    | Echo
    | StreamReply
    | ApiError
    | RawError
    | Hang
    | Delay
    | StreamGate
    | TextOnly
)


# --- Error constructors, worded as OpenAI words them ------------------------------------------


def rate_limited(retry_after: float | None = 1.0, *, retry_after_ms: int | None = None) -> ApiError:
    """429 for too many requests, with ``retry-after`` (seconds) and/or ``retry-after-ms``.

    The SDK prefers ``retry-after-ms`` and ignores a wait of 0, so ``retry_after_ms=1`` is the
    way to make its retry immediate.
    """
    headers: dict[str, str] = {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
    }
    wait = "1s"
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
        headers["x-ratelimit-reset-requests"] = f"{retry_after:g}s"
        wait = f"{retry_after:g}s"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return ApiError(
        status=429,
        message=(
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            f"Please try again in {wait}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        ),
        type="requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


def too_many_concurrent(limit: int, *, retry_after_ms: int = 100) -> ApiError:
    """429 for a request beyond the concurrent requests a provider allows one key.

    The wording follows providers that cap requests in progress (OpenAI caps per minute
    instead); ``retry-after-ms`` tells the client how soon to try again.
    """
    return ApiError(
        status=429,
        message=(
            f"Too many concurrent requests: limit {limit}. "
            "Please try again once a request in progress has finished."
        ),
        type="requests",
        code="concurrency_limit_exceeded",
        headers={"retry-after-ms": str(retry_after_ms)},
    )


def insufficient_quota() -> ApiError:
    """429 for an account out of credit: retrying does not help, though the SDK still retries."""
    return ApiError(
        status=429,
        message=(
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        ),
        type="insufficient_quota",
        code="insufficient_quota",
    )


_SERVER_ERROR_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
}


def server_error(status: Literal[500, 502, 503] = 500) -> ApiError:
    """A 5xx in OpenAI's error shape."""
    return ApiError(status=status, message=_SERVER_ERROR_MESSAGES[status], type="server_error")


def bad_gateway_page() -> RawError:
    """A 502 as the proxy in front of the API sends it: an HTML page, not JSON."""
    return RawError(
        status=502,
        body=(
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
            "</body>\r\n</html>\r\n"
        ),
    )


def context_length_exceeded(limit: int = 128_000, requested: int = 130_000) -> ApiError:
    """400 for a prompt longer than the model's context window."""
    return ApiError(
        status=400,
        message=(
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {requested} tokens. Please reduce the length of the messages."
        ),
        type="invalid_request_error",
        param="messages",
        code="context_length_exceeded",
    )


def invalid_api_key(key: str = "sk-wrong") -> ApiError:
    """401 for a key OpenAI does not know; the message shows only the key's ends."""
    shown = f"{key[:3]}{'*' * 10}{key[-4:]}" if len(key) > 8 else "*" * len(key)
    return ApiError(
        status=401,
        message=(
            f"Incorrect API key provided: {shown}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        ),
        type="invalid_request_error",
        code="invalid_api_key",
    )


def model_not_found(model: str = "gpt-does-not-exist") -> ApiError:
    """404 for a model name the account cannot use."""
    return ApiError(
        status=404,
        message=f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def images_rejected(
    rejection: ImageRejection = "openai", *, model: str = "gpt-3.5-turbo", param: str | None = None
) -> ApiError | RawError:
    """A text-only model refusing image input, as each kind of server answers it.

    - ``openai``: 400 ``invalid_request_error``, "Invalid content type. image_url is only
      supported by certain models.", ``param`` naming the part's type;
    - ``vllm``: 400 with vLLM's own body (no ``error`` wrapper), "<model> is not a multimodal
      model";
    - ``llama.cpp`` (a server started without ``--mmproj``): 500 ``server_error``, "image input
      is not supported - hint: if this is unexpected, you may need to provide the mmproj";
    - ``ollama``: 500 ``api_error``, "... this model is missing data required for image input".
    """
    match rejection:
        case "openai":
            return ApiError(
                status=400,
                message="Invalid content type. image_url is only supported by certain models.",
                type="invalid_request_error",
                param=param or "messages.[0].content.[1].type",
            )
        case "vllm":
            body = {
                "object": "error",
                "message": f"{model} is not a multimodal model None",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
            return RawError(status=400, body=json.dumps(body), content_type="application/json")
        case "llama.cpp":
            error = {
                "code": 500,
                "message": (
                    "image input is not supported - hint: if this is unexpected, "
                    "you may need to provide the mmproj"
                ),
                "type": "server_error",
            }
            return RawError(
                status=500, body=json.dumps({"error": error}), content_type="application/json"
            )
        case "ollama":
            return ApiError(
                status=500,
                message=(
                    "Failed to create new sequence: failed to process inputs: "
                    "this model is missing data required for image input"
                ),
                type="api_error",
            )


def _missing_api_key() -> ApiError:
    return ApiError(
        status=401,
        message=(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
            "You can obtain an API key from https://platform.openai.com/account/api-keys."
        ),
        type="invalid_request_error",
    )


def _invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param, code=code)


# --- Recorded requests ------------------------------------------------------------------------


@dataclass(eq=False)
class RecordedRequest:
    """One request as the server received it, and how it ended.

    ``headers`` has lower-case names and never the ``Authorization`` value; ``has_bearer_key``
    says whether a non-empty bearer key came with it. ``body`` is the parsed JSON (``None`` if
    the body was empty or not JSON). ``request_id`` is the ``x-request-id`` sent back.
    ``usage`` is the token usage the server reported for this request (in the completion, or in
    the stream's usage chunk when the request asked for one), ``None`` if it reported none.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    has_bearer_key: bool
    body: Any
    request_id: str
    status: int | None = None
    outcome: Outcome | None = None
    usage: Usage | None = None
    ended_at: float | None = None
    """``time.monotonic()`` when the request ended, after its last byte went to the socket."""
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def json(self) -> dict[str, Any]:
        """The body as a JSON object; fails the test if it was anything else."""
        assert isinstance(self.body, dict), f"request body is not a JSON object: {self.body!r}"
        return self.body

    @property
    def images(self) -> list[dict[str, Any]]:
        """The ``image_url`` objects of the request's messages, in order."""
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return [part["image_url"] for part in _image_parts(messages)]

    async def finished(self) -> Outcome:
        """Wait until the request has ended, and say how."""
        await self._ended.wait()
        assert self.outcome is not None
        return self.outcome

    def _end(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.ended_at = time.monotonic()
            self._ended.set()


# --- Helpers ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*\S+|\s+")
_ALPHANUMERIC = string.ascii_letters + string.digits


def tokenize(text: str) -> list[str]:
    """Split text into word tokens that carry their leading space, as model tokens often do."""
    return _TOKEN.findall(text)


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def _message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of an array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _image_parts(messages: Any) -> list[dict[str, Any]]:
    """The image parts of a list of messages (of well-formed ones; others are skipped)."""
    if not isinstance(messages, list):
        return []
    return [
        part
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    ]


# What a low-detail image costs in OpenAI's accounting.
IMAGE_TOKENS = 85


def _estimate_prompt_tokens(messages: list[Any]) -> int:
    # A few tokens of framing per message, as OpenAI's own accounting has.
    return (
        3
        + sum(4 + len(tokenize(_message_text(m.get("content")))) for m in messages)
        + IMAGE_TOKENS * len(_image_parts(messages))
    )


class _Changes:
    """Wakes every waiter whenever the server's records or counters change.

    Unlike ``asyncio.Condition``, notifying needs no await, so it is safe in ``finally`` blocks
    of handlers that are being cancelled.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class _Closing(Exception):
    """The server is shutting down; the handler must let go of its request now."""


class _Dropped(Exception):
    """The script asked for the connection to be aborted."""


# --- Request validation -----------------------------------------------------------------------

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_KNOWN_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return _invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _check_number(body: dict[str, Any], param: str, low: float, high: float) -> ApiError | None:
    if param not in body or body[param] is None:
        return None
    value = body[param]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _wrong_type(param, "a decimal", value)
    if value < low:
        return _invalid_request(
            f"Invalid '{param}': decimal below minimum value. "
            f"Expected a value >= {low:g}, but got {value} instead.",
            param=param,
            code="decimal_below_min_value",
        )
    if value > high:
        return _invalid_request(
            f"Invalid '{param}': decimal above maximum value. "
            f"Expected a value <= {high:g}, but got {value} instead.",
            param=param,
            code="decimal_above_max_value",
        )
    return None


def _check_positive_integer(body: dict[str, Any], param: str) -> ApiError | None:
    if param not in body or body[param] is None:
        return None
    value = body[param]
    if isinstance(value, bool) or not isinstance(value, int):
        return _wrong_type(param, "an integer", value)
    if value < 1:
        return _invalid_request(
            f"Invalid '{param}': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    return None


def _check_messages(body: dict[str, Any]) -> ApiError | None:
    if "messages" not in body:
        return _invalid_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        return _wrong_type("messages", "an array", messages)
    if not messages:
        return _invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return _wrong_type(where, "an object", message)
        if "role" not in message:
            return _invalid_request(
                f"Missing required parameter: '{where}.role'.",
                param=f"{where}.role",
                code="missing_required_parameter",
            )
        role = message["role"]
        if role not in _ROLES:
            supported = ", ".join(f"'{r}'" for r in _ROLES[:-1]) + f", and '{_ROLES[-1]}'"
            return _invalid_request(
                f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        # An assistant turn may carry tool calls instead of text.
        if "content" not in message and role != "assistant":
            return _invalid_request(
                f"Missing required parameter: '{where}.content'.",
                param=f"{where}.content",
                code="missing_required_parameter",
            )
        content = message.get("content")
        if not (isinstance(content, str | list) or (content is None and role == "assistant")):
            return _wrong_type(f"{where}.content", "one of a string or array of objects", content)
        if isinstance(content, list):
            error = _check_parts(where, role, content)
            if error is not None:
                return error
    return None


# The content part types each role may send.
_PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
_DETAILS = ("auto", "low", "high", "original")
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def _supported(values: Sequence[str]) -> str:
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _check_parts(where: str, role: str, parts: list[Any]) -> ApiError | None:
    allowed = _PART_TYPES.get(role, ("text",))
    for index, part in enumerate(parts):
        at = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            return _wrong_type(at, "an object", part)
        kind = part.get("type")
        if kind is None:
            return _invalid_request(
                f"Missing required parameter: '{at}.type'.",
                param=f"{at}.type",
                code="missing_required_parameter",
            )
        if kind == "image_url" and role != "user":
            return _invalid_request(
                f"Invalid '{at}'. Image URLs are only allowed for messages with role 'user', "
                f"but this message with role '{role}' contains an image URL.",
                param=at,
                code="invalid_value",
            )
        if kind not in allowed:
            return _invalid_request(
                f"Invalid value: {json.dumps(kind)}. Supported values are: {_supported(allowed)}.",
                param=f"{at}.type",
                code="invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            if "text" not in part:
                return _invalid_request(
                    f"Missing required parameter: '{at}.text'.",
                    param=f"{at}.text",
                    code="missing_required_parameter",
                )
            return _wrong_type(f"{at}.text", "a string", part["text"])
        if kind == "image_url":
            error = _check_image(f"{at}.image_url", part.get("image_url"))
            if error is not None:
                return error
    return None


def _check_image(at: str, image: Any) -> ApiError | None:
    """OpenAI's checks of one ``image_url`` object: a data URL of an image, or a web URL."""
    if image is None:
        return _invalid_request(
            f"Missing required parameter: '{at}'.", param=at, code="missing_required_parameter"
        )
    if not isinstance(image, dict):
        return _wrong_type(at, "an object", image)
    url = image.get("url")
    if url is None:
        return _invalid_request(
            f"Missing required parameter: '{at}.url'.",
            param=f"{at}.url",
            code="missing_required_parameter",
        )
    if not isinstance(url, str):
        return _wrong_type(f"{at}.url", "a string", url)
    detail = image.get("detail")
    if detail is not None and detail not in _DETAILS:
        return _invalid_request(
            f"Invalid value: {json.dumps(detail)}. Supported values are: {_supported(_DETAILS)}.",
            param=f"{at}.detail",
            code="invalid_value",
        )
    if url.startswith(("https://", "http://")):
        # A web image would be fetched by the provider; this fake never goes out for it.
        return None
    return _check_data_url(f"{at}.url", url)


def _check_data_url(at: str, url: str) -> ApiError | None:
    def invalid(got: str) -> ApiError:
        return _invalid_request(
            f"Invalid image URL: '{at}'. Expected a base64-encoded data URL with an image MIME "
            f"type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got {got}.",
            param=at,
            code="invalid_value",
        )

    match = _DATA_URL.fullmatch(url)
    if match is None:
        return invalid("a value without the 'data:' prefix")
    if ";base64" not in match["params"]:
        return invalid("a value that is not base64-encoded")
    if not match["data"]:
        return invalid("empty base64-encoded bytes")
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        return invalid("an invalid base64-encoded value")
    media_type = match["type"].lower()
    if media_type not in _IMAGE_MAGIC:
        return _invalid_request(
            "Invalid MIME type. Only image types are supported.",
            param=at,
            code="invalid_image_format",
        )
    looks_right = any(data.startswith(magic) for magic in _IMAGE_MAGIC[media_type])
    if media_type == "image/webp":
        looks_right = looks_right and data[8:12] == b"WEBP"
    if not looks_right:
        return _invalid_request(
            "You uploaded an unsupported image. Please make sure your image is valid.",
            param=at,
            code="invalid_image_format",
        )
    return None


def _check_stream(body: dict[str, Any]) -> ApiError | None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _wrong_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is None:
        return None
    if not stream:
        return _invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        return _wrong_type("stream_options", "an object", options)
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        return _wrong_type("stream_options.include_usage", "a boolean", include_usage)
    return None


def validate_chat_request(body: Any) -> ApiError | None:
    """The error OpenAI would answer this chat completions body with, or ``None`` if it is fine.

    Covers the JSON itself, unknown parameters, ``model``, ``messages``, ``temperature``,
    ``top_p``, ``max_tokens``, ``max_completion_tokens``, ``n``, ``stream`` and
    ``stream_options``. Other known parameters are accepted as they are.
    """
    if not isinstance(body, dict):
        return _invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
    for name in body:
        if name not in _KNOWN_PARAMETERS:
            return _invalid_request(f"Unrecognized request argument supplied: {name}")
    model = body.get("model")
    if model is None or model == "":
        return _invalid_request("you must provide a model parameter")
    if not isinstance(model, str):
        return _wrong_type("model", "a string", model)
    n = body.get("n")
    if n is not None and n != 1:
        # A limit of this fake, not of OpenAI: it only ever generates one choice.
        return _invalid_request("This server generates one choice only: 'n' must be 1.", "n")
    checks = (
        _check_messages(body),
        _check_number(body, "temperature", 0, 2),
        _check_number(body, "top_p", 0, 1),
        _check_positive_integer(body, "max_tokens"),
        _check_positive_integer(body, "max_completion_tokens"),
        _check_stream(body),
    )
    return next((error for error in checks if error is not None), None)


# --- One chat completion in the making ---------------------------------------------------------


@dataclass
class _Answer:
    """What a behaviour resolves to: the pieces to send and how to end."""

    pieces: list[str]
    content_is_null: bool = False
    is_refusal: bool = False
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None
    interval: float = 0.0
    drop_after: int | None = None
    end_after: int | None = None
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: ReasoningField = "reasoning_content"

    def cut(self, limit: int) -> None:
        """Stop at ``limit`` tokens, reasoning first, as a model out of output tokens does."""
        if len(self.reasoning) + len(self.pieces) <= limit or self.is_refusal:
            return
        self.reasoning = self.reasoning[:limit]
        self.pieces = self.pieces[: limit - len(self.reasoning)]
        self.finish_reason = "length"


class _Exchange:
    """One chat completions request being answered: its identity, its options, its response."""

    def __init__(self, request: web.Request, record: RecordedRequest) -> None:
        body = record.json
        self.request = request
        self.record = record
        self.model: str = body["model"]
        self.messages: list[Any] = body["messages"]
        self.stream: bool = body.get("stream") is True
        options = body.get("stream_options") or {}
        self.include_usage: bool = options.get("include_usage") is True
        self.max_tokens: int | None = body.get("max_completion_tokens") or body.get("max_tokens")
        self.completion_id = _random_id("chatcmpl-", 29)
        self.created = int(time.time())
        self.fingerprint = "fp_" + secrets.token_hex(5)

    def prompt_tokens(self) -> int:
        return _estimate_prompt_tokens(self.messages)

    def usage(
        self, given: Usage | None, completion_tokens: int, reasoning_tokens: int = 0
    ) -> Usage:
        """``given``, or the fake's own count: a token per piece, reasoning included."""
        return given or Usage(
            self.prompt_tokens(), completion_tokens + reasoning_tokens, reasoning_tokens
        )

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage.to_json() if usage is not None else None
        return chunk

    def completion(self, answer: _Answer) -> dict[str, Any]:
        text = "".join(answer.pieces)
        usage = self.usage(answer.usage, len(answer.pieces), len(answer.reasoning))
        self.record.usage = usage
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if answer.content_is_null or answer.is_refusal else text,
            "refusal": text if answer.is_refusal else None,
            "annotations": [],
        }
        if answer.reasoning:
            message[answer.reasoning_field] = "".join(answer.reasoning)
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": usage.to_json(),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
        }


class _EventStream:
    """Writes one completion as OpenAI's server-sent events."""

    def __init__(self, exchange: _Exchange, response: web.StreamResponse, refusal: bool) -> None:
        self._exchange = exchange
        self._response = response
        self._refusal = refusal
        self.sent = 0
        self.reasoning_sent = 0

    async def begin(self, content_is_null: bool = False) -> None:
        if self._refusal:
            delta: dict[str, Any] = {"role": "assistant", "content": None, "refusal": ""}
        else:
            content = None if content_is_null else ""
            delta = {"role": "assistant", "content": content, "refusal": None}
        await self._choice(delta, None)

    async def piece(self, text: str) -> None:
        await self._choice({"refusal" if self._refusal else "content": text}, None)
        self.sent += 1

    async def reasoning(self, text: str, reasoning_field: ReasoningField) -> None:
        await self._choice({reasoning_field: text}, None)
        self.sent += 1
        self.reasoning_sent += 1

    async def finish_reason(self, finish_reason: FinishReason) -> None:
        await self._choice({}, finish_reason)

    async def end(self, finish_reason: FinishReason, usage: Usage | None) -> None:
        await self._choice({}, finish_reason)
        exchange = self._exchange
        if exchange.include_usage:
            reported = exchange.usage(usage, self.sent - self.reasoning_sent, self.reasoning_sent)
            exchange.record.usage = reported
            await self._event(exchange.chunk([], reported))
        await self._response.write(b"data: [DONE]\n\n")

    async def _choice(self, delta: dict[str, Any], finish_reason: FinishReason | None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        await self._event(self._exchange.chunk([choice]))

    async def _event(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        await self._response.write(f"data: {data}\n\n".encode())


# --- The server -------------------------------------------------------------------------------


class FakeOpenAI:
    """A local OpenAI-compatible server driven by a script of behaviours.

    ``default`` answers whenever the script is empty. ``api_key``, if given, is the only key
    accepted (others get 401 ``invalid_api_key``); without it any bearer key passes, but a
    request with none still gets 401. ``models``, if given, are the only models served (others
    get 404 ``model_not_found``); without it any model name is served. ``text_only``, if given,
    makes every model text-only: a request with image parts is refused in those words before
    the script is consulted (:class:`TextOnly` does it for one scripted request).

    ``concurrency_limit``, if given, is a provider's hidden limit on chat requests in
    progress: a valid request arriving while that many are being answered gets
    ``concurrency_refusal`` (by default :func:`too_many_concurrent`) and takes nothing from
    the script. Both may be changed while the server runs.
    """

    def __init__(
        self,
        *,
        default: Behaviour | None = None,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        text_only: ImageRejection | None = None,
        concurrency_limit: int | None = None,
        concurrency_refusal: ApiError | RawError | None = None,
    ) -> None:
        if isinstance(default, StreamGate):
            raise TypeError("a StreamGate answers one request only; script it instead")
        self.default: Behaviour = default if default is not None else Echo()
        self._api_key = api_key
        self._models = tuple(models) if models is not None else None
        self.text_only = text_only
        self.concurrency_limit = concurrency_limit
        self.concurrency_refusal = concurrency_refusal
        self._answering = 0
        self._peak_answering = 0
        self._script: list[Behaviour] = []
        self._requests: list[RecordedRequest] = []
        self._gates_in_use: set[StreamGate] = set()
        self._changes = _Changes()
        self._closing = asyncio.Event()
        self._in_flight = 0
        self._open_streams = 0
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # Script -----------------------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each chat request that passes validation takes the next one."""
        self._script.extend(behaviours)

    def gated_stream(self) -> StreamGate:
        """Queue an answer the test releases piece by piece, and return its controls."""
        gate = StreamGate()
        self.script(gate)
        return gate

    @property
    def unused(self) -> Sequence[Behaviour]:
        """Scripted behaviours no request has taken yet."""
        return tuple(self._script)

    # Observation ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL to give ``AsyncOpenAI(base_url=...)``."""
        if self._port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def requests(self) -> Sequence[RecordedRequest]:
        """Every request received, in arrival order, whatever its path or fate."""
        return tuple(self._requests)

    @property
    def in_flight(self) -> int:
        """Requests received and not yet ended."""
        return self._in_flight

    @property
    def answering(self) -> int:
        """Chat requests taking their scripted behaviour now (not refused, not yet ended)."""
        return self._answering

    @property
    def peak_answering(self) -> int:
        """The most chat requests ever answered at once."""
        return self._peak_answering

    @property
    def open_streams(self) -> int:
        """Event streams started and not yet ended."""
        return self._open_streams

    async def wait_for_requests(self, count: int) -> Sequence[RecordedRequest]:
        """Wait until at least ``count`` requests have arrived; return all of them."""
        await self._changes.wait_until(lambda: len(self._requests) >= count)
        return self.requests

    async def wait_idle(self) -> None:
        """Wait until no request is open."""
        await self._changes.wait_until(lambda: self._in_flight == 0)

    # Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 at a free port."""
        app = web.Application()
        app.router.add_post(CHAT_PATH, self._handle_chat)
        app.router.add_get(MODELS_PATH, self._handle_models)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        # handler_cancellation: a client that hangs up cancels its handler, which is how a
        # request the client abandoned is told apart from one it read to the end.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        # aiohttp's default accept queue of 128 drops the SYNs of a bigger burst of new
        # connections, which then wait a second to retry; a provider's servers do not.
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening and release every open request without waiting for its answer."""
        self._closing.set()
        for gate in self._gates_in_use:
            gate._commands.put_nowait(_GateCommand("closing"))
        for behaviour in self._script:
            if isinstance(behaviour, StreamGate):
                behaviour._close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Handlers ---------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers={
                name.lower(): value
                for name, value in request.headers.items()
                if name.lower() != "authorization"
            },
            has_bearer_key=bool(_bearer_key(request)),
            body=body,
            request_id="req_" + secrets.token_hex(16),
        )
        self._requests.append(record)
        self._in_flight += 1
        self._changes.notify()
        return record

    def _auth_error(self, request: web.Request) -> ApiError | None:
        key = _bearer_key(request)
        if not key:
            return _missing_api_key()
        if self._api_key is not None and key != self._api_key:
            return invalid_api_key(key)
        return None

    def _headers(self, record: RecordedRequest, extra: Mapping[str, str] = {}) -> dict[str, str]:
        return {"x-request-id": record.request_id, "openai-processing-ms": "1", **extra}

    async def _respond(
        self, request: web.Request, record: RecordedRequest, response: web.StreamResponse
    ) -> web.StreamResponse:
        # Sent here rather than by aiohttp after the handler returns, so that "answered"
        # means the bytes were handed to the socket.
        record.status = response.status
        request[_SENT] = response
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _send_json(
        self,
        request: web.Request,
        record: RecordedRequest,
        status: int,
        payload: Any,
        headers: Mapping[str, str] = {},
    ) -> web.StreamResponse:
        response = web.json_response(payload, status=status, headers=self._headers(record, headers))
        return await self._respond(request, record, response)

    async def _send_error(
        self, request: web.Request, record: RecordedRequest, error: ApiError | RawError
    ) -> web.StreamResponse:
        if isinstance(error, RawError):
            response = web.Response(
                status=error.status,
                text=error.body,
                content_type=error.content_type,
                headers=self._headers(record),
            )
            return await self._respond(request, record, response)
        return await self._send_json(request, record, error.status, error.to_json(), error.headers)

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._serve_models)

    async def _serve_models(self, request: web.Request, record: RecordedRequest) -> None:
        error = self._auth_error(request)
        if error is not None:
            await self._send_error(request, record, error)
            return
        listing = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 1_721_172_741, "owned_by": "system"}
                for name in self._models or DEFAULT_MODELS
            ],
        }
        await self._send_json(request, record, 200, listing)

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._serve_unknown)

    async def _serve_unknown(self, request: web.Request, record: RecordedRequest) -> None:
        error = _invalid_request(f"Invalid URL ({request.method} {request.path})")
        await self._send_error(request, record, ApiError(404, error.message, error.type))

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, self._serve_chat)

    async def _guarded(
        self,
        request: web.Request,
        serve: Callable[[web.Request, RecordedRequest], Awaitable[None]],
    ) -> web.StreamResponse:
        """Record the request, serve it, and note how it ended whatever happens."""
        record = await self._record(request)
        try:
            await serve(request, record)
            record._end("answered")
        except asyncio.CancelledError:
            record._end("server_closed" if self._closing.is_set() else "client_disconnected")
            raise
        except ConnectionError:
            record._end("client_disconnected")
        except _Dropped:
            self._abort(request)
            record._end("dropped")
        except _Closing:
            self._abort(request)
            record._end("server_closed")
        except Exception:
            record._end("fake_failed")
            raise
        finally:
            self._in_flight -= 1
            self._changes.notify()
        # aiohttp finishes whatever is returned; on a connection already gone it gives up
        # quietly, so a placeholder does when nothing was sent.
        return request[_SENT] if _SENT in request else web.Response(status=204)

    def _abort(self, request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    async def _serve_chat(self, request: web.Request, record: RecordedRequest) -> None:
        error: ApiError | RawError | None = self._auth_error(request) or validate_chat_request(
            record.body
        )
        if error is None and self._models is not None and record.json["model"] not in self._models:
            error = model_not_found(record.json["model"])
        if error is None and self.text_only is not None and record.images:
            error = self._rejection(_Exchange(request, record), self.text_only)
        if error is not None:
            await self._send_error(request, record, error)
            return
        limit = self.concurrency_limit
        if limit is not None and self._answering >= limit:
            await self._send_error(
                request, record, self.concurrency_refusal or too_many_concurrent(limit)
            )
            return
        behaviour = self._script.pop(0) if self._script else self.default
        self._answering += 1
        self._peak_answering = max(self._peak_answering, self._answering)
        try:
            await self._perform(_Exchange(request, record), behaviour)
        finally:
            self._answering -= 1

    def _rejection(self, exchange: _Exchange, rejection: ImageRejection) -> ApiError | RawError:
        """The refusal of this request's images, naming the first one's part."""
        param = None
        for m, message in enumerate(exchange.messages):
            content = message.get("content")
            if isinstance(content, list):
                for p, part in enumerate(content):
                    if isinstance(part, dict) and part.get("type") == "image_url":
                        param = param or f"messages.[{m}].content.[{p}].type"
        return images_rejected(rejection, model=exchange.model, param=param)

    async def _perform(self, exchange: _Exchange, behaviour: Behaviour) -> None:
        request, record = exchange.request, exchange.record
        match behaviour:
            case Delay(seconds=seconds, then=then):
                await self._pause(seconds)
                await self._perform(exchange, then)
            case Hang():
                await self._pause(None)
            case ApiError() | RawError():
                await self._send_error(request, record, behaviour)
            case StreamGate():
                await self._serve_gate(exchange, behaviour)
            case Echo():
                user_turns = [m for m in exchange.messages if m.get("role") == "user"]
                text = _message_text(user_turns[-1].get("content")) if user_turns else ""
                await self._answer(exchange, _Answer(tokenize(text)))
            case Reply(text=text, finish_reason=finish_reason, usage=usage):
                pieces = tokenize(text) if text else []
                answer = _Answer(pieces, text is None, False, finish_reason, usage)
                answer.reasoning = tokenize(behaviour.reasoning or "")
                answer.reasoning_field = behaviour.reasoning_field
                await self._answer(exchange, answer)
            case TextOnly(rejection=rejection, then=then):
                if exchange.record.images:
                    await self._send_error(request, record, self._rejection(exchange, rejection))
                else:
                    await self._perform(exchange, then)
            case Refusal(message=message, usage=usage):
                answer = _Answer(tokenize(message), is_refusal=True, usage=usage)
                await self._answer(exchange, answer)
            case StreamReply():
                answer = _Answer(
                    behaviour.tokens(),
                    finish_reason=behaviour.finish_reason,
                    usage=behaviour.usage,
                    interval=behaviour.interval,
                    drop_after=behaviour.drop_after,
                    end_after=behaviour.end_after,
                    reasoning=behaviour.reasoning_tokens(),
                    reasoning_field=behaviour.reasoning_field,
                )
                await self._answer(exchange, answer)

    async def _pause(self, seconds: float | None) -> None:
        """Sleep ``seconds`` (forever if ``None``), cut short by the server closing."""
        if seconds is None:
            await self._closing.wait()
            raise _Closing
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return
        raise _Closing

    async def _answer(self, exchange: _Exchange, answer: _Answer) -> None:
        if exchange.max_tokens is not None:
            answer.cut(exchange.max_tokens)
        if not exchange.stream:
            if answer.interval:
                await self._pause(answer.interval * (len(answer.reasoning) + len(answer.pieces)))
            if answer.drop_after is not None:
                raise _Dropped
            await self._send_json(
                exchange.request,
                exchange.record,
                200,
                exchange.completion(answer),
            )
            return
        async with self._event_stream(exchange, answer.is_refusal) as events:
            await events.begin(answer.content_is_null)
            pieces = [(piece, True) for piece in answer.reasoning]
            pieces += [(piece, False) for piece in answer.pieces]
            for piece, is_reasoning in pieces:
                if events.sent == answer.drop_after:
                    raise _Dropped
                if events.sent == answer.end_after:
                    return
                if answer.interval:
                    await self._pause(answer.interval)
                if is_reasoning:
                    await events.reasoning(piece, answer.reasoning_field)
                else:
                    await events.piece(piece)
            if events.sent == answer.drop_after:
                raise _Dropped
            if events.sent == answer.end_after:
                return
            await events.end(answer.finish_reason, answer.usage)

    @asynccontextmanager
    async def _event_stream(
        self, exchange: _Exchange, refusal: bool
    ) -> AsyncIterator[_EventStream]:
        """Start the 200 event-stream response, count it open, and finish it when done."""
        response = web.StreamResponse(
            status=200,
            headers=self._headers(
                exchange.record,
                {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"},
            ),
        )
        exchange.request[_SENT] = response
        exchange.record.status = 200
        await response.prepare(exchange.request)
        self._open_streams += 1
        self._changes.notify()
        try:
            yield _EventStream(exchange, response, refusal)
            await response.write_eof()
        finally:
            self._open_streams -= 1
            self._changes.notify()

    async def _serve_gate(self, exchange: _Exchange, gate: StreamGate) -> None:
        if gate.closed or gate._request.done():
            raise RuntimeError("a StreamGate answers one request only")
        self._gates_in_use.add(gate)
        gate._attach(exchange.record)
        try:
            if exchange.stream:
                async with self._event_stream(exchange, refusal=False) as events:
                    await events.begin()
                    await self._run_gate(exchange, gate, events)
            else:
                await self._run_gate(exchange, gate, None)
        finally:
            self._gates_in_use.discard(gate)
            gate._close()

    async def _run_gate(
        self, exchange: _Exchange, gate: StreamGate, events: _EventStream | None
    ) -> None:
        collected = _Answer([])
        while True:
            command = await gate._commands.get()
            try:
                finished = await self._carry_out(exchange, command, events, collected)
            except BaseException:
                _refuse(command)
                raise
            _acknowledge(command)
            if finished:
                return

    async def _carry_out(
        self,
        exchange: _Exchange,
        command: _GateCommand,
        events: _EventStream | None,
        collected: _Answer,
    ) -> bool:
        """Do one thing the test asked of a gate; say whether the answer is complete."""
        match command.kind:
            case "closing":
                raise _Closing
            case "drop":
                # Acknowledged first: once the connection is gone, nothing else will.
                _acknowledge(command)
                raise _Dropped
            case "piece":
                if events is not None:
                    await events.piece(command.piece)
                else:
                    collected.pieces.append(command.piece)
                return False
            case "reasoning":
                if events is not None:
                    await events.reasoning(command.piece, command.reasoning_field)
                else:
                    collected.reasoning.append(command.piece)
                    collected.reasoning_field = command.reasoning_field
                return False
            case "finish_reason":
                if events is not None:
                    await events.finish_reason(command.finish_reason)
                return False
            case "end" if events is not None:
                # Returning closes the response properly, with nothing more written.
                return True
            case "finish" | "end":
                if events is not None:
                    await events.end(command.finish_reason, command.usage)
                else:
                    collected.finish_reason = command.finish_reason
                    collected.usage = command.usage
                    await self._send_json(
                        exchange.request, exchange.record, 200, exchange.completion(collected)
                    )
                return True


def _acknowledge(command: _GateCommand) -> None:
    if command.done is not None and not command.done.done():
        command.done.set_result(None)


def _refuse(command: _GateCommand) -> None:
    if command.done is not None and not command.done.done():
        command.done.set_exception(StreamGateClosed())


def _bearer_key(request: web.Request) -> str:
    """The bearer key the request carries, or ``""``."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


@asynccontextmanager
async def start_fake_openai(
    *,
    default: Behaviour | None = None,
    api_key: str | None = None,
    models: Sequence[str] | None = None,
    text_only: ImageRejection | None = None,
    concurrency_limit: int | None = None,
    concurrency_refusal: ApiError | RawError | None = None,
) -> AsyncIterator[FakeOpenAI]:
    """Run a :class:`FakeOpenAI` on 127.0.0.1 for the duration of the ``async with`` block."""
    server = FakeOpenAI(
        default=default,
        api_key=api_key,
        models=models,
        text_only=text_only,
        concurrency_limit=concurrency_limit,
        concurrency_refusal=concurrency_refusal,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()
