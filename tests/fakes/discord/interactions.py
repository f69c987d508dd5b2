"""What a person can do to the bot: run a registered command (or one of its subcommands,
``"settings show"``), type into an option with autocomplete, press a button, submit a
modal the bot showed them.

Discord's own client only lets people do what the registered commands and the rendered
components allow, so these helpers refuse the impossible (unknown command, missing
required option, a button that is not on the message) with an exception in the test,
rather than sending the bot something Discord never would.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import rules
from .errors import JsonObject
from .payloads import message_payload, upload_payload
from .state import (
    ADMINISTRATOR,
    ATTACHMENT_SIZE_LIMIT,
    DM,
    GROUP_DM,
    Attachment,
    Channel,
    Interaction,
    User,
    VisibleMessage,
    World,
)


@dataclass(frozen=True)
class Upload:
    """A file a person picks for an attachment option; ``content_type`` is what Discord's
    client guesses from the name unless given."""

    filename: str
    data: bytes
    content_type: str | None = None


OptionValue = str | int | float | bool | Upload

_CHAT_INPUT, _MESSAGE_COMMAND = 1, 3
_SUB_COMMAND, _STRING, _INTEGER, _BOOLEAN, _NUMBER, _ATTACHMENT = 1, 3, 4, 5, 10, 11
_BUTTON = 2
_LINK_STYLE = 5


def command_data(
    world: World,
    channel: Channel,
    name: str,
    options: Mapping[str, OptionValue],
    *,
    user: User | None = None,
    focused: str | None = None,
    user_installed: bool = False,
) -> JsonObject:
    """The ``data`` of an APPLICATION_COMMAND interaction for ``/name`` with ``options``
    (``name`` may name a subcommand: ``"settings show"``), or with ``focused`` that of an
    APPLICATION_COMMAND_AUTOCOMPLETE while the person types into that option.

    Raises ``LookupError`` when no such command is registered where ``channel`` is (for
    the person's own install when ``user_installed``: global commands for that
    integration type only), or ``user`` lacks its default member permissions there
    (Discord hides it, unless the server's admins allowed it for everyone:
    ``World.commands_allowed``), and ``ValueError`` for options Discord's client would not
    let a person submit. Uploaded files arrive in ``resolved.attachments``.
    """
    top, _, sub = name.partition(" ")
    command, guild_id = _find_command(world, channel, top, user_installed=user_installed)
    if user is not None and not user_installed and not _may_see(world, command, channel, user):
        raise LookupError(f"/{top} is hidden from {user.username} (default member permissions)")
    data: JsonObject = {"id": command["id"], "name": top, "type": 1}
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    resolved: dict[str, JsonObject] = {}
    if sub:
        subcommands = {
            option["name"]: option
            for option in command.get("options") or []
            if option["type"] == _SUB_COMMAND
        }
        if sub not in subcommands:
            raise LookupError(f"/{top} has no subcommand {sub!r}")
        sent = _options(world, name, subcommands[sub], options, focused, resolved)
        data["options"] = [{"name": sub, "type": _SUB_COMMAND, "options": sent}]
    else:
        sent = _options(world, name, command, options, focused, resolved)
        if sent:
            data["options"] = sent
    if resolved:
        data["resolved"] = {"attachments": resolved}
    return data


def _may_see(world: World, command: JsonObject, channel: Channel, user: User) -> bool:
    needed = command.get("default_member_permissions")
    if needed is None or channel.guild_id is None or command["name"] in world.commands_allowed:
        return True
    bits, held = int(needed), world.permissions_in(user.id, channel)
    # "0": administrators only.
    return held & bits == bits if bits else held & ADMINISTRATOR != 0


def _options(
    world: World,
    name: str,
    command: JsonObject,
    options: Mapping[str, OptionValue],
    focused: str | None,
    resolved: dict[str, JsonObject],
) -> list[JsonObject]:
    """The options sent for ``command``; uploads are added to ``resolved``."""
    declared = {option["name"]: option for option in command.get("options") or []}
    if focused is not None:
        option = declared.get(focused)
        if option is None or not option.get("autocomplete"):
            raise ValueError(f"/{name} has no autocomplete option {focused!r}")
    unknown = set(options) - set(declared)
    if unknown:
        raise ValueError(f"/{name} has no option(s) {sorted(unknown)}")
    sent: list[JsonObject] = []
    for option_name, option in declared.items():
        if option_name == focused:
            # What is typed so far: any text, checked only once the command is sent.
            value = options.get(option_name, "")
            sent.append({"name": option_name, "type": option["type"], "value": value})
            sent[-1]["focused"] = True
            continue
        if option_name not in options:
            if option.get("required") and focused is None:
                raise ValueError(f"/{name} needs its required option {option_name!r}")
            continue
        value = options[option_name]
        _check_value(name, option, value)
        if isinstance(value, Upload):
            # The option's value is the attachment's id; the file itself is resolved.
            attachment = _upload(world, value)
            resolved[str(attachment.id)] = upload_payload(world, attachment)
            value = str(attachment.id)
        sent.append({"name": option_name, "type": option["type"], "value": value})
    return sent


def _upload(world: World, upload: Upload) -> Attachment:
    if len(upload.data) > ATTACHMENT_SIZE_LIMIT:
        raise ValueError(f"Discord's client uploads at most {ATTACHMENT_SIZE_LIMIT} bytes")
    attachment = Attachment(
        id=world.snowflakes.next(),
        filename=upload.filename,
        data=upload.data,
        content_type=upload.content_type or mimetypes.guess_type(upload.filename)[0],
    )
    world.uploads[attachment.id] = attachment
    return attachment


def message_command_data(world: World, channel: Channel, name: str, target_id: int) -> JsonObject:
    """The ``data`` of an APPLICATION_COMMAND interaction for the message command ``name``
    run on message ``target_id``: ``type`` 3, ``target_id``, and the message itself in
    ``resolved.messages``, with its content (a message command needs no intent to read it).

    Raises ``LookupError`` when no such command is registered where ``channel`` is, or the
    message is not one the person could right-click there.
    """
    command, guild_id = _find_command(world, channel, name, kind=_MESSAGE_COMMAND)
    target = world.messages.get(target_id)
    if target is None or target.deleted or target.channel_id != channel.id:
        raise LookupError(f"message {target_id} is not in channel {channel.id}")
    if target.loading:
        raise LookupError(f"message {target_id} is still loading")
    data: JsonObject = {
        "id": command["id"],
        "name": name,
        "type": _MESSAGE_COMMAND,
        "target_id": str(target_id),
        "resolved": {"messages": {str(target_id): message_payload(world, target)}},
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    return data


def _find_command(
    world: World,
    channel: Channel,
    name: str,
    *,
    kind: int = _CHAT_INPUT,
    user_installed: bool = False,
) -> tuple[JsonObject, int | None]:
    scopes: list[int | None] = [None]
    if channel.guild_id is not None and not user_installed:
        # Guild commands exist only through the server's install.
        scopes.insert(0, channel.guild_id)
    install = 1 if user_installed else 0
    for scope in scopes:
        for command in world.commands.get(scope, []):
            if command["name"] != name or (command.get("type") or _CHAT_INPUT) != kind:
                continue
            if install not in (command.get("integration_types") or [0]):
                continue
            contexts = command.get("contexts")
            context = {DM: 1, GROUP_DM: 2}.get(channel.type, 0)
            if contexts is not None and context not in contexts:
                continue
            if contexts is None and context == 1 and not command.get("dm_permission", True):
                continue
            return command, scope
    where = "in DMs" if channel.type in (DM, GROUP_DM) else "in the guild"
    via = " through a user install" if user_installed else ""
    raise LookupError(f"no command /{name} is registered for use {where}{via}")


def _check_value(command: str, option: JsonObject, value: Any) -> None:
    kind = option["type"]
    label = f"/{command} {option['name']}"
    if kind == _ATTACHMENT:
        if not isinstance(value, Upload):
            raise ValueError(f"{label} takes a file (an Upload)")
        return
    if isinstance(value, Upload):
        raise ValueError(f"{label} takes no file")
    if kind == _STRING:
        if not isinstance(value, str):
            raise ValueError(f"{label} takes text")
        low = option.get("min_length", 0)
        high = option.get("max_length", 6000)
        if not low <= len(value) <= high:
            raise ValueError(f"{label} must be {low}..{high} characters, not {len(value)}")
    elif kind == _INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{label} takes a whole number")
    elif kind == _NUMBER:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{label} takes a number")
    elif kind == _BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{label} takes true or false")
    else:
        raise NotImplementedError(f"{label}: option type {kind} is not simulated")
    if kind in (_INTEGER, _NUMBER):
        number = float(value)
        if "min_value" in option and number < option["min_value"]:
            raise ValueError(f"{label} must be at least {option['min_value']}")
        if "max_value" in option and number > option["max_value"]:
            raise ValueError(f"{label} must be at most {option['max_value']}")
    choices = option.get("choices")
    if choices and value not in [choice["value"] for choice in choices]:
        raise ValueError(f"{label} must be one of its choices")


def component_data(world: World, message_id: int, custom_id: str, user: User) -> JsonObject:
    """The ``data`` of a button press; ``LookupError`` unless the user can press it."""
    message = world.messages.get(message_id)
    if message is None or message.deleted:
        raise LookupError(f"message {message_id} does not exist")
    if message.visible_to not in (None, user.id):
        raise LookupError(f"{user.username} cannot see message {message_id}")
    if message.loading:
        raise LookupError(f"message {message_id} is still loading")
    for row in message.components:
        for component in row.get("components") or []:
            if component.get("custom_id") != custom_id:
                continue
            if component.get("type") != _BUTTON or component.get("style") == _LINK_STYLE:
                raise NotImplementedError("only non-link buttons are simulated")
            if component.get("disabled"):
                raise LookupError(f"button {custom_id!r} is disabled")
            return {"custom_id": custom_id, "component_type": _BUTTON}
    raise LookupError(f"message {message_id} has no button {custom_id!r}")


def modal_submit_data(modal: JsonObject, values: Mapping[str, str]) -> JsonObject:
    """The ``data`` of a MODAL_SUBMIT for ``modal`` (as the bot sent it, numbered) filled
    with ``values`` by text input ``custom_id``.

    ``ValueError`` for what Discord's client would not let a person submit: an unknown
    input, a required input left empty, a value outside its ``min_length``/``max_length``.
    An optional input left alone is submitted as ``""``.
    """
    inputs: dict[str, JsonObject] = {}
    components: list[JsonObject] = []
    for component in modal["components"]:
        kind = component.get("type")
        if kind == rules.TEXT_DISPLAY:
            components.append({"type": kind, "id": component["id"]})
            continue
        child = component["component"] if kind == rules.LABEL else component["components"][0]
        if child.get("type") != rules.TEXT_INPUT:
            raise NotImplementedError("only text inputs are simulated in modals")
        inputs[child["custom_id"]] = child
        submitted: JsonObject = {
            "type": rules.TEXT_INPUT,
            "id": child["id"],
            "custom_id": child["custom_id"],
            "value": values.get(child["custom_id"], child.get("value") or ""),
        }
        if kind == rules.LABEL:
            components.append({"type": kind, "id": component["id"], "component": submitted})
        else:
            components.append({"type": kind, "id": component["id"], "components": [submitted]})
    unknown = set(values) - set(inputs)
    if unknown:
        raise ValueError(f"the modal has no text input(s) {sorted(unknown)}")
    for custom_id, text_input in inputs.items():
        value = values.get(custom_id, text_input.get("value") or "")
        low = text_input.get("min_length") or 0
        high = text_input.get("max_length") or rules.MAX_TEXT_INPUT
        if not value:
            if text_input.get("required", True) is not False:
                raise ValueError(f"the text input {custom_id!r} is required")
            continue
        if not low <= len(value) <= high:
            raise ValueError(f"{custom_id!r} takes {low}..{high} characters, not {len(value)}")
    return {"custom_id": modal["custom_id"], "components": components}


class Undelivered(LookupError):
    """The interaction reached no gateway session: no bot owned its guild's shard."""


class InteractionHandle:
    """A test's view of one interaction: await its acknowledgement and answer, read its messages.

    The waits return as soon as the fake's state satisfies them; the fake's
    ``wait_timeout`` only stops a test that would otherwise hang. For an interaction no
    session received (Discord drops those) they raise :class:`Undelivered` at once.
    """

    def __init__(self, world: World, interaction: Interaction) -> None:
        self._world = world
        self._changes = world.changes
        self._interaction = interaction

    @property
    def id(self) -> int:
        return self._interaction.id

    @property
    def token(self) -> str:
        return self._interaction.token

    @property
    def payload(self) -> JsonObject:
        """The INTERACTION_CREATE data exactly as dispatched."""
        return self._interaction.payload

    @property
    def interaction(self) -> Interaction:
        return self._interaction

    @property
    def delivered(self) -> bool:
        """Whether INTERACTION_CREATE reached a session on the guild's shard."""
        return self._interaction.delivered

    def _require_delivered(self) -> None:
        if not self._interaction.delivered:
            guild = self._interaction.guild_id
            where = f"guild {guild}'s shard" if guild is not None else "shard 0"
            raise Undelivered(f"interaction {self.id} was dropped: no session on {where}")

    @property
    def modal(self) -> JsonObject | None:
        """The modal the bot answered with (callback type 9), as stored, if it did."""
        return self._interaction.modal

    @property
    def choices(self) -> list[JsonObject] | None:
        """The autocomplete choices the bot answered with (callback type 8), if it has."""
        return self._interaction.choices

    @property
    def callback_type(self) -> int | None:
        """The interaction response type the bot acknowledged with, if it has."""
        return self._interaction.callback_type

    async def acknowledged(self) -> int:
        """Wait for the bot's (accepted) interaction callback; returns its type."""
        self._require_delivered()
        await self._changes.wait_for(
            lambda: self._interaction.callback_type is not None,
            lambda: f"interaction {self.id} was never acknowledged",
        )
        assert self._interaction.callback_type is not None
        return self._interaction.callback_type

    async def answered(self) -> VisibleMessage | None:
        """Wait until the person sees an answer rather than "thinking…".

        Returns the original response (``None`` when a deferred button update was answered
        by editing the button's message).
        """
        self._require_delivered()
        await self._changes.wait_for(
            self._is_answered, lambda: f"interaction {self.id} was never answered"
        )
        return self.original()

    def _is_answered(self) -> bool:
        interaction = self._interaction
        kind = interaction.callback_type
        if kind is None:
            return False
        if kind == 6:
            return interaction.edits > 0 or bool(interaction.message_ids)
        original = self._world.messages.get(interaction.original_id or 0)
        return original is None or original.deleted or not original.loading

    def original(self) -> VisibleMessage | None:
        """The @original message as it stands now (``None`` if absent or deleted)."""
        message = self._world.messages.get(self._interaction.original_id or 0)
        if message is None or message.deleted:
            return None
        return self._world.visible(message)

    def messages(self) -> list[VisibleMessage]:
        """This interaction's messages still standing: the original first, then followups."""
        return self._world.interaction_messages(self._interaction)
