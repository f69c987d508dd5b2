"""A local Discord on 127.0.0.1: gateway and HTTP API on one port, for a real, unmodified bot.

Start it, point discord.py at it (:func:`~tests.fakes.discord.redirect.point_discord_py_at`),
run the bot, then act as people would (:meth:`FakeDiscord.dispatch_interaction`,
:meth:`FakeDiscord.press_button`, :meth:`FakeDiscord.submit_modal`,
:meth:`FakeDiscord.post_message`, :meth:`FakeDiscord.create_thread`) or as moderators and
Discord itself would (:meth:`FakeDiscord.delete_message`, :meth:`FakeDiscord.set_permissions`,
:meth:`FakeDiscord.fail_requests`, :meth:`FakeDiscord.rate_limit_requests`,
``clock.advance``), and assert on what people see (:meth:`FakeDiscord.transcript`) and on
every request the bot made (:attr:`FakeDiscord.calls`).

The fake enforces what Discord enforces; see the modules for each rule:
``gateway`` (handshake, close codes, resume, intents, MESSAGE_CONTENT, sharding and the
IDENTIFY rate limit), ``rest`` (auth,
routes, interactions, replies, permissions), ``rules`` (message, modal and command
limits), ``ratelimit`` (buckets and 429s), ``faults`` (scripted failures) and ``spec``
(the OpenAPI check of every body).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

from . import rules
from .clock import Clock
from .errors import DiscordError
from .faults import Failure, Fault, Scope, rate_limited, server_error
from .gateway import IDENTIFY_WINDOW, MESSAGE_CONTENT, Gateway
from .interactions import (
    InteractionHandle,
    OptionValue,
    command_data,
    component_data,
    message_command_data,
    modal_submit_data,
)
from .payloads import (
    channel_payload,
    command_payload,
    interaction_payload,
    member_payload,
    message_payload,
    role_payload,
)
from .ratelimit import RateLimiter, RateLimits, bucket_hash
from .rest import API_PREFIX, Call, Rest
from .spec import SPEC_PATH, SpecViolation, load_spec
from .state import (
    APPLICATION_COMMAND,
    APPLICATION_COMMAND_AUTOCOMPLETE,
    DM,
    EVERYONE_PERMISSIONS,
    GROUP_DM,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    CommandSync,
    Message,
    Role,
    User,
    VisibleMessage,
    World,
)

DEFAULT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.fake.local-bot-token-for-tests"
BACKLOG = 1024  # connections the listening socket holds until accepted
GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_TYPING = 1 << 14


class FakeDiscord:
    """One application with its bot user, in one guild with one text channel "general"
    (more guilds, alike, through :meth:`add_guild` and :meth:`add_guild_on_shard`), with a
    few people (``user_names``) who can run the bot's commands.

    ``privileged_intents`` are the privileged gateway intents the application has enabled
    (an IDENTIFY asking for others is closed with 4014). ``commands`` are global commands
    already registered, as if by an earlier deploy. ``spec_path=None`` turns the OpenAPI
    check off; it is off anyway when the description is absent (:attr:`spec_checked`).
    ``wait_timeout`` bounds every wait a test does on the fake.

    Sharding: ``recommended_shards`` and ``max_concurrency`` are what ``GET /gateway/bot``
    answers (``shards`` and ``session_start_limit.max_concurrency``); the gateway lets each
    bucket ``shard_id % max_concurrency`` IDENTIFY once per ``identify_window`` seconds of
    :attr:`clock` (see :mod:`~tests.fakes.discord.gateway`). More guilds:
    :meth:`add_guild`, :meth:`add_guild_on_shard`.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        application_name: str = "Ask",
        bot_username: str = "ask-bot",
        user_names: Sequence[str] = ("alice", "bob"),
        privileged_intents: int = 0,
        bot_permissions: int = EVERYONE_PERMISSIONS,
        limits: RateLimits | None = None,
        clock: Clock | None = None,
        spec_path: Path | None = SPEC_PATH,
        heartbeat_interval_ms: int = 41_250,
        commands: Sequence[dict[str, object]] = (),
        wait_timeout: float = 10.0,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        identify_window: float = IDENTIFY_WINDOW,
    ) -> None:
        if recommended_shards < 1:
            raise ValueError("recommended_shards is at least 1")
        self.token = token
        self.recommended_shards = recommended_shards
        self.clock = clock or Clock()
        self.limits = limits or RateLimits()
        self.world = World(
            self.clock,
            application_name=application_name,
            bot_username=bot_username,
            user_names=user_names,
            bot_permissions=bot_permissions,
        )
        self.world.changes.timeout = wait_timeout
        self.spec = load_spec(spec_path) if spec_path is not None else None
        self.gateway = Gateway(
            self.world,
            token=token,
            enabled_intents=privileged_intents,
            heartbeat_interval_ms=heartbeat_interval_ms,
            on_change=self.world.changes.notify,
            clock=self.clock,
            max_concurrency=max_concurrency,
            identify_window=identify_window,
        )
        self.advertised_gateway_url: str | None = None
        """What GET /gateway and /gateway/bot give as the gateway (None: this fake's)."""
        self.rest = Rest(
            self.world,
            token=token,
            limits=self.limits,
            limiter=RateLimiter(self.clock),
            spec=self.spec,
            gateway_url=lambda: (self.advertised_gateway_url or self.gateway_url).rstrip("/"),
            application_flags=lambda: self.gateway.application_flags,
            identify_count=lambda: len(self.gateway.identifies),
            content_intent=lambda: bool(self.gateway.enabled_intents & MESSAGE_CONTENT),
            recommended_shards=lambda: self.recommended_shards,
            max_concurrency=lambda: self.gateway.max_concurrency,
        )
        self.world.on_message_event = self._publish_message
        self.world.on_typing = self._publish_typing
        if commands:
            rules.check_commands(list(commands))
            self.world.commands[None] = [
                command_payload(
                    self.world,
                    dict(command),
                    command_id=self.world.snowflakes.next(),
                    version=self.world.snowflakes.next(),
                    guild_id=None,
                )
                for command in commands
            ]
        self._runner: web.AppRunner | None = None
        self._port = 0

    # Lifecycle

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        app = web.Application()
        app.router.add_get("/", self.gateway.handle)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.rest.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._file)
        app.router.add_get(
            "/ephemeral-attachments/{application_id}/{attachment_id}/{filename}", self._upload
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        # aiohttp's default accept queue of 128 drops the SYNs of a bigger burst of new
        # connections, which then wait a second to retry; Discord's servers do not.
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.gateway.resume_url = self.gateway_url
        self.world.cdn_base = self.http_url

    async def aclose(self) -> None:
        await self.gateway.aclose()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """What discord.py's ``Route.BASE`` must be."""
        return self.http_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """What discord.py's ``DiscordWebSocket.DEFAULT_GATEWAY`` must be."""
        return f"ws://127.0.0.1:{self._port}/"

    def env(self) -> dict[str, str]:
        """Environment for ``python -m tests.fakes.launch`` to run the bot against this fake."""
        return {"FAKE_DISCORD_URL": self.api_url, "FAKE_DISCORD_GATEWAY": self.gateway_url}

    # Who and where

    @property
    def application_id(self) -> int:
        return self.world.application_id

    @property
    def bot_user_id(self) -> int:
        return self.world.bot.id

    @property
    def guild_id(self) -> int:
        return self.world.guild_id

    @property
    def channel_id(self) -> int:
        """The guild's one text channel."""
        return self.world.channel_id

    @property
    def user(self) -> User:
        """The person who runs commands unless a test names another."""
        return self.world.user

    @property
    def users(self) -> list[User]:
        return list(self.world.users)

    @property
    def external_channel_id(self) -> int:
        """A text channel in another server the people are in and the bot is not."""
        return self.world.external_channel_id

    @property
    def group_dm_id(self) -> int:
        """A group DM of the people, which the bot is not in."""
        return self.world.group_dm_id

    @property
    def external_apps_public(self) -> bool:
        """Whether the external server lets members' own apps answer in public."""
        return self.world.external_apps_public

    @external_apps_public.setter
    def external_apps_public(self, value: bool) -> None:
        self.world.external_apps_public = value

    @property
    def guild_ids(self) -> list[int]:
        """Every guild the bot is in, the first one first."""
        return list(self.world.guilds)

    def add_guild(self, name: str = "Another Server", *, guild_id: int | None = None) -> int:
        """The bot joins a guild ``name`` (id ``guild_id``, or the next snowflake) with one
        text channel "general" (:meth:`guild_channel_id`) and the first guild's people and
        roles; GUILD_CREATE goes to the sessions on its shard. Returns its id."""
        guild = self.world.add_guild(name, guild_id=guild_id)
        self.gateway.guild_joined(guild.id)
        self.world.changes.notify()
        return guild.id

    def add_guild_on_shard(
        self, shard_id: int, shard_count: int, *, name: str = "Another Server"
    ) -> int:
        """:meth:`add_guild` with an id (a realistic snowflake) whose events go to shard
        ``shard_id`` of ``shard_count``."""
        guild_id = self.world.snowflakes.next_on_shard(shard_id, shard_count)
        return self.add_guild(name, guild_id=guild_id)

    def guild_channel_id(self, guild_id: int) -> int:
        """The text channel "general" of the bot's guild ``guild_id``."""
        return self.world.guild(guild_id).channel_id

    def dm_channel_id(self, user: User | None = None) -> int:
        return self.world.dm_channel(user or self.user).id

    # What a person does

    def dispatch_interaction(
        self,
        command: str,
        options: Mapping[str, OptionValue] | None = None,
        *,
        user: User | None = None,
        dm: bool = False,
        channel_id: int | None = None,
        user_installed: bool = False,
    ) -> InteractionHandle:
        """``user`` runs ``/command`` (``"settings show"`` for a subcommand) in the guild's
        channel, in ``channel_id`` (a thread, say; :attr:`external_channel_id` is in a
        server the bot is not in) or in their DM with the bot.

        The command must be registered where it is used, and not hidden from ``user`` by
        its default member permissions, as on Discord. With ``user_installed`` the person
        has also added the app to their own account (in the external server that is the
        only way the command is there).
        """
        return self._command(
            command, options, user, dm, channel_id, focused=None, user_installed=user_installed
        )

    def autocomplete(
        self,
        command: str,
        focused: str,
        options: Mapping[str, OptionValue] | None = None,
        *,
        user: User | None = None,
        channel_id: int | None = None,
        user_installed: bool = False,
    ) -> InteractionHandle:
        """``user`` types ``options[focused]`` (or nothing yet) into the autocomplete option
        ``focused`` of ``/command``: an APPLICATION_COMMAND_AUTOCOMPLETE interaction, which
        the bot answers with choices (:attr:`InteractionHandle.choices`)."""
        return self._command(
            command,
            options,
            user,
            False,
            channel_id,
            focused=focused,
            user_installed=user_installed,
        )

    def _command(
        self,
        command: str,
        options: Mapping[str, OptionValue] | None,
        user: User | None,
        dm: bool,
        channel_id: int | None,
        *,
        focused: str | None,
        user_installed: bool,
    ) -> InteractionHandle:
        world = self.world
        person = user or world.user
        where = channel_id or world.channel_id
        channel = world.dm_channel(person) if dm else world.channel(where)
        own = (
            user_installed
            or channel.guild_id == world.external_guild_id
            or channel.type == GROUP_DM
        )
        data = command_data(
            world,
            channel,
            command,
            options or {},
            user=person,
            focused=focused,
            user_installed=own,
        )
        kind = APPLICATION_COMMAND if focused is None else APPLICATION_COMMAND_AUTOCOMPLETE
        interaction = world.new_interaction(
            type=kind,
            channel=channel,
            user=person,
            command_name=command,
            user_installed=own,
        )
        return self._dispatch(interaction.id, data)

    def dispatch_message_command(
        self, name: str, target_message_id: int, *, user: User | None = None
    ) -> InteractionHandle:
        """``user`` right-clicks message ``target_message_id`` and picks the message
        command ``name`` under Apps: the message arrives resolved in the interaction."""
        world = self.world
        person = user or world.user
        target = world.messages.get(target_message_id)
        if target is None:
            raise LookupError(f"message {target_message_id} does not exist")
        channel = world.channels[target.channel_id]
        if target.visible_to not in (None, person.id):
            raise LookupError(f"{person.username} cannot see message {target_message_id}")
        data = message_command_data(world, channel, name, target_message_id)
        interaction = world.new_interaction(
            type=APPLICATION_COMMAND, channel=channel, user=person, command_name=name
        )
        return self._dispatch(interaction.id, data)

    def add_role(self, name: str, permissions: int, members: Sequence[User]) -> int:
        """The server's admins create a role with ``permissions`` and give it to ``members``;
        GUILD_ROLE_CREATE goes to sessions with GUILDS. Every guild of the bot shares the
        first guild's roles, so each of them announces it. Returns the role's id."""
        world = self.world
        role = Role(world.snowflakes.next(), name, permissions, len(world.roles))
        world.roles.append(role)
        for member in members:
            world.members[member.id].role_ids.append(role.id)
        for guild_id in world.guilds:
            payload = {"guild_id": str(guild_id), "role": role_payload(role)}
            self.gateway.dispatch("GUILD_ROLE_CREATE", payload, intent=GUILDS, guild_id=guild_id)
        world.changes.notify()
        return role.id

    def allow_command_for_everyone(self, name: str) -> None:
        """The server's admins allow ``/name`` for every member (Server Settings >
        Integrations), whatever its default member permissions."""
        self.world.commands_allowed.add(name)

    def press_button(
        self, message_id: int, custom_id: str, *, user: User | None = None
    ) -> InteractionHandle:
        """``user`` presses the button ``custom_id`` on a message they can see."""
        world = self.world
        person = user or world.user
        data = component_data(world, message_id, custom_id, person)
        message = world.messages[message_id]
        interaction = world.new_interaction(
            type=MESSAGE_COMPONENT,
            channel=world.channels[message.channel_id],
            user=person,
            custom_id=custom_id,
            source_message_id=message_id,
        )
        return self._dispatch(interaction.id, data)

    def submit_modal(
        self,
        opened_by: InteractionHandle | int,
        values: Mapping[str, str] | None = None,
        *,
        user: User | None = None,
    ) -> InteractionHandle:
        """The person shown the modal that answered ``opened_by`` fills its text inputs
        with ``values`` (by ``custom_id``) and submits it: a MODAL_SUBMIT interaction.

        A modal is submitted once, by the person it was shown to; see
        :func:`~tests.fakes.discord.interactions.modal_submit_data` for what they may enter.
        Submitting a modal opened from a button carries that button's message.
        """
        world = self.world
        opener_id = opened_by if isinstance(opened_by, int) else opened_by.id
        opener = world.interactions[opener_id]
        if opener.modal is None:
            raise LookupError(f"interaction {opener_id} did not open a modal")
        if opener.modal_submitted:
            raise LookupError("that modal was submitted already and is closed")
        person = user or opener.user
        if person.id != opener.user.id:
            raise LookupError(f"{person.username} was not shown that modal")
        data = modal_submit_data(opener.modal, values or {})
        opener.modal_submitted = True
        interaction = world.new_interaction(
            type=MODAL_SUBMIT,
            channel=world.channels[opener.channel_id],
            user=person,
            custom_id=opener.modal["custom_id"],
            source_message_id=opener.source_message_id,
            opened_by=opener.id,
        )
        return self._dispatch(interaction.id, data)

    def post_message(
        self,
        user: User,
        content: str = "",
        *,
        channel_id: int | None = None,
        reply_to: int | None = None,
        mention_bot: bool = False,
        ping_reply: bool = True,
        attachments: Sequence[tuple[str, bytes]] = (),
    ) -> VisibleMessage:
        """``user`` posts a message in "general", in ``channel_id`` (a thread, or their DM
        with the bot), as Discord's client would.

        ``mention_bot`` starts the text with the bot's mention (``<@id> …``). ``reply_to``
        makes it a reply to that message; a reply pings the replied-to author unless
        ``ping_reply`` is off (the client's "@ On" toggle), and a pinged bot counts as
        mentioned. ``attachments`` are (filename, bytes) pairs. MESSAGE_CREATE goes to
        sessions with GUILD_MESSAGES (DIRECT_MESSAGES in a DM), with ``message_reference``,
        ``referenced_message`` and ``mentions``; sessions without MESSAGE_CONTENT get the
        content fields empty unless the bot is mentioned or it is a DM.
        """
        world = self.world
        channel = world.channel(channel_id or world.channel_id)
        self._check_can_post(user, channel)
        replying_to = None
        if reply_to is not None:
            replying_to = world.messages.get(reply_to)
            if (
                replying_to is None
                or replying_to.deleted
                or replying_to.visible_to is not None
                or replying_to.channel_id != channel.id
            ):
                raise LookupError(f"{user.username} sees no message {reply_to} to reply to")
        if mention_bot:
            content = f"<@{world.bot.id}> {content}".rstrip()
        files = [
            Attachment(
                id=index,
                filename=filename,
                data=data,
                content_type=mimetypes.guess_type(filename)[0],
            )
            for index, (filename, data) in enumerate(attachments)
        ]
        try:
            message = world.post_as(
                user,
                channel,
                content,
                replying_to=replying_to,
                ping_reply=ping_reply,
                attachments=files,
            )
        except DiscordError as error:
            raise ValueError(f"Discord's client would not send that: {error.body()}") from None
        return world.visible(message)

    def _check_can_post(self, user: User, channel: Channel) -> None:
        world = self.world
        if channel.type == DM:
            if channel.recipient_id != user.id:
                raise LookupError(f"{user.username} is not in DM channel {channel.id}")
            return
        needs = VIEW_CHANNEL | (SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES)
        if world.permissions_in(user.id, channel) & needs != needs:
            raise LookupError(f"{user.username} cannot post in channel {channel.id}")

    def create_thread(
        self, name: str, *, channel_id: int | None = None, owner: User | None = None
    ) -> int:
        """``owner`` starts a public thread called ``name`` under "general" (or
        ``channel_id``); THREAD_CREATE goes to sessions with GUILDS. Returns its id."""
        world = self.world
        parent = world.channel(channel_id or world.channel_id)
        thread = world.create_thread(name, parent, owner or world.user)
        payload = {**channel_payload(world, thread), "newly_created": True}
        self.gateway.dispatch("THREAD_CREATE", payload, intent=GUILDS, guild_id=thread.guild_id)
        world.changes.notify()
        return thread.id

    def set_permissions(
        self,
        channel_id: int | None = None,
        *,
        allow: int = 0,
        deny: int = 0,
        target: User | int | None = None,
    ) -> None:
        """Overwrite permissions in a guild text channel (default "general") for the bot,
        a member (``target`` a :class:`User`) or a role (``target`` its id; the guild's
        id is @everyone). Threads follow their parent. Nothing allowed or denied removes
        the overwrite. CHANNEL_UPDATE goes to sessions with GUILDS.

        E.g. ``fake.set_permissions(deny=READ_MESSAGE_HISTORY)``: the bot can no longer
        reply in "general" (403 160002).
        """
        world = self.world
        channel = world.channel(channel_id or world.channel_id)
        if target is None:
            target_id = world.bot.id
        elif isinstance(target, User):
            target_id = target.id
        else:
            target_id = target
        world.set_overwrite(channel, target_id, allow=allow, deny=deny)
        payload = channel_payload(world, channel)
        self.gateway.dispatch("CHANNEL_UPDATE", payload, intent=GUILDS, guild_id=channel.guild_id)
        world.changes.notify()

    def _dispatch(self, interaction_id: int, data: dict[str, object]) -> InteractionHandle:
        world = self.world
        interaction = world.interactions[interaction_id]
        interaction.payload = interaction_payload(world, interaction, data)
        # A guild the bot is not in reaches it through a user install: shard 0, as a DM.
        guild_id = interaction.guild_id if interaction.guild_id in world.guilds else None
        sessions = self.gateway.dispatch(
            "INTERACTION_CREATE", interaction.payload, guild_id=guild_id
        )
        interaction.delivered = sessions > 0
        world.changes.notify()
        return InteractionHandle(world, interaction)

    def delete_message(self, message_id: int) -> None:
        """A moderator deletes a message anyone in its channel can see (a channel message,
        an interaction's original response or a followup).

        From then on Discord answers 404 Unknown Message (10008) to every GET, PATCH and
        DELETE of it, through the channel or the interaction token; the message leaves the
        transcript; MESSAGE_DELETE goes to sessions with GUILD_MESSAGES (DIRECT_MESSAGES in
        a DM). Ephemeral messages are seen by one person only and cannot be deleted so.
        """
        message = self.world.messages.get(message_id)
        if message is None or message.deleted:
            raise LookupError(f"message {message_id} does not exist")
        if message.visible_to is not None:
            raise LookupError(f"message {message_id} is ephemeral; no moderator can see it")
        self.world.delete_message(message)

    def fail_requests(
        self,
        method: str,
        route: str | Iterable[str],
        *,
        status: int = 500,
        times: int | None = 1,
        message_id: int | None = None,
        processed: bool = False,
    ) -> Fault:
        """The next ``times`` requests (``None``: all from now on) of ``method`` to ``route``
        fail with a 5xx as Discord's servers send it (500, 502, 503 or 504); see
        :mod:`~tests.fakes.discord.faults` for what discord.py does with each.

        ``route`` is a template as :attr:`Call.route` shows it (e.g. :data:`WEBHOOK_MESSAGE`)
        or several; ``message_id`` narrows it to requests about one message (``@original``
        included). ``processed=True`` makes the change before failing.
        """
        return self._add_fault(
            method, route, server_error(status), times, message_id, processed=processed
        )

    def rate_limit_requests(
        self,
        method: str,
        route: str | Iterable[str],
        *,
        times: int | None = 1,
        retry_after: float = 0.05,
        scope: Scope | str = Scope.SHARED,
        message_id: int | None = None,
    ) -> Fault:
        """The next ``times`` requests (``None``: all from now on) of ``method`` to ``route``
        are answered 429 for ``scope`` (see :class:`~tests.fakes.discord.faults.Scope`).

        discord.py sleeps out each ``retry_after`` and tries five times, so ``times=None``
        makes it give up with ``HTTPException`` (status 429); ``scope="cloudflare"`` makes
        it give up at the first answer.
        """
        scope = Scope(scope)
        templates = self._templates(method, route)
        if scope is Scope.GLOBAL and not all(self.rest.bot_route(method, t) for t in templates):
            raise ValueError("interaction routes are not bound to the global rate limit")
        limit = self.limits.channel_messages.count
        failure = rate_limited(scope, retry_after, limit=limit, bucket=bucket_hash("fault"))
        return self._add_fault(method, templates, failure, times, message_id, processed=False)

    def _add_fault(
        self,
        method: str,
        route: str | Iterable[str],
        failure: Failure,
        times: int | None,
        message_id: int | None,
        *,
        processed: bool,
    ) -> Fault:
        fault = Fault(
            method=method,
            routes=frozenset(self._templates(method, route)),
            failure=failure,
            times=times,
            message_id=message_id,
            processed=processed,
        )
        self.rest.faults.append(fault)
        return fault

    def _templates(self, method: str, route: str | Iterable[str]) -> list[str]:
        templates = [route] if isinstance(route, str) else list(route)
        unknown = set(templates) - self.rest.routes(method)
        if unknown or not templates:
            raise ValueError(f"the fake serves no {method} {sorted(unknown)}")
        return templates

    def reconnect(self) -> None:
        """Send op 7 RECONNECT: the client must reconnect and RESUME its session."""
        self.gateway.reconnect()

    # What happened

    @property
    def calls(self) -> list[Call]:
        """Every HTTP request so far, in arrival order."""
        return self.rest.calls

    @property
    def rate_limited(self) -> int:
        """How many requests were answered 429."""
        return sum(1 for call in self.rest.calls if call.status == 429)

    @property
    def downloads(self) -> list[int]:
        """Ids of the attachments fetched from the local CDN (message files and uploads)."""
        return list(self.world.downloads)

    @property
    def spec_checked(self) -> bool:
        """Whether bodies are being checked against the OpenAPI description."""
        return self.spec is not None

    @property
    def spec_violations(self) -> list[SpecViolation]:
        """Request bodies that broke the OpenAPI description."""
        return self.rest.spec_violations

    @property
    def internal_errors(self) -> list[str]:
        """Exceptions inside the fake's handlers (answered 500); empty unless the fake has a bug."""
        return self.rest.internal_errors

    @property
    def response_violations(self) -> list[SpecViolation]:
        """The fake's own success bodies that broke the description (a bug in the fake)."""
        return self.rest.response_violations

    def replies_to(self, message_id: int) -> list[VisibleMessage]:
        """Standing replies to ``message_id`` (by anyone), oldest first."""
        return [self.world.visible(m) for m in self.world.messages_replying_to(message_id)]

    @property
    def typing(self) -> list[tuple[int, int, float]]:
        """Every typing indicator so far: (channel id, user id, when on the fake's clock)."""
        return list(self.world.typing)

    def commands(self, guild_id: int | None = None) -> list[dict[str, object]]:
        """Registered commands, global unless ``guild_id`` is given."""
        return list(self.world.commands.get(guild_id, []))

    @property
    def command_syncs(self) -> list[CommandSync]:
        return self.world.command_syncs

    def transcript(
        self, channel_id: int | None = None, *, viewer: User | None = None
    ) -> list[VisibleMessage]:
        """The channel (default: "general") as it reads now; see :meth:`World.transcript`."""
        return self.world.transcript(
            channel_id or self.channel_id, viewer=viewer.id if viewer else None
        )

    # Waiting without sleeping

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, re-checked after every change in the fake.

        Gives up with ``TimeoutError`` after ``wait_timeout`` seconds (a constructor
        argument), naming the last requests.
        """
        await self.world.changes.wait_for(predicate, self._describe)

    async def ready(self) -> None:
        """Return once a client has identified and been sent READY."""
        await self.wait_for(lambda: self.gateway.readies_sent > 0)

    async def shard_ready(self, shard_id: int, shard_count: int) -> None:
        """Return once a connection of shard ``shard_id`` of ``shard_count`` is open and has
        been sent READY (an unsharded session is shard 0 of 1)."""
        await self.wait_for(lambda: (shard_id, shard_count) in self.gateway.ready_shards())

    def _describe(self) -> str:
        recent = ", ".join(f"{c.method} {c.route} -> {c.status}" for c in self.calls[-5:])
        return f"last requests: {recent or 'none'}"

    # Plumbing

    def _publish_message(self, event: str, message: Message) -> None:
        world = self.world
        channel = world.channels[message.channel_id]
        if channel.guild_id not in (None, *world.guilds) or channel.type == GROUP_DM:
            return  # the bot gets no events of a server or group DM it is not in
        if event == "MESSAGE_DELETE":
            data: dict[str, object] = {"id": str(message.id), "channel_id": str(channel.id)}
            if channel.guild_id is not None:
                data["guild_id"] = str(channel.guild_id)
            hidden = None
        else:
            data = message_payload(world, message, gateway=True)
            hidden = message_payload(world, message, gateway=True, content_intent=False)
        intent = DIRECT_MESSAGES if channel.type == DM else GUILD_MESSAGES
        self.gateway.dispatch(
            event, data, intent=intent, guild_id=channel.guild_id, without_content=hidden
        )

    def _publish_typing(self, channel: Channel, user: User) -> None:
        world = self.world
        if channel.guild_id not in (None, *world.guilds) or channel.type == GROUP_DM:
            return
        data: dict[str, object] = {
            "channel_id": str(channel.id),
            "user_id": str(user.id),
            "timestamp": int(world.clock.wall()),
        }
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
            member = world.members.get(user.id)
            if member is not None:
                data["member"] = member_payload(world, member)
        intent = DIRECT_MESSAGE_TYPING if channel.type == DM else GUILD_MESSAGE_TYPING
        self.gateway.dispatch("TYPING_START", data, intent=intent, guild_id=channel.guild_id)

    async def _file(self, request: web.Request) -> web.Response:
        attachment_id = int(request.match_info["attachment_id"])
        for message in self.world.messages.values():
            for attachment in message.attachments:
                if attachment.id == attachment_id and not message.deleted:
                    return self._serve(attachment)
        raise web.HTTPNotFound()

    async def _upload(self, request: web.Request) -> web.Response:
        attachment = self.world.uploads.get(int(request.match_info["attachment_id"]))
        if attachment is None or request.match_info["application_id"] != str(
            self.world.application_id
        ):
            raise web.HTTPNotFound()
        return self._serve(attachment)

    def _serve(self, attachment: Attachment) -> web.Response:
        self.world.downloads.append(attachment.id)
        self.world.changes.notify()
        kind = attachment.content_type or "application/octet-stream"
        return web.Response(body=attachment.data, headers={"Content-Type": kind})
