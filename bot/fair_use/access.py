"""Who may ask: pure rules over where an ask comes from and who sends it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

NOT_IN_DMS = "I only answer in servers, not in direct messages."
NOT_IN_SERVER = "I'm not enabled in this server."
NOT_IN_CHANNEL = "I don't answer in this channel. Please ask in one of the channels set up for me."
MISSING_ROLE = "You need one of the roles allowed to use me. Please ask a server admin."


@dataclass(frozen=True)
class AccessRules:
    """Empty id sets mean "everywhere" / "everyone"."""

    guild_ids: frozenset[int] = frozenset()
    channel_ids: frozenset[int] = frozenset()
    role_ids: frozenset[int] = frozenset()
    allow_dms: bool = False


@dataclass(frozen=True)
class Origin:
    """Where an ask comes from. A thread is reported as its parent channel."""

    guild_id: int | None
    channel_id: int | None
    role_ids: Collection[int] = ()


def refusal(rules: AccessRules, origin: Origin) -> str | None:
    """The sentence to show when `origin` may not ask, or None when it may."""
    if origin.guild_id is None:
        return None if rules.allow_dms else NOT_IN_DMS
    if rules.guild_ids and origin.guild_id not in rules.guild_ids:
        return NOT_IN_SERVER
    if rules.channel_ids and origin.channel_id not in rules.channel_ids:
        return NOT_IN_CHANNEL
    if rules.role_ids and rules.role_ids.isdisjoint(origin.role_ids):
        return MISSING_ROLE
    return None
