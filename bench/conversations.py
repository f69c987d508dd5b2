"""Many follow-ups streaming at once in one channel: the channel's shared rate limit.

    PYTHONPATH=. .venv/bin/python bench/conversations.py [--answers 20] [--pieces 20]
        [--latency 2.0] [--modes streamed,plain]

The real bot runs in-process (tests.stack.run_stack) against the local Discord, with
Discord's default rate limits (5 channel-message writes per 5 s per channel) and no OpenAPI
check, and the scripted model. `--answers` people each get an answer to a `/ask`, then all
reply to their answer in the same instant: every follow-up is answered as a reply in the
one channel, so all of them draw on its one bucket (interaction followups would each have
their own). The model streams each answer in `--pieces` pieces over `--latency` seconds.

Figures, per mode (streamed: STREAM_RESPONSES=true; plain: the whole answer at once):

- 429s: rate-limited responses from the burst's channel writes (goal: 0);
- writes per answer: sends, edits and deletes of channel messages, over answers;
- edits per answer: of those, the edits (previews of a growing answer and the final one);
- first text p50/max and done p50/max: from the reply's arrival, as the bot logs them;
- wall: from the first reply to the last answer's end.

Asserts nothing. The figures for building the context itself (a 200-turn conversation:
time per follow-up, tokens sent against the budget) come from bench/context.py.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.discord import CHANNEL_MESSAGE, CHANNEL_MESSAGES
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import Reply, StreamReply, start_fake_openai
from tests.stack import run_stack

TIMINGS = re.compile(r"^ask message=(\d+) .*first_text_ms=(\S+) done_ms=(\d+)")
WAIT = 600.0


@dataclass
class Figures:
    mode: str
    answers: int
    answered: int
    rate_limited: int
    writes: int
    edits: int
    first_text_ms: list[int]
    done_ms: list[int]
    wall: float


async def run(mode: str, answers: int, pieces: int, latency: float) -> Figures:
    names = [f"person{n:02d}" for n in range(answers)]
    text = [f"word{n} " for n in range(pieces)]
    with tempfile.TemporaryDirectory() as data:
        async with (
            running_fake(user_names=names, spec_path=None, wait_timeout=WAIT) as discord,
            start_fake_openai(default=StreamReply(text, interval=latency / pieces)) as model,
        ):
            overrides = {"STREAM_RESPONSES": "true" if mode == "streamed" else "false"}
            # Streaming preview pace as in production.
            overrides["STREAM_EDIT_INTERVAL"] = "1.0"
            async with run_stack(discord, model, Path(data), overrides, wait=WAIT) as stack:
                firsts = []
                for person in discord.users:
                    model.script(Reply("The first answer."))
                    firsts.append(await stack.ask("A first question", user=person))
                before = len(discord.calls)
                started = time.monotonic()
                asked = [
                    discord.post_message(person, "A follow-up", reply_to=first.messages[-1].id)
                    for person, first in zip(discord.users, firsts, strict=True)
                ]
                async with asyncio.timeout(WAIT):
                    outcomes = [await stack.log.message_future(m.id) for m in asked]
                wall = time.monotonic() - started
                burst = [
                    call
                    for call in discord.calls[before:]
                    if call.route in (CHANNEL_MESSAGES, CHANNEL_MESSAGE)
                ]
                firsts_ms: list[int] = []
                done_ms: list[int] = []
                ids = {m.id for m in asked}
                for line in stack.log.lines:
                    match = TIMINGS.match(line)
                    if match and int(match.group(1)) in ids:
                        if match.group(2) != "-":
                            firsts_ms.append(int(match.group(2)))
                        done_ms.append(int(match.group(3)))
    return Figures(
        mode=mode,
        answers=answers,
        answered=outcomes.count("answered"),
        rate_limited=sum(1 for call in burst if call.status == 429),
        writes=sum(1 for call in burst if call.status != 429),
        edits=sum(1 for call in burst if call.method == "PATCH" and call.status != 429),
        first_text_ms=firsts_ms,
        done_ms=done_ms,
        wall=wall,
    )


def spread(values: list[int]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) / 1000:.1f} s / {max(values) / 1000:.1f} s"


def report(figures: Figures) -> None:
    n = figures.answers
    print(f"{figures.mode}: {figures.answered}/{n} answered")
    print(f"  429s                     {figures.rate_limited}")
    print(f"  writes per answer        {figures.writes / n:.2f}")
    print(f"  edits per answer         {figures.edits / n:.2f}")
    print(f"  first text p50 / max     {spread(figures.first_text_ms)}")
    print(f"  done p50 / max           {spread(figures.done_ms)}")
    print(f"  wall                     {figures.wall:.1f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=20)
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--modes", default="streamed,plain")
    args = parser.parse_args()
    print(
        f"{args.answers} follow-ups by reply at once in one channel; the model streams "
        f"{args.pieces} pieces over {args.latency} s; Discord's limit 5 writes / 5 s per channel"
    )
    for mode in args.modes.split(","):
        report(await run(mode, args.answers, args.pieces, args.latency))
    print("context building for a 200-turn conversation: see bench/context.py")


if __name__ == "__main__":
    asyncio.run(main())
