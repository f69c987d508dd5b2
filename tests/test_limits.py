"""Cooldowns and the ask gate: limits hold under any timing, the line is fair and honest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.fair_use.limits import (
    AskGate,
    Cooldown,
    CooldownSpec,
    GateClosed,
    PerUserCap,
    Refusal,
    Ticket,
    TicketState,
    UserHold,
    parse_cooldown,
)

# --- parse_cooldown ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3/60", CooldownSpec(3, 60.0)),
        ("1/0.5", CooldownSpec(1, 0.5)),
        (" 10 / 3600 ", CooldownSpec(10, 3600.0)),
        ("2/1e3", CooldownSpec(2, 1000.0)),
    ],
)
def test_valid_cooldown_settings_parse(raw: str, expected: CooldownSpec) -> None:
    assert parse_cooldown(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "asks/seconds"),
        ("3", "asks/seconds"),
        ("3/60/2", "asks/seconds"),
        ("0/60", "at least 1"),
        ("-1/60", "whole number"),
        ("1.5/60", "whole number"),
        ("x/60", "whole number"),
        ("/60", "whole number"),
        ("3/0", "> 0"),
        ("3/-5", "> 0"),
        ("3/inf", "finite"),
        ("3/nan", "> 0"),
        ("3/soon", "number of seconds"),
        ("3/", "number of seconds"),
    ],
)
def test_invalid_cooldown_settings_say_why(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match="got") as caught:
        parse_cooldown(raw)
    assert reason in str(caught.value)


def test_cooldown_spec_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CooldownSpec(0, 60)
    with pytest.raises(ValueError, match="seconds"):
        CooldownSpec(1, 0)


# --- Cooldown ---------------------------------------------------------------------------------

USER, OTHER = 111, 222


def test_sliding_window_allows_n_then_says_how_long_to_wait() -> None:
    cooldown = Cooldown(CooldownSpec(2, 10))
    # (time of ask, expected answer)
    table: list[tuple[float, float | None]] = [
        (0, None),
        (1, None),
        (2, 8),  # the ask at 0 leaves the window at 10
        (9.5, 0.5),
        (10, None),  # the ask at 0 has just left the window
        (10.5, 0.5),  # the window holds the asks at 1 and 10
        (11, None),
    ]
    for now, expected in table:
        assert cooldown.check_and_record(USER, now) == expected, now


def test_users_have_separate_windows() -> None:
    cooldown = Cooldown(CooldownSpec(1, 60))
    assert cooldown.check_and_record(USER, 0) is None
    assert cooldown.check_and_record(OTHER, 0) is None
    assert cooldown.check_and_record(USER, 1) == 59


def test_refused_asks_do_not_extend_the_wait() -> None:
    cooldown = Cooldown(CooldownSpec(1, 60))
    assert cooldown.check_and_record(USER, 0) is None
    for now in range(1, 60):
        assert cooldown.check_and_record(USER, now) == 60 - now
    assert cooldown.check_and_record(USER, 60) is None


def test_retry_after_peeks_without_recording() -> None:
    cooldown = Cooldown(CooldownSpec(1, 60))
    assert cooldown.retry_after(USER, 0) is None
    assert cooldown.retry_after(USER, 0) is None
    assert cooldown.check_and_record(USER, 0) is None
    assert cooldown.retry_after(USER, 15) == 45
    assert cooldown.retry_after(USER, 60) is None


def test_the_clock_is_used_when_no_time_is_given() -> None:
    times = iter([100.0, 101.0, 130.0])
    cooldown = Cooldown(CooldownSpec(1, 30), clock=lambda: next(times))
    assert cooldown.check_and_record(USER) is None
    assert cooldown.check_and_record(USER) == 29
    assert cooldown.check_and_record(USER) is None


def test_users_whose_window_passed_are_forgotten() -> None:
    cooldown = Cooldown(CooldownSpec(3, 60))
    for user_id in range(1000):
        cooldown.check_and_record(user_id, now=user_id / 100)
    assert cooldown.tracked_users == 1000
    # At t=65 only those who asked after t=5 are still inside their window.
    newcomer = 5000
    cooldown.check_and_record(newcomer, now=65)
    assert cooldown.tracked_users == 1 + sum(1 for u in range(1000) if u / 100 > 5)
    cooldown.check_and_record(newcomer, now=200)
    assert cooldown.tracked_users == 1


arrivals = st.lists(st.integers(min_value=0, max_value=500), max_size=60).map(sorted)


@given(
    asks=st.integers(min_value=1, max_value=5),
    seconds=st.integers(min_value=1, max_value=100),
    times=arrivals,
    users=st.data(),
)
def test_no_window_of_s_seconds_ever_holds_more_than_n_asks(
    asks: int, seconds: int, times: list[int], users: st.DataObject
) -> None:
    cooldown = Cooldown(CooldownSpec(asks, seconds))
    allowed: dict[int, list[int]] = {}
    for now in times:
        user_id = users.draw(st.sampled_from([USER, OTHER]))
        before = allowed.setdefault(user_id, [])
        in_window = [t for t in before if t > now - seconds]
        wait = cooldown.check_and_record(user_id, now)
        if len(in_window) < asks:
            # Refusing while the window has room would be unfair.
            assert wait is None
            before.append(now)
        else:
            # The promised wait is exact: that is when the oldest ask in the window leaves.
            assert wait == in_window[0] + seconds - now
            assert wait > 0
    for user_times in allowed.values():
        for start in user_times:
            assert sum(1 for t in user_times if start <= t < start + seconds) <= asks


async def test_two_racing_asks_with_one_slot_left_let_exactly_one_through() -> None:
    cooldown = Cooldown(CooldownSpec(2, 60), clock=lambda: 0.0)
    assert cooldown.check_and_record(USER) is None
    go = asyncio.Event()

    async def ask() -> float | None:
        await go.wait()
        return cooldown.check_and_record(USER)

    racers = [asyncio.create_task(ask()) for _ in range(2)]
    go.set()
    results = await asyncio.gather(*racers)
    assert sorted(results, key=lambda r: r is not None) == [None, 60.0]


# --- AskGate: the line as a state machine -----------------------------------------------------


@st.composite
def gate_scripts(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int]]]:
    max_concurrent = draw(st.integers(min_value=1, max_value=3))
    max_queued = draw(st.integers(min_value=0, max_value=4))
    ops = draw(
        st.lists(
            st.tuples(st.sampled_from(["arrive", "finish", "leave"]), st.integers(0, 10)),
            max_size=40,
        )
    )
    return max_concurrent, max_queued, ops


@given(gate_scripts())
async def test_the_line_is_first_come_first_served(
    script: tuple[int, int, list[tuple[str, int]]],
) -> None:
    max_concurrent, max_queued, ops = script
    gate = AskGate(max_concurrent, max_queued)
    running: list[Ticket] = []  # the model, oldest first
    line: list[Ticket] = []
    last_place: dict[Ticket, int] = {}
    for op, pick in ops:
        if op == "arrive":
            ticket = gate.try_enter()
            if len(running) < max_concurrent:
                assert isinstance(ticket, Ticket)
                running.append(ticket)
            elif len(line) < max_queued:
                assert isinstance(ticket, Ticket)
                line.append(ticket)
            else:
                assert ticket is Refusal.BUSY
        elif op == "finish" and running:
            running.pop(pick % len(running)).cancel()
            if line:
                running.append(line.pop(0))
        elif op == "leave" and line:
            line.pop(pick % len(line)).cancel()

        assert gate.running == len(running)
        assert gate.queued == len(line)
        assert all(t.state is TicketState.RUNNING and t.position is None for t in running)
        # Places are exactly 1..k in arrival order, and nobody ever moves back.
        assert [t.position for t in line] == list(range(1, len(line) + 1))
        for place, ticket in enumerate(line, start=1):
            assert place <= last_place.get(ticket, place)
            last_place[ticket] = place


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        AskGate(0, 5)
    with pytest.raises(ValueError, match="max_queued"):
        AskGate(1, -1)


# --- AskGate: tickets in tasks ----------------------------------------------------------------


@dataclass
class Asker:
    """One ask going through the gate in its own task, recording the places it is shown.

    With `hold` set, showing the first place takes until `hold` is set, like a slow
    message edit.
    """

    hold: asyncio.Event | None = None
    ticket: Ticket = field(init=False)
    task: asyncio.Task[None] = field(init=False)
    places: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    seen: list[int] = field(default_factory=list)
    showing: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)

    async def show(self, place: int) -> None:
        self.seen.append(place)
        self.places.put_nowait(place)
        self.showing.set()
        if self.hold is not None and len(self.seen) == 1:
            await self.hold.wait()

    async def run(self) -> None:
        async with self.ticket:
            self.entered.set()
            await self.finish.wait()


def start(gate: AskGate, hold: asyncio.Event | None = None) -> Asker:
    asker = Asker(hold)
    ticket = gate.try_enter(on_position=asker.show)
    assert isinstance(ticket, Ticket)
    asker.ticket = ticket
    asker.task = asyncio.create_task(asker.run())
    return asker


async def done(asker: Asker) -> None:
    asker.finish.set()
    await asker.task


async def test_a_waiting_ask_runs_when_a_slot_frees() -> None:
    gate = AskGate(max_concurrent=1, max_queued=2)
    first = start(gate)
    await first.entered.wait()
    second = start(gate)
    assert await second.places.get() == 1
    assert not second.entered.is_set()
    await done(first)
    await second.entered.wait()
    assert (gate.running, gate.queued) == (1, 0)
    await done(second)
    assert second.seen == [1]
    assert (gate.running, gate.queued) == (0, 0)


async def test_places_count_down_as_the_line_drains() -> None:
    gate = AskGate(max_concurrent=1, max_queued=3)
    head = start(gate)
    await head.entered.wait()
    waiting = [start(gate) for _ in range(3)]
    for place, asker in enumerate(waiting, start=1):
        assert await asker.places.get() == place
    ahead = head
    for index, asker in enumerate(waiting):
        await done(ahead)
        await asker.entered.wait()
        for behind in waiting[index + 1 :]:
            await behind.places.get()
        ahead = asker
    await done(ahead)
    assert [asker.seen for asker in waiting] == [[1], [2, 1], [3, 2, 1]]


async def test_a_slow_message_edit_skips_stale_places_and_never_repeats_one() -> None:
    gate = AskGate(max_concurrent=1, max_queued=3)
    head = start(gate)
    await head.entered.wait()
    a, b = start(gate), start(gate)
    edited = asyncio.Event()
    last = start(gate, hold=edited)
    await last.showing.wait()  # "you're #3" is being edited in ...
    await done(head)
    await a.entered.wait()
    await done(a)
    await b.entered.wait()  # ... while the line moved on twice
    edited.set()
    assert await last.places.get() == 3
    assert await last.places.get() == 1
    await done(b)
    await last.entered.wait()
    await done(last)
    assert last.seen == [3, 1]


async def test_no_place_is_shown_once_the_turn_has_come() -> None:
    gate = AskGate(max_concurrent=2, max_queued=2)
    runners = [start(gate), start(gate)]
    for runner in runners:
        await runner.entered.wait()
    first = start(gate)
    edited = asyncio.Event()
    last = start(gate, hold=edited)
    await last.showing.wait()  # "you're #2" is being edited in ...
    await done(runners[0])
    await first.entered.wait()
    await done(runners[1])  # ... and its turn comes before the edit returns
    assert last.ticket.state is TicketState.RUNNING
    edited.set()
    await last.entered.wait()
    await done(last)
    await done(first)
    assert last.seen == [2]


async def test_a_cancelled_waiter_leaves_the_line_and_those_behind_move_up() -> None:
    gate = AskGate(max_concurrent=1, max_queued=3)
    head = start(gate)
    await head.entered.wait()
    b, c, d = start(gate), start(gate), start(gate)
    for place, asker in enumerate((b, c, d), start=1):
        assert await asker.places.get() == place
    c.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await c.task
    assert gate.queued == 2
    assert await d.places.get() == 2
    assert (b.ticket.position, d.ticket.position) == (1, 2)
    await done(head)
    await b.entered.wait()
    assert await d.places.get() == 1
    await done(b)
    await d.entered.wait()
    await done(d)
    assert b.seen == [1]
    assert d.seen == [3, 2, 1]
    assert not c.entered.is_set()


async def test_a_failed_ask_still_frees_its_slot() -> None:
    gate = AskGate(max_concurrent=1, max_queued=1)
    failing = gate.try_enter()
    assert isinstance(failing, Ticket)
    with pytest.raises(ZeroDivisionError):
        async with failing:
            _ = 1 / 0
    assert (gate.running, failing.state) == (0, TicketState.DONE)
    again = gate.try_enter()
    assert isinstance(again, Ticket)
    assert again.state is TicketState.RUNNING


async def test_an_ask_cancelled_as_its_turn_comes_passes_the_slot_on() -> None:
    gate = AskGate(max_concurrent=1, max_queued=2)
    head = start(gate)
    await head.entered.wait()
    b, c = start(gate), start(gate)
    assert await b.places.get() == 1
    assert await c.places.get() == 2
    await done(head)
    # b's turn has come but its task has not woken yet; it is cancelled (user gone).
    assert b.ticket.state is TicketState.RUNNING
    b.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b.task
    await c.entered.wait()
    assert gate.running == 1
    await done(c)
    assert gate.running == 0


async def test_when_everything_is_taken_the_answer_is_busy_at_once() -> None:
    gate = AskGate(max_concurrent=1, max_queued=1)
    assert isinstance(gate.try_enter(), Ticket)
    assert isinstance(gate.try_enter(), Ticket)
    assert gate.try_enter() is Refusal.BUSY
    no_line = AskGate(max_concurrent=1, max_queued=0)
    assert isinstance(no_line.try_enter(), Ticket)
    assert no_line.try_enter() is Refusal.BUSY


async def test_a_ticket_given_back_unused_frees_its_place() -> None:
    gate = AskGate(max_concurrent=1, max_queued=1)
    running = gate.try_enter()
    waiting = gate.try_enter()
    assert isinstance(running, Ticket)
    assert isinstance(waiting, Ticket)
    waiting.cancel()
    assert gate.queued == 0
    running.cancel()
    running.cancel()  # idempotent
    assert gate.running == 0


async def test_a_ticket_cannot_be_entered_twice() -> None:
    gate = AskGate(max_concurrent=1, max_queued=0)
    ticket = gate.try_enter()
    assert isinstance(ticket, Ticket)
    async with ticket:
        pass
    with pytest.raises(RuntimeError, match="once"):
        async with ticket:
            pass


async def test_closing_refuses_new_asks_turns_away_waiters_and_drains_running() -> None:
    gate = AskGate(max_concurrent=1, max_queued=2)
    events: list[str] = []
    entered, finish = asyncio.Event(), asyncio.Event()
    ticket = gate.try_enter()
    assert isinstance(ticket, Ticket)

    async def run() -> None:
        async with ticket:
            entered.set()
            await finish.wait()
        events.append("finished")

    async def wait_for_drain() -> None:
        await gate.drained()
        events.append("drained")

    running = asyncio.create_task(run())
    await entered.wait()
    waiter = start(gate)
    assert await waiter.places.get() == 1

    gate.close()
    assert gate.closed
    assert gate.try_enter() is Refusal.CLOSING
    assert gate.queued == 0
    with pytest.raises(GateClosed):
        await waiter.task
    # Created first, the drain waiter runs first: it must still wait for the running ask.
    drain = asyncio.create_task(wait_for_drain())
    finish.set()
    await asyncio.gather(drain, running)
    assert events == ["finished", "drained"]
    assert not waiter.entered.is_set()


async def test_an_idle_gate_is_drained_at_once() -> None:
    gate = AskGate(max_concurrent=2, max_queued=2)
    gate.close()
    await gate.drained()
    assert (gate.running, gate.queued) == (0, 0)


# --- AskGate: a limit that changes while asks run ---------------------------------------------


async def test_raising_the_limit_admits_the_front_of_the_line_at_once() -> None:
    gate = AskGate(max_concurrent=1, max_queued=4)
    head = start(gate)
    await head.entered.wait()
    waiting = [start(gate) for _ in range(4)]
    for place, asker in enumerate(waiting, start=1):
        assert await asker.places.get() == place
    gate.resize(3)
    assert gate.limit == 3
    await waiting[0].entered.wait()
    await waiting[1].entered.wait()
    # The two still waiting moved up two places each, straight to their new place.
    assert await waiting[2].places.get() == 1
    assert await waiting[3].places.get() == 2
    assert (gate.running, gate.queued) == (3, 2)
    for asker in [head, *waiting]:
        await done(asker)
    assert [asker.seen for asker in waiting] == [[1], [2], [3, 1], [4, 2, 1]]


async def test_cutting_the_limit_lets_running_asks_finish_and_admits_no_one_until_below() -> None:
    gate = AskGate(max_concurrent=3, max_queued=2)
    runners = [start(gate) for _ in range(3)]
    for runner in runners:
        await runner.entered.wait()
    first, second = start(gate), start(gate)
    assert await first.places.get() == 1
    gate.resize(1)
    assert (gate.running, gate.limit) == (3, 1)  # nobody is stopped
    await done(runners[0])
    await done(runners[1])
    assert first.ticket.state is TicketState.WAITING  # 1 running: still at the limit
    assert gate.try_enter() is Refusal.BUSY
    await done(runners[2])
    await first.entered.wait()
    assert second.ticket.position == 1
    await done(first)
    await second.entered.wait()
    await done(second)
    assert (gate.running, gate.queued) == (0, 0)


async def test_a_newcomer_never_overtakes_the_line_when_a_cut_slot_frees() -> None:
    gate = AskGate(max_concurrent=2, max_queued=1)
    a, b = gate.try_enter(), gate.try_enter()
    waiting = gate.try_enter()
    assert isinstance(a, Ticket)
    assert isinstance(b, Ticket)
    assert isinstance(waiting, Ticket)
    gate.resize(1)
    a.cancel()
    b.cancel()
    assert waiting.state is TicketState.RUNNING
    late = gate.try_enter()
    assert isinstance(late, Ticket)
    assert late.state is TicketState.WAITING


def test_a_limit_below_one_is_refused() -> None:
    gate = AskGate(max_concurrent=2, max_queued=0)
    with pytest.raises(ValueError, match="at least 1"):
        gate.resize(0)
    assert gate.limit == gate.max_concurrent == 2


# Operations on a gate: ("enter",), ("finish", n) the n-th running, ("leave", n) the n-th
# waiting, ("resize", limit).
gate_operations = st.lists(
    st.one_of(
        st.just(("enter", 0)),
        st.tuples(st.just("finish"), st.integers(0, 20)),
        st.tuples(st.just("leave"), st.integers(0, 20)),
        st.tuples(st.just("resize"), st.integers(1, 6)),
    ),
    max_size=80,
)


@given(gate_operations)
def test_under_any_resizing_the_line_is_first_come_first_served(
    operations: list[tuple[str, int]],
) -> None:
    gate = AskGate(max_concurrent=2, max_queued=5)
    arrivals: list[Ticket] = []
    started: list[Ticket] = []
    running: list[Ticket] = []
    for operation, value in operations:
        if operation == "enter":
            ticket = gate.try_enter()
            if isinstance(ticket, Ticket):
                arrivals.append(ticket)
        elif operation == "finish" and running:
            running[value % len(running)].cancel()
        elif operation == "leave":
            waiting = [t for t in arrivals if t.state is TicketState.WAITING]
            if waiting:
                waiting[value % len(waiting)].cancel()
        elif operation == "resize":
            gate.resize(value)
        for ticket in arrivals:
            if ticket.state is TicketState.RUNNING and ticket not in started:
                started.append(ticket)
        running = [t for t in arrivals if t.state is TicketState.RUNNING]
        waiting = [t for t in arrivals if t.state is TicketState.WAITING]
        # Nobody waits while a slot is free; places are 1..n in order of arrival.
        assert not waiting or len(running) >= gate.limit
        assert [t.position for t in waiting] == list(range(1, len(waiting) + 1))
        assert (gate.running, gate.queued) == (len(running), len(waiting))
    # Tickets started in the order they arrived (those given back unused aside).
    order = [arrivals.index(t) for t in started]
    assert order == sorted(order)


# --- PerUserCap -------------------------------------------------------------------------------


def test_a_user_holds_at_most_their_share_of_asks_in_flight() -> None:
    cap = PerUserCap(2)
    first, second = cap.try_take(USER), cap.try_take(USER)
    assert isinstance(first, UserHold)
    assert isinstance(second, UserHold)
    assert cap.try_take(USER) is None
    assert isinstance(cap.try_take(OTHER), UserHold)  # others are not affected
    assert (cap.in_flight(USER), cap.in_flight(OTHER)) == (2, 1)
    first.release()
    assert isinstance(cap.try_take(USER), UserHold)


def test_a_released_place_is_given_back_once_and_idle_users_are_forgotten() -> None:
    cap = PerUserCap(1)
    hold = cap.try_take(USER)
    assert hold is not None
    with hold:
        assert cap.tracked_users == 1
    assert hold.released
    hold.release()  # idempotent: does not free someone else's place
    again = cap.try_take(USER)
    assert again is not None
    hold.release()
    assert cap.try_take(USER) is None
    again.release()
    assert (cap.in_flight(USER), cap.tracked_users) == (0, 0)


def test_a_failed_ask_gives_its_place_back() -> None:
    cap = PerUserCap(1)
    hold = cap.try_take(USER)
    assert hold is not None
    with pytest.raises(ZeroDivisionError), hold:
        _ = 1 / 0
    assert cap.in_flight(USER) == 0


async def test_a_cancelled_ask_gives_its_place_back() -> None:
    cap = PerUserCap(1)
    holding = asyncio.Event()

    async def ask() -> None:
        hold = cap.try_take(USER)
        assert hold is not None
        with hold:
            holding.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(ask())
    await holding.wait()
    assert cap.try_take(USER) is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cap.in_flight(USER) == 0
    assert cap.try_take(USER) is not None


def test_one_user_cannot_fill_the_line() -> None:
    """The reported case: one slot, two places in line, and a second user still gets in."""
    gate, cap = AskGate(max_concurrent=1, max_queued=2), PerUserCap(2)
    admitted = []
    for _ in range(3):
        hold = cap.try_take(USER)
        if hold is not None:
            ticket = gate.try_enter()
            assert isinstance(ticket, Ticket)
            admitted.append(ticket)
    assert len(admitted) == 2
    hold = cap.try_take(OTHER)
    assert hold is not None
    assert isinstance(gate.try_enter(), Ticket)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PerUserCap(0)
