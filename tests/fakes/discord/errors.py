"""Discord's JSON error responses, raised by the fake's handlers.

Discord answers a failed request with ``{"code": <int>, "message": <str>}`` and, for
rejected fields (code 50035), an ``errors`` tree whose leaves are
``{"_errors": [{"code": <str>, "message": <str>}]}`` keyed by the field's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

JsonObject = dict[str, Any]


class DiscordError(Exception):
    """An HTTP error exactly as Discord would send it."""

    def __init__(
        self, status: int, code: int, message: str, errors: JsonObject | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> JsonObject:
        body: JsonObject = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class FormErrors:
    """Collects field errors and raises them together as one 50035 Invalid Form Body."""

    def __init__(self) -> None:
        self._tree: JsonObject = {}

    def add(self, path: Sequence[str | int], code: str, message: str) -> None:
        node = self._tree
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def __bool__(self) -> bool:
        return bool(self._tree)

    def raise_if_any(self) -> None:
        if self._tree:
            raise DiscordError(400, 50035, "Invalid Form Body", self._tree)


def invalid_form(path: Sequence[str | int], code: str, message: str) -> DiscordError:
    """A 50035 Invalid Form Body for a single field."""
    return DiscordError(
        400,
        50035,
        "Invalid Form Body",
        _nest(path, {"_errors": [{"code": code, "message": message}]}),
    )


def _nest(path: Sequence[str | int], leaf: JsonObject) -> JsonObject:
    for key in reversed(path):
        leaf = {str(key): leaf}
    return leaf


def unauthorized() -> DiscordError:
    return DiscordError(401, 0, "401: Unauthorized")


def not_found() -> DiscordError:
    return DiscordError(404, 0, "404: Not Found")


def method_not_allowed() -> DiscordError:
    return DiscordError(405, 0, "405: Method Not Allowed")


def invalid_json() -> DiscordError:
    return DiscordError(400, 50109, "The request body contains invalid JSON.")


def empty_message() -> DiscordError:
    return DiscordError(400, 50006, "Cannot send an empty message")


def unknown_interaction() -> DiscordError:
    return DiscordError(404, 10062, "Unknown interaction")


def already_acknowledged() -> DiscordError:
    return DiscordError(400, 40060, "Interaction has already been acknowledged.")


def unknown_webhook() -> DiscordError:
    return DiscordError(404, 10015, "Unknown Webhook")


def invalid_webhook_token() -> DiscordError:
    """What every use of an interaction token gets once its 15 minutes are over."""
    return DiscordError(401, 50027, "Invalid Webhook Token")


def max_followups() -> DiscordError:
    """A followup past the 5 an interaction of a user-installed app (not in the server) gets."""
    return DiscordError(
        400, 40094, "This interaction has hit the maximum number of follow up messages"
    )


def unknown_message() -> DiscordError:
    return DiscordError(404, 10008, "Unknown Message")


def unknown_channel() -> DiscordError:
    return DiscordError(404, 10003, "Unknown Channel")


def missing_access() -> DiscordError:
    return DiscordError(403, 50001, "Missing Access")


def missing_permissions() -> DiscordError:
    return DiscordError(403, 50013, "Missing Permissions")


def cannot_reply_without_history() -> DiscordError:
    return DiscordError(403, 160002, "Cannot reply without permission to read message history")


def cannot_edit_others_message() -> DiscordError:
    return DiscordError(403, 50005, "Cannot edit a message authored by another user")


def payload_too_large() -> DiscordError:
    return DiscordError(413, 40005, "Request entity too large")
