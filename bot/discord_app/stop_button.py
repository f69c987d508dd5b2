"""The "Stop" button shown on an answer while the model is still writing it."""

from __future__ import annotations

from collections.abc import Callable

import discord

ONLY_ASKER = "Only the person who asked can stop this."


class StopButton(discord.ui.View):
    """One button that calls `on_stop` when the person who asked presses it."""

    def __init__(self, asker_id: int, on_stop: Callable[[], None]) -> None:
        # The answer's own lifetime bounds the button; it is removed when it ends.
        super().__init__(timeout=None)
        self._asker_id = asker_id
        self._on_stop = on_stop

    @discord.ui.button(
        label="Stop", style=discord.ButtonStyle.secondary, emoji="\N{BLACK SQUARE FOR STOP}"
    )
    async def stop_generation(
        self, interaction: discord.Interaction, button: discord.ui.Button[StopButton]
    ) -> None:
        if interaction.user.id != self._asker_id:
            await interaction.response.send_message(ONLY_ASKER, ephemeral=True)
            return
        # Stop first: if the acknowledgement fails, the press must still count.
        self._on_stop()
        # Acknowledge without changing the message; the answer's own edit removes the button.
        await interaction.response.defer()
