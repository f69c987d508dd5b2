"""Fair-use limits held in memory: a per-user cooldown, a cap on each user's asks in flight,
a gate on concurrent model calls, and the count of asks in flight.

All are plain objects for one event loop. Every decision is taken synchronously, with
no `await` between looking at the state and changing it, so two asks racing on the same
loop can never both take the last place.

`Cooldown`
    At most N asks per user in any window of S seconds (a sliding window, set as "N/S").
`PerUserCap`
    At most N asks per user in flight at once (running or waiting in line), so one user
    cannot take every place in line.

    hold = cap.try_take(user_id)
    if hold is None:
        ...  # this user already has N asks in flight
    with hold:  # given back however the block ends, cancellation included
        ...

`AskGate`
    At most `limit` model calls at once; up to `max_queued` more wait their turn in strict
    arrival order, and anyone beyond that is told at once that the bot is busy. The limit
    may change while asks run (`resize`, driven by `bot.fair_use.concurrency`): a raise
    admits waiting tickets at once, a cut lets running ones finish and admits no more
    until fewer than the new limit run.

    ticket = gate.try_enter(on_position=show_place_in_line)
    if isinstance(ticket, Refusal):
        ...  # Refusal.BUSY: try again shortly; Refusal.CLOSING: shutting down
    async with ticket:  # waits for a free slot, reporting each new place in line
        answer = await completer.complete(prompt)

`ticket.position` (1-based while waiting) and `gate.running` / `gate.queued` /
`gate.limit` can be read at any time, e.g. for metrics.
`InFlight`
    The asks being handled, from admission to their last message, for a shutdown to wait
    on (a slot is given back earlier, as soon as the model is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = [
    "AskGate",
    "Cooldown",
    "CooldownSpec",
    "GateClosed",
    "PerUserCap",
    "PositionCallback",
    "Refusal",
    "Ticket",
    "TicketState",
    "UserHold",
    "parse_cooldown",
]


@dataclass(frozen=True)
class CooldownSpec:
    """`asks` per `seconds`: the most asks one user may make in any window that long."""

    asks: int
    seconds: float

    def __post_init__(self) -> None:
        if self.asks < 1:
            raise ValueError(f"a cooldown allows at least 1 ask (got {self.asks})")
        if not (self.seconds > 0 and math.isfinite(self.seconds)):
            raise ValueError(
                f"a cooldown window is a finite number of seconds > 0 ({self.seconds})"
            )


def parse_cooldown(raw: str) -> CooldownSpec:
    """Parse a setting such as "3/60" (3 asks per 60 seconds) into a `CooldownSpec`.

    N is a whole number >= 1 and S a number of seconds > 0; spaces around either are
    allowed. Raises `ValueError` whose message says what is wrong with `raw`.
    """
    count_text, slash, seconds_text = raw.partition("/")
    if not slash or "/" in seconds_text:
        raise ValueError(f"expected asks/seconds such as 3/60 (got {raw!r})")
    count_text, seconds_text = count_text.strip(), seconds_text.strip()
    if not count_text.isdigit():
        raise ValueError(f"the number of asks must be a whole number >= 1 (got {count_text!r})")
    asks = int(count_text)
    if asks < 1:
        raise ValueError(f"the number of asks must be at least 1 (got {asks})")
    try:
        seconds = float(seconds_text)
    except ValueError:
        raise ValueError(f"the window must be a number of seconds (got {seconds_text!r})") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(
            f"the window must be a finite number of seconds > 0 (got {seconds_text!r})"
        )
    return CooldownSpec(asks, seconds)


class Cooldown:
    """A sliding-window limit per user: at most `spec.asks` in any `spec.seconds`.

    An ask at time t counts against every later ask before t + seconds. Refused asks are
    not recorded, so asking again while refused does not push the wait further out.
    Users whose whole window has passed are forgotten, so memory is bounded by the users
    who asked within the last `spec.seconds`.

    Times come from `clock` (by default `time.monotonic`) unless the caller passes `now`;
    they must not go backwards.
    """

    def __init__(self, spec: CooldownSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        # Recent ask times per user (oldest first, at most spec.asks of them). The dict
        # is kept in order of each user's latest ask, so the users to forget are at its
        # front and a sweep stops at the first one still inside its window.
        self._asks: OrderedDict[int, deque[float]] = OrderedDict()

    def check_and_record(self, user_id: int, now: float | None = None) -> float | None:
        """Record an ask and return None if allowed, else the seconds until one would be.

        Synchronous on purpose: checking and recording happen in one step.
        """
        now = self._clock() if now is None else now
        self._forget_expired(now)
        times = self._asks.get(user_id)
        if times is None:
            times = self._asks[user_id] = deque(maxlen=self.spec.asks)
        else:
            _drop_before(times, now - self.spec.seconds)
        if len(times) >= self.spec.asks:
            return times[0] + self.spec.seconds - now
        times.append(now)
        self._asks.move_to_end(user_id)
        return None

    def retry_after(self, user_id: int, now: float | None = None) -> float | None:
        """The seconds until `user_id` may ask again, or None if they may now; records nothing."""
        now = self._clock() if now is None else now
        times = self._asks.get(user_id)
        if times is None:
            return None
        live = [t for t in times if t > now - self.spec.seconds]
        if len(live) < self.spec.asks:
            return None
        return live[0] + self.spec.seconds - now

    def forget(self, user_id: int, at: float) -> None:
        """Take back the ask recorded at `at` (one that was then never run)."""
        times = self._asks.get(user_id)
        if times is not None and at in times:
            times.remove(at)

    @property
    def tracked_users(self) -> int:
        """How many users are remembered (for metrics); only those who asked recently."""
        return len(self._asks)

    def _forget_expired(self, now: float) -> None:
        horizon = now - self.spec.seconds
        while self._asks:
            user_id, times = next(iter(self._asks.items()))
            if times and times[-1] > horizon:
                return
            del self._asks[user_id]


def _drop_before(times: deque[float], horizon: float) -> None:
    """Drop ask times at or before `horizon`: they are out of the window."""
    while times and times[0] <= horizon:
        times.popleft()


class PerUserCap:
    """At most `max_per_user` asks of one user in flight at once, running or waiting.

    Without it one user could fill every running slot and every place in line, and
    everyone else would be told the bot is busy. `try_take` decides synchronously, so
    two asks of the same user racing on one loop can never both take the last place.
    Users with nothing in flight are forgotten, so memory is bounded by the asks in
    flight.
    """

    def __init__(self, max_per_user: int) -> None:
        if max_per_user < 1:
            raise ValueError(f"max_per_user must be at least 1 (got {max_per_user})")
        self.max_per_user = max_per_user
        self._held: dict[int, int] = {}

    def try_take(self, user_id: int) -> UserHold | None:
        """A hold on one of the user's places, or None if all of them are taken.

        The hold must be released (`with hold:` or `hold.release()`), or the place is
        taken for good.
        """
        held = self._held.get(user_id, 0)
        if held >= self.max_per_user:
            return None
        self._held[user_id] = held + 1
        return UserHold(self, user_id)

    def in_flight(self, user_id: int) -> int:
        """How many asks of `user_id` hold a place now."""
        return self._held.get(user_id, 0)

    @property
    def tracked_users(self) -> int:
        """Users with at least one ask in flight (for metrics)."""
        return len(self._held)

    def _give_back(self, user_id: int) -> None:
        held = self._held[user_id] - 1
        if held:
            self._held[user_id] = held
        else:
            del self._held[user_id]


class UserHold:
    """One ask's place under a `PerUserCap`, given back once by `release` or the `with` exit."""

    def __init__(self, cap: PerUserCap, user_id: int) -> None:
        self._cap = cap
        self.user_id = user_id
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the place back; does nothing the second time."""
        if not self._released:
            self._released = True
            self._cap._give_back(self.user_id)

    def __enter__(self) -> UserHold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class Refusal(enum.Enum):
    """Why `AskGate.try_enter` gave no ticket."""

    BUSY = "busy"
    """Every slot and every place in line is taken: try again shortly."""
    CLOSING = "closing"
    """The bot is shutting down and accepts no new asks."""


class GateClosed(Exception):
    """Raised by `async with ticket` when the gate closed while the ticket was waiting."""


class TicketState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


PositionCallback = Callable[[int], Awaitable[None]]


class Ticket:
    """A place at the gate: waiting in line, running, or done.

    `async with ticket` waits for the ticket's turn, then holds a running slot until the
    block exits (normally, by an exception or by cancellation), which admits the next in
    line. While waiting it awaits `on_position(place)` with the 1-based place in line:
    once at the start and again each time the place changes, never twice for the same
    place. Places only go down. When places change faster than the callback returns,
    the next call gets the latest place and skips the ones in between; once the ticket's
    turn has come no further call is made. An exception from the callback, or cancelling
    the waiting task, gives up the place and propagates.

    A ticket must be entered, or else given back with `cancel()`, or its place is held
    for good.
    """

    def __init__(self, gate: AskGate, on_position: PositionCallback | None) -> None:
        self._gate = gate
        self._on_position = on_position
        self._state = TicketState.WAITING
        self._closed = False
        self._entered = False
        # Set whenever this ticket's place changes, its turn comes, or it is turned away.
        self._changed = asyncio.Event()

    @property
    def state(self) -> TicketState:
        return self._state

    @property
    def position(self) -> int | None:
        """The 1-based place in line while waiting; None once running or done."""
        if self._state is not TicketState.WAITING:
            return None
        return self._gate._place_of(self)

    def cancel(self) -> None:
        """Give up the place in line or the running slot; does nothing once done."""
        self._gate._leave(self)

    async def __aenter__(self) -> Ticket:
        if self._entered:
            raise RuntimeError("a ticket can be entered only once")
        self._entered = True
        try:
            await self._wait_for_turn()
        except BaseException:
            self.cancel()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()

    async def _wait_for_turn(self) -> None:
        reported: int | None = None
        while self._state is TicketState.WAITING:
            if self._on_position is not None:
                place = self._gate._place_of(self)
                if place != reported:
                    reported = place
                    await self._on_position(place)
                    continue
            # No await between the check above and this wait, so no change is missed.
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            raise GateClosed("the bot is shutting down")
        if self._state is TicketState.DONE:
            raise RuntimeError("the ticket was cancelled before its turn")

    def _notify(self) -> None:
        self._changed.set()

    def _place_changed(self) -> None:
        # A ticket nobody shows its place to only needs waking when its turn comes.
        if self._on_position is not None:
            self._changed.set()


class AskGate:
    """Caps concurrent model calls per process, with a bounded first-come-first-served line.

    `try_enter` never waits: it returns a `Ticket` (running at once if a slot is free and
    nobody is waiting, otherwise waiting at the back of the line) or a `Refusal`. A slot
    freed by a finished or cancelled ticket passes straight to the front of the line, so
    no later arrival can overtake a waiting one. A waiting ticket that leaves the line
    moves everyone behind it one place forward.

    `resize(limit)` changes the number of slots at any time. A raise admits as many
    tickets from the front of the line as there are new free slots, at once; a cut takes
    no slot away from a running ticket, so for a while more may run than the limit, and
    no one is admitted until fewer than the new limit run. Either way the line keeps its
    order and every place shown stays true.

    `close()` turns new asks away with `Refusal.CLOSING` and every waiting ticket with
    `GateClosed`; running ones finish, and `drained()` returns when none is left (wrap it
    in `asyncio.timeout` to bound a shutdown). Positions cost O(line length), which
    `max_queued` keeps small. For one event loop; not thread-safe.
    """

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        """`max_concurrent` is the starting limit; `resize` may change it later."""
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1 (got {max_concurrent})")
        if max_queued < 0:
            raise ValueError(f"max_queued must be 0 or more (got {max_queued})")
        self._limit = max_concurrent
        self.max_queued = max_queued
        self._running: set[Ticket] = set()
        self._line: deque[Ticket] = deque()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def limit(self) -> int:
        """How many tickets may run at once now."""
        return self._limit

    @property
    def max_concurrent(self) -> int:
        """The same as `limit` (the name the constructor takes)."""
        return self._limit

    def resize(self, limit: int) -> None:
        """Let `limit` tickets run at once from now on (see the class docstring)."""
        if limit < 1:
            raise ValueError(f"the limit must be at least 1 (got {limit})")
        self._limit = limit
        self._fill()

    @property
    def running(self) -> int:
        """Tickets holding a slot now."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Tickets waiting in line now."""
        return len(self._line)

    @property
    def closed(self) -> bool:
        return self._closed

    def try_enter(self, on_position: PositionCallback | None = None) -> Ticket | Refusal:
        """A ticket at the back of the line (or running at once), or why there is none."""
        if self._closed:
            return Refusal.CLOSING
        if len(self._running) < self._limit and not self._line:
            ticket = Ticket(self, on_position)
            self._admit(ticket)
            return ticket
        if len(self._line) >= self.max_queued:
            return Refusal.BUSY
        ticket = Ticket(self, on_position)
        self._line.append(ticket)
        self._idle.clear()
        return ticket

    def close(self) -> None:
        """Refuse new asks and turn away every waiting ticket; running ones carry on."""
        self._closed = True
        while self._line:
            ticket = self._line.popleft()
            ticket._state = TicketState.DONE
            ticket._closed = True
            ticket._notify()
        self._update_idle()

    async def drained(self) -> None:
        """Return once no ticket is running or waiting."""
        await self._idle.wait()

    def _admit(self, ticket: Ticket) -> None:
        ticket._state = TicketState.RUNNING
        self._running.add(ticket)
        self._idle.clear()
        ticket._notify()

    def _leave(self, ticket: Ticket) -> None:
        if ticket._state is TicketState.RUNNING:
            self._running.discard(ticket)
            ticket._state = TicketState.DONE
            self._fill()
        elif ticket._state is TicketState.WAITING:
            index = self._line.index(ticket)
            del self._line[index]
            ticket._state = TicketState.DONE
            ticket._notify()
            # Only those behind the leaver move.
            for behind in list(self._line)[index:]:
                behind._place_changed()
        self._update_idle()

    def _fill(self) -> None:
        """Admit from the front of the line while a slot is free."""
        admitted = False
        while self._line and len(self._running) < self._limit:
            self._admit(self._line.popleft())
            admitted = True
        if admitted:
            self._notify_line()

    def _notify_line(self) -> None:
        for waiting in self._line:
            waiting._place_changed()

    def _place_of(self, ticket: Ticket) -> int:
        return self._line.index(ticket) + 1

    def _update_idle(self) -> None:
        if not self._running and not self._line:
            self._idle.set()


class InFlight:
    """The asks being handled right now, so a shutdown can wait for them, then end them.

    An ask is tracked from its admission to its last message and log line, which is
    longer than it holds a model slot: the answer's final edits come after the model
    is done.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._tasks)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Track the current task for the duration of the block."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("InFlight.track() needs a running task")
        self._tasks.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    async def drained(self) -> None:
        """Return once no ask is in flight."""
        await self._idle.wait()

    def cancel_all(self) -> None:
        """Cancel every ask in flight; each ends its messages with a note as it unwinds."""
        for task in self._tasks:
            task.cancel()
