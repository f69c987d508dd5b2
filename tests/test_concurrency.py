"""The adaptive concurrency limit: it backs off when the provider is overloaded, grows while
the provider answers well, and on a simulated provider settles near its hidden limit.

The unit tests drive `AdaptiveConcurrency` by hand with a gate stand-in and a clock
the test sets. The simulations run real `AskGate`s, tasks and retries on a virtual
clock (`tests.fakes.provider_sim`): counts and limits are asserted, never wall time.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from bot.config import ConfigError, load_settings
from bot.fair_use.concurrency import (
    BASELINE_SAMPLES,
    INITIAL_LIMIT,
    MAX_LIMIT,
    MIN_RECENT,
    PROBE_EVERY,
    RECENT_SAMPLES,
    AdaptiveConcurrency,
)
from bot.fair_use.limits import AskGate
from tests.fakes.provider_sim import HiddenLimitProvider, Outcome, VirtualTimeLoop, simulate

# --- the controller on its own ----------------------------------------------------------------


@dataclass
class Gate:
    """What the controller sees of a gate: how many run, and the limits it was given."""

    running: int = 0
    sizes: list[int] = field(default_factory=list)

    def resize(self, limit: int) -> None:
        self.sizes.append(limit)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(
    running: int, initial: int = INITIAL_LIMIT, **bounds: int
) -> tuple[AdaptiveConcurrency, Gate, Clock]:
    gate, clock = Gate(running=running), Clock()
    return AdaptiveConcurrency(gate, initial=initial, clock=clock, **bounds), gate, clock


def test_the_gate_starts_at_the_generous_initial_limit() -> None:
    control, gate, _ = controller(running=0)
    assert control.limit == INITIAL_LIMIT == 256
    assert gate.sizes == [256]


@pytest.mark.parametrize(
    ("initial", "min_limit", "max_limit"), [(0, 1, 10), (5, 6, 10), (11, 1, 10), (1, 0, 10)]
)
def test_impossible_bounds_are_refused(initial: int, min_limit: int, max_limit: int) -> None:
    with pytest.raises(ValueError, match="min_limit <= initial <= max_limit"):
        controller(0, initial, min_limit=min_limit, max_limit=max_limit)


@pytest.mark.parametrize("status", [429, 502, 503, 504, 529, None])
def test_a_throttled_or_failed_attempt_halves_the_calls_in_flight(status: int | None) -> None:
    control, gate, _ = controller(running=200)
    control.attempt_done(status, 0.05)
    assert control.limit == 100
    assert gate.sizes[-1] == 100


def test_a_cut_starts_from_the_load_not_from_an_unused_limit() -> None:
    control, _, _ = controller(running=10)
    control.attempt_done(429, 0.05)
    assert control.limit == 5


@pytest.mark.parametrize("status", [400, 401, 404, 408, 413, 500])
def test_statuses_that_say_nothing_about_load_change_nothing(status: int) -> None:
    control, gate, _ = controller(running=256)
    for _ in range(100):
        control.attempt_done(status, 0.05)
    assert control.limit == 256
    assert gate.sizes == [256]


def test_refusals_while_the_last_cut_takes_effect_cut_nothing_more() -> None:
    control, gate, clock = controller(running=200)
    control.attempt_done(429, 0.05)
    assert control.limit == 100
    # 200 still run (and retry) until enough finish: their refusals are load already shed.
    for _ in range(150):
        clock.now += 0.01
        control.attempt_done(429, 0.02)
    assert control.limit == 100
    # Once no more than 100 run, a refusal of an attempt sent since then cuts again.
    gate.running = 100
    clock.now += 1
    control.attempt_done(200, 1.0)  # the cut has taken effect from here
    clock.now += 1
    control.attempt_done(429, 0.05)
    assert control.limit < 100
    assert control.cuts == 2


def test_a_refusal_of_an_attempt_sent_before_the_cut_took_effect_cuts_nothing() -> None:
    control, gate, clock = controller(running=100)
    control.attempt_done(429, 0.05)
    assert control.limit == 50
    gate.running = 50
    clock.now += 1
    control.attempt_done(200, 0.5)  # the cut has taken effect
    clock.now += 1
    control.attempt_done(None, 30.0)  # a timeout of an attempt sent long before
    assert control.limit == 50


def test_one_refusal_after_a_long_good_run_trims_the_limit_by_a_tenth() -> None:
    control, _, clock = controller(running=40, initial=40)
    for _ in range(200):
        clock.now += 0.1
        control.attempt_done(200, 1.0)
    grown = control.limit
    assert grown > 40
    control.attempt_done(429, 0.05)
    assert control.limit == int(min(grown, 40) * 0.9)


def test_the_limit_grows_about_one_call_per_round_while_every_slot_is_used() -> None:
    control, gate, clock = controller(running=32, initial=32)
    for _ in range(32):
        gate.running = control.limit
        clock.now += 0.1
        control.attempt_done(200, 1.0)
    assert control.limit == 33
    assert gate.sizes == [32, 33]


def test_small_limits_probe_once_in_sixteen_answers() -> None:
    control, gate, clock = controller(running=4, initial=4)
    answers_per_step = []
    count = 0
    while control.limit < 7:
        before = control.limit
        gate.running = control.limit
        clock.now += 0.1
        control.attempt_done(200, 1.0)
        count += 1
        if control.limit != before:
            answers_per_step.append(count)
            count = 0
    assert answers_per_step == [PROBE_EVERY] * 3


def test_an_unused_limit_does_not_grow() -> None:
    control, gate, clock = controller(running=3, initial=10)
    for _ in range(500):
        clock.now += 0.1
        control.attempt_done(200, 1.0)
    assert control.limit == 10
    assert gate.sizes == [10]


def test_the_limit_stays_within_its_bounds() -> None:
    control, gate, clock = controller(running=2, initial=2, min_limit=2, max_limit=3)
    control.attempt_done(429, 0.05)
    assert control.limit == 2
    for _ in range(1000):
        gate.running = control.limit
        clock.now += 0.1
        control.attempt_done(200, 1.0)
    assert control.limit == 3
    assert INITIAL_LIMIT <= MAX_LIMIT


def learn_baseline(control: AdaptiveConcurrency, clock: Clock, seconds: float) -> None:
    for _ in range(BASELINE_SAMPLES):
        clock.now += 0.1
        control.attempt_done(200, seconds)
    assert control.baseline == pytest.approx(seconds)


def test_answers_slowing_well_past_their_baseline_cut_the_limit_by_littles_law() -> None:
    control, gate, clock = controller(running=99, initial=100)
    learn_baseline(control, clock, 1.0)
    assert control.limit == 100
    for _ in range(RECENT_SAMPLES // 2 + 1):
        clock.now += 0.1
        control.attempt_done(200, 5.0)
    # The median of the last 16 is (1 + 5) / 2: calls are 3x slower, so 2/3 of them
    # would be served within twice the usual time.
    assert control.limit == 66
    gate.running = 66
    control.attempt_done(200, 5.0)  # the cut has taken effect from here
    clock.now += 5.0  # only attempts sent since then tell of the new load
    for _ in range(MIN_RECENT):
        clock.now += 0.1
        control.attempt_done(200, 5.0)
    # Five times slower (worse): 2/5 of those.
    assert control.limit == 26
    assert control.cuts == 2


def test_times_within_the_tolerance_cut_nothing() -> None:
    control, _, clock = controller(running=99, initial=100)  # no growth either
    learn_baseline(control, clock, 1.0)
    for _ in range(200):
        clock.now += 0.1
        control.attempt_done(200, 1.9)
    assert control.limit == 100
    assert control.cuts == 0


def test_no_verdict_on_slowness_before_the_baseline_is_known() -> None:
    control, _, clock = controller(running=100, initial=100)
    for seconds in [1.0] * 10 + [9.0] * (BASELINE_SAMPLES - 11):
        clock.now += 0.1
        control.attempt_done(200, seconds)
    assert control.baseline is None
    assert control.cuts == 0


def test_a_provider_slower_for_its_own_reasons_costs_one_cut_not_a_slide() -> None:
    control, gate, clock = controller(running=99, initial=100)
    learn_baseline(control, clock, 1.0)
    for _ in range(500):
        clock.now += 0.1
        control.attempt_done(200, 3.0)  # three times slower whatever we send
        gate.running = control.limit
    assert control.cuts == 1
    assert 66 <= control.limit <= 70
    # Getting worse still is a new verdict.
    for _ in range(8):
        clock.now += 0.1
        control.attempt_done(200, 8.0)
    assert control.cuts == 2


def test_timeouts_cut_like_refusals() -> None:
    control, _, clock = controller(running=60, initial=60)
    clock.now += 61
    control.attempt_done(None, 60.0)
    assert control.limit == 30


# --- the settings -----------------------------------------------------------------------------


def test_unset_the_limit_adapts_and_a_number_pins_it() -> None:
    adaptive = load_settings({"MAX_CONCURRENT_ASKS": " "}, require_discord=False)
    assert adaptive.adaptive_concurrency
    assert adaptive.max_concurrent_asks == INITIAL_LIMIT
    pinned = load_settings({"MAX_CONCURRENT_ASKS": "8"}, require_discord=False)
    assert not pinned.adaptive_concurrency
    assert pinned.max_concurrent_asks == 8


def test_per_user_asks_default_to_two_and_can_be_set() -> None:
    assert load_settings({}, require_discord=False).max_asks_per_user == 2
    assert load_settings({"MAX_ASKS_PER_USER": "5"}, require_discord=False).max_asks_per_user == 5


def test_bad_concurrency_settings_are_reported_together() -> None:
    env = {"MAX_CONCURRENT_ASKS": "0", "MAX_ASKS_PER_USER": "many"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env, require_discord=False)
    assert caught.value.problems == [
        "MAX_CONCURRENT_ASKS must be a whole number > 0, or empty for a limit that adapts "
        "to the provider (got '0').",
        "MAX_ASKS_PER_USER must be a whole number > 0 (got 'many').",
    ]


# --- a simulated provider with a hidden limit -------------------------------------------------


def run_simulation(
    hidden: int,
    *,
    users: int,
    fixed: int | None = None,
    queues: bool = False,
    warmup: float = 60.0,
    seconds: float = 200.0,
    seed: int = 1,
) -> Outcome:
    """`users` asking back to back against a provider allowing `hidden` calls at once."""

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        gate = AskGate(fixed or 1, max_queued=users)
        control = None if fixed else AdaptiveConcurrency(gate, clock=loop.time)
        provider = HiddenLimitProvider(hidden, random.Random(seed), queues=queues)
        return await simulate(
            gate, provider, users=users, seconds=seconds, observer=control, warmup=warmup
        )

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


@pytest.mark.parametrize(("hidden", "users"), [(4, 40), (32, 100)])
def test_the_limit_settles_just_under_a_hidden_limit(hidden: int, users: int) -> None:
    outcome = run_simulation(hidden, users=users)
    # After a minute's burst of learning, the limit stays near the provider's ...
    assert min(outcome.limits) >= hidden * 0.85
    assert max(outcome.limits) <= hidden + 1
    # ... nearly every call the provider can take is made, one answer a second each ...
    assert outcome.throughput >= hidden * 0.9
    # ... probing costs few refusals, and no one is turned away with an error.
    assert outcome.refused_429 <= outcome.answered * 0.07
    assert outcome.failed == 0


def test_a_fixed_limit_above_the_providers_fails_asks_the_adaptive_one_answers() -> None:
    adaptive = run_simulation(4, users=40, seconds=100)
    fixed = run_simulation(4, users=40, fixed=50, seconds=100)
    assert fixed.failed > fixed.answered * 2
    assert fixed.refused_429 > 50 * adaptive.refused_429
    assert adaptive.failed == 0
    assert adaptive.answered >= fixed.answered * 0.9


def test_a_first_burst_against_a_small_provider_converges_within_a_minute() -> None:
    outcome = run_simulation(4, users=200, warmup=0.0, seconds=120.0)
    assert outcome.limits[0] == INITIAL_LIMIT
    assert max(outcome.limits[60:]) <= 5
    assert outcome.throughput >= 4 * 0.85


def test_a_fixed_limit_below_a_large_provider_wastes_it_the_adaptive_one_does_not() -> None:
    adaptive = run_simulation(100, users=150, seconds=100, warmup=30)
    fixed = run_simulation(100, users=150, fixed=50, seconds=100, warmup=30)
    assert fixed.throughput <= 50.5
    assert adaptive.throughput >= 100 * 0.9
    assert adaptive.refused_429 <= adaptive.answered * 0.01


def test_a_provider_that_queues_is_not_sent_far_more_than_it_serves() -> None:
    """Ollama-like: no 429 ever, only longer waits. Learnt on a quiet start, then a crowd."""

    async def main() -> tuple[Outcome, AdaptiveConcurrency]:
        loop = asyncio.get_running_loop()
        gate = AskGate(1, max_queued=200)
        control = AdaptiveConcurrency(gate, clock=loop.time)
        provider = HiddenLimitProvider(8, random.Random(2), queues=True)
        await simulate(gate, provider, users=4, seconds=60, observer=control)
        crowd = await simulate(gate, provider, users=200, seconds=200, observer=control)
        return crowd, control

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        crowd, control = runner.run(main())
    assert control.cuts >= 1
    # Without the latency signal all 200 would be sent at once (the initial 256); with it
    # the provider queues a few times its parallelism at most, and drifts slowly.
    settled = crowd.limits[30:]
    assert max(settled) <= 8 * 5
    assert sum(settled) / len(settled) <= 8 * 4
    assert crowd.refused_429 == 0
    assert crowd.throughput >= 8 * 0.95
