"""The adaptive concurrency limit end to end: the real bot against a provider with a hidden
limit on requests in progress.

The provider (the scripted model server with `concurrency_limit`) refuses any request
beyond the ones it is answering, as a small self-hosted server or a provider's concurrency
cap does. The bot starts generous, and the first refusal brings its limit down to what the
provider takes; the asks already admitted get through on retries, later asks wait in line
with true places, the place message says how many are answered at once, and `/metrics`
shows the same limit. Every wait is on something observable: a gated model stream the test
steps, a change in the fake Discord, or a line of the bot's log.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.answers import replies
from bot.fair_use.concurrency import INITIAL_LIMIT
from tests.fakes.discord.plugin import running_fake
from tests.fakes.openai_server import (
    ApiError,
    FakeOpenAI,
    server_error,
    too_many_concurrent,
)
from tests.stack import run_stack
from tests.test_e2e_fair_use import shows, watching_bot_log
from tests.test_metrics import free_port, scrape, value

PROVIDER_LIMIT = 2
CUT = r"model provider overloaded \((.+)\): concurrent model calls (\d+) -> (\d+)$"

REFUSALS = {
    # A provider's cap on requests in progress, in its usual shape.
    "429": too_many_concurrent(PROVIDER_LIMIT),
    # An overloaded server (vLLM behind a gateway, Ollama's full queue) with a retry hint.
    "503": dataclasses.replace(server_error(503), headers={"retry-after-ms": "100"}),
}


@pytest.mark.parametrize("status", sorted(REFUSALS))
async def test_the_limit_comes_down_to_the_providers_and_everyone_is_answered(
    status: str, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    refusal: ApiError = REFUSALS[status]
    fake_openai.concurrency_limit = PROVIDER_LIMIT
    fake_openai.concurrency_refusal = refusal
    port = free_port()
    settings = {
        "METRICS_PORT": str(port),
        # The provider asks for a retry in 100 ms: the asks admitted before the cut keep
        # trying until a request in progress finishes, well inside the timeout.
        "OPENAI_MAX_RETRIES": "300",
        "OPENAI_TIMEOUT": "60",
    }
    people = [f"person{n}" for n in range(5)]
    with watching_bot_log() as log:
        async with (
            running_fake(user_names=people) as fake_discord,
            run_stack(fake_discord, fake_openai, tmp_path, settings) as stack,
        ):
            users = stack.discord.users
            # discord.py announces readiness a moment after connecting; a bot stopped
            # before that would announce it to a closed client.
            await log.line(r"^connected to Discord as ")
            before = await scrape(port)

            # Two answers in progress take everything the provider allows.
            gates = [stack.model.gated_stream() for _ in range(PROVIDER_LIMIT)]
            running = []
            for n, gate in enumerate(gates):
                running.append(stack.send(f"Long question {n}", user=users[n]))
                await gate.started()
                await gate.send(f"Working on {n}")
                await shows(stack, running[-1], f"Working on {n}")

            # The third is refused by the provider: the bot cuts its limit and retries.
            third = stack.send("Third question", user=users[2])
            cut = await log.line(CUT)
            limit = int(cut.group(3))
            cut_samples = await scrape(port)

            # Asks from now on wait in line, and say how many are answered at once.
            fourth = stack.send("Fourth question", user=users[3])
            await shows(stack, fourth, replies.queue_position(1, at_once=limit))
            fifth = stack.send("Fifth question", user=users[4])
            await shows(stack, fifth, replies.queue_position(2, at_once=limit))
            queued_samples = await scrape(port)
            answered_while_queued = [r.json for r in stack.model.requests if r.status == 200]

            for gate in gates:
                await gate.send(" done.")
                await gate.finish()
            asked = [await stack.finished(h) for h in (*running, third, fourth, fifth)]
            after = await scrape(port)

    assert value(before, "bot_concurrency_limit") == INITIAL_LIMIT
    # One refusal after two good answers: the limit falls from 256 to what the provider takes.
    assert cut.group(1) == f"status {status}"
    assert int(cut.group(2)) == INITIAL_LIMIT
    assert 1 <= limit <= PROVIDER_LIMIT
    assert value(cut_samples, "bot_concurrency_limit") == limit
    assert value(cut_samples, "bot_running_asks") == 3
    # The queued asks waited at the bot, not at the provider: only the first two were answered.
    assert value(queued_samples, "bot_queue_depth") == 2
    assert value(queued_samples, "bot_concurrency_limit") == limit
    assert len(answered_while_queued) == PROVIDER_LIMIT
    # Everyone is answered, the ones refused by the provider included.
    assert [a.outcome for a in asked] == ["answered"] * 5
    assert asked[0].contents == ["Working on 0 done."]
    assert asked[1].contents == ["Working on 1 done."]
    assert [a.contents for a in asked[2:]] == [
        ["Third question"],
        ["Fourth question"],
        ["Fifth question"],
    ]
    refused = [r for r in stack.model.requests if r.status == refusal.status]
    assert refused, "the provider never refused a request"
    assert stack.model.peak_answering <= PROVIDER_LIMIT
    assert 1 <= value(after, "bot_concurrency_limit") <= PROVIDER_LIMIT
    assert value(after, "bot_queue_depth") == 0
