"""The process's logging: one line per record on one stream, with secrets never shown.

    configure_logging   the one handler, the bot's level and the libraries' level
    Redactor            the handler's formatter: hides secrets in every line it writes
    redact_text         the text half of it, for anything else that may carry a secret

Libraries log what they send and receive at DEBUG: discord.py writes every gateway payload
(interaction tokens, prompts) and every webhook URL (which carries the interaction token).
So the libraries stay at INFO unless LIBRARY_LOG_LEVEL asks for more, and every line is
redacted anyway, at every level: the bot token, the API key, interaction and webhook
tokens in URLs and payloads, authorization headers, and the text people typed (prompt
option values, message content) inside the payloads libraries log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import TextIO

import regex

__all__ = ["LINE_FORMAT", "REDACTED", "Redactor", "configure_logging", "redact_text"]

LINE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "[redacted]"

# Keys whose values are credentials wherever they appear in a logged payload.
_SECRET_KEYS = frozenset({"token", "access_token", "refresh_token", "api_key", "authorization"})
# Keys whose string values are what people typed or read: command option values
# (the prompt), message content. Not secret, but not the operator's to read either.
_TEXT_KEYS = frozenset({"value", "content", "prompt"})

_PATTERNS: tuple[tuple[regex.Pattern[str], str], ...] = (
    # Interaction callbacks and followups (webhooks) carry the token in the path.
    (regex.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"), rf"\1{REDACTED}"),
    # "token": "…", 'api_key': '…', token=…, Authorization: … in text and reprs.
    (
        regex.compile(
            r"""(?i)(["']?\b(?:token|access_token|refresh_token|api_key|authorization)\b["']?"""
            r"""\s*[:=]\s*["']?)(?!\[redacted\])(?:(?:Bot|Bearer)\s+)?[^\s"',;&}\]]+"""
        ),
        rf"\1{REDACTED}",
    ),
    (regex.compile(r"\bBearer\s+(?!\[redacted\])[\w.~+/=-]{8,}"), f"Bearer {REDACTED}"),
    # Shaped like a Discord bot token (user id . timestamp . HMAC).
    (regex.compile(r"\b[\w-]{23,28}\.[\w-]{6,7}\.[\w-]{27,}"), REDACTED),
    # Shaped like an OpenAI-style API key.
    (regex.compile(r"\bsk-[\w-]{16,}"), REDACTED),
)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with each of `secrets` and anything shaped like a token replaced."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object) -> object:
    """A copy of a logged payload with credentials and typed text replaced."""
    if isinstance(value, Mapping):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_redact_value(item) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _redact_item(key: object, item: object) -> object:
    name = key.lower() if isinstance(key, str) else None
    if name in _SECRET_KEYS and item is not None:
        return REDACTED
    if name in _TEXT_KEYS and isinstance(item, str):
        return REDACTED
    return _redact_value(item)


class Redactor(logging.Formatter):
    """Formats a record as one line, then removes every secret from it.

    Payloads passed as arguments (discord.py logs gateway events as dicts) are redacted
    by key before formatting; the formatted line, traceback included, is then scanned
    for `secrets` and token-shaped text. The record itself is left untouched.
    """

    def __init__(self, secrets: Iterable[str] = (), fmt: str = LINE_FORMAT) -> None:
        super().__init__(fmt)
        self._secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(record.__dict__)
        if isinstance(record.args, Mapping):
            copy.args = _redact_value(record.args)  # type: ignore[assignment]
        elif record.args:
            copy.args = tuple(_redact_value(arg) for arg in record.args)
        if not isinstance(record.msg, str):
            copy.msg = _redact_value(record.msg)
        return redact_text(super().format(copy), self._secrets)


# Loggers of the libraries that write request and payload details.
LIBRARY_LOGGERS = ("discord", "aiohttp", "openai", "httpx", "httpx2", "httpcore2", "asyncio")


def configure_logging(
    level: str,
    stream: TextIO = sys.stdout,
    *,
    library_level: str | None = None,
    secrets: Iterable[str] = (),
) -> logging.Handler:
    """Log to `stream` (hosted platforms keep no files), one redacted line per record.

    The bot's own loggers log at `level`. Everything else (discord.py, aiohttp, openai,
    httpx2, asyncio) logs at `library_level`; unset, that is INFO or `level` if higher,
    with httpx2's one line per request kept at WARNING. Returns the handler.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Redactor(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    bot_level = logging.getLevelName(level)
    if library_level is None:
        root.setLevel(max(logging.INFO, bot_level))
        # The HTTP client logs every request at INFO; that is noise for operators.
        logging.getLogger("httpx2").setLevel(max(logging.WARNING, bot_level))
    else:
        root.setLevel(library_level)
        logging.getLogger("httpx2").setLevel(logging.NOTSET)
    for name in LIBRARY_LOGGERS:
        if name != "httpx2":
            logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("bot").setLevel(bot_level)
    return handler
