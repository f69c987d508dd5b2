"""Context building for a follow-up in a 200-turn conversation.

Run with `PYTHONPATH=. .venv/bin/python bench/context.py`. For each kind of model it saves a
200-turn conversation (prompts of a sentence or two, answers of a few paragraphs with code)
in a SQLite file on disk, then times follow-ups at its newest answer: finding the turn by
its message id, reading the chain, counting the new request and building the messages. It
prints the time per follow-up (median and 99th percentile) and the tokens sent against the
budget; asserts nothing. The built-in model's row starts llama.cpp to count with its own
tokenizer, and is skipped when it is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.config import load_settings
from bot.conversation.context import (
    Context,
    build_context,
    context_budget,
    count_request,
    count_turn,
)
from bot.conversation.tokens import LlamaCppCounter, TokenCounter, counter_for_model
from bot.conversation.turns import NewTurn, Turn
from bot.model.local_model import LocalModelError, LocalModelServer
from bot.store.sqlite import SqliteConversationStore

TURNS = 200
FOLLOW_UPS = 200
SYSTEM = "You are a helpful assistant answering in a Discord channel. Be concise."
NAMES = ["Alice", "Bob", "Chloé", "Dmitri", "黒田"]
START = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
WORDS = (
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "for",
    "on",
    "with",
    "as",
    "this",
    "that",
    "how",
    "why",
    "what",
    "can",
    "you",
    "use",
    "when",
    "function",
    "list",
    "value",
    "error",
    "python",
    "rust",
    "async",
    "await",
    "server",
    "discord",
    "message",
    "token",
    "model",
    "context",
    "answer",
    "question",
    "example",
    "because",
    "first",
    "then",
    "returns",
    "string",
    "number",
    "file",
    "data",
)


@dataclass(frozen=True)
class Sample:
    """Milliseconds of one follow-up: in all, and in the store, counting and building."""

    total: float
    store: float
    count: float
    build: float


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + rng.choice(".?!")


def prompt_text(rng: random.Random) -> str:
    return " ".join(sentence(rng, rng.randint(6, 18)) for _ in range(rng.randint(1, 3)))


def answer_text(rng: random.Random) -> str:
    paragraphs = [
        " ".join(sentence(rng, rng.randint(8, 20)) for _ in range(rng.randint(2, 5)))
        for _ in range(rng.randint(1, 4))
    ]
    if rng.random() < 0.4:
        lines = [f"    value_{n} = compute({n}, items[{n}])" for n in range(rng.randint(3, 12))]
        paragraphs.insert(1, "```py\ndef example(items):\n" + "\n".join(lines) + "\n```")
    return "\n\n".join(paragraphs)


async def save_conversation(
    store: SqliteConversationStore, counter: TokenCounter, model: str
) -> tuple[Turn, float]:
    """Save the conversation; return its newest turn and the mean milliseconds per save
    (counting the turn included)."""
    rng = random.Random(200)
    parent: Turn | None = None
    elapsed = 0.0
    for number in range(TURNS):
        name = NAMES[number % len(NAMES)]
        prompt, answer = prompt_text(rng), answer_text(rng)
        started = time.perf_counter()
        prompt_tokens, answer_tokens = await count_turn(counter, name, prompt, answer)
        parent = await store.save(
            NewTurn(
                user_id=1000 + number % len(NAMES),
                display_name=name,
                guild_id=1,
                channel_id=2,
                private=False,
                prompt=prompt,
                answer=answer,
                model=model,
                prompt_tokens=prompt_tokens,
                answer_tokens=answer_tokens,
                parent_id=None if parent is None else parent.id,
                created_at=START + timedelta(minutes=number),
            ),
            [10_000 + 2 * number, 10_001 + 2 * number],
        )
        elapsed += time.perf_counter() - started
    assert parent is not None
    return parent, elapsed / TURNS * 1000


async def follow_ups(
    store: SqliteConversationStore,
    counter: TokenCounter,
    model: str,
    budget: int,
    message_id: int,
) -> tuple[list[Sample], Context]:
    rng = random.Random(7)
    samples: list[Sample] = []
    context: Context | None = None
    for _ in range(FOLLOW_UPS):
        prompt = prompt_text(rng)
        started = time.perf_counter()
        at = await store.turn_for_message(message_id)
        assert at is not None
        chain = await store.chain(at.id, TURNS)
        looked_up = time.perf_counter()
        request = await count_request(counter, SYSTEM, "Alice", prompt)
        counted = time.perf_counter()
        result = build_context(
            system_prompt=SYSTEM,
            chain=chain,
            prompt=prompt,
            asker="Alice",
            request=request,
            budget=budget,
            model=model,
        )
        done = time.perf_counter()
        samples.append(
            Sample(
                total=(done - started) * 1000,
                store=(looked_up - started) * 1000,
                count=(counted - looked_up) * 1000,
                build=(done - counted) * 1000,
            )
        )
        assert isinstance(result, Context)
        context = result
    assert context is not None
    return samples, context


def report(label: str, save_ms: float, samples: list[Sample], context: Context) -> None:
    def median(part: str) -> float:
        return statistics.median(getattr(sample, part) for sample in samples)

    totals = sorted(sample.total for sample in samples)
    p99 = totals[int(len(totals) * 0.99) - 1]
    share = context.tokens / context.budget
    print(f"  {label}")
    print(
        f"    per follow-up: median {median('total'):6.2f} ms, p99 {p99:6.2f} ms "
        f"(store {median('store'):.2f}, counting {median('count'):.2f}, "
        f"building {median('build'):.2f} ms); saving a turn {save_ms:.2f} ms"
    )
    print(
        f"    tokens sent {context.tokens} of a {context.budget} budget ({share:.0%}); "
        f"turns sent {context.turns_sent}, left out {context.turns_left_out}"
    )


@contextlib.asynccontextmanager
async def builtin_counter() -> AsyncIterator[TokenCounter | None]:
    try:
        async with (
            LocalModelServer.start(parallel=1) as server,
            LlamaCppCounter(server.base_url) as counter,
        ):
            yield counter
    except LocalModelError as error:
        print(f"  (built-in model skipped: {error})")
        yield None


async def run_case(
    directory: Path, label: str, env: dict[str, str], counter: TokenCounter, model: str
) -> None:
    budget = context_budget(load_settings(env, require_discord=False))
    store = await SqliteConversationStore.open(directory)
    try:
        newest, save_ms = await save_conversation(store, counter, model)
        message_id = 10_001 + 2 * (TURNS - 1)
        samples, context = await follow_ups(store, counter, model, budget.prompt_tokens, message_id)
        assert newest.id == (await store.turn_for_message(message_id) or newest).id
    finally:
        await store.close()
    size = (directory / "usage.sqlite3").stat().st_size
    report(label, save_ms, samples, context)
    print(f"    window {budget.context_tokens}, database file {size / 1024:.0f} KiB")


async def main() -> None:
    print(f"Follow-ups at the newest answer of a {TURNS}-turn conversation, SQLite on disk:")
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        cases = [
            ("gpt-4o-mini (o200k_base)", {"OPENAI_API_KEY": "k"}, "gpt-4o-mini"),
            (
                "gpt-4o-mini, CONTEXT_TOKENS=16000",
                {"OPENAI_API_KEY": "k", "CONTEXT_TOKENS": "16000"},
                "gpt-4o-mini",
            ),
            ("gpt-4 (cl100k_base)", {"OPENAI_API_KEY": "k", "OPENAI_MODEL": "gpt-4"}, "gpt-4"),
            (
                "unknown model (estimate)",
                {"OPENAI_BASE_URL": "http://localhost:11434/v1", "OPENAI_MODEL": "llama3"},
                "llama3",
            ),
        ]
        for number, (label, env, model) in enumerate(cases):
            await run_case(root / str(number), label, env, counter_for_model(model), model)
        async with builtin_counter() as counter:
            if counter is not None:
                await run_case(
                    root / "builtin", "built-in model (/tokenize)", {}, counter, "SmolLM2"
                )


if __name__ == "__main__":
    asyncio.run(main())
