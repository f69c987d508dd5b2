"""A faithful local Discord for tests: real HTTP and WebSocket on 127.0.0.1.

See :mod:`tests.fakes.discord.fake` for the overview.
"""

from .clock import Clock
from .errors import DiscordError
from .fake import DEFAULT_TOKEN, FakeDiscord
from .faults import Fault, Scope
from .gateway import IDENTIFY_WINDOW, MAX_GUILDS_PER_SHARD, MESSAGE_CONTENT
from .interactions import InteractionHandle, Undelivered, Upload
from .mentions import Mentions
from .ratelimit import Limit, RateLimits
from .redirect import point_discord_py_at, set_discord_py_urls
from .rest import (
    CALLBACK,
    CHANNEL_MESSAGE,
    CHANNEL_MESSAGES,
    FOLLOWUP,
    TYPING,
    WEBHOOK_MESSAGE,
    WEBHOOK_MESSAGES,
    WEBHOOK_ORIGINAL,
    Call,
)
from .snowflake import guild_id_on_shard, shard_of
from .spec import SPEC_PATH, SpecViolation, spec_available
from .state import (
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    CommandSync,
    User,
    VisibleMessage,
)

__all__ = [
    "CALLBACK",
    "CHANNEL_MESSAGE",
    "CHANNEL_MESSAGES",
    "DEFAULT_TOKEN",
    "FOLLOWUP",
    "IDENTIFY_WINDOW",
    "MANAGE_MESSAGES",
    "MAX_GUILDS_PER_SHARD",
    "MESSAGE_CONTENT",
    "READ_MESSAGE_HISTORY",
    "SEND_MESSAGES",
    "SEND_MESSAGES_IN_THREADS",
    "SPEC_PATH",
    "TYPING",
    "VIEW_CHANNEL",
    "WEBHOOK_MESSAGE",
    "WEBHOOK_MESSAGES",
    "WEBHOOK_ORIGINAL",
    "Call",
    "Clock",
    "CommandSync",
    "DiscordError",
    "FakeDiscord",
    "Fault",
    "InteractionHandle",
    "Limit",
    "Mentions",
    "RateLimits",
    "Scope",
    "SpecViolation",
    "Undelivered",
    "Upload",
    "User",
    "VisibleMessage",
    "guild_id_on_shard",
    "point_discord_py_at",
    "set_discord_py_urls",
    "shard_of",
    "spec_available",
]
