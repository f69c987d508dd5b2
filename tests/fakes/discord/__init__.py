"""A faithful local Discord for tests: real HTTP and WebSocket on 127.0.0.1.

See :mod:`tests.fakes.discord.fake` for the overview.
"""

from .clock import Clock
from .errors import DiscordError
from .fake import DEFAULT_TOKEN, FakeDiscord
from .faults import Fault, Scope
from .gateway import MESSAGE_CONTENT
from .interactions import InteractionHandle, Upload
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
    "MANAGE_MESSAGES",
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
    "Upload",
    "User",
    "VisibleMessage",
    "point_discord_py_at",
    "set_discord_py_urls",
    "spec_available",
]
