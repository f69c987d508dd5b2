"""Discord's limits on message, modal and command bodies, raised as Discord's own errors.

Field limits come back as one 50035 Invalid Form Body listing every offending field;
a message with nothing to show is 50006 Cannot send an empty message. Lengths count
Unicode code points, as Discord does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import regex

from .errors import FormErrors, JsonObject, empty_message

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_ACTION_ROWS = 5
MAX_ROW_CHILDREN = 5
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80
MAX_COMMAND_OPTIONS = 25
MAX_OPTION_CHOICES = 25
MAX_STRING_OPTION = 6000
MAX_MODAL_TITLE = 45
MAX_MODAL_COMPONENTS = 5
MAX_LABEL = 45
MAX_LABEL_DESCRIPTION = 100
MAX_TEXT_INPUT = 4000
MAX_PLACEHOLDER = 100

# Component types.
ACTION_ROW, TEXT_INPUT, TEXT_DISPLAY, LABEL = 1, 4, 10, 18

EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_EMBEDS = 1 << 2
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
SENDABLE_FLAGS = EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2

_EMBED_FIELD_LIMITS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("title",), 256),
    (("description",), 4096),
    (("footer", "text"), 2048),
    (("author", "name"), 256),
)
_COMMAND_NAME = regex.compile(r"^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$")


def _too_long(errors: FormErrors, path: Sequence[str | int], limit: int) -> None:
    errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


_NOT_AN_OBJECT = "Only dictionaries may be used in a ModelType"
_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...], str, str], ...] = (
    ("content", str, "BASE_TYPE_STRING", "Must be a string."),
    ("embeds", list, "BASE_TYPE_ARRAY", "Must be an array."),
    ("components", list, "BASE_TYPE_ARRAY", "Must be an array."),
    ("attachments", list, "BASE_TYPE_ARRAY", "Must be an array."),
    ("sticker_ids", list, "BASE_TYPE_ARRAY", "Must be an array."),
    ("allowed_mentions", dict, "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT),
    ("message_reference", dict, "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT),
    ("flags", int, "NUMBER_TYPE_COERCE", "Value is not int."),
    ("tts", bool, "BASE_TYPE_BOOLEAN", "Must be either true or false."),
    ("nonce", (str, int), "BASE_TYPE_STRING", "Must be a string."),
)


def check_message_fields(body: JsonObject) -> None:
    """Raise 50035 for a field of the wrong type or over Discord's limits."""
    errors = FormErrors()
    wrong = False
    for key, expected, code, message in _FIELD_TYPES:
        given = body.get(key)
        if given is not None and (
            not isinstance(given, expected) or (expected is int and isinstance(given, bool))
        ):
            errors.add([key], code, message)
            wrong = True
    if wrong:
        errors.raise_if_any()
    content = body.get("content")
    if isinstance(content, str) and len(content) > MAX_CONTENT:
        _too_long(errors, ["content"], MAX_CONTENT)
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        _too_long(errors, ["embeds"], MAX_EMBEDS)
    total = 0
    for index, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            errors.add(["embeds", index], "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT)
            continue
        for keys, limit in _EMBED_FIELD_LIMITS:
            value: Any = embed
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str):
                total += len(value)
                if len(value) > limit:
                    _too_long(errors, ["embeds", index, *keys], limit)
        for field_index, field in enumerate(embed.get("fields") or []):
            for key, limit in (("name", 256), ("value", 1024)):
                text = field.get(key) if isinstance(field, dict) else None
                if not isinstance(text, str):
                    errors.add(
                        ["embeds", index, "fields", field_index, key],
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    )
                    continue
                total += len(text)
                if len(text) > limit:
                    _too_long(errors, ["embeds", index, "fields", field_index, key], limit)
    if total > MAX_EMBED_TOTAL:
        errors.add(
            ["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
        )
    _check_components(errors, body)
    _check_allowed_mentions(errors, body.get("allowed_mentions"))
    errors.raise_if_any()


def _check_components(errors: FormErrors, body: JsonObject) -> None:
    components = body.get("components") or []
    if flags_of(body) & IS_COMPONENTS_V2:
        return  # layout components have different rules; the bot sends none
    if len(components) > MAX_ACTION_ROWS:
        _too_long(errors, ["components"], MAX_ACTION_ROWS)
    seen: set[str] = set()
    for row_index, row in enumerate(components):
        if not isinstance(row, dict):
            errors.add(["components", row_index], "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT)
            continue
        children = row.get("components") or []
        if len(children) > MAX_ROW_CHILDREN:
            _too_long(errors, ["components", row_index, "components"], MAX_ROW_CHILDREN)
        for index, child in enumerate(children):
            path: list[str | int] = ["components", row_index, "components", index]
            if not isinstance(child, dict):
                errors.add(path, "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT)
                continue
            custom_id = child.get("custom_id")
            if isinstance(custom_id, str):
                if len(custom_id) > MAX_CUSTOM_ID:
                    _too_long(errors, [*path, "custom_id"], MAX_CUSTOM_ID)
                if custom_id in seen:
                    errors.add(
                        [*path, "custom_id"],
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                seen.add(custom_id)
            label = child.get("label")
            if isinstance(label, str) and len(label) > MAX_BUTTON_LABEL:
                _too_long(errors, [*path, "label"], MAX_BUTTON_LABEL)


def _check_allowed_mentions(errors: FormErrors, allowed: Any) -> None:
    if not isinstance(allowed, dict):
        return
    parse = allowed.get("parse") or []
    for kind in ("users", "roles"):
        if kind in parse and allowed.get(kind):
            errors.add(
                ["allowed_mentions"],
                "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )


def check_modal(data: JsonObject) -> None:
    """Raise 50035 for a modal (interaction callback type 9) Discord would not show.

    A modal has a ``custom_id`` (1-100 characters), a ``title`` (1-45) and 1-5 top-level
    components: labels (``label`` up to 45, ``description`` up to 100) wrapping one
    component, text displays, or (deprecated) action rows holding a text input. A text
    input has a ``custom_id`` (1-100, unique in the modal), a ``style`` (1 short,
    2 paragraph), ``min_length`` 0-4000, ``max_length`` 1-4000, a ``value`` up to 4000
    and a ``placeholder`` up to 100 characters; in an action row it needs a ``label``.
    """
    errors = FormErrors()
    _check_text(errors, ["custom_id"], data.get("custom_id"), 1, MAX_CUSTOM_ID)
    _check_text(errors, ["title"], data.get("title"), 1, MAX_MODAL_TITLE)
    components = data.get("components")
    if not isinstance(components, list) or not 1 <= len(components) <= MAX_MODAL_COMPONENTS:
        errors.add(
            ["components"],
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_MODAL_COMPONENTS} in length.",
        )
        components = components if isinstance(components, list) else []
    seen: set[str] = set()
    for index, component in enumerate(components):
        path: list[str | int] = ["components", index]
        kind = component.get("type") if isinstance(component, dict) else None
        if kind == LABEL:
            _check_text(errors, [*path, "label"], component.get("label"), 1, MAX_LABEL)
            description = component.get("description")
            if description is not None:
                _check_text(errors, [*path, "description"], description, 1, MAX_LABEL_DESCRIPTION)
            child = component.get("component")
            if not isinstance(child, dict):
                errors.add([*path, "component"], "BASE_TYPE_REQUIRED", "This field is required")
            elif child.get("type") == TEXT_INPUT:
                _check_text_input(errors, [*path, "component"], child, seen, in_label=True)
        elif kind == ACTION_ROW:
            children = component.get("components")
            if not isinstance(children, list) or len(children) != 1:
                errors.add([*path, "components"], "BASE_TYPE_BAD_LENGTH", "Must be 1 in length.")
                continue
            child = children[0]
            if not isinstance(child, dict) or child.get("type") != TEXT_INPUT:
                errors.add(
                    [*path, "components", 0],
                    "UNION_TYPE_CHOICES",
                    'Value of field "type" must be one of (4,).',
                )
                continue
            _check_text_input(errors, [*path, "components", 0], child, seen, in_label=False)
        elif kind != TEXT_DISPLAY:
            errors.add(
                [*path],
                "UNION_TYPE_CHOICES",
                'Value of field "type" must be one of (1, 10, 18).',
            )
    errors.raise_if_any()


def _check_text(errors: FormErrors, path: list[str | int], value: Any, low: int, high: int) -> None:
    if value is None:
        errors.add(path, "BASE_TYPE_REQUIRED", "This field is required")
    elif not isinstance(value, str):
        errors.add(path, "BASE_TYPE_STRING", "Must be a string.")
    elif not low <= len(value) <= high:
        if low == 0:
            _too_long(errors, path, high)
        else:
            errors.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def _check_text_input(
    errors: FormErrors,
    path: list[str | int],
    text_input: JsonObject,
    seen: set[str],
    *,
    in_label: bool,
) -> None:
    custom_id = text_input.get("custom_id")
    _check_text(errors, [*path, "custom_id"], custom_id, 1, MAX_CUSTOM_ID)
    if isinstance(custom_id, str):
        if custom_id in seen:
            errors.add(
                [*path, "custom_id"],
                "COMPONENT_CUSTOM_ID_DUPLICATED",
                "Component custom id cannot be duplicated",
            )
        seen.add(custom_id)
    if text_input.get("style") not in (1, 2):
        errors.add([*path, "style"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2}.")
    label = text_input.get("label")
    if label is not None or not in_label:
        _check_text(errors, [*path, "label"], label, 1, MAX_LABEL)
    for key, low, high in (("min_length", 0, MAX_TEXT_INPUT), ("max_length", 1, MAX_TEXT_INPUT)):
        number = text_input.get(key)
        if number is None:
            continue
        if not isinstance(number, int) or isinstance(number, bool):
            errors.add([*path, key], "NUMBER_TYPE_COERCE", "Value is not int.")
        elif number < low:
            errors.add(
                [*path, key],
                "NUMBER_TYPE_MIN",
                f"int value should be greater than or equal to {low}.",
            )
        elif number > high:
            errors.add(
                [*path, key],
                "NUMBER_TYPE_MAX",
                f"int value should be less than or equal to {high}.",
            )
    for key, high in (("value", MAX_TEXT_INPUT), ("placeholder", MAX_PLACEHOLDER)):
        if text_input.get(key) is not None:
            _check_text(errors, [*path, key], text_input.get(key), 0, high)


def flags_of(body: JsonObject) -> int:
    """The ``flags`` a body asks for (0 when absent or not a number; the checks reject those)."""
    flags = body.get("flags")
    return flags if isinstance(flags, int) and not isinstance(flags, bool) else 0


def has_visible_parts(message: JsonObject, *, files: int = 0) -> bool:
    """Whether a message would show anything: text, embeds, components, files, poll, sticker."""
    content = message.get("content")
    return bool(
        (isinstance(content, str) and content.strip())
        or message.get("embeds")
        or message.get("components")
        or message.get("attachments")
        or message.get("sticker_ids")
        or message.get("poll")
        or files
    )


def require_visible(message: JsonObject, *, files: int = 0) -> None:
    if not has_visible_parts(message, files=files):
        raise empty_message()


def check_commands(commands: Any) -> None:
    """Raise 50035 for a command list Discord would refuse to register."""
    errors = FormErrors()
    if not isinstance(commands, list):
        errors.add([], "BASE_TYPE_ARRAY", "Must be an array.")
        errors.raise_if_any()
        return
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        if not isinstance(command, dict):
            errors.add([index], "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT)
            continue
        kind = command.get("type") or 1
        if kind not in (1, 2, 3, 4) or isinstance(kind, bool):
            errors.add([index, "type"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4}.")
            continue
        name = command.get("name")
        if kind in (2, 3):
            _check_menu_name(errors, [index, "name"], name)
        else:
            _check_name(errors, [index, "name"], name, lowercase=kind == 1)
        if (kind, str(name)) in seen:
            errors.add(
                [index, "name"],
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                "Application command names must be unique",
            )
        seen.add((kind, str(name)))
        if kind == 1:
            _check_description(errors, [index, "description"], command.get("description"))
            _check_options(errors, [index, "options"], command.get("options") or [])
        for key, allowed in _INSTALL_FIELDS.items():
            _check_install_field(errors, [index, key], command.get(key), allowed)
    errors.raise_if_any()


# Where a command may be installed (GUILD_INSTALL, USER_INSTALL) and used (GUILD, BOT_DM,
# PRIVATE_CHANNEL): non-empty sets of these values, or null for the default.
_INSTALL_FIELDS: dict[str, frozenset[int]] = {
    "integration_types": frozenset({0, 1}),
    "contexts": frozenset({0, 1, 2}),
}


def _check_install_field(
    errors: FormErrors, path: list[str | int], values: Any, allowed: frozenset[int]
) -> None:
    if values is None:
        return
    if not isinstance(values, list) or not values:
        errors.add(path, "BASE_TYPE_MIN_LENGTH", "Must be 1 or more in length.")
        return
    for position, value in enumerate(values):
        if isinstance(value, bool) or value not in allowed:
            choices = ", ".join(str(choice) for choice in sorted(allowed))
            errors.add([*path, position], "ENUM_TYPE_COERCE", f"Value must be one of ({choices}).")
    if len({str(value) for value in values}) != len(values):
        errors.add(path, "UNIQUE", "Values must be unique.")


def _check_name(errors: FormErrors, path: list[str | int], name: Any, *, lowercase: bool) -> None:
    if (
        not isinstance(name, str)
        or _COMMAND_NAME.match(name) is None
        or (lowercase and name != name.lower())
    ):
        errors.add(path, "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")


def _check_menu_name(errors: FormErrors, path: list[str | int], name: Any) -> None:
    """A user or message command's name: what the context menu shows, so any case and
    spaces are allowed, 1 to 32 characters."""
    if not isinstance(name, str) or not 1 <= len(name) <= 32 or not name.strip():
        errors.add(path, "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")


def _check_description(errors: FormErrors, path: list[str | int], text: Any) -> None:
    if not isinstance(text, str) or not 1 <= len(text) <= 100:
        errors.add(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")


def _check_options(errors: FormErrors, path: list[str | int], options: list[Any]) -> None:
    if len(options) > MAX_COMMAND_OPTIONS:
        _too_long(errors, path, MAX_COMMAND_OPTIONS)
    optional_seen = False
    for index, option in enumerate(options):
        here = [*path, index]
        if not isinstance(option, dict):
            errors.add(here, "MODEL_TYPE_CONVERT", _NOT_AN_OBJECT)
            continue
        _check_name(errors, [*here, "name"], option.get("name"), lowercase=True)
        _check_description(errors, [*here, "description"], option.get("description"))
        if option.get("required"):
            if optional_seen:
                errors.add(
                    [*here, "required"],
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True
        if len(option.get("choices") or []) > MAX_OPTION_CHOICES:
            _too_long(errors, [*here, "choices"], MAX_OPTION_CHOICES)
        max_length = option.get("max_length")
        if max_length is not None and (
            not isinstance(max_length, int) or not 1 <= max_length <= MAX_STRING_OPTION
        ):
            errors.add(
                [*here, "max_length"],
                "NUMBER_TYPE_MAX",
                f"int value should be less than or equal to {MAX_STRING_OPTION}.",
            )
        if option.get("type") in (1, 2):
            _check_options(errors, [*here, "options"], option.get("options") or [])
