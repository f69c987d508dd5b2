"""Pointing discord.py at a fake Discord.

discord.py has no base-URL setting: every HTTP route (webhooks and interaction callbacks
included) is built from ``discord.http.Route.BASE``, and the first gateway connection goes
to ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (later ones to the READY's
``resume_gateway_url``). ``discord.http._set_api_version()`` resets ``Route.BASE``, so
call it, if at all, before these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import discord.gateway
import discord.http
import yarl

if TYPE_CHECKING:
    from .fake import FakeDiscord

API_SUFFIX = "/api/v10"


def set_discord_py_urls(api_url: str, gateway_url: str) -> None:
    """Send discord.py's requests to ``api_url`` and its gateway to ``gateway_url``.

    ``api_url`` may be the server root or already end in ``/api/v10``.
    """
    base = api_url.rstrip("/")
    if not base.endswith(API_SUFFIX):
        base += API_SUFFIX
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


@contextmanager
def point_discord_py_at(fake: FakeDiscord) -> Iterator[None]:
    """Aim discord.py at ``fake`` for the duration of the block, then restore the real URLs."""
    previous_base = discord.http.Route.BASE
    previous_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    set_discord_py_urls(fake.api_url, fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = previous_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = previous_gateway
