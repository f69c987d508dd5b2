"""The completion helper: the only module that talks to the language model.

`Completer` sends a conversation (a list of `ChatMessage`s, or one prompt after the
configured system prompt) to an OpenAI-compatible chat completions endpoint and returns
an `Answer` (or streams `Chunk`s), or raises one of the errors below. Every SDK failure is
mapped to exactly one of them, so callers never see `openai` exceptions:

    CompletionError                 anything the model call can fail with
    ├── RateLimited                 the provider throttled us; `retry_after` when it said
    ├── TimedOut                    no complete answer before the deadline
    ├── PromptTooLong               prompt exceeds the model's context window
    ├── ProviderMisconfigured       bad key, unknown model, wrong URL, no quota, rejected request
    │   └── ImagesNotSupported      the model takes no image input (said by the provider or known)
    ├── ProviderUnavailable         connection failure, a 5xx, or a stream that ended early
    ├── EmptyAnswer                 the model produced no answer text (reasoning alone is none)
    └── Refused                     the model declined (refusal or content filter)

Each error carries the provider's request id, when there is one, for the operator's log; its
`str()` names the URL and the cause (connection refused, DNS, TLS, a 404 on the path).

The contract of one answer:

- **Reasoning.** What a reasoning model thinks before it answers is never answer text. It
  arrives in a delta field of its own (`reasoning_content` from vLLM and DeepSeek,
  `reasoning` from OpenRouter, Ollama and llama.cpp) or inline in the content between
  `<think>` and `</think>` (see `bot.model.reasoning`); either way it goes to
  `Chunk.reasoning` / `Answer.reasoning`, and `Chunk.text` / `Answer.text` hold the answer
  alone. A stream yields reasoning chunks as the model writes them, so a consumer can show
  that the model is thinking. `EmptyAnswer` is judged on the answer text alone.
- **Images.** Image parts (`bot.model.vision`) go to models that may see them:
  `Completer.sees_images` is `VISION`, or with `auto` a guess from the model's name (`None`:
  unknown, try). A provider that rejects image input raises `ImagesNotSupported`, and from
  then on the `Completer` knows (`sees_images` is `False`) and raises it at once, sending
  nothing, for any request with images; the caller strips them (`vision.without_images`),
  tells the person, and asks again with the text.

- **Deadline.** The answer must be complete, from the first request to the last token,
  retries and waits included, by its deadline: `timeout` seconds (OPENAI_TIMEOUT) after the
  call starts, or the caller's `deadline` (event-loop time) if that is earlier. Reaching it
  before any text raises `TimedOut`; reaching it mid-stream raises `TimedOut` after the text
  so far was yielded (an interrupted answer).
- **Retries.** Up to `max_retries` (OPENAI_MAX_RETRIES) more attempts after a 408, 409,
  429 (not an exhausted quota), 5xx or connection failure, until the response starts; the
  provider's `x-should-retry` wins. The wait is the provider's `retry-after-ms` or
  `retry-after` when it gives one, else exponential backoff with jitter, and never crosses
  the deadline: a wait that would is skipped and the error raised at once. The SDK's own
  retries are off in clients from `make_client`; a client with them on retries inside each
  of our attempts.
- **Observer.** An `AttemptObserver` hears of every HTTP attempt, retries included: its
  status (`None` for a connection failure or a timeout) and how long the response took to
  start. Attempts cancelled by the caller are not reported.
- **Interrupted streams.** A stream that breaks, or ends without a finish reason, raises
  after the text it carried was yielded; a break after the finish reason is a complete answer.

`make_client` builds the HTTP client from `Settings` alone: nothing the SDK or its HTTP
library would read from the environment (OPENAI_BASE_URL, OPENAI_ORG_ID, OPENAI_PROJECT_ID,
OPENAI_CUSTOM_HEADERS, HTTP(S)_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE, SSL_CERT_DIR)
changes where or how it connects.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal, Protocol, TypeVar

import aiohttp
import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
)
from openai.types.completion_usage import CompletionUsage

from bot.config import ModelLimits, Settings
from bot.model.reasoning import Split, ThinkParser
from bot.model.vision import has_images, rejects_images, sees_images_by_name

ChatMessage = ChatCompletionMessageParam
"""One message of a conversation sent to the model (`{"role": ..., "content": ...}`); the
other layers use this name and never import `openai`."""

ContentPart = ChatCompletionContentPartParam
"""One part of a message's content given as a list: text, or an image (`bot.model.vision`)."""

REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where compatible servers put reasoning outside the content: vLLM and DeepSeek use the
first, OpenRouter and newer Ollama and llama.cpp the second (some send both, the same)."""

log = logging.getLogger(__name__)

T = TypeVar("T")

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""Where requests go when OPENAI_BASE_URL is not set."""

Transport = Literal["aiohttp", "httpx2"]
"""The HTTP library under the SDK: aiohttp (the default, cheaper per call) or httpx2."""

# The SDK's own backoff: 0.5 s doubling up to 8 s, less up to a quarter of jitter.
_INITIAL_BACKOFF = 0.5
_MAX_BACKOFF = 8.0


class CompletionError(Exception):
    """The model call failed; `str()` is for operators, never shown to users."""

    kind: ClassVar[str] = "failed"
    """A short name for logs and metrics."""

    def __init__(self, detail: str, *, request_id: str | None = None) -> None:
        super().__init__(detail)
        self.request_id = request_id


class RateLimited(CompletionError):
    kind = "rate_limited"

    def __init__(
        self, detail: str, *, retry_after: float | None, request_id: str | None = None
    ) -> None:
        super().__init__(detail, request_id=request_id)
        self.retry_after = retry_after


class TimedOut(CompletionError):
    kind = "timed_out"


class PromptTooLong(CompletionError):
    kind = "prompt_too_long"


class ProviderMisconfigured(CompletionError):
    kind = "misconfigured"


class ProviderUnavailable(CompletionError):
    kind = "unavailable"


class ImagesNotSupported(ProviderMisconfigured):
    """The model cannot take image input: the provider said so, or it is known.

    Answer again without the images (`vision.without_images`) and say they were not seen.
    """

    kind = "images_not_supported"


class EmptyAnswer(CompletionError):
    """No answer text; `reasoned` when the model wrote reasoning and then nothing else."""

    kind = "empty"

    def __init__(
        self, detail: str, *, request_id: str | None = None, reasoned: bool = False
    ) -> None:
        super().__init__(detail, request_id=request_id)
        self.reasoned = reasoned


class Refused(CompletionError):
    kind = "refused"


@dataclass(frozen=True)
class Usage:
    """Tokens the provider counted; `completion_tokens` includes `reasoning_tokens`."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Answer:
    """The model's answer text; `truncated` when it stopped at the output token limit.

    `reasoning` is what it thought first (stripped; `""` for none), never part of `text`.
    """

    text: str
    finish_reason: str | None
    usage: Usage | None = None
    reasoning: str = ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer; the last ones carry `finish_reason` and `usage`.

    The answer is the concatenation of the chunks' `text`, the reasoning that of their
    `reasoning`: a chunk with `reasoning` means the model is thinking (show a status), one
    with `text` that it is answering. `text_was_reasoning` means the `text` of the chunks
    before this one was reasoning after all (a model whose chat template opens `<think>`
    for it sends only `</think>`): discard that text; this chunk's `reasoning` repeats it.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning: str = ""
    text_was_reasoning: bool = False


class AttemptObserver(Protocol):
    """Told of every HTTP attempt a `Completer` makes, retries included.

    `status` is the response's HTTP status (200 for a successful one), `None` for a
    connection failure or a timeout; `seconds` runs from sending the request until the
    response started (its headers; a non-streamed answer arrives whole with them). Called on
    the event loop; it must be quick, and what it raises is logged and ignored.
    """

    def attempt_done(self, status: int | None, seconds: float) -> None: ...


def make_client(
    settings: Settings, *, base_url: str | None = None, transport: Transport = "aiohttp"
) -> openai.AsyncOpenAI:
    """Build the process's one `AsyncOpenAI` from `settings` alone; the caller must close it.

    `base_url` overrides the configured one (the built-in model's server). The SDK's own
    retries are off: `Completer` retries within the answer's deadline.
    """
    # trust_env off: proxies and certificate files from the environment are not our settings.
    http_client = (
        openai.DefaultAioHttpClient(trust_env=False)
        if transport == "aiohttp"
        else openai.DefaultAsyncHttpxClient(trust_env=False)
    )
    client = openai.AsyncOpenAI(
        # Compatible servers such as Ollama or llama.cpp accept any key, but the SDK
        # refuses to start without one.
        api_key=settings.openai_api_key.reveal() if settings.openai_api_key else "unused",
        # Always given: left out, the SDK would read OPENAI_BASE_URL itself, and the empty
        # value a copied .env.example puts there breaks every call.
        base_url=base_url or settings.openai_base_url or OPENAI_BASE_URL,
        timeout=settings.openai_timeout,
        max_retries=0,
        http_client=http_client,
    )
    _forget_environment(client)
    return client


def _forget_environment(client: openai.AsyncOpenAI) -> None:
    """Undo what the SDK's constructor took from the environment rather than from us.

    It reads OPENAI_ORG_ID, OPENAI_PROJECT_ID, OPENAI_ADMIN_KEY, OPENAI_WEBHOOK_SECRET and
    OPENAI_CUSTOM_HEADERS whenever the argument is not given, and passing "" would send an
    empty header instead of none.
    """
    client.organization = None
    client.project = None
    client.admin_api_key = None
    client.webhook_secret = None
    client._custom_headers = {}
    client._ambient_authorizations = frozenset()


@asynccontextmanager
async def open_completer(
    settings: Settings, *, local_slots: int = 4, observer: AttemptObserver | None = None
) -> AsyncIterator[Completer]:
    """The process's `Completer`, with its HTTP client (and built-in model) owned here.

    `local_slots` is how many answers the built-in model writes at once; each slot
    holds its own context memory. `observer` hears of every HTTP attempt.

    With no provider configured this starts the built-in local model first, which
    raises `bot.model.local_model.LocalModelError` when it cannot be served.
    """
    if not settings.uses_builtin_model:
        async with make_client(settings) as client:
            yield Completer.from_settings(client, settings, observer=observer)
        return

    # Imported here: a deployment that uses a provider never loads llama.cpp.
    from bot.model.local_model import LocalModelServer

    async with LocalModelServer.start(
        model_path=settings.local_model_path, parallel=local_slots
    ) as server:
        log.info(
            "No OPENAI_API_KEY or OPENAI_BASE_URL set: answering with the built-in model %s. "
            "It is tiny and for trying the bot out; set OPENAI_API_KEY (or OPENAI_BASE_URL "
            "for Ollama, vLLM, llama.cpp, OpenRouter) to use a real one.",
            server.model.describe(),
        )
        async with make_client(settings, base_url=server.base_url) as client:
            yield Completer(
                client,
                model=server.model_name,
                system_prompt=settings.system_prompt,
                max_output_tokens=settings.max_output_tokens,
                compatible_server=True,
                timeout=settings.openai_timeout,
                max_retries=settings.openai_max_retries,
                observer=observer,
                vision=settings.vision,
            )


class Completer:
    """Turns a prompt into an `Answer`, or a stream of `Chunk`s, with one chat completion.

    `timeout` is the most seconds one answer may take, retries included (`None`: only the
    caller's deadline and the client's own timeouts bound it); `max_retries` how many more
    attempts a failure that may pass gets; `observer` hears of every attempt. `vision` says
    whether the model sees images (`None`: judge by its name, see `sees_images`).
    `complete` and `stream` answer with `model` unless given another (`model=`); `limits`
    holds what differs for some models (their output cap and vision, MODELS_FILE).
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        system_prompt: str,
        max_output_tokens: int | None = None,
        compatible_server: bool = False,
        timeout: float | None = None,
        max_retries: int = 0,
        observer: AttemptObserver | None = None,
        vision: bool | None = None,
        limits: Mapping[str, ModelLimits] | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._system_prompt = system_prompt
        self._max_output_tokens = max_output_tokens
        # OpenAI's reasoning models reject `max_tokens`; many compatible servers only
        # know `max_tokens`. Use the name each side understands.
        self._max_tokens_field = "max_tokens" if compatible_server else "max_completion_tokens"
        self._timeout = timeout
        self._max_retries = max_retries
        self._observer = observer
        self._vision = vision
        self._limits = dict(limits or {})
        # Per model: whether it sees images, learned `False` once a provider refuses them.
        self._sees: dict[str, bool | None] = {}

    @classmethod
    def from_settings(
        cls,
        client: openai.AsyncOpenAI,
        settings: Settings,
        observer: AttemptObserver | None = None,
    ) -> Completer:
        return cls(
            client,
            model=settings.openai_model,
            system_prompt=settings.system_prompt,
            max_output_tokens=settings.max_output_tokens,
            compatible_server=settings.openai_base_url is not None,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
            observer=observer,
            vision=settings.vision,
            limits=settings.model_limits,
        )

    @property
    def model(self) -> str:
        return self._model

    @property
    def base_url(self) -> str:
        """The endpoint requests go to, ending in `/v1` (no trailing slash)."""
        return str(self._client.base_url).rstrip("/")

    @property
    def sees_images(self) -> bool | None:
        """Whether image parts may be sent: `True`, `False`, or `None` for unknown (try).

        `VISION=true`/`false` decides, or with `auto` the model's name; once the provider
        has rejected image input it is `False` for the rest of the process.
        """
        return self.sees_images_of(self._model)

    def sees_images_of(self, model: str) -> bool | None:
        """`sees_images` for `model`: its `vision` in MODELS_FILE, else as for any model."""
        if model not in self._sees:
            limits = self._limits.get(model)
            vision = limits.vision if limits is not None else None
            if vision is None:
                vision = self._vision
            self._sees[model] = vision if vision is not None else sees_images_by_name(model)
        return self._sees[model]

    @property
    def system_prompt(self) -> str:
        """The configured system prompt, put before a lone prompt."""
        return self._system_prompt

    def messages(self, request: str | Sequence[ChatMessage]) -> list[ChatMessage]:
        """The messages sent for `request`: a conversation as it is, or a lone prompt
        after the system prompt."""
        if not isinstance(request, str):
            return list(request)
        return [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": request},
        ]

    async def complete(
        self,
        request: str | Sequence[ChatMessage],
        *,
        deadline: float | None = None,
        model: str | None = None,
    ) -> Answer:
        """Answer `request` (see `messages`); return the answer or raise a `CompletionError`.

        `deadline` (event-loop time) ends the answer earlier than `timeout` would; `model`
        answers with another model than the `Completer`'s own. The reasoning, in whichever
        form it came, is in `Answer.reasoning`, never in its `text`.
        """
        messages = self.messages(request)
        ends = self._deadline(deadline)
        model = model or self._model

        def create(headers: dict[str, str]) -> Awaitable[ChatCompletion]:
            return self._client.chat.completions.create(
                model=model,
                messages=messages,
                extra_body=self._extra_body(model),
                extra_headers=headers,
            )

        completion = await self._send(
            create, ends, deadline, images=has_images(messages), model=model
        )
        request_id = completion._request_id
        if not completion.choices:
            raise _log_failure(EmptyAnswer("response had no choices", request_id=request_id))
        choice = completion.choices[0]
        parser = ThinkParser()
        reasoning = _reasoning_field(choice.message.model_extra)
        if reasoning:
            parser.separate_reasoning()
        text = ""
        for split in (parser.feed(choice.message.content or ""), parser.finish()):
            text = ("" if split.text_was_reasoning else text) + split.text
            reasoning += split.reasoning
        _check_answer(
            text, choice.message.refusal, choice.finish_reason, request_id, bool(reasoning.strip())
        )
        return Answer(
            text=text,
            finish_reason=choice.finish_reason,
            usage=_usage(completion.usage),
            reasoning=reasoning.strip(),
        )

    async def stream(
        self,
        request: str | Sequence[ChatMessage],
        *,
        deadline: float | None = None,
        model: str | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Answer `request` (see `messages`), yielding the answer as it is written.

        Reasoning is yielded as it comes, in `Chunk.reasoning`, before the answer's text
        (see `Chunk` for the one case where text turns out to have been reasoning).
        Raises a `CompletionError` before the first chunk or mid-stream (after the text so
        far): `TimedOut` at the deadline, `ProviderUnavailable` when the stream breaks or
        ends without a finish reason, `ImagesNotSupported` before any chunk when the model
        takes no images. A stream that ends without any answer text (reasoning alone
        included) raises `EmptyAnswer`. Closing the iterator early (or cancelling its
        consumer) closes the HTTP response, which cancels the request. `model` as for
        `complete`.
        """
        ends = self._deadline(deadline)
        messages = self.messages(request)
        model = model or self._model

        def create(headers: dict[str, str]) -> Awaitable[openai.AsyncStream[ChatCompletionChunk]]:
            return self._client.chat.completions.create(
                model=model,
                messages=messages,
                extra_body=self._extra_body(model),
                extra_headers=headers,
                stream=True,
                stream_options={"include_usage": True},
            )

        stream = await self._send(create, ends, deadline, images=has_images(messages), model=model)
        request_id = stream.response.headers.get("x-request-id")
        parser = ThinkParser()
        answer = _Accumulated()
        refusal = ""
        finish_reason: str | None = None
        failure: CompletionError | None = None
        cause: BaseException | None = None
        events = aiter(stream)
        try:
            async with stream:
                while True:
                    # A fresh scope per event: a timeout must never span a `yield`, or it
                    # would fire in whatever the consumer is doing meanwhile.
                    async with asyncio.timeout_at(ends):
                        event = await anext(events, None)
                    if event is None:
                        break
                    usage = _usage(event.usage)
                    if not event.choices:
                        if usage is not None:
                            yield Chunk(usage=usage)
                        continue
                    choice = event.choices[0]
                    reasoning = _reasoning_field(choice.delta.model_extra)
                    if reasoning:
                        parser.separate_reasoning()
                    split = parser.feed(choice.delta.content or "")
                    if choice.finish_reason and finish_reason is None:
                        split = _joined(split, parser.finish())
                    refusal += choice.delta.refusal or ""
                    finish_reason = choice.finish_reason or finish_reason
                    chunk = answer.add(split, reasoning, choice.finish_reason, usage)
                    if chunk is not None:
                        yield chunk
        except TimeoutError as exc:
            failure, cause = self._timed_out(deadline, ends, request_id), exc
        except openai.OpenAIError as exc:
            # A connection dropped mid-stream arrives as APIConnectionError. After the
            # finish reason only the usage report was still to come: the answer is whole.
            if finish_reason is None or not isinstance(exc, openai.APIConnectionError):
                failure, cause = translate_error(exc), exc
                failure.request_id = failure.request_id or request_id
            else:
                log.debug("model stream broke after its finish reason (request id %s)", request_id)
        if finish_reason is None:
            # Whatever was held back in case a tag followed is all there will be.
            chunk = answer.add(parser.finish(), "", None, None)
            if chunk is not None:
                yield chunk
        if failure is not None:
            raise _log_failure(failure) from cause
        if finish_reason is None:
            raise _log_failure(
                ProviderUnavailable(
                    "the stream ended early, without a finish reason"
                    f"{_where(stream.response.request)}",
                    request_id=request_id,
                )
            )
        _check_answer(answer.text, refusal or None, finish_reason, request_id, answer.reasoned)

    def _deadline(self, deadline: float | None) -> float | None:
        """When this answer must be done, in event-loop time; `None` for never."""
        if self._timeout is None:
            return deadline
        own = asyncio.get_running_loop().time() + self._timeout
        return own if deadline is None else min(own, deadline)

    async def _send(
        self,
        create: Callable[[dict[str, str]], Awaitable[T]],
        ends: float | None,
        deadline: float | None,
        *,
        images: bool,
        model: str,
    ) -> T:
        """Make the request, retrying what may pass, until the response starts or `ends`.

        `images`: the request carries image parts, which a model known to be blind never
        gets sent.
        """
        if images and self.sees_images_of(model) is False:
            raise _log_failure(
                ImagesNotSupported(f"{model} cannot see images (VISION, or a past refusal)")
            )
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            started = loop.time()
            if ends is not None and started >= ends:
                # Out of time before sending: no attempt to report.
                raise _log_failure(self._timed_out(deadline, ends, None))
            try:
                async with asyncio.timeout_at(ends):
                    result = await create({"x-stainless-retry-count": str(attempt)})
            except TimeoutError as exc:
                self._observe(None, loop.time() - started)
                raise _log_failure(self._timed_out(deadline, ends, None)) from exc
            except openai.OpenAIError as exc:
                status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
                self._observe(status, loop.time() - started)
                error = translate_error(exc, images=images)
                if isinstance(error, ImagesNotSupported):
                    self._learn_blind(error, model)
                wait = self._retry_wait(error, exc, attempt, ends)
                if wait is None:
                    if attempt:
                        error.args = (f"{error} (after {attempt + 1} attempts)",)
                    raise _log_failure(error) from exc
                log.debug(
                    "model call failed, retry %d of %d in %.2f s: %s",
                    attempt + 1,
                    self._max_retries,
                    wait,
                    error,
                )
                attempt += 1
                await asyncio.sleep(wait)
                continue
            self._observe(200, loop.time() - started)
            return result

    def _retry_wait(
        self, error: CompletionError, exc: openai.OpenAIError, attempt: int, ends: float | None
    ) -> float | None:
        """Seconds to wait before the next attempt, or `None` to give up now."""
        if attempt >= self._max_retries or isinstance(error, ImagesNotSupported):
            return None
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        told = headers.get("x-should-retry") if headers is not None else None
        if told == "false" or (told != "true" and not isinstance(error, _RETRYABLE)):
            return None
        wait = retry_after(response)
        if wait is None:
            wait = min(_INITIAL_BACKOFF * 2.0**attempt, _MAX_BACKOFF) * (1 - 0.25 * random.random())
        if ends is not None and asyncio.get_running_loop().time() + wait >= ends:
            return None
        return wait

    def _learn_blind(self, error: ImagesNotSupported, model: str) -> None:
        if self.sees_images_of(model) is not False:
            log.warning(
                "the model %s rejected image input; images will not be sent to it again "
                "until restart (set VISION=false to skip trying): %s",
                model,
                error,
            )
        self._sees[model] = False

    def _observe(self, status: int | None, seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer.attempt_done(status, seconds)
        except Exception:
            log.exception("the model attempt observer failed")

    def _timed_out(
        self, deadline: float | None, ends: float | None, request_id: str | None
    ) -> TimedOut:
        """The error for reaching `ends`, naming which limit it was."""
        if deadline is not None and ends is not None and ends >= deadline:
            return TimedOut("no complete answer by the caller's deadline", request_id=request_id)
        return TimedOut(
            f"no complete answer within {self._timeout:g} s (OPENAI_TIMEOUT)",
            request_id=request_id,
        )

    def _extra_body(self, model: str) -> dict[str, object] | None:
        limits = self._limits.get(model)
        cap = limits.max_output_tokens if limits is not None else None
        cap = cap or self._max_output_tokens
        if cap is None:
            return None
        return {self._max_tokens_field: cap}


_RETRYABLE = (RateLimited, ProviderUnavailable)
"""Errors that may pass on another attempt: throttling, 408, 409, 5xx, connection failures."""


class _Accumulated:
    """The answer text and reasoning of a stream so far, turning splits into chunks."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoned = False

    def add(
        self, split: Split, reasoning: str, finish_reason: str | None, usage: Usage | None
    ) -> Chunk | None:
        """The chunk to yield for this much of the stream, or `None` when nothing came."""
        if split.text_was_reasoning:
            self.text = ""
        self.text += split.text
        reasoning += split.reasoning
        self.reasoned = self.reasoned or bool(reasoning.strip())
        if not (split or reasoning or finish_reason or usage is not None):
            return None
        return Chunk(
            text=split.text,
            finish_reason=finish_reason,
            usage=usage,
            reasoning=reasoning,
            text_was_reasoning=split.text_was_reasoning,
        )


def _joined(first: Split, last: Split) -> Split:
    """`first`, then what `ThinkParser.finish` gave out after it (never `text_was_reasoning`)."""
    return Split(
        text=first.text + last.text,
        reasoning=first.reasoning + last.reasoning,
        text_was_reasoning=first.text_was_reasoning,
    )


def _reasoning_field(extra: dict[str, object] | None) -> str:
    """The reasoning a delta or message carries outside its content, `""` for none."""
    if not extra:
        return ""
    for name in REASONING_FIELDS:
        value = extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.completion_tokens_details
    reasoning = details.reasoning_tokens if details is not None else None
    return Usage(usage.prompt_tokens, usage.completion_tokens, reasoning or 0)


def _check_answer(
    text: str,
    refusal: str | None,
    finish_reason: str | None,
    request_id: str | None,
    reasoned: bool = False,
) -> None:
    """Raise when a finished completion holds no usable answer; reasoning is none."""
    if refusal:
        raise _log_failure(Refused(refusal, request_id=request_id))
    if not text.strip():
        if finish_reason == "content_filter":
            raise _log_failure(Refused("content filter", request_id=request_id))
        detail = "empty content"
        if reasoned:
            detail = "the model reasoned but wrote no answer"
            if finish_reason == "length":
                detail += " (it ran out of output tokens while reasoning: MAX_OUTPUT_TOKENS)"
        raise _log_failure(EmptyAnswer(detail, request_id=request_id, reasoned=reasoned))


def translate_error(exc: openai.OpenAIError, *, images: bool = False) -> CompletionError:
    """Map an SDK exception to our own error type; the single place that knows the SDK's.

    The detail names the request's URL and, for a connection failure, its cause. `images`:
    the request carried image parts, so a refusal of them (whatever its status: llama.cpp
    and Ollama answer 500) is `ImagesNotSupported`.
    """
    request_id = getattr(exc, "request_id", None)
    where = _where(getattr(exc, "request", None))
    detail = f"{type(exc).__name__}: {exc}{where}"
    if images and isinstance(exc, openai.APIStatusError) and rejects_images(str(exc)):
        return ImagesNotSupported(
            f"{detail}; the model takes no images (VISION=false stops sending them)",
            request_id=request_id,
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = _connection_failure(exc)
        if cause is None:
            return TimedOut(f"the provider did not answer in time{where}")
        return ProviderUnavailable(f"{cause}{where}")
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return ProviderMisconfigured(detail, request_id=request_id)
        return RateLimited(detail, retry_after=retry_after(exc.response), request_id=request_id)
    if isinstance(exc, openai.BadRequestError):
        if _is_context_overflow(exc):
            return PromptTooLong(detail, request_id=request_id)
        if exc.code == "content_filter":
            return Refused(detail, request_id=request_id)
        return ProviderMisconfigured(detail, request_id=request_id)
    if isinstance(exc, openai.NotFoundError):
        if exc.code == "model_not_found" or "model" in exc.message.lower():
            hint = "; check OPENAI_MODEL"
        else:
            # Ollama's classic: a base URL without /v1 gets "404 page not found".
            hint = "; nothing answers on this path: check that OPENAI_BASE_URL ends in /v1"
        return ProviderMisconfigured(detail + hint, request_id=request_id)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 413:
            return PromptTooLong(detail, request_id=request_id)
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return ProviderUnavailable(detail, request_id=request_id)
        return ProviderMisconfigured(detail, request_id=request_id)
    return ProviderUnavailable(detail, request_id=request_id)


def _connection_failure(exc: openai.APIConnectionError) -> str | None:
    """What broke the connection, for the operator; `None` when the provider was just slow.

    Read from the exceptions underneath, not from the SDK's class: through aiohttp a refused
    connection or a server hanging up arrives as `APITimeoutError` too.
    """
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
            return f"TLS error: {reason or cause}"
    for cause in chain:
        if isinstance(cause, socket.gaierror | aiohttp.ClientConnectorDNSError):
            return f"DNS lookup failed: {cause.strerror or cause}"
    if any(isinstance(cause, TimeoutError) for cause in chain):
        return None
    if any(isinstance(cause, ConnectionRefusedError) for cause in chain):
        return "connection refused"
    broken = [cause for cause in chain if isinstance(cause, OSError | aiohttp.ClientError)]
    if isinstance(exc, openai.APITimeoutError) and not broken:
        return None
    innermost = chain[-1] if chain else exc
    return f"connection failed: {innermost}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exceptions beneath `exc`, outermost first."""
    chain: list[BaseException] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and cause not in chain and len(chain) < 20:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _where(request: object) -> str:
    """` (POST https://host/v1/chat/completions)`, without credentials or query; or ``."""
    url = getattr(request, "url", None)
    method = getattr(request, "method", None)
    if url is None or method is None:
        return ""
    try:
        shown = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
    except (AttributeError, UnicodeDecodeError):
        return ""
    return f" ({method} {shown})"


# Phrases providers use for an over-long prompt: OpenAI and vLLM ("maximum context
# length"), llama.cpp ("exceeds the available context size"), others ("context window").
_CONTEXT_PHRASES = ("context length", "context_length", "context size", "context window")


def _is_context_overflow(exc: openai.BadRequestError) -> bool:
    if exc.code == "context_length_exceeded" or exc.type == "exceed_context_size_error":
        return True
    message = str(exc).lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def retry_after(response: object) -> float | None:
    """Seconds the provider asked us to wait, from `retry-after-ms` or `retry-after`.

    `retry-after` may be a number of seconds or an HTTP date.
    """
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        seconds: float | None
        try:
            seconds = float(raw) / scale
        except ValueError:
            if name != "retry-after":
                continue
            seconds = _seconds_until(raw)
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _log_failure(error: CompletionError) -> CompletionError:
    log.warning(
        "model call failed: %s (%s, request id %s)",
        type(error).__name__,
        error,
        error.request_id or "none",
    )
    return error
