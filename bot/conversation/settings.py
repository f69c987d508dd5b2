"""What server admins set for their server and its channels, and what a store of it does.

    ServerSettings      a server's default model, its system prompt and its channels' prompts
    SettingsStore       what a store of them must do (a Protocol):
                        `bot.store.sqlite.SqliteSettingsStore` for one machine,
                        `bot.store.redis.RedisSettingsStore` for every process
    MAX_SYSTEM_PROMPT   the longest system prompt a server or channel may be given
    effective_prompt    the system prompt an ask in a channel gets

A channel's prompt wins over the server's, which wins over SYSTEM_PROMPT. A thread is not
a channel of its own here: it uses its parent's prompt (the caller passes the parent's id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["MAX_SYSTEM_PROMPT", "ServerSettings", "SettingsStore", "effective_prompt"]

MAX_SYSTEM_PROMPT = 1500
"""Characters. Every request carries the system prompt, so it is kept well inside the
smallest context (the built-in model's 2,048 tokens), and `/settings show` fits it in one
message."""


@dataclass(frozen=True)
class ServerSettings:
    """A server's settings as saved; None (or no entry) where nothing was set."""

    model: str | None = None
    system_prompt: str | None = None
    channel_prompts: Mapping[int, str] = field(default_factory=dict)


def effective_prompt(settings: ServerSettings, channel_id: int, default: str) -> str:
    """The system prompt for an ask in `channel_id` (a thread's parent for a thread)."""
    return settings.channel_prompts.get(channel_id) or settings.system_prompt or default


class SettingsUnavailable(Exception):
    """The settings cannot be changed now (their shared store is unreachable)."""


class SettingsStore(Protocol):
    """The settings of every server, written by its admins through `/settings`.

    Every write is atomic and records who made it (`by`, a user id). Text is stored exactly
    as given: what is shown back is what was saved.
    A write may raise `SettingsUnavailable` when the store cannot take it now.
    """

    async def server(self, guild_id: int) -> ServerSettings:
        """The server's settings; empty ones when nothing was ever set."""
        ...

    async def set_model(self, guild_id: int, model: str | None, *, by: int) -> None:
        """Set the server's default model; None goes back to the bot's default."""
        ...

    async def set_prompt(
        self, guild_id: int, channel_id: int | None, prompt: str | None, *, by: int
    ) -> None:
        """Set the system prompt of the server (`channel_id` None) or of one channel; None
        removes it."""
        ...

    async def reset(self, guild_id: int, *, by: int) -> int:
        """Remove every setting of the server and its channels; return how many there were."""
        ...
