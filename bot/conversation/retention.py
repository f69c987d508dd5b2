"""Deleting conversations older than CONVERSATION_RETENTION_DAYS.

retention           the retention of the settings, as a `timedelta`
keep_pruned         prune a `ConversationStore` now and then, until cancelled
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from bot.config import Settings
from bot.conversation.turns import ConversationStore

__all__ = ["keep_pruned", "retention"]

log = logging.getLogger(__name__)


def retention(settings: Settings) -> timedelta:
    """How long turns are kept: CONVERSATION_RETENTION_DAYS."""
    return timedelta(days=settings.conversation_retention_days)


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def keep_pruned(
    store: ConversationStore,
    keep_for: timedelta,
    every: timedelta = timedelta(hours=1),
    *,
    clock: Callable[[], datetime] = _utc_now,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> NoReturn:
    """Delete the turns older than `keep_for` now and then every `every`, until cancelled;
    run it as a task.

    A failed prune (say the file is locked by another process for too long) is logged as
    one warning line and tried again next time.
    """
    while True:
        try:
            deleted = await store.prune(clock() - keep_for)
        except Exception as error:
            log.warning("could not prune old conversations (will retry): %s", error)
        else:
            if deleted:
                log.info(
                    "deleted %d conversation turn(s) older than %d days", deleted, keep_for.days
                )
        await sleep(every.total_seconds())
