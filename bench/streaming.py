"""Streamed answers: how soon text shows, how edits are paced, and what streaming costs.

    .venv/bin/python bench/streaming.py [--asks 200] [--latency 1.0] [--long-seconds 20]

The real bot (`tests.stack.run_stack`, the code path of `python -m bot`) runs in this
process against the local Discord (tests.fakes.discord, with Discord's default rate limits)
and a scripted model (tests.fakes.openai_server), with the default STREAM_EDIT_INTERVAL
of 1.0 s. Two runs:

1. One long answer: the model streams about 50 tokens a second for `--long-seconds`
   seconds (a few thousand characters, several messages, code blocks). Prints the time
   from the model's first token to the first text people see, the edits the answer took,
   how long after the model's last token the final text showed, and 429 responses.

2. A burst of `--asks` members running `/ask` at the same instant, once with streaming
   on and once with it off, each on fresh fakes. The model takes `--latency` seconds per
   answer either way: a short answer streamed over that time, which the non-streamed
   request receives whole at the end. MAX_CONCURRENT_ASKS and MAX_QUEUED_ASKS are set to
   `--asks`, so the burst measures answering rather than the queue. Prints the
   acknowledgement latency (INTERACTION_CREATE sent until the fake received the callback),
   the time to the first text and to the final answer, the burst's wall time over the
   model's latency (1.0 is the floor), REST calls per answer and 429 responses.

Every time is read from the fake Discord's own records of each request (`since_dispatch`),
on the same monotonic clock as the model server. Times depend on how busy the machine is:
the bot and both fakes share one event loop. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: the fakes live in the repository's `tests` package.
    sys.path.insert(0, str(ROOT))

from bot.answers.formatting import final_parts  # noqa: E402
from tests.fakes.discord import (  # noqa: E402
    Call,
    FakeDiscord,
    InteractionHandle,
    point_discord_py_at,
)
from tests.fakes.openai_server import (  # noqa: E402
    FakeOpenAI,
    StreamReply,
    start_fake_openai,
    tokenize,
)
from tests.stack import Stack, run_stack  # noqa: E402

CALLBACK = "/interactions/{interaction_id}/{interaction_token}/callback"
WEBHOOK_WRITES = (
    ("POST", "/webhooks/{webhook_id}/{webhook_token}"),
    ("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"),
    ("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/@original"),
)
# Bounds every wait on the fakes; generous, so a slow machine prints figures, not errors.
WAIT = 120.0
TOKENS_PER_SECOND = 50
SHORT_ANSWER = (
    "The sky looks blue because air scatters short wavelengths of sunlight far more than "
    "long ones, so blue light reaches your eyes from every direction."
)


# --- Answers ---------------------------------------------------------------------------------


def long_answer(tokens: int) -> str:
    """Prose and code in about `tokens` word tokens, as a model explaining a program writes."""
    sections: list[str] = []
    number = 0
    while sum(len(tokenize(section)) for section in sections) < tokens:
        prose = " ".join(
            f"Step {number}.{index} reads the input, checks it and passes it along."
            for index in range(6)
        )
        code = "\n".join(
            f"def step_{number}_{index}(value: int) -> int:\n    return value * {index} + {number}"
            for index in range(12)
        )
        sections.append(f"{prose}\n\n```python\n{code}\n```")
        number += 1
    return "\n\n".join(sections)


def pieces(text: str, count: int) -> list[str]:
    """`text` in `count` pieces of whole tokens, so each piece is one streamed chunk."""
    tokens = tokenize(text)
    size = -(-len(tokens) // count)
    return ["".join(tokens[start : start + size]) for start in range(0, len(tokens), size)]


# --- Reading the fake's records --------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """One interaction's requests, as seconds since its INTERACTION_CREATE."""

    ack: float | None
    writes: list[float]
    edits: int
    calls: int
    rate_limited: int


def timelines(discord: FakeDiscord, handles: Sequence[InteractionHandle]) -> list[Timeline]:
    by_interaction: dict[int, list[Call]] = {handle.id: [] for handle in handles}
    for call in discord.calls:
        if call.interaction_id in by_interaction:
            by_interaction[call.interaction_id].append(call)
    result = []
    for handle in handles:
        calls = by_interaction[handle.id]
        ack = next(
            (c.since_dispatch for c in calls if c.route == CALLBACK and c.status < 300), None
        )
        writes = [c for c in calls if (c.method, c.route) in WEBHOOK_WRITES and c.status < 300]
        result.append(
            Timeline(
                ack=ack,
                writes=[c.since_dispatch for c in writes if c.since_dispatch is not None],
                edits=sum(1 for c in writes if c.method == "PATCH"),
                calls=len(calls),
                rate_limited=sum(1 for c in calls if c.status == 429),
            )
        )
    return result


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- Running the bot -------------------------------------------------------------------------


@asynccontextmanager
async def stack_on_fresh_fakes(
    members: int, overrides: dict[str, str]
) -> AsyncIterator[tuple[Stack, FakeDiscord, FakeOpenAI]]:
    names = [f"member{number:03d}" for number in range(1, members + 1)]
    with tempfile.TemporaryDirectory() as data:
        async with (
            FakeDiscord(user_names=names, spec_path=None, wait_timeout=WAIT) as discord,
            start_fake_openai() as model,
        ):
            with point_discord_py_at(discord):
                ready = ReadyLog()
                logging.getLogger("bot").addHandler(ready)
                try:
                    async with run_stack(discord, model, Path(data), overrides, wait=WAIT) as stack:
                        # Stopping the bot before `on_ready` cuts discord.py's start short.
                        await asyncio.wait_for(ready.event.wait(), WAIT)
                        yield stack, discord, model
                finally:
                    logging.getLogger("bot").removeHandler(ready)


class ReadyLog(logging.Handler):
    """Sets `event` when the bot logs that it is connected (its `on_ready`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("connected to Discord"):
            self.event.set()


@dataclass(frozen=True)
class LongRun:
    tokens: int
    stream_seconds: float
    model_first_token: float
    first_text: float
    model_last_token: float
    final_text: float
    edits: int
    messages: int
    writes: int
    rate_limited: int
    exact: bool


async def long_answer_run(seconds: float) -> LongRun:
    interval = 1 / TOKENS_PER_SECOND
    tokens = tokenize(long_answer(round(seconds * TOKENS_PER_SECOND)))
    tokens = tokens[: round(seconds * TOKENS_PER_SECOND)]
    answer = "".join(tokens)
    overrides = {"STREAM_EDIT_INTERVAL": "1.0", "OPENAI_TIMEOUT": "60"}
    async with stack_on_fresh_fakes(1, overrides) as (stack, discord, model):
        model.script(StreamReply(tokens, interval=interval))
        handle = stack.send("Explain the program step by step")
        [request] = await model.wait_for_requests(1)
        request_at = time.monotonic() - handle.interaction.dispatched_at
        await asyncio.wait_for(request.finished(), WAIT)
        # The response ends right after its last token (then only the finish and usage chunks).
        last_token_at = time.monotonic() - handle.interaction.dispatched_at
        asked = await asyncio.wait_for(stack.finished(handle), WAIT)
        [timeline] = timelines(discord, [handle])
        rate_limited = discord.rate_limited
    # The fake model waits `interval` before every token, the first one included.
    return LongRun(
        tokens=len(tokens),
        stream_seconds=last_token_at - request_at,
        model_first_token=request_at + interval,
        first_text=timeline.writes[0],
        model_last_token=last_token_at,
        final_text=timeline.writes[-1],
        edits=timeline.edits,
        messages=len(asked.messages),
        writes=len(timeline.writes),
        rate_limited=rate_limited,
        exact=asked.contents == final_parts(answer),
    )


@dataclass(frozen=True)
class BurstRun:
    acks: list[float]
    first_texts: list[float]
    finals: list[float]
    wall: float
    calls_per_answer: float
    edits_per_answer: float
    rate_limited: int
    answered: int


async def burst_run(asks: int, latency: float, *, streaming: bool) -> BurstRun:
    chunks = pieces(SHORT_ANSWER, 20)
    overrides = {
        "STREAM_RESPONSES": "true" if streaming else "false",
        "STREAM_EDIT_INTERVAL": "1.0",
        "MAX_CONCURRENT_ASKS": str(asks),
        "MAX_QUEUED_ASKS": str(asks),
        "OPENAI_TIMEOUT": "60",
    }
    async with stack_on_fresh_fakes(asks, overrides) as (stack, discord, model):
        # Streamed: a chunk every latency/20 s. Not streamed: the whole answer after `latency`.
        model.default = StreamReply(chunks, interval=latency / len(chunks))
        handles = [
            stack.send(f"Why is the sky blue? ({number})", user=member)
            for number, member in enumerate(discord.users[:asks])
        ]
        asked = await asyncio.wait_for(
            asyncio.gather(*(stack.finished(handle) for handle in handles)), WAIT
        )
        lines = timelines(discord, handles)
        rate_limited = discord.rate_limited
    started = min(handle.interaction.dispatched_at for handle in handles)
    ended = max(
        handle.interaction.dispatched_at + line.writes[-1]
        for handle, line in zip(handles, lines, strict=True)
        if line.writes
    )
    return BurstRun(
        acks=[line.ack for line in lines if line.ack is not None],
        first_texts=[line.writes[0] for line in lines if line.writes],
        finals=[line.writes[-1] for line in lines if line.writes],
        wall=ended - started,
        calls_per_answer=sum(line.calls for line in lines) / asks,
        edits_per_answer=sum(line.edits for line in lines) / asks,
        rate_limited=rate_limited,
        answered=sum(1 for one in asked if one.contents == [SHORT_ANSWER]),
    )


# --- Report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def report_long(run: LongRun, seconds: float) -> None:
    print(
        f"1. One long answer: ~{TOKENS_PER_SECOND} tokens/s for ~{seconds:g} s, "
        "STREAM_EDIT_INTERVAL=1.0"
    )
    rows = [
        ("model's first token -> first visible text", ms(run.first_text - run.model_first_token)),
        ("model's last token -> final text shown", ms(run.final_text - run.model_last_token)),
        ("model's stream: request to last token", f"{run.stream_seconds:.1f} s"),
        ("model's pace", f"{run.tokens / run.stream_seconds:.0f} tokens/s"),
        ("messages", str(run.messages)),
        ("edits (PATCH) for the answer", str(run.edits)),
        ("writes (POST + PATCH)", str(run.writes)),
        (
            "edits per second of streaming",
            f"{run.edits / max(run.final_text - run.first_text, 1e-9):.2f}",
        ),
        ("final messages == non-streamed split", "yes" if run.exact else "NO"),
        ("429 responses", str(run.rate_limited)),
    ]
    for label, value in rows:
        print(f"   {label:<44} {value:>10}")
    print()


def report_bursts(asks: int, latency: float, streamed: BurstRun, plain: BurstRun) -> None:
    print(f"2. {asks} asks at the same instant, model latency {latency:g} s per answer")
    print(f"   {'':<36} {'streamed':>12} {'non-streamed':>14}")

    def row(label: str, left: str, right: str) -> None:
        print(f"   {label:<36} {left:>12} {right:>14}")

    row("ack p50", ms(statistics.median(streamed.acks)), ms(statistics.median(plain.acks)))
    row("ack p99", ms(percentile(streamed.acks, 0.99)), ms(percentile(plain.acks, 0.99)))
    row(
        "first text p50",
        ms(statistics.median(streamed.first_texts)),
        ms(statistics.median(plain.first_texts)),
    )
    row(
        "first text p99",
        ms(percentile(streamed.first_texts, 0.99)),
        ms(percentile(plain.first_texts, 0.99)),
    )
    row(
        "final answer p99",
        ms(percentile(streamed.finals, 0.99)),
        ms(percentile(plain.finals, 0.99)),
    )
    row(
        "wall time / model latency", f"{streamed.wall / latency:.2f}", f"{plain.wall / latency:.2f}"
    )
    row(
        "REST calls per answer",
        f"{streamed.calls_per_answer:.2f}",
        f"{plain.calls_per_answer:.2f}",
    )
    row(
        "edits (PATCH) per answer",
        f"{streamed.edits_per_answer:.2f}",
        f"{plain.edits_per_answer:.2f}",
    )
    row("429 responses", str(streamed.rate_limited), str(plain.rate_limited))
    row("answers shown exactly", f"{streamed.answered}/{asks}", f"{plain.answered}/{asks}")


async def main(asks: int, latency: float, long_seconds: float) -> None:
    long_run = await long_answer_run(long_seconds)
    report_long(long_run, long_seconds)
    streamed = await burst_run(asks, latency, streaming=True)
    plain = await burst_run(asks, latency, streaming=False)
    report_bursts(asks, latency, streamed, plain)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=200, help="asks in each burst")
    parser.add_argument("--latency", type=float, default=1.0, help="model seconds per answer")
    parser.add_argument(
        "--long-seconds", type=float, default=20.0, help="length of the long streamed answer"
    )
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.asks, args.latency, args.long_seconds))
