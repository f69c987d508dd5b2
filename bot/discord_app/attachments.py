"""Downloading the files people attach, safely, and reading them for the model.

    offered     a `discord.Attachment` as `bot.conversation.files` describes it
    fetch       download and read every accepted file (`Files`), or the first `Refusal`
    download    one file's bytes: only from Discord, size-capped, time-bounded

A file is downloaded only from Discord's CDN (`cdn.discordapp.com`, `media.discordapp.net`,
over HTTPS) or from the host discord.py's API base points at (a local Discord in tests
serves its files there). A redirect is followed only to one of those hosts. The size
Discord reported was checked before (`files.accept`); the download stops as soon as it
passes `max_bytes` anyway, and gives up after `DOWNLOAD_SECONDS`. No proxy or other
setting from the environment is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiohttp
import discord
import discord.http
import yarl

from bot.conversation import files
from bot.conversation.files import Accepted, FileRules, Files, Offered, Reason, Refusal
from bot.model.vision import Image

log = logging.getLogger(__name__)

CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
DOWNLOAD_SECONDS = 20.0
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class DownloadRefused(Exception):
    """The file was not downloaded in full; `reason` says why (for the person's sentence)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason


def offered(attachment: discord.Attachment) -> Offered:
    return Offered(attachment.filename, attachment.content_type, attachment.size, attachment.url)


def from_discord(url: yarl.URL) -> bool:
    """Whether `url` is one Discord serves attachments from (see the module docstring)."""
    if url.scheme == "https" and url.host in CDN_HOSTS and url.explicit_port in (None, 443):
        return True
    api = yarl.URL(discord.http.Route.BASE)
    return (url.scheme, url.host, url.port) == (api.scheme, api.host, api.port)


async def download(
    url: str,
    *,
    max_bytes: int,
    timeout: float = DOWNLOAD_SECONDS,
    session: aiohttp.ClientSession | None = None,
) -> bytes:
    """The bytes at `url`, or `DownloadRefused`: not from Discord (`not_from_discord`,
    checked before connecting and at every redirect), over `max_bytes` (`too_large`),
    or failed, refused, or too slow (`unreadable`)."""
    if session is None:
        async with aiohttp.ClientSession(trust_env=False) as own:
            return await download(url, max_bytes=max_bytes, timeout=timeout, session=own)
    target = yarl.URL(url)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if not from_discord(target):
                raise DownloadRefused("not_from_discord", f"not a Discord file host: {target.host}")
            async with session.get(
                target,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    target = target.join(yarl.URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise DownloadRefused("unreadable", f"HTTP {response.status}")
                if (response.content_length or 0) > max_bytes:
                    raise DownloadRefused("too_large", f"{response.content_length} bytes")
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        raise DownloadRefused("too_large", f"over {max_bytes} bytes")
                return bytes(body)
        raise DownloadRefused("unreadable", "too many redirects")
    except (aiohttp.ClientError, TimeoutError) as error:
        raise DownloadRefused("unreadable", f"{type(error).__name__}: {error}") from error


async def fetch(accepted: Accepted, rules: FileRules) -> Files | Refusal:
    """Download and read every accepted file, in order; the first that fails decides."""
    if not accepted.files:
        return Files()
    texts: list[files.TextFile] = []
    images: list[tuple[str, Image]] = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for item, kind in accepted.files:
            try:
                data = await download(item.url, max_bytes=rules.max_bytes, session=session)
            except DownloadRefused as refused:
                log.info("attachment not downloaded (%s): %s", refused.reason, refused)
                return Refusal(item.filename, refused.reason)
            read = files.read(item.filename, kind, data, max_chars=rules.max_chars)
            if isinstance(read, Refusal):
                return read
            if isinstance(read, files.TextFile):
                texts.append(read)
            else:
                images.append((item.filename, read))
    return Files(tuple(files.budgeted(texts, rules.max_chars)), tuple(images))


def offered_all(attachments: Sequence[discord.Attachment]) -> list[Offered]:
    return [offered(attachment) for attachment in attachments]
