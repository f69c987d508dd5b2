"""A faithful local Discord for tests: real HTTP and WebSocket on 127.0.0.1.

See :mod:`tests.fakes.discord.fake` for the overview.
"""

from .clock import Clock
from .errors import DiscordError
from .fake import DEFAULT_TOKEN, FakeDiscord
from .interactions import InteractionHandle
from .mentions import Mentions
from .ratelimit import Limit, RateLimits
from .redirect import point_discord_py_at, set_discord_py_urls
from .rest import Call
from .spec import SPEC_PATH, SpecViolation, spec_available
from .state import CommandSync, User, VisibleMessage

__all__ = [
    "DEFAULT_TOKEN",
    "SPEC_PATH",
    "Call",
    "Clock",
    "CommandSync",
    "DiscordError",
    "FakeDiscord",
    "InteractionHandle",
    "Limit",
    "Mentions",
    "RateLimits",
    "SpecViolation",
    "User",
    "VisibleMessage",
    "point_discord_py_at",
    "set_discord_py_urls",
    "spec_available",
]
