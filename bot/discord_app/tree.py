"""The command tree with the bot's one boundary for unexpected errors."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.answers import replies

log = logging.getLogger(__name__)


class AskTree(app_commands.CommandTree[discord.Client]):
    """Logs any unhandled command error in full and tells the user, briefly, once."""

    async def on_error(
        self, interaction: discord.Interaction[discord.Client], error: app_commands.AppCommandError
    ) -> None:
        command = interaction.command.name if interaction.command else "unknown"
        await report_unexpected(interaction, error, f"/{command}")


async def report_unexpected(
    interaction: discord.Interaction[discord.Client], error: BaseException, where: str
) -> None:
    """The one boundary for unexpected errors, for commands and modals alike: the traceback
    for the operator, one short sentence for the person, once."""
    log.error("unexpected error in %s (interaction %s)", where, interaction.id, exc_info=error)
    try:
        if interaction.response.is_done():
            # Resolves a pending "thinking…" message, or adds a note after the answer;
            # ephemeral, so a private ask stays private (a public "thinking…" message
            # is resolved in place whatever the flag).
            await interaction.followup.send(replies.UNEXPECTED, ephemeral=True)
        else:
            await interaction.response.send_message(replies.UNEXPECTED, ephemeral=True)
    except discord.HTTPException:
        log.exception("could not tell the user about the error (interaction %s)", interaction.id)
