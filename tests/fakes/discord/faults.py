"""Failures a test scripts: the next requests matching a method and route fail as Discord's
servers and their edge sometimes make them fail.

Each failure is one that really happens, with the body and headers it really has:

=========  =====================================================================
status     what answers
=========  =====================================================================
500        Discord's API: ``{"message": "500: Internal Server Error", "code": 0}``
502, 504   Cloudflare, in front of it: an HTML error page
503        the API's proxy: ``upstream connect error or disconnect/reset before
           headers. reset reason: overflow`` as ``text/plain``
429        see :class:`Scope`
=========  =====================================================================

What discord.py 2.7 does with them matters to a test (``discord/http.py`` for bot routes,
``discord/webhook/async_.py`` for interaction followups and edits): both try a request
five times. The bot client retries 500, 502, 504 (sleeping 1, 3, 5, 7, 9 real seconds)
and raises ``DiscordServerError`` at once for 503; the webhook client retries every 5xx
the same way. A 429 is slept out for its ``retry_after`` and retried, unless it lacks the
``Via`` header (a Cloudflare ban: ``HTTPException`` at once) or ``retry_after`` exceeds a
``max_ratelimit_timeout`` the client set (``RateLimited`` at once). So the quick way to
make discord.py give up on a request is a 429 on every attempt with a small
``retry_after`` (five 429s, then ``HTTPException`` with status 429), or a Cloudflare ban.

A failed request is not processed (its body is read and recorded, nothing changes),
unless the fault says ``processed=True``: then the change is made and the answer is
still the failure, as when Discord's edge times out on a request its API completed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_CLOUDFLARE_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
    "<body><center><h1>{title}</h1></center><hr><center>cloudflare</center></body></html>\n"
)
_BAN_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>Access denied | discord.com used Cloudflare to "
    "restrict access</title></head><body><h1>Error 1015</h1><h2>You are being rate "
    "limited</h2></body></html>\n"
)


class Scope(StrEnum):
    """Which limit a scripted 429 says was hit.

    ``USER``: the bot's own limit on the route (``X-RateLimit-Scope: user``). ``SHARED``: a
    limit on the resource shared by everyone using it, e.g. a busy channel
    (``X-RateLimit-Scope: shared``, "The resource is being rate limited."), which does not
    count against the bot's invalid-request limit. ``GLOBAL``: the bot's 50 requests per
    second (``X-RateLimit-Global: true``; interaction routes are exempt, so it cannot be
    scripted for them). ``CLOUDFLARE``: a temporary ban at Discord's edge for too many
    invalid requests: an HTML page without ``Via`` or rate-limit headers.
    """

    USER = "user"
    SHARED = "shared"
    GLOBAL = "global"
    CLOUDFLARE = "cloudflare"


@dataclass(frozen=True)
class Failure:
    """An HTTP answer the fake sends instead of the route's own."""

    status: int
    body: Any  # a JSON object, or text for the non-JSON answers
    content_type: str
    headers: dict[str, str]
    via: bool = True  # whether the answer passed Discord's Google front end


def server_error(status: int) -> Failure:
    """A 5xx as Discord's stack sends it (see the module docstring)."""
    if status == 500:
        body = {"message": "500: Internal Server Error", "code": 0}
        return Failure(500, body, "application/json", {})
    if status == 503:
        text = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
        return Failure(503, text, "text/plain", {})
    titles = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}
    if status not in titles:
        raise ValueError(f"status {status} is not a failure the fake simulates")
    page = _CLOUDFLARE_PAGE.format(title=titles[status])
    return Failure(status, page, "text/html", {"Server": "cloudflare"}, via=False)


def rate_limited(scope: Scope, retry_after: float, *, limit: int, bucket: str) -> Failure:
    """A 429 for ``scope`` asking the client to wait ``retry_after`` seconds."""
    if scope is Scope.CLOUDFLARE:
        return Failure(429, _BAN_PAGE, "text/html", {"Server": "cloudflare"}, via=False)
    retry_after = round(retry_after, 3)
    headers = {"Retry-After": str(max(1, int(-(-retry_after // 1))))}
    message = "You are being rate limited."
    if scope is Scope.GLOBAL:
        headers.update({"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"})
    else:
        # A resource limit leaves the bot's own bucket with requests to spare.
        remaining = 0 if scope is Scope.USER else limit - 1
        headers.update(
            {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": bucket,
                "X-RateLimit-Scope": scope.value,
            }
        )
        if scope is Scope.SHARED:
            message = "The resource is being rate limited."
    body = {"message": message, "retry_after": retry_after, "global": scope is Scope.GLOBAL}
    return Failure(429, body, "application/json", headers)


@dataclass
class Fault:
    """The next ``times`` requests (``None``: every one) of ``method`` to one of
    ``routes`` (and, when given, about message ``message_id``) fail with ``failure``.

    ``hits`` counts the requests it failed so far.
    """

    method: str
    routes: frozenset[str]
    failure: Failure
    times: int | None = 1
    message_id: int | None = None
    processed: bool = False
    hits: int = 0
    _cancelled: bool = field(default=False, repr=False)

    @property
    def active(self) -> bool:
        return not self._cancelled and (self.times is None or self.hits < self.times)

    def cancel(self) -> None:
        """Stop failing requests from now on."""
        self._cancelled = True

    def matches(self, method: str, route: str, message_id: int | None) -> bool:
        return (
            self.active
            and method == self.method
            and route in self.routes
            and (self.message_id is None or self.message_id == message_id)
        )
