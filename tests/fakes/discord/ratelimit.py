"""Discord-style rate limits: fixed-window buckets reported through ``X-RateLimit-*`` headers.

Discord publishes only its global limit (50 requests per second per bot token, which
interaction endpoints are exempt from); per-route limits are whatever the headers say.
The defaults below are the figures Discord's headers commonly report:

=========================  ===================  =====================================
bucket                     default              keyed by
=========================  ===================  =====================================
``channel_messages``       5 per 5 s            channel id (create, edit, delete: one)
``interaction_webhook``    5 per 2 s            interaction token (followups, edits)
``interaction_callback``   5 per 1 s            interaction id
``application_commands``   5 per 20 s           application (and guild)
``default``                50 per 1 s           route
=========================  ===================  =====================================

Sending, editing and deleting messages in one channel report one bucket hash (observed
on the live API: discord/discord-api-docs#1442, #2761), and discord.py keys its buckets by
that hash and the channel, so the fake counts them together, per channel: every answer
streaming into a channel shares it, whatever message each edits. Interaction followups and
edits are counted per interaction token instead.

A client that waits whenever ``X-RateLimit-Remaining`` reaches 0 for
``X-RateLimit-Reset-After`` seconds never sees a 429; a burst that ignores the headers
does. Every limit is a constructor argument so a test can make them tight.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .clock import Clock


@dataclass(frozen=True)
class Limit:
    """``count`` requests per ``per`` seconds."""

    count: int
    per: float


@dataclass(frozen=True)
class RateLimits:
    """The limits one fake enforces; see the module docstring for the defaults."""

    channel_messages: Limit = Limit(5, 5.0)
    interaction_webhook: Limit = Limit(5, 2.0)
    interaction_callback: Limit = Limit(5, 1.0)
    application_commands: Limit = Limit(5, 20.0)
    default: Limit = Limit(50, 1.0)
    global_per_second: int = 50


@dataclass(frozen=True)
class Verdict:
    """The outcome of asking a bucket for one request, with the headers to report."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    reset_at: float
    bucket: str
    is_global: bool = False

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": f"{self.reset_at:.3f}",
            "X-RateLimit-Reset-After": f"{self.reset_after:.3f}",
            "X-RateLimit-Bucket": self.bucket,
        }
        if not self.allowed:
            # Discord rounds Retry-After up to whole seconds; the body carries the float.
            headers["Retry-After"] = str(max(1, int(-(-self.reset_after // 1))))
            headers["X-RateLimit-Scope"] = "global" if self.is_global else "user"
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
        return headers


@dataclass
class _Window:
    ends_at: float = 0.0
    used: int = 0


@dataclass
class RateLimiter:
    """Counts requests per bucket key over fixed windows on the fake's clock."""

    clock: Clock
    _windows: dict[str, _Window] = field(default_factory=dict)

    def take(self, name: str, key: str, limit: Limit) -> Verdict:
        """Spend one request from bucket ``name`` for major parameter ``key``.

        A refused request spends nothing, as on Discord.
        """
        now = self.clock.monotonic()
        window = self._windows.setdefault(f"{name}:{key}", _Window())
        if now >= window.ends_at:
            window.ends_at = now + limit.per
            window.used = 0
        reset_after = max(0.0, window.ends_at - now)
        allowed = window.used < limit.count
        if allowed:
            window.used += 1
        return Verdict(
            allowed=allowed,
            limit=limit.count,
            remaining=limit.count - window.used,
            reset_after=reset_after,
            reset_at=self.clock.wall() + reset_after,
            bucket=bucket_hash(name),
        )

    def take_global(self, token: str, per_second: int) -> Verdict:
        verdict = self.take("global", token, Limit(per_second, 1.0))
        return Verdict(
            allowed=verdict.allowed,
            limit=verdict.limit,
            remaining=verdict.remaining,
            reset_after=verdict.reset_after,
            reset_at=verdict.reset_at,
            bucket=verdict.bucket,
            is_global=True,
        )


def bucket_hash(name: str) -> str:
    """An opaque, stable bucket id like the ones Discord sends."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]
