"""One ask, from its admission to its log line, whichever surface it came from.

Asks arrive as `/ask`, as the "Follow up" modal and as replies to an answer. Each arrival
is described by a `Surface` (who asks, where, how to refuse, how to acknowledge, where
the answer goes); `AskPipeline.run` treats them all alike:

1. Refusals are decided before anything is shown, each in one step where asks can race:
   who may ask, prompt size, cooldown, the asker's own asks in flight, capacity; then the
   token budgets (a reservation in the store, far inside Discord's 3 s). A refusal
   goes only to the asker (`Surface.refuse`).
2. The ask is acknowledged, waits for a model slot showing its place in line, and is
   answered through `Answerer`, with a deadline that keeps the last write inside the
   surface's lifetime (an interaction token lives 15 minutes).
3. Whatever the ending, the tokens spent settle the reservation, and one line is logged.
   Anything unexpected propagates to the surface's error boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.answers import replies
from bot.answers.answering import Answerer, Outcome, Progress, Question
from bot.answers.messages import DeliveryFailed, MessageGone, Messages
from bot.answers.streaming import write_final
from bot.discord_app.stop_button import StopButton
from bot.fair_use import access, budgets, limits
from bot.fair_use.user_limits import UserLimits, UserRefusal, UserSlot
from bot.metrics import Metrics
from bot.model import llm
from bot.model.llm import AttemptObserver

log = logging.getLogger(__name__)

# Roughly the system prompt and message framing, for providers that report no usage.
PROMPT_OVERHEAD_TOKENS = 30


@dataclass(frozen=True)
class Lifetime:
    """How long an interaction lives, and what an answer keeps of it."""

    token: float = 15 * 60.0
    """Discord accepts followups and edits for 15 minutes after the interaction."""
    margin: float = 30.0
    """Kept free at the end for the final messages (and any retry of them)."""
    min_answer: float = 60.0
    """The least time an answer is given; an ask still waiting later is told so."""


LIFETIME = Lifetime()


@dataclass(frozen=True)
class FairUse:
    """Everything an ask is checked against; built and owned by the entry point."""

    rules: access.AccessRules
    max_prompt_chars: int
    user_limits: UserLimits
    """The cooldown and each user's asks in flight (in memory, or shared through Redis)."""
    gate: limits.AskGate
    in_flight: limits.InFlight
    budgets: budgets.DailyBudgets
    metrics: Metrics
    concurrency: AttemptObserver | None = None
    """What hears of every model call, to adapt the gate's limit (None: a fixed limit)."""
    reserve_tokens: int = 1000
    """Tokens held from the budgets for an answer besides its prompt: the system prompt
    and the output cap (or a typical answer)."""
    answer_seconds: float = 60.0
    """The longest one answer may take (OPENAI_TIMEOUT)."""


class Surface(Protocol):
    """Where one ask came from and where its answer goes."""

    @property
    def kind(self) -> str:
        """`interaction` or `message`: names the id in the ask's log line."""
        ...

    @property
    def id(self) -> int: ...

    @property
    def user_id(self) -> int: ...

    @property
    def guild_id(self) -> int | None: ...

    @property
    def origin(self) -> access.Origin: ...

    @property
    def messages(self) -> Messages:
        """Where the answer is shown."""
        ...

    @property
    def lifetime(self) -> float | None:
        """Seconds after receipt until the answer can no longer be written (None: no end)."""
        ...

    async def refuse(self, sentence: str) -> None:
        """Tell the asker alone why the ask is turned away."""
        ...

    async def acknowledge(self) -> None:
        """Show that the ask is being worked on (a "thinking…" message, typing)."""
        ...

    def unanswerable(self) -> str | None:
        """Why no answer could be shown here at all (for the operator), or None; checked
        first, so no tokens are spent on an answer nobody could see."""
        ...


@dataclass(frozen=True)
class TurnedAway:
    """An ask refused before any model call: `kind` for logs and metrics, `sentence` to show."""

    kind: str
    sentence: str


@dataclass
class Admitted:
    """A place at the gate and among the asker's asks in flight, given back on exit."""

    ticket: limits.Ticket
    slot: UserSlot

    async def release(self) -> None:
        self.ticket.cancel()
        await self.slot.release()


Prepare = Callable[[], Awaitable[Question]]
"""Builds the question once the ask is admitted (the context of a conversation)."""


class AskPipeline:
    """Runs asks from any surface against the fair-use rules and the model."""

    def __init__(self, answerer: Answerer, fair_use: FairUse) -> None:
        self._answerer = answerer
        self._fair = fair_use

    @property
    def fair_use(self) -> FairUse:
        return self._fair

    async def run(
        self,
        surface: Surface,
        prompt: str,
        prepare: Prepare,
        *,
        after: Callable[[Outcome, Question], Awaitable[None]] | None = None,
        extra_tokens: int = 0,
        refusal: TurnedAway | None = None,
    ) -> Outcome | None:
        """Answer `prompt` on `surface`, or turn it away; return how the answer ended.

        `prepare()` builds what the model is asked, after admission. `after(outcome,
        question)` runs once the answer is shown (e.g. to store the conversation's turn),
        before the log line. Returns None when the ask was turned away or never started.
        `extra_tokens` is what the ask carries besides `prompt` (attached files), counted
        in its budget estimates; `refusal` turns it away after the access check (a file
        that is not read).
        """
        # Not the client's loop attribute: discord.py unsets it when the client closes.
        loop = asyncio.get_running_loop()
        received = loop.time()

        async def show_place(place: int) -> None:
            try:
                sentence = replies.queue_position(place, at_once=self._fair.gate.limit)
                await surface.messages.show(0, sentence)
            except DeliveryFailed as error:
                # Only a preview: the next place, or the answer, shows once Discord recovers.
                log.warning("could not show an ask's place in line (%s)", error)

        unanswerable = surface.unanswerable()
        if unanswerable is not None:
            log.warning("%s", unanswerable)
            self._log(surface, "forbidden", received, None, None, None)
            return None
        admitted = await self._admit(surface, prompt, show_place, refusal)
        if isinstance(admitted, TurnedAway):
            await self._turn_away(surface, admitted, received)
            return None
        with self._fair.in_flight.track():
            try:
                estimate = (
                    budgets.estimate_tokens(prompt) + extra_tokens + self._fair.reserve_tokens
                )
                hold = await self._fair.budgets.reserve(surface.user_id, surface.guild_id, estimate)
                if hold.exhausted is not None:
                    sentence = replies.budget_exhausted(hold.exhausted, hold.resets_at_unix)
                    await admitted.release()
                    await self._turn_away(surface, TurnedAway("over_budget", sentence), received)
                    return None
                return await self._handle(
                    surface, prompt, prepare, after, admitted, hold, received, extra_tokens
                )
            finally:
                await admitted.release()

    async def _turn_away(self, surface: Surface, refusal: TurnedAway, received: float) -> None:
        await surface.refuse(refusal.sentence)
        self._log(surface, refusal.kind, received, None, None, None)

    async def _handle(
        self,
        surface: Surface,
        prompt: str,
        prepare: Prepare,
        after: Callable[[Outcome, Question], Awaitable[None]] | None,
        admitted: Admitted,
        hold: budgets.Hold,
        received: float,
        extra_tokens: int,
    ) -> Outcome | None:
        loop = asyncio.get_running_loop()
        acked: float | None = None
        progress = Progress()
        reply = surface.messages
        # Counted from receipt: the token's own clock started a few milliseconds earlier,
        # which the margin covers.
        answer_by: float | None = None
        start_by: float | None = None
        if surface.lifetime is not None:
            answer_by = received + surface.lifetime - LIFETIME.margin
            start_by = answer_by - min(self._fair.answer_seconds, LIFETIME.min_answer)
        try:
            await surface.acknowledge()
            acked = loop.time()
            self._fair.metrics.ack_seconds.observe(acked - received)
            user_id = surface.user_id
            async with contextlib.AsyncExitStack() as holding:
                try:
                    async with asyncio.timeout_at(start_by):
                        await holding.enter_async_context(admitted.ticket)
                except MessageGone as gone:
                    # Its place in line was deleted (or the token expired): nobody waits.
                    self._log(surface, gone.kind, received, acked, None, None)
                    return None
                except limits.GateClosed:
                    kind = await _close_with(reply, replies.RESTARTING, "restarting")
                    self._log(surface, kind, received, acked, None, None)
                    return None
                except TimeoutError:
                    kind = await _close_with(reply, replies.TOO_LATE, "too_late")
                    self._log(surface, kind, received, acked, None, None)
                    return None
                question = await prepare()
                outcome = await self._answerer.answer(
                    question,
                    reply,
                    stop_button=lambda pressed: StopButton(user_id, pressed.set),
                    # The final edits need no model: free the slot for the next ask.
                    on_model_done=admitted.ticket.cancel,
                    deadline=answer_by,
                    progress=progress,
                )
            tokens = await self._settle(
                surface, prompt, extra_tokens, hold, outcome.usage, outcome.text
            )
            if after is not None:
                await after(outcome, question)
            self._log(surface, outcome.kind, received, acked, outcome, tokens)
            return outcome
        except asyncio.CancelledError:
            # Shutdown ran out of grace; the answer has already been closed with a note.
            tokens = await self._settle(
                surface, prompt, extra_tokens, hold, progress.usage, progress.text
            )
            self._log(surface, "cancelled", received, acked, None, tokens)
            raise
        except Exception:
            # Still one line (and one count) per ask; the error boundary logs the traceback.
            tokens = await self._settle(
                surface, prompt, extra_tokens, hold, progress.usage, progress.text
            )
            self._log(surface, "error", received, acked, None, tokens)
            raise
        finally:
            # Idempotent: a hold already settled is not counted twice.
            await hold.settle(0)

    async def _admit(
        self,
        surface: Surface,
        prompt: str,
        on_position: limits.PositionCallback,
        turned_away: TurnedAway | None = None,
    ) -> Admitted | TurnedAway:
        """Places at the gate and among the asker's asks, or why the ask is turned away.

        Each limit decides in one step: the user limits check and record together (in
        memory, or in one Redis script), and the gate's decision is synchronous, so no
        other ask can slip in between a check and its record.
        """
        denied = access.refusal(self._fair.rules, surface.origin)
        if denied is not None:
            return TurnedAway("not_allowed", denied)
        if turned_away is not None:
            return turned_away
        if not prompt.strip():
            return TurnedAway("empty_prompt", replies.EMPTY_PROMPT)
        if len(prompt) > self._fair.max_prompt_chars:
            return TurnedAway(
                "prompt_too_long", replies.prompt_too_long(self._fair.max_prompt_chars)
            )
        user_limits = self._fair.user_limits
        slot = await user_limits.admit(surface.user_id)
        if isinstance(slot, UserRefusal):
            if slot.kind == "cooldown":
                return TurnedAway("cooldown", replies.cooldown(slot.retry_after))
            return TurnedAway("too_many", replies.too_many(user_limits.max_per_user))
        ticket = self._fair.gate.try_enter(on_position)
        if not isinstance(ticket, limits.Ticket):
            # Never ran: it does not count against the cooldown. (A budget refusal
            # later still does: the asker is refused for the day.)
            await slot.withdraw()
            if ticket is limits.Refusal.BUSY:
                return TurnedAway("busy", replies.BUSY)
            return TurnedAway("restarting", replies.RESTARTING)
        return Admitted(ticket, slot)

    async def _settle(
        self,
        surface: Surface,
        prompt: str,
        extra_tokens: int,
        hold: budgets.Hold,
        spent: llm.Usage | None,
        text: str,
    ) -> int:
        """Count what the answer cost against the budgets; return the tokens counted.

        The provider's figures when it reported them; otherwise an estimate when the
        model wrote something, and nothing when it failed before writing: a call that
        produced nothing is not charged.
        """
        if spent is not None:
            prompt_tokens, completion_tokens = spent.prompt_tokens, spent.completion_tokens
        elif text:
            prompt_tokens = budgets.estimate_tokens(prompt) + extra_tokens + PROMPT_OVERHEAD_TOKENS
            completion_tokens = budgets.estimate_tokens(text)
            log.info(
                "provider reported no token usage for %s %s; counting an estimate of %d tokens",
                surface.kind,
                surface.id,
                prompt_tokens + completion_tokens,
            )
        else:
            prompt_tokens = completion_tokens = 0
        metrics = self._fair.metrics
        metrics.tokens.labels("prompt").inc(prompt_tokens)
        metrics.tokens.labels("completion").inc(completion_tokens)
        tokens = prompt_tokens + completion_tokens
        await hold.settle(tokens)
        return tokens

    def _log(
        self,
        surface: Surface,
        outcome: str,
        received: float,
        acked: float | None,
        answer: Outcome | None,
        tokens: int | None,
    ) -> None:
        """One structured line per ask; never the prompt or the answer."""
        done = asyncio.get_running_loop().time()
        metrics = self._fair.metrics
        metrics.asks.labels(outcome).inc()
        metrics.done_seconds.observe(done - received)
        first = answer.first_text_at if answer is not None else None
        if first is not None:
            metrics.first_text_seconds.observe(first - received)
        log.info(
            "ask %s=%s user=%s guild=%s outcome=%s ack_ms=%s first_text_ms=%s done_ms=%d tokens=%s",
            surface.kind,
            surface.id,
            surface.user_id,
            surface.guild_id,
            outcome,
            _ms(acked, received),
            _ms(first, received),
            (done - received) * 1000,
            tokens,
        )


async def _close_with(reply: Messages, sentence: str, kind: str) -> str:
    """Show `sentence` as the ask's only message; return the outcome to log: `kind`, or
    why Discord would not show it."""
    try:
        await write_final(lambda: reply.finish([sentence]))
    except MessageGone as gone:
        return gone.kind
    except DeliveryFailed:
        return "undelivered"
    return kind


def _ms(at: float | None, since: float) -> str:
    return "-" if at is None else str(round((at - since) * 1000))
