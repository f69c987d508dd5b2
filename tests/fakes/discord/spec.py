"""Checks bodies against Discord's official OpenAPI description.

The description lives outside the repository, at ``shared/discord-api-spec/openapi.json``
beside the checkout (or beside a folder above it); a clone without it runs the fake
unchecked, and tests that need the check skip visibly through :func:`spec_available`.
The document is large, so it is parsed once per process (:func:`load_spec`) and each
operation's validator compiled on first use.

Request bodies are checked against the operation's ``application/json`` request schema
(a multipart request's ``payload_json`` is that same JSON). Responses are checked only
on success: Discord's live error bodies differ from the description (a 429 body has no
``code``; the sub-errors of a 50035 carry string codes).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_SPEC_IN_SHARED = Path("shared") / "discord-api-spec" / "openapi.json"


def _find_spec(checkout: Path) -> Path:
    """``shared/discord-api-spec/openapi.json`` in the nearest folder above the checkout
    that has one (a git worktree may sit deeper than the main checkout)."""
    for folder in checkout.parents:
        if (folder / _SPEC_IN_SHARED).is_file():
            return folder / _SPEC_IN_SHARED
    return checkout.parent / _SPEC_IN_SHARED


SPEC_PATH = _find_spec(Path(__file__).resolve().parents[3])
_DOCUMENT_URI = "urn:discord-openapi"


@dataclass(frozen=True)
class SpecViolation:
    """One way a body broke the description: which call, what, and where in the body."""

    direction: str  # "request" or "response"
    method: str
    route: str
    message: str
    location: str


class OpenApiSpec:
    """The parsed description, answering "is this body what the operation accepts?"."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._paths: dict[str, Any] = document["paths"]
        resource: Resource[Any] = Resource.from_contents(
            document, default_specification=DRAFT202012
        )
        self._registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, resource)
        self._validators: dict[str, Draft202012Validator | None] = {}

    def knows(self, method: str, route: str) -> bool:
        return method.lower() in self._paths.get(route, {})

    def request_violations(self, method: str, route: str, body: Any) -> list[SpecViolation]:
        pointer = ("paths", route, method.lower(), "requestBody", "content")
        operation = self._paths.get(route, {}).get(method.lower(), {})
        content = operation.get("requestBody", {}).get("content", {})
        media = "application/json" if "application/json" in content else None
        if media is None:
            return []
        validator = self._validator((*pointer, media, "schema"))
        return self._violations("request", method, route, validator, body)

    def response_violations(
        self, method: str, route: str, status: int, body: Any
    ) -> list[SpecViolation]:
        responses = self._paths.get(route, {}).get(method.lower(), {}).get("responses", {})
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in responses:
                break
        else:
            return [SpecViolation("response", method, route, f"status {status} not described", "$")]
        response = responses[key]
        if "$ref" in response:
            return []  # shared error responses; see the module docstring
        if "application/json" not in response.get("content", {}):
            return []
        pointer = ("paths", route, method.lower(), "responses", key, "content")
        validator = self._validator((*pointer, "application/json", "schema"))
        return self._violations("response", method, route, validator, body)

    def schema_violations(self, schema: str, body: Any) -> list[SpecViolation]:
        """How ``body`` fails the component schema ``schema`` (e.g. ``AttachmentResponse``),
        for what the fake sends rather than receives."""
        validator = self._validator(("components", "schemas", schema))
        return self._violations("payload", "-", schema, validator, body)

    def _validator(self, pointer: tuple[str, ...]) -> Draft202012Validator:
        fragment = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
        cached = self._validators.get(fragment)
        if cached is None:
            cached = Draft202012Validator(
                {"$ref": f"{_DOCUMENT_URI}#/{fragment}"}, registry=self._registry
            )
            self._validators[fragment] = cached
        return cached

    @staticmethod
    def _violations(
        direction: str, method: str, route: str, validator: Draft202012Validator, body: Any
    ) -> list[SpecViolation]:
        found = []
        for error in validator.iter_errors(body):
            detail = max(_leaves(error), key=lambda leaf: len(leaf.absolute_path))
            message = _shorten(detail.message)
            if detail is not error:
                message = f"matches no alternative; the closest fails with: {message}"
            found.append(SpecViolation(direction, method, route, message, detail.json_path))
        return found


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The innermost errors under an anyOf/oneOf; the deepest is the alternative that got
    furthest, which names the field actually at fault."""
    if not error.context:
        return [error]
    return [leaf for sub in error.context for leaf in _leaves(sub)]


def _shorten(message: str, head: int = 60, tail: int = 120) -> str:
    """Keeps the verdict at the end of a message that starts with a long instance repr."""
    if len(message) <= head + tail:
        return message
    return f"{message[:head]}…{message[-tail:]}"


@functools.lru_cache(maxsize=4)
def load_spec(path: Path = SPEC_PATH) -> OpenApiSpec | None:
    """The description at ``path``, parsed once per process; ``None`` if the file is absent."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        return OpenApiSpec(json.load(handle))


def spec_available(path: Path = SPEC_PATH) -> bool:
    """Whether the description is present, for ``pytest.skip`` in checks that need it."""
    return path.is_file()
