"""The `/ask` and `/usage` commands.

`/ask` runs the cheap, synchronous checks first (who may ask, prompt size, cooldown,
capacity), answering a refusal ephemerally as the interaction's acknowledgement. An
accepted ask is deferred before any other awaited work, because Discord drops an
interaction not acknowledged within 3 s; then it checks the token budgets, waits for
a model slot showing its place in line, and answers through `Answerer`. Anything
unexpected propagates to `AskTree.on_error`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers import replies
from bot.answers.answering import Answerer, Outcome
from bot.discord_app.reply import Reply
from bot.discord_app.stop_button import StopButton
from bot.fair_use import access, limits
from bot.fair_use import budgets as usage
from bot.metrics import Metrics

log = logging.getLogger(__name__)

# Discord's own ceiling for a string option.
MAX_PROMPT_LENGTH = 6000
# Roughly the system prompt and message framing, for providers that report no usage.
PROMPT_OVERHEAD_TOKENS = 30


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
    budgets: usage.DailyBudgets
    metrics: Metrics


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
            await reply.show(0, replies.queue_position(place))

        ticket = self._admit(interaction, prompt, show_place)
        if isinstance(ticket, TurnedAway):
            await interaction.response.send_message(ticket.sentence, ephemeral=True)
            self._log(interaction, ticket.kind, received, None, None, None)
            return
        with self._fair.in_flight.track():
            await self._handle(interaction, prompt, private, ticket, reply, received)

    async def _handle(
        self,
        interaction: discord.Interaction,
        prompt: str,
        private: bool,
        ticket: limits.Ticket,
        reply: Reply,
        received: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        acked: float | None = None
        try:
            await interaction.response.defer(thinking=True, ephemeral=private)
            acked = loop.time()
            self._fair.metrics.ack_seconds.observe(acked - received)
            user_id, guild_id = interaction.user.id, interaction.guild_id
            verdict = await self._fair.budgets.check(user_id, guild_id)
            if verdict.exhausted is not None:
                message = replies.budget_exhausted(verdict.exhausted, verdict.resets_at_unix)
                await reply.finish([message])
                self._log(interaction, "over_budget", received, acked, None, None)
                return
            try:
                async with ticket:
                    outcome = await self._answerer.answer(
                        prompt,
                        reply,
                        stop_button=lambda pressed: StopButton(user_id, pressed.set),
                        # The final edits need no model: free the slot for the next ask.
                        on_model_done=ticket.cancel,
                    )
            except limits.GateClosed:
                await reply.finish([replies.RESTARTING])
                self._log(interaction, "restarting", received, acked, None, None)
                return
            tokens = await self._record_usage(interaction, prompt, outcome)
            self._log(interaction, outcome.kind, received, acked, outcome, tokens)
        except asyncio.CancelledError:
            # Shutdown ran out of grace; the answer has already been closed with a note.
            self._log(interaction, "cancelled", received, acked, None, None)
            raise
        except Exception:
            # Still one line (and one count) per ask; the tree logs the traceback.
            self._log(interaction, "error", received, acked, None, None)
            raise
        finally:
            ticket.cancel()

    @app_commands.command(name="usage")
    async def usage(self, interaction: discord.Interaction) -> None:
        """Show how many model tokens you and this server have used today."""
        await interaction.response.defer(thinking=True, ephemeral=True)
        report = await self._fair.budgets.usage_report(interaction.user.id, interaction.guild_id)
        await interaction.followup.send(replies.usage_report(report), ephemeral=True)

    def _admit(
        self,
        interaction: discord.Interaction,
        prompt: str,
        on_position: limits.PositionCallback,
    ) -> limits.Ticket | TurnedAway:
        """A ticket for the model gate, or why the ask is turned away.

        Synchronous on purpose: no other ask can slip in between the cooldown check
        and its record.
        """
        origin = access.Origin(
            guild_id=interaction.guild_id,
            channel_id=_parent_channel_id(interaction),
            role_ids=[role.id for role in getattr(interaction.user, "roles", [])],
        )
        refusal = access.refusal(self._fair.rules, origin)
        if refusal is not None:
            return TurnedAway("not_allowed", refusal)
        if not prompt.strip():
            return TurnedAway("empty_prompt", replies.EMPTY_PROMPT)
        if len(prompt) > self._fair.max_prompt_chars:
            return TurnedAway(
                "prompt_too_long", replies.prompt_too_long(self._fair.max_prompt_chars)
            )
        cooldown = self._fair.cooldown
        if cooldown is not None:
            wait = cooldown.retry_after(interaction.user.id)
            if wait is not None:
                return TurnedAway("cooldown", replies.cooldown(wait))
        ticket = self._fair.gate.try_enter(on_position)
        if ticket is limits.Refusal.BUSY:
            return TurnedAway("busy", replies.BUSY)
        if ticket is limits.Refusal.CLOSING:
            return TurnedAway("restarting", replies.RESTARTING)
        assert isinstance(ticket, limits.Ticket)
        if cooldown is not None:
            cooldown.check_and_record(interaction.user.id)
        return ticket

    async def _record_usage(
        self, interaction: discord.Interaction, prompt: str, outcome: Outcome
    ) -> int:
        if outcome.usage is not None:
            prompt_tokens = outcome.usage.prompt_tokens
            completion_tokens = outcome.usage.completion_tokens
        else:
            prompt_tokens = usage.estimate_tokens(prompt) + PROMPT_OVERHEAD_TOKENS
            completion_tokens = usage.estimate_tokens(outcome.text)
            if outcome.text:
                log.info(
                    "provider reported no token usage for interaction %s; counting an "
                    "estimate of %d tokens",
                    interaction.id,
                    prompt_tokens + completion_tokens,
                )
        metrics = self._fair.metrics
        metrics.tokens.labels("prompt").inc(prompt_tokens)
        metrics.tokens.labels("completion").inc(completion_tokens)
        tokens = prompt_tokens + completion_tokens
        await self._fair.budgets.record(interaction.user.id, interaction.guild_id, tokens)
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


def _ms(at: float | None, since: float) -> str:
    return "-" if at is None else str(round((at - since) * 1000))


def _parent_channel_id(interaction: discord.Interaction) -> int | None:
    """The channel an ask counts as coming from: a thread counts as its parent."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return interaction.channel_id
