"""The HTTP API under ``/api/v10``: the routes a bot built on discord.py uses.

Every request passes the same checks, in Discord's order: route and method, the
``Authorization: Bot <token>`` header on bot routes (interaction and webhook routes take
none), the global limit, the route's rate-limit bucket, the body (JSON, or multipart with
``payload_json`` and ``files[n]``), then the route's own rules. Each body is also checked
against the OpenAPI description when it is present; a mismatch is recorded, never refused,
because the live service is the authority on what it accepts.

Channel routes check the bot's permissions in that channel (its roles, then the channel's
overwrites; a thread takes its parent's): no VIEW_CHANNEL is 403 Missing Access (50001),
a missing SEND_MESSAGES (SEND_MESSAGES_IN_THREADS in a thread) 403 Missing Permissions
(50013), and a reply without READ_MESSAGE_HISTORY 403 160002. Without the MESSAGE_CONTENT
intent enabled for the application, messages read over REST have their content fields
empty unless the bot wrote them, they are in a DM, or they mention it.

Every response carries ``Via: 1.1 google`` (discord.py retries a 429 only when it sees
one) and, when it has a body, ``Content-Type: application/json`` exactly (discord.py
parses JSON only on that exact value). Interaction followups always answer with the
message, as Discord does for interaction tokens whatever ``wait`` says.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from . import errors, rules
from .errors import DiscordError, JsonObject
from .faults import Failure, Fault
from .payloads import (
    application_payload,
    command_payload,
    current_user_payload,
    message_payload,
)
from .ratelimit import Limit, RateLimiter, RateLimits, Verdict
from .spec import OpenApiSpec, SpecViolation
from .state import (
    ATTACHMENT_SIZE_LIMIT,
    CALLBACK_WINDOW,
    DM,
    MANAGE_MESSAGES,
    MAX_FILES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    TOKEN_LIFETIME,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    CommandSync,
    Interaction,
    Message,
    World,
    numbered,
)

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"

# Route templates, as Call.route names them and fault injection takes them.
CALLBACK = "/interactions/{interaction_id}/{interaction_token}/callback"
FOLLOWUP = "/webhooks/{webhook_id}/{webhook_token}"
# Followups an interaction gets when it came through a person's own install alone.
USER_INSTALL_FOLLOWUPS = 5
WEBHOOK_ORIGINAL = "/webhooks/{webhook_id}/{webhook_token}/messages/@original"
WEBHOOK_MESSAGE = "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"
# Every message an interaction token reaches: its original response and its followups.
WEBHOOK_MESSAGES = (WEBHOOK_ORIGINAL, WEBHOOK_MESSAGE)
CHANNEL_MESSAGES = "/channels/{channel_id}/messages"
CHANNEL_MESSAGE = "/channels/{channel_id}/messages/{message_id}"
TYPING = "/channels/{channel_id}/typing"

# Interaction callback types. PONG (1) answers only PING interactions, which arrive over
# HTTP, never the gateway; autocomplete results (8) answer autocomplete interactions (4),
# and nothing else answers those.
CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE = 4, 5
DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 6, 7
AUTOCOMPLETE_RESULT, MODAL, LAUNCH_ACTIVITY = 8, 9, 12
MAX_CHOICES = 25
_MESSAGE_CALLBACKS = {
    CHANNEL_MESSAGE_WITH_SOURCE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    UPDATE_MESSAGE,
}
_CALLBACKS_FOR = {
    2: {CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE, MODAL, LAUNCH_ACTIVITY},
    # A modal submit cannot open another modal; the update types need the modal to have
    # come from a component (checked in _callback).
    5: _MESSAGE_CALLBACKS,
    4: {AUTOCOMPLETE_RESULT},
    3: {
        CHANNEL_MESSAGE_WITH_SOURCE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
        LAUNCH_ACTIVITY,
    },
}


@dataclass(frozen=True)
class Call:
    """One request as the fake saw and answered it.

    ``since_dispatch`` is the time from the INTERACTION_CREATE of the interaction the
    route names (by id or token) to this request, on the fake's clock.
    """

    method: str
    route: str
    path: str
    query: dict[str, str]
    body: Any
    files: tuple[str, ...]
    status: int
    response: Any
    since_dispatch: float | None
    interaction_id: int | None
    # Whether a scripted fault (FakeDiscord.fail_requests / rate_limit_requests) answered.
    injected: bool = False


@dataclass
class Incoming:
    method: str
    route: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    files: list[Attachment]


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None


Handler = Callable[[Incoming], Reply]


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    handler: Handler
    bot_auth: bool
    bucket: str
    limit: Callable[[RateLimits], Limit]
    major: tuple[str, ...]
    pattern: re.Pattern[str] = field(compare=False)


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", template)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(f"^{regex}$")


class Rest:
    """Routes, checks and records HTTP requests against one :class:`World`."""

    def __init__(
        self,
        world: World,
        *,
        token: str,
        limits: RateLimits,
        limiter: RateLimiter,
        spec: OpenApiSpec | None,
        gateway_url: Callable[[], str],
        application_flags: Callable[[], int],
        identify_count: Callable[[], int],
        content_intent: Callable[[], bool] = lambda: False,
        recommended_shards: Callable[[], int] = lambda: 1,
        max_concurrency: Callable[[], int] = lambda: 1,
    ) -> None:
        self._world = world
        self._recommended_shards = recommended_shards
        self._max_concurrency = max_concurrency
        self._content_intent = content_intent
        self._token = token
        self._limits = limits
        self._limiter = limiter
        self._spec = spec
        self._gateway_url = gateway_url
        self._application_flags = application_flags
        self._identify_count = identify_count
        self.calls: list[Call] = []
        self.spec_violations: list[SpecViolation] = []
        self.response_violations: list[SpecViolation] = []
        self.internal_errors: list[str] = []
        self.faults: list[Fault] = []
        self._routes = self._build_routes()

    def routes(self, method: str) -> set[str]:
        """The templates served for ``method``, as :attr:`Call.route` names them."""
        return {route.template for route in self._routes if route.method == method}

    def bot_route(self, method: str, template: str) -> bool:
        return any(r.bot_auth for r in self._routes if (r.method, r.template) == (method, template))

    # Routing

    def _build_routes(self) -> list[_Route]:
        def route(
            method: str,
            template: str,
            handler: Handler,
            *,
            bot_auth: bool = True,
            bucket: str | None = None,
            limit: Callable[[RateLimits], Limit] = lambda limits: limits.default,
            major: tuple[str, ...] = (),
        ) -> _Route:
            return _Route(
                method,
                template,
                handler,
                bot_auth,
                bucket or f"{method} {template}",
                limit,
                major,
                _compile(template),
            )

        def webhook(method: str, template: str, handler: Handler) -> _Route:
            return route(
                method,
                template,
                handler,
                bot_auth=False,
                bucket="interaction webhook",
                limit=lambda limits: limits.interaction_webhook,
                major=("webhook_id", "webhook_token"),
            )

        def channel(method: str, template: str, handler: Handler) -> _Route:
            # Sending, editing and deleting messages in a channel draw on one bucket per
            # channel: Discord reports the same bucket hash for all three.
            return route(
                method,
                template,
                handler,
                bucket="channel messages",
                limit=lambda limits: limits.channel_messages,
                major=("channel_id",),
            )

        def commands(method: str, template: str, handler: Handler) -> _Route:
            major = ("application_id", "guild_id") if "{guild_id}" in template else ()
            return route(
                method,
                template,
                handler,
                bucket=f"{method} commands",
                limit=lambda limits: limits.application_commands,
                major=major or ("application_id",),
            )

        original, by_id = WEBHOOK_ORIGINAL, WEBHOOK_MESSAGE
        global_scope = "/applications/{application_id}/commands"
        guild_scope = "/applications/{application_id}/guilds/{guild_id}/commands"
        messages, message = CHANNEL_MESSAGES, CHANNEL_MESSAGE
        return [
            route("GET", "/users/@me", self._current_user),
            route("GET", "/oauth2/applications/@me", self._application),
            route("GET", "/gateway", self._gateway, bot_auth=False),
            route("GET", "/gateway/bot", self._gateway_bot),
            commands("GET", global_scope, self._get_commands),
            commands("PUT", global_scope, self._put_commands),
            commands("GET", guild_scope, self._get_commands),
            commands("PUT", guild_scope, self._put_commands),
            route(
                "POST",
                CALLBACK,
                self._callback,
                bot_auth=False,
                bucket="interaction callback",
                limit=lambda limits: limits.interaction_callback,
                major=("interaction_id",),
            ),
            webhook("POST", FOLLOWUP, self._followup),
            webhook("GET", original, self._get_webhook_message),
            webhook("PATCH", original, self._edit_webhook_message),
            webhook("DELETE", original, self._delete_webhook_message),
            webhook("GET", by_id, self._get_webhook_message),
            webhook("PATCH", by_id, self._edit_webhook_message),
            webhook("DELETE", by_id, self._delete_webhook_message),
            channel("POST", messages, self._create_channel_message),
            route("GET", message, self._get_channel_message),
            channel("PATCH", message, self._edit_channel_message),
            channel("DELETE", message, self._delete_channel_message),
            route("POST", TYPING, self._typing, major=("channel_id",)),
        ]

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        path_matched = False
        for candidate in self._routes:
            found = candidate.pattern.match(path)
            if found is None:
                continue
            path_matched = True
            if candidate.method == method:
                return candidate, found.groupdict()
        raise errors.method_not_allowed() if path_matched else errors.not_found()

    # The request pipeline

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one HTTP request under ``/api/v10``."""
        path = request.path[len(API_PREFIX) :] or "/"
        query = dict(request.query)
        route: _Route | None = None
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        body: Any = None
        files: list[Attachment] = []
        fault: Fault | None = None
        try:
            route, params = self._match(request.method, path)
            if route.bot_auth and request.headers.get("Authorization") != f"Bot {self._token}":
                raise errors.unauthorized()
            if route.bot_auth:
                verdict = self._limiter.take_global(self._token, self._limits.global_per_second)
                if not verdict.allowed:
                    return self._too_many(request, route, path, params, query, verdict)
            # A scripted failure before processing stands in for the route, its bucket
            # included: a request refused upstream spends nothing.
            fault = self._fault_for(route, params, processed=False)
            if fault is not None:
                body, files = await _read_body(request)
                return self._fail(request, route, path, params, query, body, files, fault)
            key = "+".join(params[name] for name in route.major) or route.template
            verdict = self._limiter.take(route.bucket, key, route.limit(self._limits))
            headers = verdict.headers()
            if not verdict.allowed:
                return self._too_many(request, route, path, params, query, verdict)
            body, files = await _read_body(request)
            self._check_spec(route, body)
            fault = self._fault_for(route, params, processed=True)
            incoming = Incoming(route.method, route.template, params, query, body, files)
            reply = route.handler(incoming)
            if fault is not None:
                return self._fail(request, route, path, params, query, body, files, fault)
            status, response = reply.status, reply.body
        except DiscordError as error:
            if fault is not None:
                fault.hits -= 1  # the request failed on its own; the fault is still owed
            status, response = error.status, error.body()
        except Exception as error:
            # A bug in the fake, not a Discord rule: answer as Discord's servers would when
            # failing, and keep the error so the test can show it.
            log.exception("fake Discord failed on %s %s", request.method, path)
            self.internal_errors.append(f"{request.method} {path}: {error!r}")
            status, response = 500, {"message": "500: Internal Server Error", "code": 0}
        return self._respond(
            request, route, path, params, query, body, files, status, response, headers
        )

    def _fault_for(self, route: _Route, params: dict[str, str], *, processed: bool) -> Fault | None:
        message_id = self._message_named(route, params)
        for fault in self.faults:
            if fault.processed == processed and fault.matches(
                route.method, route.template, message_id
            ):
                fault.hits += 1
                return fault
        return None

    def _message_named(self, route: _Route, params: dict[str, str]) -> int | None:
        """The message a route acts on, ``@original`` resolved through its token."""
        if route.template == WEBHOOK_ORIGINAL:
            interaction = self._world.interaction_by_token(params["webhook_token"])
            return interaction.original_id if interaction else None
        reference = params.get("message_id")
        return _snowflake_or_zero(reference) if reference is not None else None

    def _fail(
        self,
        request: web.Request,
        route: _Route,
        path: str,
        params: dict[str, str],
        query: dict[str, str],
        body: Any,
        files: list[Attachment],
        fault: Fault,
    ) -> web.Response:
        failure: Failure = fault.failure
        return self._respond(
            request,
            route,
            path,
            params,
            query,
            body,
            files,
            failure.status,
            failure.body,
            failure.headers,
            content_type=failure.content_type,
            via=failure.via,
            injected=True,
        )

    def _too_many(
        self,
        request: web.Request,
        route: _Route,
        path: str,
        params: dict[str, str],
        query: dict[str, str],
        verdict: Verdict,
    ) -> web.Response:
        """Discord's 429: the request is not processed, its body not even read."""
        response = {
            "message": "You are being rate limited.",
            "retry_after": round(verdict.reset_after, 3),
            "global": verdict.is_global,
        }
        return self._respond(
            request, route, path, params, query, None, [], 429, response, verdict.headers()
        )

    def _respond(
        self,
        request: web.Request,
        route: _Route | None,
        path: str,
        params: dict[str, str],
        query: dict[str, str],
        body: Any,
        files: list[Attachment],
        status: int,
        response: Any,
        headers: dict[str, str],
        *,
        content_type: str = "application/json",
        via: bool = True,
        injected: bool = False,
    ) -> web.Response:
        interaction = self._interaction_named(params)
        world = self._world
        self.calls.append(
            Call(
                method=request.method,
                route=route.template if route else path,
                path=path,
                query=query,
                body=body,
                files=tuple(f.filename for f in files),
                status=status,
                response=response,
                since_dispatch=world.since_dispatch(interaction) if interaction else None,
                interaction_id=interaction.id if interaction else None,
                injected=injected,
            )
        )
        if route is not None and 200 <= status < 300 and response is not None:
            self._check_response(route, status, response)
        world.changes.notify()
        all_headers = {**({"Via": "1.1 google"} if via else {}), **headers}
        if response is None:
            return web.Response(status=status, headers=all_headers)
        all_headers["Content-Type"] = content_type
        data = response if isinstance(response, str) else json.dumps(response)
        return web.Response(status=status, body=data.encode(), headers=all_headers)

    def _interaction_named(self, params: dict[str, str]) -> Interaction | None:
        if "interaction_id" in params:
            return self._world.interactions.get(_snowflake_or_zero(params["interaction_id"]))
        if "webhook_token" in params:
            return self._world.interaction_by_token(params["webhook_token"])
        return None

    def _payload(self, message: Message) -> JsonObject:
        """A message as this application gets it over REST (see MESSAGE_CONTENT)."""
        return message_payload(self._world, message, content_intent=self._content_intent())

    def _check_spec(self, route: _Route, body: Any) -> None:
        if self._spec is None or body is None or not self._spec.knows(route.method, route.template):
            return
        self.spec_violations.extend(
            self._spec.request_violations(route.method, route.template, _as_described(body))
        )

    def _check_response(self, route: _Route, status: int, response: Any) -> None:
        if self._spec is None or not self._spec.knows(route.method, route.template):
            return
        resource = response.get("resource") if isinstance(response, dict) else None
        if isinstance(resource, dict) and resource.get("type") not in (
            CHANNEL_MESSAGE_WITH_SOURCE,
            UPDATE_MESSAGE,
        ):
            # The description allows only types 4 and 7 here; the live API also answers a
            # deferred callback with its type (5) and the loading message.
            return
        self.response_violations.extend(
            self._spec.response_violations(route.method, route.template, status, response)
        )

    # Identity and gateway discovery

    def _current_user(self, incoming: Incoming) -> Reply:
        return Reply(200, current_user_payload(self._world.bot))

    def _application(self, incoming: Incoming) -> Reply:
        return Reply(200, application_payload(self._world, self._application_flags()))

    def _gateway(self, incoming: Incoming) -> Reply:
        return Reply(200, {"url": self._gateway_url()})

    def _gateway_bot(self, incoming: Incoming) -> Reply:
        total = 1000
        return Reply(
            200,
            {
                "url": self._gateway_url(),
                "shards": self._recommended_shards(),
                "session_start_limit": {
                    "total": total,
                    "remaining": max(0, total - self._identify_count()),
                    "reset_after": 86_400_000,
                    "max_concurrency": self._max_concurrency(),
                },
            },
        )

    # Application commands

    def _command_scope(self, params: dict[str, str]) -> int | None:
        world = self._world
        if params["application_id"] != str(world.application_id):
            raise errors.missing_access()
        if "guild_id" not in params:
            return None
        for guild_id in world.guilds:
            if params["guild_id"] == str(guild_id):
                return guild_id
        raise errors.missing_access()

    def _get_commands(self, incoming: Incoming) -> Reply:
        scope = self._command_scope(incoming.params)
        return Reply(200, list(self._world.commands.get(scope, [])))

    def _put_commands(self, incoming: Incoming) -> Reply:
        scope = self._command_scope(incoming.params)
        world = self._world
        rules.check_commands(incoming.body)
        previous = {(c["type"], c["name"]): c for c in world.commands.get(scope, [])}
        stored = []
        for command in incoming.body:
            kind = int(command.get("type") or 1)
            before = previous.get((kind, command["name"]))
            command_id = int(before["id"]) if before else world.snowflakes.next()
            payload = command_payload(
                world, command, command_id=command_id, version=0, guild_id=scope
            )
            if before is not None and {**before, "version": "0"} == payload:
                payload["version"] = before["version"]  # unchanged commands keep their version
            else:
                payload["version"] = str(world.snowflakes.next())
            stored.append(payload)
        world.commands[scope] = stored
        world.command_syncs.append(CommandSync(scope, tuple(c["name"] for c in stored)))
        return Reply(200, stored)

    # Interaction callbacks

    def _callback(self, incoming: Incoming) -> Reply:
        world = self._world
        interaction = world.interactions.get(_snowflake_or_zero(incoming.params["interaction_id"]))
        if interaction is None or interaction.token != incoming.params["interaction_token"]:
            raise errors.unknown_interaction()
        if interaction.callback_type is not None:
            raise errors.already_acknowledged()
        if world.since_dispatch(interaction) > CALLBACK_WINDOW:
            raise errors.unknown_interaction()
        with_response = _flag(incoming.query, "with_response")
        body = _object(incoming.body)
        kind = body.get("type")
        data = body.get("data")
        if data is not None and not isinstance(data, dict):
            raise errors.invalid_form(
                ["data"], "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType"
            )
        data = data or {}
        updates = kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE)
        if kind not in _CALLBACKS_FOR.get(interaction.type, set()) or (
            updates and interaction.source_message_id is None
        ):
            raise errors.invalid_form(
                ["type"], "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid interaction response type"
            )
        if kind == LAUNCH_ACTIVITY:
            raise DiscordError(400, 0, f"interaction callback type {kind} is not simulated")
        message = None
        if kind == AUTOCOMPLETE_RESULT:
            interaction.choices = _choices(data)
        elif kind == MODAL:
            rules.check_modal(data)
            interaction.modal = {**data, "components": numbered(data["components"])}
        else:
            rules.check_message_fields(data)
            message = self._respond_to(interaction, kind, data, incoming.files)
        interaction.callback_type = kind
        interaction.acknowledged_at = world.clock.monotonic()
        if not with_response:
            return Reply(204)
        summary: JsonObject = {"id": str(interaction.id), "type": interaction.type}
        result: JsonObject = {"interaction": summary}
        if message is not None and kind != DEFERRED_UPDATE_MESSAGE:
            summary["response_message_id"] = str(message.id)
            summary["response_message_loading"] = message.loading
            summary["response_message_ephemeral"] = message.ephemeral
            result["resource"] = {"type": kind, "message": self._payload(message)}
        return Reply(200, result)

    def _respond_to(
        self, interaction: Interaction, kind: int, data: JsonObject, files: list[Attachment]
    ) -> Message | None:
        world = self._world
        forced = rules.EPHEMERAL if world.forced_ephemeral(interaction) else 0
        if kind == CHANNEL_MESSAGE_WITH_SOURCE:
            message = world.create_message(
                interaction.channel_id,
                world.bot,
                data,
                attachments=files,
                type=world.response_type(interaction),
                webhook_id=world.application_id,
                interaction=interaction,
                flags=(rules.flags_of(data) & rules.SENDABLE_FLAGS) | forced,
            )
            interaction.original_id = message.id
            interaction.message_ids.append(message.id)
            return message
        if kind == DEFERRED_CHANNEL_MESSAGE:
            ephemeral = bool((rules.flags_of(data) | forced) & rules.EPHEMERAL)
            message = world.create_loading_message(interaction, ephemeral=ephemeral)
            interaction.original_id = message.id
            interaction.message_ids.append(message.id)
            return message
        # DEFERRED_UPDATE_MESSAGE and UPDATE_MESSAGE act on the message with the component
        # (for a modal submit, the component that opened the modal).
        if interaction.source_message_id is None:
            raise AssertionError("update callbacks are only accepted for components")
        source = world.live_message(interaction.source_message_id)
        interaction.original_id = source.id
        if kind == UPDATE_MESSAGE:
            world.edit_message(source, data, attachments=files)
        return source

    # Interaction webhooks (followups and @original)

    def _webhook_interaction(self, params: dict[str, str]) -> Interaction:
        world = self._world
        if params["webhook_id"] != str(world.application_id):
            raise errors.unknown_webhook()
        interaction = world.interaction_by_token(params["webhook_token"])
        if interaction is None:
            raise errors.unknown_webhook()
        if world.since_dispatch(interaction) > TOKEN_LIFETIME:
            raise errors.invalid_webhook_token()
        if interaction.callback_type is None:
            raise errors.unknown_webhook()
        return interaction

    def _webhook_message(self, interaction: Interaction, params: dict[str, str]) -> Message:
        reference = params.get("message_id", "@original")
        if reference == "@original":
            message_id = interaction.original_id
        else:
            message_id = _snowflake_or_zero(reference)
            if message_id not in interaction.message_ids and message_id != interaction.original_id:
                raise errors.unknown_message()
        if message_id is None:
            raise errors.unknown_message()
        return self._world.live_message(message_id)

    def _followup(self, incoming: Incoming) -> Reply:
        world = self._world
        interaction = self._webhook_interaction(incoming.params)
        body = _object(incoming.body)
        if interaction.only_user_installed:
            # Counted for every followup, the one that fills a deferred placeholder too.
            if interaction.followups >= USER_INSTALL_FOLLOWUPS:
                raise errors.max_followups()
            interaction.followups += 1
        forced = rules.EPHEMERAL if world.forced_ephemeral(interaction) else 0
        original = world.messages.get(interaction.original_id or 0)
        if original is not None and original.loading and not original.deleted:
            # The first followup after a defer is the answer: it fills the placeholder, and
            # the defer decided whether it is ephemeral.
            message = world.edit_message(original, body, attachments=incoming.files)
            interaction.edits += 1
        else:
            message = world.create_message(
                interaction.channel_id,
                world.bot,
                body,
                attachments=incoming.files,
                type=world.response_type(interaction),
                webhook_id=world.application_id,
                interaction=interaction,
                flags=(rules.flags_of(body) & rules.SENDABLE_FLAGS) | forced,
            )
            interaction.message_ids.append(message.id)
        return Reply(200, self._payload(message))

    def _get_webhook_message(self, incoming: Incoming) -> Reply:
        interaction = self._webhook_interaction(incoming.params)
        message = self._webhook_message(interaction, incoming.params)
        return Reply(200, self._payload(message))

    def _edit_webhook_message(self, incoming: Incoming) -> Reply:
        interaction = self._webhook_interaction(incoming.params)
        message = self._webhook_message(interaction, incoming.params)
        self._world.edit_message(message, _object(incoming.body), attachments=incoming.files)
        interaction.edits += 1
        return Reply(200, self._payload(message))

    def _delete_webhook_message(self, incoming: Incoming) -> Reply:
        interaction = self._webhook_interaction(incoming.params)
        message = self._webhook_message(interaction, incoming.params)
        self._world.delete_message(message)
        return Reply(204)

    # Channel messages

    def _bot_channel(
        self, params: dict[str, str], *, needs: int = 0, sending: bool = False
    ) -> Channel:
        """The channel a bot route names, once the bot may do ``needs`` there (and send,
        with ``sending``: SEND_MESSAGES, or SEND_MESSAGES_IN_THREADS in a thread)."""
        world = self._world
        channel = world.channel(_snowflake_or_zero(params["channel_id"]))
        if channel.type == DM:
            return channel
        if sending:
            needs |= SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
        permissions = world.permissions_in(world.bot.id, channel)
        if not permissions & VIEW_CHANNEL:
            raise errors.missing_access()
        if permissions & needs != needs:
            raise errors.missing_permissions()
        return channel

    def _create_channel_message(self, incoming: Incoming) -> Reply:
        world = self._world
        channel = self._bot_channel(incoming.params, sending=True)
        body = _object(incoming.body)
        rules.check_message_fields(body)
        nonce = body.get("nonce")
        if body.get("enforce_nonce") and nonce is not None:
            earlier = world.find_by_nonce(channel.id, world.bot, str(nonce))
            if earlier is not None:
                return Reply(200, self._payload(earlier))
        replying_to = self._replied_message(channel, body)
        message = world.create_message(
            channel.id,
            world.bot,
            body,
            attachments=incoming.files,
            flags=rules.flags_of(body) & (rules.SUPPRESS_EMBEDS | rules.SUPPRESS_NOTIFICATIONS),
            replying_to=replying_to,
        )
        return Reply(200, self._payload(message))

    def _replied_message(self, channel: Channel, body: JsonObject) -> Message | None:
        """The message a post replies to, by Discord's rules: the bot must hold
        READ_MESSAGE_HISTORY (403 160002); a reference to a message that is not in the
        channel fails (50035) unless ``fail_if_not_exists`` is false, which sends the
        post as a plain message."""
        world = self._world
        reference = body.get("message_reference")
        if not reference:
            return None
        if reference.get("type") not in (None, 0):
            raise DiscordError(400, 0, "message forwards are not simulated")
        if channel.type != DM and not (
            world.permissions_in(world.bot.id, channel) & READ_MESSAGE_HISTORY
        ):
            raise errors.cannot_reply_without_history()
        target = world.messages.get(_snowflake_or_zero(reference.get("message_id")))
        named_channel = reference.get("channel_id")
        if (
            target is not None
            and not target.deleted
            and target.visible_to is None
            and target.channel_id == channel.id
            and (named_channel is None or str(named_channel) == str(channel.id))
        ):
            return target
        if reference.get("fail_if_not_exists") is not False:
            raise errors.invalid_form(
                ["message_reference"], "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
            )
        return None

    def _get_channel_message(self, incoming: Incoming) -> Reply:
        channel = self._bot_channel(incoming.params, needs=READ_MESSAGE_HISTORY)
        message = self._world.live_message(
            _snowflake_or_zero(incoming.params["message_id"]), channel.id
        )
        if message.visible_to is not None:
            raise errors.unknown_message()
        return Reply(200, self._payload(message))

    def _edit_channel_message(self, incoming: Incoming) -> Reply:
        world = self._world
        channel = self._bot_channel(incoming.params)
        message = world.live_message(_snowflake_or_zero(incoming.params["message_id"]), channel.id)
        if message.visible_to is not None:
            raise errors.unknown_message()
        world.bot_edit_message(message)
        world.edit_message(message, _object(incoming.body), attachments=incoming.files)
        return Reply(200, self._payload(message))

    def _delete_channel_message(self, incoming: Incoming) -> Reply:
        world = self._world
        channel = self._bot_channel(incoming.params)
        message = world.live_message(_snowflake_or_zero(incoming.params["message_id"]), channel.id)
        if message.visible_to is not None:
            raise errors.unknown_message()
        if message.author.id != world.bot.id and not (
            channel.type != DM and world.permissions_in(world.bot.id, channel) & MANAGE_MESSAGES
        ):
            raise errors.missing_permissions()
        world.delete_message(message)
        return Reply(204)

    def _typing(self, incoming: Incoming) -> Reply:
        """The bot is typing: 204, and TYPING_START for those who listen."""
        world = self._world
        channel = self._bot_channel(incoming.params, sending=True)
        world.start_typing(channel, world.bot)
        return Reply(204)


def _object(body: Any) -> JsonObject:
    if isinstance(body, dict):
        return body
    raise errors.invalid_form(
        [], "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType"
    )


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value.lower() in ("false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise errors.invalid_form([name], "BASE_TYPE_BOOLEAN", "Must be either true or false.")


def _choices(data: JsonObject) -> list[JsonObject]:
    """An autocomplete result's choices, refused as Discord refuses them: at most 25, each
    with a name of 1 to 100 characters and a value of the option's kind."""
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) > MAX_CHOICES:
        raise errors.invalid_form(
            ["data", "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
        )
    for index, choice in enumerate(choices):
        name = choice.get("name") if isinstance(choice, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise errors.invalid_form(
                ["data", "choices", str(index), "name"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if not isinstance(choice.get("value"), str | int | float):
            raise errors.invalid_form(
                ["data", "choices", str(index), "value"], "BASE_TYPE_REQUIRED", "required"
            )
    return [dict(choice) for choice in choices]


def _snowflake_or_zero(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


async def _read_body(request: web.Request) -> tuple[Any, list[Attachment]]:
    """The JSON body, or a multipart body's ``payload_json`` and ``files[n]`` parts."""
    if not request.body_exists:
        return None, []
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request)
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        raise errors.invalid_json() from None


def _as_described(body: Any) -> Any:
    """`body` as the description spells it where Discord accepts more than it describes.

    Discord takes a snowflake as a number as well as a string, and discord.py sends
    numbers in two places the description types as strings: a new upload's
    `attachments[].id` (the index of its `files[n]` part) and a reply's
    `message_reference` ids. Everything else is checked as sent.
    """
    if not isinstance(body, dict):
        return body
    described = dict(body)
    if isinstance(body.get("attachments"), list):
        described["attachments"] = [_ids_as_strings(item, ("id",)) for item in body["attachments"]]
    if "message_reference" in body:
        described["message_reference"] = _ids_as_strings(
            body["message_reference"], ("message_id", "channel_id", "guild_id")
        )
    return described


def _ids_as_strings(item: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(item, dict):
        return item
    return {
        key: str(value) if key in keys and isinstance(value, int) else value
        for key, value in item.items()
    }


async def _read_multipart(request: web.Request) -> tuple[Any, list[Attachment]]:
    reader = await request.multipart()
    body: Any = None
    files: list[Attachment] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        name = part.name or ""
        if name == "payload_json":
            try:
                body = json.loads(await part.text())
            except ValueError:
                raise errors.invalid_json() from None
            continue
        found = re.fullmatch(r"files\[(\d+)\]", name)
        if found is None:
            continue
        data = bytes(await part.read(decode=False))
        if len(data) > ATTACHMENT_SIZE_LIMIT:
            raise errors.payload_too_large()
        files.append(
            Attachment(
                id=int(found.group(1)),
                filename=part.filename or "unknown",
                data=data,
                content_type=part.headers.get("Content-Type"),
            )
        )
    if len(files) > MAX_FILES:
        raise errors.invalid_form(
            ["files"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length."
        )
    return body, files
