"""`/settings`: a server's default model and the system prompts of the server and its
channels, for members who can manage the server.

Discord hides the command from other members (its default member permissions), but a
server's admins can hand it to anyone in the server's Integrations settings, so every
handler checks the permission again. A thread's settings are its parent channel's. Every
change is logged with who made it (never the prompt itself).
"""

from __future__ import annotations

import logging
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.answers import replies
from bot.conversation.settings import (
    MAX_SYSTEM_PROMPT,
    SettingsStore,
    SettingsUnavailable,
    effective_prompt,
)
from bot.discord_app.ask import matching

log = logging.getLogger(__name__)

ResetWhat = Literal["this channel's prompt", "everything in this server"]


# Not `guild_only`: its contexts merge with the client's, which ALLOW_DMS widens.
@app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
# A person's own install manages no server: settings come with the server's install only.
@app_commands.allowed_installs(guilds=True, users=False)
@app_commands.default_permissions(manage_guild=True)
class SettingsCommand(commands.GroupCog, group_name="settings"):
    """Change how I answer in this server."""

    def __init__(
        self, store: SettingsStore, *, models: tuple[str, ...], system_prompt: str
    ) -> None:
        self._store = store
        self._models = models
        self._default_prompt = system_prompt
        super().__init__()

    async def _refused(self, interaction: discord.Interaction) -> bool:
        """Turn away anyone without Manage Server, or outside a server; True if refused.

        (Not `interaction_check`: a failed check reaches the tree's error boundary, which
        would apologise for an error on top of the refusal.)
        """
        if interaction.guild_id is None:
            await interaction.response.send_message(replies.SETTINGS_SERVER_ONLY, ephemeral=True)
            return True
        if not interaction.permissions.manage_guild:
            log.info(
                "settings: refused user %s in guild %s (no Manage Server)",
                interaction.user.id,
                interaction.guild_id,
            )
            await interaction.response.send_message(replies.SETTINGS_NOT_PERMITTED, ephemeral=True)
            return True
        return False

    @app_commands.command(name="show")
    async def show(self, interaction: discord.Interaction) -> None:
        """Show the model and system prompt that apply in this channel."""
        if await self._refused(interaction):
            return
        guild_id = _guild(interaction)
        server = await self._store.server(guild_id)
        channel_id = settings_channel(interaction)
        model, model_source = self._models[0], "the bot's default"
        if server.model in self._models:
            model, model_source = server.model, "this server's default"
        prompt = effective_prompt(server, channel_id, self._default_prompt)
        if channel_id in server.channel_prompts:
            source = "this channel's"
        elif server.system_prompt:
            source = "this server's"
        else:
            source = "the bot's default"
        text = replies.effective_settings(
            model, model_source, prompt, source, channel_id in server.channel_prompts
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="model")
    @app_commands.describe(name="The model members get unless they choose another")
    async def model(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        """Set this server's default model."""
        if await self._refused(interaction):
            return
        if name not in self._models:
            await interaction.response.send_message(replies.UNKNOWN_MODEL, ephemeral=True)
            return
        guild_id = _guild(interaction)
        try:
            await self._store.set_model(guild_id, name, by=interaction.user.id)
        except SettingsUnavailable as error:
            await _say_unavailable(interaction, error)
            return
        log.info(
            "settings: user %s set the default model of guild %s to %s",
            interaction.user.id,
            guild_id,
            name,
        )
        await interaction.response.send_message(
            replies.setting_saved("this server's default model", name), ephemeral=True
        )

    @model.autocomplete("name")
    async def _models_offered(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=n, value=n) for n in matching(self._models, current)]

    @app_commands.command(name="server-prompt")
    @app_commands.describe(text="The system prompt for every channel without its own")
    async def server_prompt(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT],
    ) -> None:
        """Set the system prompt of this server."""
        await self._set_prompt(interaction, None, text)

    @app_commands.command(name="channel-prompt")
    @app_commands.describe(text="The system prompt here (threads use their channel's)")
    async def channel_prompt(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT],
    ) -> None:
        """Set the system prompt of this channel and its threads."""
        await self._set_prompt(interaction, settings_channel(interaction), text)

    @app_commands.command(name="reset")
    @app_commands.describe(what="What to go back to the defaults")
    async def reset(self, interaction: discord.Interaction, what: ResetWhat) -> None:
        """Go back to the bot's defaults."""
        if await self._refused(interaction):
            return
        guild_id = _guild(interaction)
        user_id = interaction.user.id
        if what == "this channel's prompt":
            channel_id = settings_channel(interaction)
            try:
                await self._store.set_prompt(guild_id, channel_id, None, by=user_id)
            except SettingsUnavailable as error:
                await _say_unavailable(interaction, error)
                return
            log.info(
                "settings: user %s removed the prompt of channel %s in guild %s",
                user_id,
                channel_id,
                guild_id,
            )
            sentence = replies.setting_saved("this channel's system prompt", None)
        else:
            try:
                count = await self._store.reset(guild_id, by=user_id)
            except SettingsUnavailable as error:
                await _say_unavailable(interaction, error)
                return
            log.info("settings: user %s reset %d setting(s) of guild %s", user_id, count, guild_id)
            sentence = replies.settings_reset(count)
        await interaction.response.send_message(sentence, ephemeral=True)

    async def _set_prompt(
        self, interaction: discord.Interaction, channel_id: int | None, text: str
    ) -> None:
        if await self._refused(interaction):
            return
        problem = prompt_problem(text)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        guild_id = _guild(interaction)
        try:
            await self._store.set_prompt(guild_id, channel_id, text, by=interaction.user.id)
        except SettingsUnavailable as error:
            await _say_unavailable(interaction, error)
            return
        where = f"channel {channel_id}" if channel_id is not None else "the server"
        log.info(
            "settings: user %s set the system prompt of %s in guild %s (%d characters)",
            interaction.user.id,
            where,
            guild_id,
            len(text),
        )
        what = "this channel's system prompt" if channel_id else "this server's system prompt"
        await interaction.response.send_message(replies.setting_saved(what, text), ephemeral=True)


async def _say_unavailable(interaction: discord.Interaction, error: SettingsUnavailable) -> None:
    log.warning("settings: a change in guild %s was not saved (%s)", interaction.guild_id, error)
    await interaction.response.send_message(replies.SETTINGS_UNAVAILABLE, ephemeral=True)


def prompt_problem(text: str) -> str | None:
    """Why `text` cannot be saved as a system prompt, or None."""
    if not text.strip():
        return replies.SETTINGS_EMPTY_PROMPT
    if len(text) > MAX_SYSTEM_PROMPT:
        return replies.prompt_too_long_to_save(MAX_SYSTEM_PROMPT, len(text))
    if "```" in text:
        return replies.PROMPT_WITH_FENCE
    return None


def settings_channel(interaction: discord.Interaction) -> int:
    """The channel whose settings apply where the command ran: a thread's parent."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id:
        return channel.parent_id
    return interaction.channel_id or 0


def _guild(interaction: discord.Interaction) -> int:
    assert interaction.guild_id is not None, "`_refused` lets only servers through"
    return interaction.guild_id
