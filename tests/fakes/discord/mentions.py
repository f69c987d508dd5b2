"""Who a message notifies, by Discord's allowed-mentions rules.

Content mentions people with ``<@id>``/``<@!id>``, roles with ``<@&id>`` and everyone with
``@everyone``/``@here``. The request's ``allowed_mentions`` decides which of those ping:

* field absent or null: everything mentioned may ping (``parse`` of all three kinds);
* ``{"parse": []}`` and no ``users``/``roles`` lists: nothing pings;
* ``parse`` entries ``"users"``, ``"roles"``, ``"everyone"`` allow a whole kind;
  ``users``/``roles`` lists allow only those ids.

On top of that ``@everyone``/``@here`` ping only when the sender holds MENTION_EVERYONE,
and a role pings only if it is mentionable or the sender holds MENTION_EVERYONE.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

_EVERYONE = re.compile(r"@(?:everyone|here)")
_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")


@dataclass(frozen=True)
class Mentions:
    """A set of mention targets: everyone/here, user ids and role ids."""

    everyone: bool = False
    users: frozenset[int] = frozenset()
    roles: frozenset[int] = frozenset()

    @property
    def any(self) -> bool:
        return self.everyone or bool(self.users) or bool(self.roles)

    def __or__(self, other: Mentions) -> Mentions:
        return Mentions(
            everyone=self.everyone or other.everyone,
            users=self.users | other.users,
            roles=self.roles | other.roles,
        )


def mentioned_in(content: str) -> Mentions:
    """Everything the text mentions, whether or not it would ping."""
    return Mentions(
        everyone=_EVERYONE.search(content) is not None,
        users=frozenset(int(x) for x in _USER.findall(content)),
        roles=frozenset(int(x) for x in _ROLE.findall(content)),
    )


def pings(
    content: str,
    allowed_mentions: dict[str, Any] | None,
    *,
    can_mention_everyone: bool,
    mentionable_roles: Collection[int],
) -> Mentions:
    """The mentions in ``content`` that notify, given the request's ``allowed_mentions``."""
    mentioned = mentioned_in(content)
    if allowed_mentions is None:
        parse = {"users", "roles", "everyone"}
        allowed_users: set[int] = set()
        allowed_roles: set[int] = set()
    else:
        parse = set(allowed_mentions.get("parse") or ())
        allowed_users = {int(x) for x in allowed_mentions.get("users") or ()}
        allowed_roles = {int(x) for x in allowed_mentions.get("roles") or ()}
    users = mentioned.users if "users" in parse else mentioned.users & allowed_users
    roles = mentioned.roles if "roles" in parse else mentioned.roles & allowed_roles
    if not can_mention_everyone:
        roles = roles & frozenset(mentionable_roles)
    return Mentions(
        everyone=mentioned.everyone and "everyone" in parse and can_mention_everyone,
        users=frozenset(users),
        roles=frozenset(roles),
    )
