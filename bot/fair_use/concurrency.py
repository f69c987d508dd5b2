"""An adaptive limit on concurrent model calls: as many as the provider answers well.

No fixed number fits every provider: OpenAI takes hundreds of requests at once, a small
Ollama box a handful. `AdaptiveConcurrency` finds the number while the bot runs and sets
it on the `AskGate` (`resize`), so a burst runs in one wave where the provider allows it
and waits in a visible line, with true places, where it does not. It is per process and
learns from nothing but the outcome of each HTTP attempt to the model, which the
completion helper reports through `attempt_done(status, seconds)`.

The algorithm is AIMD, additive increase and multiplicative decrease, as in TCP Reno's
congestion control (RFC 5681) and Netflix's concurrency-limits (`AIMDLimit`), with the
cut sized by how much of the recent traffic was refused, as in DCTCP (RFC 8257), and a
latency signal after Netflix's `Gradient2Limit` (recent times against a long-term
baseline; the cut from Little's law, as in its gradient).

Overload
    A 429, 502, 503, 504 or 529, a connection failure or timeout (status None), or the
    median time to response headers of the last `RECENT_SAMPLES` good attempts above
    `LATENCY_TOLERANCE` x the baseline. A provider that queues instead of refusing
    shows its overload only the latter way.
Cut on refusal
    The limit becomes `min(limit, running) x (1 - share/2)`, at least x `MIN_FACTOR`,
    where `share` is the part of the attempts since the previous cut that were refused.
    Cutting from `running`, not from the limit, makes a cut bite at once even when the
    limit was far above the load. A burst of refusals halves the limit (TCP's cut); one
    refusal after a long good run trims it by a tenth (`MAX_FACTOR`), so the limit
    settles just under the provider's and throughput stays close to what the provider
    allows (an always-halving AIMD averages 75% of it).
Cut on slowness
    By Little's law, `running x baseline / median` calls is what the provider serves
    without queueing, so the limit becomes `min(limit, running) x tolerance / slowdown`
    (between x `MIN_LATENCY_FACTOR` and x `MAX_FACTOR`): queueing of up to the tolerance
    is accepted. Within one slow spell a further cut needs a worse slowdown than the
    last one: a provider that turned slower for its own reasons (not ours) costs one
    cut, not a slide to the floor, and becomes the new usual as the baseline drifts.
One cut per round
    A cut takes effect only as running asks finish (and the SDK retries theirs
    meanwhile). Until no more run than the new limit, and for attempts started before
    then, overload is load already shed: it is counted in `share` but cuts nothing and
    its times are not learnt. Without this one burst of refusals would drive the limit
    to its floor.
Growth
    Every max(limit, `PROBE_EVERY`) good answers grow the limit by one call, one more per
    round of answers (TCP's additive increase), but only while every slot is in use:
    a limit nobody reaches proves nothing and would give no protection on the next
    burst. The floor of `PROBE_EVERY` spaces out probes at small limits, where each one
    is a request the provider may refuse: at a limit of 4, one in 16 answers at most.
Other statuses
    (400, 401, 404, 500, ...) say nothing about load and change nothing.

Bounds and constants, and why:

- `INITIAL_LIMIT` = 256: generous, so a first burst of 200 runs at once on any large
  provider; a small one refuses quickly and the limit halves per round down to it.
- `MIN_LIMIT` = 1: a provider that can take one call at a time still answers everyone.
- `MAX_LIMIT` = 1000: the openai SDK's connection pool; above it requests would wait
  unseen inside the HTTP client instead of visibly in line.
- `MIN_FACTOR` = 0.5, `MAX_FACTOR` = 0.9: at most halve per round on refusals (TCP), at
  least a tenth off (Netflix AIMD's backoff ratio), so a cut always ends the overload.
  `MIN_LATENCY_FACTOR` = 0.1: a median of several samples is trusted further, but one
  verdict never takes more than nine tenths.
- `LATENCY_TOLERANCE` = 2.0: model latency varies with each answer's length, so only a
  doubling counts (Gradient2 uses 1.5 for RPC latencies, which vary less).
- `RECENT_SAMPLES` = 16, judged once `MIN_RECENT` = 8 came after the last cut: a median
  shrugs off a few long answers.
- The baseline is the mean of the first `BASELINE_SAMPLES` = 100 good attempts (not the
  first few: in a burst the shortest answers come back first), then follows the recent
  median with a time constant of `BASELINE_SECONDS` = 600, slow next to a round, fast
  enough that a provider's lasting new pace becomes the usual within minutes.
- `PROBE_EVERY` = 16.

Known limit: against a provider that queues, a limit that starts far above it while its
baseline is still being learnt (a burst in the first hundred answers) is only partly
corrected by slowness; the timeouts that follow count as overload. Pinning
`MAX_CONCURRENT_ASKS` (or the built-in model's slots) means no controller at all.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "BASELINE_SAMPLES",
    "BASELINE_SECONDS",
    "INITIAL_LIMIT",
    "LATENCY_TOLERANCE",
    "MAX_FACTOR",
    "MAX_LIMIT",
    "MIN_FACTOR",
    "MIN_LATENCY_FACTOR",
    "MIN_LIMIT",
    "MIN_RECENT",
    "OVERLOAD_STATUSES",
    "PROBE_EVERY",
    "RECENT_SAMPLES",
    "AdaptiveConcurrency",
    "ResizableGate",
]

log = logging.getLogger(__name__)

INITIAL_LIMIT = 256
MIN_LIMIT = 1
MAX_LIMIT = 1000
MIN_FACTOR = 0.5
MAX_FACTOR = 0.9
LATENCY_TOLERANCE = 2.0
RECENT_SAMPLES = 16
MIN_RECENT = 8
BASELINE_SAMPLES = 100
BASELINE_SECONDS = 600.0
MIN_LATENCY_FACTOR = 0.1
PROBE_EVERY = 16

OVERLOAD_STATUSES = frozenset({429, 502, 503, 504, 529})
"""Statuses by which a provider or its gateway says it has too much to do."""


class ResizableGate(Protocol):
    """What the controller needs of the gate it drives (`AskGate` is one)."""

    @property
    def running(self) -> int: ...

    def resize(self, limit: int) -> None: ...


class AdaptiveConcurrency:
    """Drives `gate`'s limit from the outcome of each model attempt (see the module docstring).

    The gate is set to `initial` at once. `clock` must be the clock `seconds` are
    measured on (by default `time.monotonic`); it tells which attempts started before
    the last cut took effect. For one event loop; not thread-safe.
    """

    def __init__(
        self,
        gate: ResizableGate,
        *,
        initial: int = INITIAL_LIMIT,
        min_limit: int = MIN_LIMIT,
        max_limit: int = MAX_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError(
                "the limits must satisfy 1 <= min_limit <= initial <= max_limit "
                f"(got {min_limit}, {initial}, {max_limit})"
            )
        self._gate = gate
        self._min = min_limit
        self._max = max_limit
        self._clock = clock
        self._limit = initial
        # Good answers towards the next step of growth.
        self._credit = 0
        # A cut takes effect once no more run than the new limit; attempts started
        # before that tell of the load before the cut.
        self._draining = False
        self._settled_at = -math.inf
        # Attempts since the last cut, for the share of refusals that sizes the next one.
        self._good = 0
        self._overloaded = 0
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self._baseline = 0.0
        self._baseline_at = 0.0
        self._samples = 0
        # The slowdown at the last cut for slowness, while times stay above the tolerance.
        self._slow_cut_at: float | None = None
        self.cuts = 0
        """How many times the limit was cut (for tests and benchmarks)."""
        gate.resize(initial)

    @property
    def limit(self) -> int:
        """The number of model calls allowed at once now."""
        return self._limit

    @property
    def baseline(self) -> float | None:
        """The usual time to response headers of a good attempt, once known."""
        return self._baseline if self._samples >= BASELINE_SAMPLES else None

    def attempt_done(self, status: int | None, seconds: float) -> None:
        """Learn from one HTTP attempt: its status (None: no response) and time to headers."""
        now = self._clock()
        running = self._gate.running
        if self._draining and running <= self.limit:
            self._draining = False
            self._settled_at = now
            self._recent.clear()
        fresh = not self._draining and now - max(seconds, 0.0) >= self._settled_at
        if status is None or status in OVERLOAD_STATUSES:
            self._overloaded += 1
            if fresh:
                share = self._overloaded / (self._overloaded + self._good)
                reason = "no response" if status is None else f"status {status}"
                self._cut(max(MIN_FACTOR, 1 - share / 2), reason, now)
            return
        if not 200 <= status < 300:
            return
        if not fresh:
            self._good += 1  # answered, but its time tells of the load before the cut
            return
        slowdown = self._slowdown(seconds, now)
        if slowdown is not None and slowdown > LATENCY_TOLERANCE:
            self._overloaded += 1
            if self._slow_cut_at is None or slowdown > self._slow_cut_at:
                self._slow_cut_at = slowdown
                factor = max(MIN_LATENCY_FACTOR, LATENCY_TOLERANCE / slowdown)
                self._cut(factor, f"answers {slowdown:.1f}x slower than usual", now)
            return
        if slowdown is not None:
            self._slow_cut_at = None
        self._good += 1
        if running == self._limit:
            self._credit += 1
            if self._credit >= max(self._limit, PROBE_EVERY):
                self._set(self._limit + 1)

    def _slowdown(self, seconds: float, now: float) -> float | None:
        """Fold in a good attempt's time; how many times the baseline recent ones take.

        None while there is no verdict yet: the baseline or the recent times still unknown.
        """
        self._recent.append(seconds)
        if self._samples < BASELINE_SAMPLES:
            self._samples += 1
            self._baseline += (seconds - self._baseline) / self._samples
            self._baseline_at = now
            return None
        if len(self._recent) < MIN_RECENT or self._baseline <= 0:
            return None
        median = statistics.median(self._recent)
        slowdown = median / self._baseline
        # Drift towards what the provider does now, so a lasting new pace becomes the usual.
        drift = 1 - math.exp(-(now - self._baseline_at) / BASELINE_SECONDS)
        self._baseline += drift * (median - self._baseline)
        self._baseline_at = now
        return slowdown

    def _cut(self, factor: float, reason: str, now: float) -> None:
        running = self._gate.running
        before = self.limit
        self._set(math.floor(min(self._limit, running) * min(MAX_FACTOR, factor)))
        self._draining = running > self.limit
        self._settled_at = now
        self._good = self._overloaded = self._credit = 0
        self._recent.clear()
        self.cuts += 1
        if self.limit == before:
            return  # already at the floor: one line per change, not per refusal
        log.info(
            "model provider overloaded (%s): concurrent model calls %d -> %d",
            reason,
            before,
            self.limit,
        )

    def _set(self, limit: int) -> None:
        before = self._limit
        self._limit = min(self._max, max(self._min, limit))
        self._credit = 0
        if self._limit != before:
            self._gate.resize(self._limit)
