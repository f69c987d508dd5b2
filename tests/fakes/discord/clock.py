"""The fake's sense of time: the real clocks plus an offset a test can move forward.

Every deadline the fake enforces (the 3 s interaction callback window, the 15 minute
interaction token, rate-limit windows) reads this clock, so a test can jump past a
deadline with :meth:`Clock.advance` instead of sleeping.
"""

from __future__ import annotations

import time


class Clock:
    """Monotonic and wall-clock time shifted by an adjustable offset."""

    def __init__(self) -> None:
        self._offset = 0.0

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for measuring intervals."""
        return time.monotonic() + self._offset

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps and snowflakes."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; time never runs backwards."""
        if seconds < 0:
            raise ValueError("a clock can only be advanced")
        self._offset += seconds
