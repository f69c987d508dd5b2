"""The `/ask` and `/usage` commands.

`/ask` decides every refusal before acknowledging: who may ask, prompt size, cooldown,
the asker's own asks in flight, capacity, and the token budgets (a reservation in the
local store, far inside Discord's 3 s). A refusal is the interaction's ephemeral
response, so the channel never sees who was turned away. An accepted ask is deferred,
waits for a model slot showing its place in line, and is answered through `Answerer`.

No ask outlives its interaction token (15 minutes): an ask that cannot start in time
is told so while the token is still valid, and an answer still running near the end is
closed with what was written and a note. Whatever the ending, the tokens spent are
counted and one line is logged. Anything unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers import replies
from bot.answers.answering import Answerer, Outcome, Progress
from bot.answers.messages import DeliveryFailed, MessageGone
from bot.answers.streaming import write_final
from bot.discord_app.reply import Reply
from bot.discord_app.stop_button import StopButton
from bot.fair_use import access, budgets, limits
from bot.metrics import Metrics
from bot.model import llm
from bot.model.llm import AttemptObserver

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000
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
class TurnedAway:
    """An ask refused before any model call: `kind` for logs and metrics, `sentence` to show."""

    kind: str
    sentence: str


@dataclass(frozen=True)
class FairUse:
    """Everything an ask is checked against; built and owned by the entry point."""

    rules: access.AccessRules
    max_prompt_chars: int
    cooldown: limits.Cooldown | None
    gate: limits.AskGate
    in_flight: limits.InFlight
    per_user: limits.PerUserCap
    budgets: budgets.DailyBudgets
    metrics: Metrics
    concurrency: AttemptObserver | None = None
    """What hears of every model call, to adapt the gate's limit (None: a fixed limit)."""
    reserve_tokens: int = 1000
    """Tokens held from the budgets for an answer besides its prompt: the system prompt
    and the output cap (or a typical answer)."""
    answer_seconds: float = 60.0
    """The longest one answer may take (OPENAI_TIMEOUT)."""


@dataclass
class Admitted:
    """A place at the gate and among the asker's asks in flight, given back on exit."""

    ticket: limits.Ticket
    slot: limits.UserHold

    def release(self) -> None:
        self.ticket.cancel()
        self.slot.release()


class Ask(commands.Cog):
    """Answers `/ask` with the configured language model."""

    def __init__(self, answerer: Answerer, fair_use: FairUse) -> None:
        self._answerer = answerer
        self._fair = fair_use

    @app_commands.command(name="ask")
    @app_commands.describe(
        prompt="Your question or request for the model",
        private="Show the answer only to you",
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_LENGTH],
        private: bool = False,
    ) -> None:
        """Ask the language model a question."""
        # Not `interaction.client.loop`: discord.py unsets it when the client closes.
        loop = asyncio.get_running_loop()
        received = loop.time()
        reply = Reply(interaction.followup, ephemeral=private)

        async def show_place(place: int) -> None:
            try:
                await reply.show(0, replies.queue_position(place))
            except DeliveryFailed as error:
                # Only a preview: the next place, or the answer, shows once Discord recovers.
                log.warning("could not show an ask's place in line (%s)", error)

        admitted = self._admit(interaction, prompt, show_place)
        if isinstance(admitted, TurnedAway):
            await self._turn_away(interaction, admitted, received)
            return
        with self._fair.in_flight.track():
            try:
                estimate = budgets.estimate_tokens(prompt) + self._fair.reserve_tokens
                hold = await self._fair.budgets.reserve(
                    interaction.user.id, interaction.guild_id, estimate
                )
                if hold.exhausted is not None:
                    sentence = replies.budget_exhausted(hold.exhausted, hold.resets_at_unix)
                    admitted.release()
                    await self._turn_away(
                        interaction, TurnedAway("over_budget", sentence), received
                    )
                    return
                await self._handle(interaction, prompt, private, admitted, hold, reply, received)
            finally:
                admitted.release()

    async def _turn_away(
        self, interaction: discord.Interaction, refusal: TurnedAway, received: float
    ) -> None:
        await interaction.response.send_message(refusal.sentence, ephemeral=True)
        self._log(interaction, refusal.kind, received, None, None, None)

    async def _handle(
        self,
        interaction: discord.Interaction,
        prompt: str,
        private: bool,
        admitted: Admitted,
        hold: budgets.Hold,
        reply: Reply,
        received: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        acked: float | None = None
        progress = Progress()
        outcome: Outcome | None = None
        # Counted from receipt: the token's own clock started a few milliseconds earlier,
        # which the margin covers.
        answer_by = received + LIFETIME.token - LIFETIME.margin
        start_by = answer_by - min(self._fair.answer_seconds, LIFETIME.min_answer)
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
            acked = loop.time()
            self._fair.metrics.ack_seconds.observe(acked - received)
            user_id = interaction.user.id
            async with contextlib.AsyncExitStack() as holding:
                try:
                    async with asyncio.timeout_at(start_by):
                        await holding.enter_async_context(admitted.ticket)
                except MessageGone as gone:
                    # Its place in line was deleted (or the token expired): nobody waits.
                    self._log(interaction, gone.kind, received, acked, None, None)
                    return
                except limits.GateClosed:
                    kind = await _close_with(reply, replies.RESTARTING, "restarting")
                    self._log(interaction, kind, received, acked, None, None)
                    return
                except TimeoutError:
                    kind = await _close_with(reply, replies.TOO_LATE, "too_late")
                    self._log(interaction, kind, received, acked, None, None)
                    return
                outcome = await self._answerer.answer(
                    prompt,
                    reply,
                    stop_button=lambda pressed: StopButton(user_id, pressed.set),
                    # The final edits need no model: free the slot for the next ask.
                    on_model_done=admitted.ticket.cancel,
                    deadline=answer_by,
                    progress=progress,
                )
            tokens = await self._settle(interaction, prompt, hold, outcome.usage, outcome.text)
            self._log(interaction, outcome.kind, received, acked, outcome, tokens)
        except asyncio.CancelledError:
            # Shutdown ran out of grace; the answer has already been closed with a note.
            tokens = await self._settle(interaction, prompt, hold, progress.usage, progress.text)
            self._log(interaction, "cancelled", received, acked, None, tokens)
            raise
        except Exception:
            # Still one line (and one count) per ask; the tree logs the traceback.
            tokens = await self._settle(interaction, prompt, hold, progress.usage, progress.text)
            self._log(interaction, "error", received, acked, None, tokens)
            raise
        finally:
            # Idempotent: a hold already settled is not counted twice.
            await hold.settle(0)

    @app_commands.command(name="usage")
    async def usage(self, interaction: discord.Interaction) -> None:
        """Show how many model tokens you and this server have used today."""
        refusal = access.refusal(self._fair.rules, _origin(interaction))
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        report = await self._fair.budgets.usage_report(interaction.user.id, interaction.guild_id)
        await interaction.followup.send(replies.usage_report(report), ephemeral=True)

    def _admit(
        self,
        interaction: discord.Interaction,
        prompt: str,
        on_position: limits.PositionCallback,
    ) -> Admitted | TurnedAway:
        """Places at the gate and among the asker's asks, or why the ask is turned away.

        Synchronous on purpose: no other ask can slip in between a check and its record.
        """
        refusal = access.refusal(self._fair.rules, _origin(interaction))
        if refusal is not None:
            return TurnedAway("not_allowed", refusal)
        if not prompt.strip():
            return TurnedAway("empty_prompt", replies.EMPTY_PROMPT)
        if len(prompt) > self._fair.max_prompt_chars:
            return TurnedAway(
                "prompt_too_long", replies.prompt_too_long(self._fair.max_prompt_chars)
            )
        user_id = interaction.user.id
        cooldown = self._fair.cooldown
        if cooldown is not None:
            wait = cooldown.retry_after(user_id)
            if wait is not None:
                return TurnedAway("cooldown", replies.cooldown(wait))
        slot = self._fair.per_user.try_take(user_id)
        if slot is None:
            return TurnedAway("too_many", replies.too_many(self._fair.per_user.max_per_user))
        ticket = self._fair.gate.try_enter(on_position)
        if not isinstance(ticket, limits.Ticket):
            slot.release()
            if ticket is limits.Refusal.BUSY:
                return TurnedAway("busy", replies.BUSY)
            return TurnedAway("restarting", replies.RESTARTING)
        if cooldown is not None:
            cooldown.check_and_record(user_id)
        return Admitted(ticket, slot)

    async def _settle(
        self,
        interaction: discord.Interaction,
        prompt: str,
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
            prompt_tokens = budgets.estimate_tokens(prompt) + PROMPT_OVERHEAD_TOKENS
            completion_tokens = budgets.estimate_tokens(text)
            log.info(
                "provider reported no token usage for interaction %s; counting an "
                "estimate of %d tokens",
                interaction.id,
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
        interaction: discord.Interaction,
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
            "ask interaction=%s user=%s guild=%s outcome=%s ack_ms=%s first_text_ms=%s "
            "done_ms=%d tokens=%s",
            interaction.id,
            interaction.user.id,
            interaction.guild_id,
            outcome,
            _ms(acked, received),
            _ms(first, received),
            (done - received) * 1000,
            tokens,
        )


async def _close_with(reply: Reply, sentence: str, kind: str) -> str:
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


def _origin(interaction: discord.Interaction) -> access.Origin:
    return access.Origin(
        guild_id=interaction.guild_id,
        channel_id=_parent_channel_id(interaction),
        role_ids=[role.id for role in getattr(interaction.user, "roles", [])],
    )


def _parent_channel_id(interaction: discord.Interaction) -> int | None:
    """The channel an ask counts as coming from: a thread counts as its parent."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return interaction.channel_id
