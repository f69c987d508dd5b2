"""Wake-ups on every state change, so tests wait for conditions instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changes:
    """A broadcast "something changed" signal with predicate waits.

    :meth:`notify` is synchronous, so handlers can call it anywhere; waiters re-check
    their predicate after every notification. ``timeout`` bounds every wait: it is a
    safety net that stops a broken test, not a synchronisation device.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self._event = asyncio.Event()
        self.timeout = timeout

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], bool], describe: Callable[[], str] | None = None
    ) -> None:
        """Return once ``predicate()`` is true; ``TimeoutError`` (saying what was awaited,
        via ``describe``) if it is still false after :attr:`timeout` seconds."""
        timeout = self.timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._event
                    if predicate():
                        return
                    await event.wait()
        except TimeoutError:
            detail = f": {describe()}" if describe is not None else ""
            raise TimeoutError(f"condition not met within {timeout} s{detail}") from None
