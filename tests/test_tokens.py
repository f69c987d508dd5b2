"""Token counters: OpenAI's encodings counted offline, the built-in model's own tokenizer
through llama.cpp's /tokenize, and an estimate that never under-counts."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import AsyncIterator

import openai
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import load_settings
from bot.conversation.models import model_facts
from bot.conversation.tokens import (
    ESTIMATE_FRAMING,
    OPENAI_FRAMING,
    EstimateCounter,
    Framing,
    LlamaCppCounter,
    TiktokenCounter,
    counter_for_model,
    estimate_tokens,
    message_tokens,
    open_counter,
)
from bot.model.local_model import LocalModelServer

O200K = TiktokenCounter("o200k_base")
CL100K = TiktokenCounter("cl100k_base")


def _mixed_corpus() -> list[str]:
    """Prose, code, numbers, other scripts, emoji, encoded data and odd whitespace: each the
    kind of text that tokenises unusually densely somewhere."""
    rng = random.Random(12)
    fixed = [
        "How do I reverse a list in Python without copying it?",
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
        "```js\nconst x = await fetch(`/api/${id}`).then((r) => r.json());\n```",
        "3.14159265358979323846264338327950288419716939937510 and 1,234,567,890",
        "Привет! Как дела? Это тест токенизатора.",
        "お誕生日おめでとう、日本語のテキストです。中文也可以。한국어도 됩니다.",
        "مرحبا بالعالم — שלום עולם — नमस्ते दुनिया",
        "😀🎉👍🏽👩‍👩‍👧‍👦🏳️‍🌈 emoji soup 🤖🧠",
        "a" * 500,
        " " * 300 + "\t\t\n\n\n" * 20,
        "<|endoftext|><|im_start|>system\n[INST] <<SYS>> </s>",
        "https://example.com/path?query=value&other=%20encoded#fragment",
    ]
    alphabet = (
        "abcXYZ019 .,;:!?()[]{}<>/\\|@#$%^&*_-+=~`'\"\n\t"
        "éüßçñ日本語中文한국어😀🎉\u200b\u0301" + "".join(map(chr, range(0x0430, 0x0450)))
    )
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(300)]
    encoded = [base64.b64encode(rng.randbytes(rng.randint(1, 90))).decode() for _ in range(50)]
    hexes = [rng.randbytes(rng.randint(1, 40)).hex() for _ in range(50)]
    return fixed + noise + encoded + hexes


CORPUS = _mixed_corpus()


@pytest.mark.parametrize(
    ("counter", "text", "tokens"),
    [
        # OpenAI's own published figures for these strings.
        (CL100K, "hello world", 2),
        (O200K, "hello world", 2),
        (CL100K, "tiktoken is great!", 6),
        (O200K, "tiktoken is great!", 6),
        (CL100K, "antidisestablishmentarianism", 6),
        (CL100K, "2 + 2 = 4", 7),
        (O200K, "2 + 2 = 4", 7),
        (CL100K, "お誕生日おめでとう", 9),
        (O200K, "お誕生日おめでとう", 8),
        (CL100K, "", 0),
    ],
)
async def test_openai_models_count_with_their_real_encoding(
    counter: TiktokenCounter, text: str, tokens: int
) -> None:
    assert await counter.count(text) == tokens


async def test_a_special_tokens_spelling_counts_as_text() -> None:
    # The API reads `<|endoftext|>` in a message as text, not as the one special token.
    assert await CL100K.count("<|endoftext|>") > 1
    assert await O200K.count("<|endoftext|>") > 1


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("GPT-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("llama3.1:8b", None),
        ("mistralai/mistral-7b-instruct", None),
        ("o1x", None),
        ("omni-moderation-latest", None),
        ("gpt-oss-20b", None),
        ("", None),
    ],
)
def test_the_counter_is_chosen_by_model_name(model: str, encoding: str | None) -> None:
    counter = counter_for_model(model)
    if encoding is None:
        assert isinstance(counter, EstimateCounter)
        assert not counter.exact
    else:
        assert isinstance(counter, TiktokenCounter)
        assert counter.encoding == encoding
        assert counter.exact


@pytest.mark.parametrize(
    ("model", "context_tokens"),
    [
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1", 128_000),
        ("o3-mini", 128_000),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-4-32k-0613", 32_768),
        ("gpt-4", 8_192),
        ("gpt-3.5-turbo", 16_385),
        ("gpt-3.5-turbo-instruct", 4_096),
        ("qwen2.5:7b", 8_192),
    ],
)
def test_each_model_gets_a_safe_context_window(model: str, context_tokens: int) -> None:
    assert model_facts(model).context_tokens == context_tokens


async def test_the_configured_model_gets_its_counter() -> None:
    provider = load_settings(
        {"OPENAI_API_KEY": "k", "OPENAI_MODEL": "gpt-4.1"}, require_discord=False
    )
    async with open_counter(provider) as counter:
        assert isinstance(counter, TiktokenCounter)
        assert counter.encoding == "o200k_base"
    builtin = load_settings({}, require_discord=False)
    with pytest.raises(ValueError, match="base URL"):
        async with open_counter(builtin):
            pytest.fail("a built-in counter without a server")
    async with open_counter(builtin, local_base_url="http://127.0.0.1:1/v1") as counter:
        assert isinstance(counter, LlamaCppCounter)
        assert counter.root == "http://127.0.0.1:1"


def test_an_unknown_encoding_fails_at_once() -> None:
    with pytest.raises(KeyError):
        TiktokenCounter("p50k_base")


async def test_framing_is_counted_per_message() -> None:
    assert await O200K.framing() == OPENAI_FRAMING == Framing(3, 3)
    assert await message_tokens(O200K, "hello world") == 2 + 3
    assert await message_tokens(EstimateCounter(), "hi") == 3 + ESTIMATE_FRAMING.per_message


async def test_the_estimate_never_undercounts_openai_encodings() -> None:
    estimate = EstimateCounter()
    for text in CORPUS:
        bound = await estimate.count(text)
        assert bound >= await O200K.count(text), text
        assert bound >= await CL100K.count(text), text
    assert ESTIMATE_FRAMING.per_message >= OPENAI_FRAMING.per_message
    assert ESTIMATE_FRAMING.per_reply >= OPENAI_FRAMING.per_reply


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
async def test_the_estimate_never_undercounts_any_text(text: str) -> None:
    bound = estimate_tokens(text)
    assert bound >= await O200K.count(text)
    assert bound >= await CL100K.count(text)
    assert (bound == 0) == (text == "")


async def test_a_lone_surrogate_is_counted_not_raised() -> None:
    # JSON from anywhere may carry one; counting must never fail an ask.
    text = "broken \ud83d pair"
    assert await O200K.count(text) >= await O200K.count("broken  pair")
    assert estimate_tokens(text) == len("broken  pair") + 3 + 1


# --- llama.cpp's /tokenize ---------------------------------------------------------------


@pytest.fixture
async def flaky_tokenizer() -> AsyncIterator[tuple[str, list[int]]]:
    """A llama.cpp-shaped /tokenize on loopback that answers 503 (as it does while the model
    loads) while `statuses` holds 503s, then counts one token per word."""
    statuses: list[int] = []

    async def tokenize(request: web.Request) -> web.Response:
        if statuses and statuses.pop(0) != 200:
            return web.json_response(
                {"error": {"code": 503, "message": "Loading model"}}, status=503
            )
        body = await request.json()
        return web.json_response({"tokens": list(range(len(body["content"].split())))})

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", statuses
    finally:
        await runner.cleanup()


async def test_a_tokenizer_that_cannot_answer_is_replaced_by_the_estimate(
    flaky_tokenizer: tuple[str, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    base_url, statuses = flaky_tokenizer
    text = "three words here"
    statuses += [503, 503]
    async with LlamaCppCounter(base_url) as counter:
        assert counter.root == base_url.removesuffix("/v1")
        with caplog.at_level(logging.INFO, "bot.conversation.tokens"):
            assert await counter.count(text) == estimate_tokens(text)
            assert await counter.count(text) == estimate_tokens(text)
            assert await counter.count(text) == 3
        lines = [record.getMessage() for record in caplog.records]
        # One warning for the outage, not one per call; then one line when it is back.
        assert len(lines) == 2
        assert "did not answer" in lines[0]
        assert "503" in lines[0]
        assert "answers again" in lines[1]
        # No /apply-template on this server: the framing falls back to the estimate's.
        assert await counter.framing() == ESTIMATE_FRAMING


async def test_a_tokenizer_with_nothing_listening_is_replaced_by_the_estimate() -> None:
    # A port that was free a moment ago and has nothing on it now.
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await runner.cleanup()
    async with LlamaCppCounter(f"http://127.0.0.1:{port}") as counter:
        assert await counter.count("hello") == estimate_tokens("hello")


@pytest.mark.real_model
async def test_the_built_in_model_counts_match_what_it_reads() -> None:
    async with (
        LocalModelServer.start(parallel=1) as server,
        LlamaCppCounter(server.base_url) as counter,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        framing = await counter.framing()
        # ChatML, as SmolLM2's template writes it.
        assert framing.per_message in (5, 6)
        conversations = [
            [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "【Alice】 What is 2 + 2?"},
            ],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "【Bob】 Name a colour. 😀 1234"},
                {"role": "assistant", "content": "Blue.\n```py\nprint('blue')\n```"},
                {"role": "user", "content": "【Alice】 Another one, 日本語で?"},
                {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "【Bob】   and   a third,\n\nplease"},
            ],
        ]
        for messages in conversations:
            counted = framing.per_reply
            for message in messages:
                counted += await message_tokens(counter, message["content"])
            completion = await client.chat.completions.create(
                model=server.model_name,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=1,
            )
            assert completion.usage is not None
            read = completion.usage.prompt_tokens
            # Never under; a system and a user message alone count exactly.
            assert read <= counted <= read + len(messages)
            if len(messages) == 2:
                assert counted == read
        # The estimate bounds the model's own tokenizer too.
        for text in CORPUS[:120]:
            assert estimate_tokens(text) >= await counter.count(text), text
