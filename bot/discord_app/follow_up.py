"""The "Follow up" button on the last message of an answer, and the modal it opens.

The button carries its conversation's turn in its custom id (`followup:<turn id>`), so
it keeps working after a restart: discord.py routes every press matching the template
to `FollowUpButton.callback`, with no view kept in memory. The state lives in the store.
A press opens a modal with one question field; submitting it continues the conversation
from that turn, answered in the modal interaction's own response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from bot.answers import replies
from bot.conversation.turns import TurnId
from bot.discord_app.tree import report_unexpected

log = logging.getLogger(__name__)

CUSTOM_ID = "followup:{turn}"
MAX_QUESTION = 4000
"""Discord's ceiling for a text input."""


class FollowUps(Protocol):
    """What the button needs from the conversation service."""

    async def may_follow_up(self, turn_id: TurnId, user_id: int) -> str | None:
        """None when `user_id` may continue at `turn_id`, else the sentence saying why not."""
        ...

    async def follow_up(self, interaction: discord.Interaction, turn_id: TurnId, text: str) -> None:
        """Answer `text` as the next turn after `turn_id`, in the interaction's response."""
        ...


def follow_up_view(turn_id: TurnId) -> discord.ui.View:
    """A view holding the button for `turn_id`; nothing of it needs to stay in memory."""
    view = discord.ui.View(timeout=None)
    view.add_item(FollowUpButton(turn_id))
    # The button is routed by its template, not by this view: don't keep it around.
    view.stop()
    return view


class FollowUpButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"followup:(?P<turn>[0-9]{1,19})"
):
    """Opens the follow-up modal for the turn in its custom id."""

    service: FollowUps | None = None
    """Set by the client at start-up: the buttons of every answer share it."""

    def __init__(self, turn_id: TurnId) -> None:
        super().__init__(
            discord.ui.Button(
                label="Follow up",
                style=discord.ButtonStyle.secondary,
                emoji="\N{SPEECH BALLOON}",
                custom_id=CUSTOM_ID.format(turn=turn_id),
            )
        )
        self.turn_id = turn_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> FollowUpButton:
        return cls(int(match["turn"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        service = FollowUpButton.service
        if service is None:
            await interaction.response.send_message(replies.FOLLOW_UP_GONE, ephemeral=True)
            return
        refusal = await service.may_follow_up(self.turn_id, interaction.user.id)
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.send_modal(FollowUpModal(self.turn_id, service.follow_up))


class FollowUpModal(discord.ui.Modal, title="Follow up"):
    """One paragraph field; submitting it continues the conversation."""

    question: discord.ui.TextInput[FollowUpModal] = discord.ui.TextInput(
        label="Your follow-up question",
        style=discord.TextStyle.paragraph,
        max_length=MAX_QUESTION,
    )

    def __init__(
        self,
        turn_id: TurnId,
        on_submit: Callable[[discord.Interaction, TurnId, str], Awaitable[None]],
    ) -> None:
        # The custom id ties a submit to its turn; the modal is forgotten after a timeout.
        super().__init__(custom_id=f"followup-modal:{turn_id}", timeout=15 * 60)
        self._turn_id = turn_id
        self._on_submit = on_submit

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        await self._on_submit(interaction, self._turn_id, self.question.value)

    # discord.py's Modal narrows the view's `on_error` to these arguments itself.
    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction, error: Exception, /
    ) -> None:
        await report_unexpected(interaction, error, "a follow-up")
