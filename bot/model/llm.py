"""The completion helper: the only module that talks to the language model.

`Completer` sends one prompt (after the system prompt) to an OpenAI-compatible chat
completions endpoint and returns an `Answer`, or raises one of the errors below. Every
SDK failure is mapped to exactly one of them, so callers never see `openai` exceptions:

    CompletionError                 anything the model call can fail with
    ├── RateLimited                 the provider throttled us; `retry_after` when it said
    ├── TimedOut                    no answer within OPENAI_TIMEOUT
    ├── PromptTooLong               prompt exceeds the model's context window
    ├── ProviderMisconfigured       bad key, unknown model, no quota, rejected request
    ├── ProviderUnavailable         connection failure or a 5xx from the provider
    ├── EmptyAnswer                 the model produced no text
    └── Refused                     the model declined (refusal or content filter)

Each error carries the provider's request id, when there is one, for the operator's log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ClassVar

import openai
from openai.types.chat import ChatCompletionMessageParam

from bot.config import Settings

log = logging.getLogger(__name__)


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


class EmptyAnswer(CompletionError):
    kind = "empty"


class Refused(CompletionError):
    kind = "refused"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Answer:
    """The model's text; `truncated` when it stopped at the output token limit."""

    text: str
    finish_reason: str | None
    usage: Usage | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed answer; the last ones carry `finish_reason` and `usage`."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


def make_client(settings: Settings, *, base_url: str | None = None) -> openai.AsyncOpenAI:
    """Build the process's one `AsyncOpenAI`; the caller owns it and must close it."""
    return openai.AsyncOpenAI(
        # Compatible servers such as Ollama or llama.cpp accept any key, but the SDK
        # refuses to start without one.
        api_key=settings.openai_api_key.reveal() if settings.openai_api_key else "unused",
        base_url=base_url or settings.openai_base_url,
        timeout=settings.openai_timeout,
        max_retries=settings.openai_max_retries,
    )


@asynccontextmanager
async def open_completer(settings: Settings, *, local_slots: int = 4) -> AsyncIterator[Completer]:
    """The process's `Completer`, with its HTTP client (and built-in model) owned here.

    `local_slots` is how many answers the built-in model writes at once; each slot
    holds its own context memory.

    With no provider configured this starts the built-in local model first, which
    raises `bot.model.local_model.LocalModelError` when it cannot be served.
    """
    if not settings.uses_builtin_model:
        async with make_client(settings) as client:
            yield Completer.from_settings(client, settings)
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
            )


class Completer:
    """Turns a prompt into an `Answer` with one chat completion call."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        system_prompt: str,
        max_output_tokens: int | None = None,
        compatible_server: bool = False,
    ) -> None:
        self._client = client
        self._model = model
        self._system_prompt = system_prompt
        self._max_output_tokens = max_output_tokens
        # OpenAI's reasoning models reject `max_tokens`; many compatible servers only
        # know `max_tokens`. Use the name each side understands.
        self._max_tokens_field = "max_tokens" if compatible_server else "max_completion_tokens"

    @classmethod
    def from_settings(cls, client: openai.AsyncOpenAI, settings: Settings) -> Completer:
        return cls(
            client,
            model=settings.openai_model,
            system_prompt=settings.system_prompt,
            max_output_tokens=settings.max_output_tokens,
            compatible_server=settings.openai_base_url is not None,
        )

    @property
    def model(self) -> str:
        return self._model

    def messages(self, prompt: str) -> list[ChatCompletionMessageParam]:
        return [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": prompt},
        ]

    async def complete(self, prompt: str) -> Answer:
        """Ask the model; return its answer or raise a `CompletionError`."""
        try:
            completion = await self._client.chat.completions.create(
                model=self._model,
                messages=self.messages(prompt),
                extra_body=self._extra_body(),
            )
        except openai.OpenAIError as exc:
            raise _log_failure(translate_error(exc)) from exc

        request_id = completion._request_id
        if not completion.choices:
            raise _log_failure(EmptyAnswer("response had no choices", request_id=request_id))
        choice = completion.choices[0]
        text = choice.message.content or ""
        _check_answer(text, choice.message.refusal, choice.finish_reason, request_id)
        usage = None
        if completion.usage is not None:
            usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        return Answer(text=text, finish_reason=choice.finish_reason, usage=usage)

    async def stream(self, prompt: str) -> AsyncGenerator[Chunk, None]:
        """Ask the model and yield its answer as it is written.

        Raises a `CompletionError` before the first chunk or mid-stream; a stream that
        ends without any text raises `EmptyAnswer`. Closing the iterator early (or
        cancelling its consumer) closes the HTTP response, which cancels the request.
        """
        request_id: str | None = None
        text_seen = False
        refusal = ""
        finish_reason: str | None = None
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=self.messages(prompt),
                extra_body=self._extra_body(),
                stream=True,
                stream_options={"include_usage": True},
            )
            async with stream:
                request_id = stream.response.headers.get("x-request-id")
                async for event in stream:
                    usage = None
                    if event.usage is not None:
                        usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
                    if not event.choices:
                        if usage is not None:
                            yield Chunk(usage=usage)
                        continue
                    choice = event.choices[0]
                    piece = choice.delta.content or ""
                    refusal += choice.delta.refusal or ""
                    finish_reason = choice.finish_reason or finish_reason
                    text_seen = text_seen or bool(piece.strip())
                    if piece or choice.finish_reason or usage is not None:
                        yield Chunk(piece, choice.finish_reason, usage)
        except openai.OpenAIError as exc:
            # A connection dropped mid-stream arrives as APIConnectionError too.
            error = translate_error(exc)
            error.request_id = error.request_id or request_id
            raise _log_failure(error) from exc
        _check_answer("x" if text_seen else "", refusal or None, finish_reason, request_id)

    def _extra_body(self) -> dict[str, object] | None:
        if self._max_output_tokens is None:
            return None
        return {self._max_tokens_field: self._max_output_tokens}


def _check_answer(
    text: str, refusal: str | None, finish_reason: str | None, request_id: str | None
) -> None:
    """Raise when a finished completion holds no usable answer."""
    if refusal:
        raise _log_failure(Refused(refusal, request_id=request_id))
    if not text.strip():
        if finish_reason == "content_filter":
            raise _log_failure(Refused("content filter", request_id=request_id))
        raise _log_failure(EmptyAnswer("empty content", request_id=request_id))


def translate_error(exc: openai.OpenAIError) -> CompletionError:
    """Map an SDK exception to our own error type; the single place that knows the SDK's."""
    request_id = getattr(exc, "request_id", None)
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, openai.APITimeoutError):
        return TimedOut(detail)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable(detail)
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
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 413:
            return PromptTooLong(detail, request_id=request_id)
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return ProviderUnavailable(detail, request_id=request_id)
        return ProviderMisconfigured(detail, request_id=request_id)
    return ProviderUnavailable(detail, request_id=request_id)


# Phrases providers use for an over-long prompt: OpenAI and vLLM ("maximum context
# length"), llama.cpp ("exceeds the available context size"), others ("context window").
_CONTEXT_PHRASES = ("context length", "context_length", "context size", "context window")


def _is_context_overflow(exc: openai.BadRequestError) -> bool:
    if exc.code == "context_length_exceeded" or exc.type == "exceed_context_size_error":
        return True
    message = str(exc).lower()
    return any(phrase in message for phrase in _CONTEXT_PHRASES)


def retry_after(response: object) -> float | None:
    """Seconds the provider asked us to wait, from `retry-after-ms` or `retry-after`."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def _log_failure(error: CompletionError) -> CompletionError:
    log.warning(
        "model call failed: %s (%s, request id %s)",
        type(error).__name__,
        error,
        error.request_id or "none",
    )
    return error
