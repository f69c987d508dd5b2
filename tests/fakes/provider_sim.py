"""A simulated model provider with a hidden concurrency limit, run on virtual time.

`VirtualTimeLoop` is a real asyncio event loop whose clock jumps straight to the next
timer whenever nothing is ready to run, so a simulated hour of asks takes a fraction
of a second of CPU and no real sleeping, and every run with the same seed is the same.
`asyncio.sleep`, `call_later`, events and tasks behave as on any loop.

`HiddenLimitProvider` behaves like a provider that allows `limit` requests at once:
beyond that it either refuses at once with 429 (`queues=False`, like OpenAI or a
gateway's concurrency limit) or queues the request inside itself (`queues=True`, like
Ollama or llama.cpp), so its answers take longer. `ask` plays the openai SDK's part for
one answer: an attempt, reported to the observer with its status and time to headers,
and up to `max_retries` retries of a 429 with the SDK's backoff (0.5 s doubling, up to a
quarter less at random).

`simulate` runs a steady crowd of users against a gate (and, optionally, the controller
driving it), each asking again as soon as their answer is done, and counts what a user
and the provider would see.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bot.fair_use.limits import AskGate, Ticket

__all__ = [
    "HiddenLimitProvider",
    "Observer",
    "Outcome",
    "VirtualTimeLoop",
    "simulate",
]


class _AdvancingSelector(selectors.SelectSelector):
    """Polls without blocking, then moves the loop's clock by what it would have waited."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("the simulation is stuck: nothing is scheduled to happen")
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated time, starting at 0 (see the module docstring)."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_AdvancingSelector(self))

    def time(self) -> float:
        return self.now


class Observer(Protocol):
    def attempt_done(self, status: int | None, seconds: float) -> None: ...


class _Nobody:
    def attempt_done(self, status: int | None, seconds: float) -> None:
        pass


@dataclass
class HiddenLimitProvider:
    """A provider answering `limit` requests at once in about `service_seconds` each."""

    limit: int
    rng: random.Random
    queues: bool = False
    service_seconds: float = 1.0
    refuse_seconds: float = 0.02
    in_flight: int = 0
    peak: int = 0
    refused: int = 0
    answered: int = 0
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.limit)

    async def request(self) -> int:
        """One HTTP attempt; returns its status once the response headers would arrive."""
        if not self.queues and self._slots.locked():
            await asyncio.sleep(self.refuse_seconds)
            self.refused += 1
            return 429
        async with self._slots:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                # Answers vary in length: half to one and a half times the usual time.
                await asyncio.sleep(self.service_seconds * self.rng.uniform(0.5, 1.5))
            finally:
                self.in_flight -= 1
        self.answered += 1
        return 200

    async def ask(self, observer: Observer, max_retries: int = 2) -> bool:
        """One answer the way the openai SDK asks for it; True if it was answered."""
        loop = asyncio.get_running_loop()
        for attempt in range(max_retries + 1):
            started = loop.time()
            status = await self.request()
            observer.attempt_done(status, loop.time() - started)
            if status == 200:
                return True
            if attempt < max_retries:
                await asyncio.sleep(0.5 * 2**attempt * (1 - 0.25 * self.rng.random()))
        return False


@dataclass
class Outcome:
    """What one simulated run produced."""

    seconds: float
    answered: int = 0
    failed: int = 0
    refused_429: int = 0
    busy: int = 0
    limits: list[int] = field(default_factory=list)
    """The gate's limit once per simulated second."""

    @property
    def throughput(self) -> float:
        """Answers per simulated second."""
        return self.answered / self.seconds


async def simulate(
    gate: AskGate,
    provider: HiddenLimitProvider,
    *,
    users: int,
    seconds: float,
    observer: Observer | None = None,
    warmup: float = 0.0,
    on_second: Callable[[float], None] | None = None,
) -> Outcome:
    """Run `users` users asking back to back for `seconds`; counts only after `warmup`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    counted_from = start + warmup
    end = start + warmup + seconds
    outcome = Outcome(seconds)
    watcher = observer if observer is not None else _Nobody()
    refused_at_warmup = 0

    async def user() -> None:
        while loop.time() < end:
            ticket = gate.try_enter()
            if not isinstance(ticket, Ticket):
                outcome.busy += 1
                await asyncio.sleep(1.0)
                continue
            async with ticket:
                answered = await provider.ask(watcher)
            if loop.time() < counted_from or loop.time() >= end:
                continue
            if answered:
                outcome.answered += 1
            else:
                outcome.failed += 1

    async def sample() -> None:
        nonlocal refused_at_warmup
        await asyncio.sleep(warmup)
        refused_at_warmup = provider.refused
        while loop.time() < end:
            outcome.limits.append(gate.limit)
            if on_second is not None:
                on_second(loop.time() - start)
            await asyncio.sleep(1.0)

    await asyncio.gather(sample(), *(user() for _ in range(users)))
    outcome.refused_429 = provider.refused - refused_at_warmup
    return outcome
