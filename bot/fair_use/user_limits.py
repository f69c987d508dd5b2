"""Per-user limits, checked and taken in one step, wherever they are kept.

`UserLimits` is what an ask must pass before it may wait for the model: the asker's
cooldown and their asks in flight, decided together, so that no other ask (in this
process or in another) can slip between a check and its record.

`LocalUserLimits` keeps both in this process's memory (`Cooldown` and `PerUserCap`);
`bot.store.redis_limits.RedisUserLimits` keeps them in Redis for every process of the
bot, and `bot.store.failover` falls back from that to this one while Redis is away.

    admitted = await user_limits.admit(user_id)
    if isinstance(admitted, UserRefusal):
        ...  # admitted.kind is "cooldown" (retry_after seconds) or "too_many"
    try:
        ...  # the ask
    finally:
        await admitted.release()

An ask admitted here but then turned away before it ran (the bot is busy) is
`withdraw`n instead, which also takes back its count against the cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.fair_use.limits import Cooldown, PerUserCap, UserHold

__all__ = ["LocalUserLimits", "UserLimits", "UserRefusal", "UserSlot"]


@dataclass(frozen=True)
class UserRefusal:
    """Why an ask was turned away: the cooldown (for `retry_after` seconds more), or the
    asker's asks in flight."""

    kind: Literal["cooldown", "too_many"]
    retry_after: float = 0.0


class UserSlot(Protocol):
    """One admitted ask's place among its asker's asks in flight."""

    async def release(self) -> None:
        """Give the place back (the ask ran); does nothing the second time."""

    async def withdraw(self) -> None:
        """Give the place back and take back the ask's count against the cooldown (the
        ask never ran); does nothing after `release` or a first `withdraw`."""


class UserLimits(Protocol):
    """The cooldown and the cap on asks in flight, for every user."""

    @property
    def max_per_user(self) -> int:
        """How many asks of one user may be in flight at once."""

    async def admit(self, user_id: int) -> UserSlot | UserRefusal:
        """Check the cooldown and the cap and, when both allow it, record the ask and take
        a place, all in one step. A refused ask is not recorded."""


class LocalUserLimits:
    """`UserLimits` in this process's memory; every decision is synchronous."""

    def __init__(
        self,
        cooldown: Cooldown | None,
        cap: PerUserCap,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cooldown = cooldown
        self.cap = cap
        self._clock = clock

    @property
    def max_per_user(self) -> int:
        return self.cap.max_per_user

    async def admit(self, user_id: int) -> UserSlot | UserRefusal:
        return self.admit_now(user_id)

    def admit_now(self, user_id: int) -> _LocalSlot | UserRefusal:
        """`admit`, without awaiting anything."""
        now = self._clock()
        cooldown = self.cooldown
        if cooldown is not None:
            wait = cooldown.retry_after(user_id, now)
            if wait is not None:
                return UserRefusal("cooldown", wait)
        hold = self.cap.try_take(user_id)
        if hold is None:
            return UserRefusal("too_many")
        if cooldown is not None:
            cooldown.check_and_record(user_id, now)
        return _LocalSlot(self, hold, now)


class _LocalSlot:
    def __init__(self, limits: LocalUserLimits, hold: UserHold, at: float) -> None:
        self._limits = limits
        self._hold = hold
        self._at = at

    async def release(self) -> None:
        self._hold.release()

    async def withdraw(self) -> None:
        if self._hold.released:
            return
        self._hold.release()
        cooldown = self._limits.cooldown
        if cooldown is not None:
            cooldown.forget(self._hold.user_id, self._at)
