"""The adaptive concurrency limit against a fixed one, on providers with hidden limits.

Run with `.venv/bin/python bench/adaptive.py`. A crowd of users asks back to back (each
answer takes 0.5-1.5 s, 1 s on average) through a real `AskGate`, against a simulated
provider that takes `hidden` calls at once and refuses the rest with 429, or queues
them (the Ollama-like rows). The SDK's retries (2, with its backoff) are played too.
Everything runs on a virtual clock (`tests.fakes.provider_sim`), so the figures are
the same on any machine and the run takes seconds; asserts nothing.

For each, after a first minute of learning and over the next four: answers per second
(and as a share of what the provider allows), 429s, asks that failed after every
retry, and the range of the limit.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.fair_use.concurrency import AdaptiveConcurrency  # noqa: E402
from bot.fair_use.limits import AskGate  # noqa: E402
from tests.fakes.provider_sim import (  # noqa: E402
    HiddenLimitProvider,
    Outcome,
    VirtualTimeLoop,
    simulate,
)

WARMUP = 60.0
SECONDS = 240.0
FIXED = 50


def run(hidden: int, users: int, fixed: int | None, queues: bool) -> Outcome:
    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        gate = AskGate(fixed or 1, max_queued=users)
        control = None if fixed else AdaptiveConcurrency(gate, clock=loop.time)
        provider = HiddenLimitProvider(hidden, random.Random(1), queues=queues)
        if queues and control is not None:
            # A quiet start first, so the usual answer time is known before the crowd.
            await simulate(gate, provider, users=4, seconds=60.0, observer=control)
        return await simulate(
            gate, provider, users=users, seconds=SECONDS, observer=control, warmup=WARMUP
        )

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def row(label: str, hidden: int, outcome: Outcome) -> str:
    share = outcome.throughput / hidden
    limits = f"{min(outcome.limits)}-{max(outcome.limits)}"
    return (
        f"  {label:<10} {outcome.throughput:8.1f}/s {share:7.0%} {outcome.refused_429:9d} "
        f"{outcome.failed:8d}   {limits:>9}"
    )


def main() -> None:
    print(f"Python {sys.version.split()[0]}; virtual time: {WARMUP:.0f} s learning, then")
    print(f"{SECONDS:.0f} s measured; answers take 1 s on average.")
    header = (
        f"  {'limit':<10} {'answers':>10} {'of max':>7} {'429s':>9} {'failed':>8}   {'range':>9}"
    )
    cases = [(4, 40, False), (32, 100, False), (300, 400, False), (8, 200, True)]
    for hidden, users, queues in cases:
        kind = "queues the rest" if queues else "refuses the rest with 429"
        print(f"\nProvider takes {hidden} at once and {kind}; {users} users:")
        print(header)
        for label, fixed in (("adaptive", None), (f"fixed {FIXED}", FIXED)):
            started = time.process_time()
            outcome = run(hidden, users, fixed, queues)
            cpu = time.process_time() - started
            print(f"{row(label, hidden, outcome)}   ({cpu:.1f} s CPU)")


if __name__ == "__main__":
    main()
