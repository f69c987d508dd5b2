"""What the fake Discord knows: one application and its bot, the guilds it is in (the first
one made with the world, more through :meth:`World.add_guild`), each with one text channel,
people in them, their DMs with the bot, messages, interactions and registered commands.

Every guild of the bot has the same people with the same roles (the first guild's; only
the @everyone role's id differs, being the guild's id), so a test can use any of them alike.

Handlers change this state through :class:`World`'s methods, which enforce Discord's rules
on messages (limits, empty messages, who may edit what) and publish the gateway events
Discord would send. Every change wakes :attr:`World.changes` waiters.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import rules
from .changes import Changes
from .clock import Clock
from .errors import JsonObject, cannot_edit_others_message, unknown_channel, unknown_message
from .mentions import Mentions, pings
from .snowflake import Snowflakes

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
USE_APPLICATION_COMMANDS = 1 << 31
USE_EXTERNAL_APPS = 1 << 50
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1
EVERYONE_PERMISSIONS = (
    ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)

# Message types.
DEFAULT = 0
REPLY = 19
CHAT_INPUT_COMMAND = 20

# Interaction types.
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
APPLICATION_COMMAND_AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

GUILD_TEXT = 0
DM = 1
GROUP_DM = 3
PUBLIC_THREAD = 11

# Permission overwrite targets.
ROLE, MEMBER = 0, 1

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024
MAX_FILES = 10
CALLBACK_WINDOW = 3.0
TOKEN_LIFETIME = 15 * 60.0

MessageEvent = Callable[[str, "Message"], None]
TypingEvent = Callable[["Channel", "User"], None]


@dataclass
class User:
    id: int
    username: str
    global_name: str | None
    bot: bool = False


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int
    mentionable: bool = False
    bot_id: int | None = None


@dataclass(frozen=True)
class Overwrite:
    """A channel's permission overwrite for a role or a member (``kind``)."""

    id: int
    kind: int
    allow: int
    deny: int


@dataclass
class Channel:
    """A guild text channel, a DM with the bot, or a public thread under a text channel
    (``parent_id``, started by ``owner_id``; it takes its permissions from the parent)."""

    id: int
    type: int
    name: str | None
    guild_id: int | None
    recipient_id: int | None = None
    parent_id: int | None = None
    owner_id: int | None = None
    created_at: float = 0.0
    overwrites: dict[int, Overwrite] = field(default_factory=dict)

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD


@dataclass(frozen=True)
class Guild:
    """A guild the bot is in, with its one text channel "general"."""

    id: int
    name: str
    channel_id: int


@dataclass
class Member:
    user: User
    role_ids: list[int]
    joined_at: float


@dataclass
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    description: str | None = None


@dataclass
class Message:
    """A message as stored; ``visible_to`` is the only viewer of an ephemeral message."""

    id: int
    channel_id: int
    author: User
    type: int
    created_at: float
    content: str = ""
    embeds: list[JsonObject] = field(default_factory=list)
    components: list[JsonObject] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    flags: int = 0
    tts: bool = False
    nonce: str | None = None
    edited_at: float | None = None
    webhook_id: int | None = None
    interaction_id: int | None = None
    visible_to: int | None = None
    message_reference: JsonObject | None = None
    allowed_mentions: list[JsonObject | None] = field(default_factory=list)
    notified: Mentions = field(default_factory=Mentions)
    deleted: bool = False

    @property
    def loading(self) -> bool:
        return bool(self.flags & rules.LOADING)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & rules.EPHEMERAL)


@dataclass
class Interaction:
    """One use of a command or component, from dispatch to its last response."""

    id: int
    token: str
    type: int
    channel_id: int
    guild_id: int | None
    user: User
    dispatched_at: float
    command_name: str | None = None
    custom_id: str | None = None
    source_message_id: int | None = None
    payload: JsonObject = field(default_factory=dict)
    callback_type: int | None = None
    acknowledged_at: float | None = None
    original_id: int | None = None
    message_ids: list[int] = field(default_factory=list)
    # Edits through the token after acknowledgement (answers a DEFERRED_UPDATE_MESSAGE).
    edits: int = 0
    # The modal this interaction was answered with (callback type 9), as stored.
    modal: JsonObject | None = None
    modal_submitted: bool = False
    # The choices an autocomplete interaction was answered with (callback type 8).
    choices: list[JsonObject] | None = None
    # For a modal submit: the interaction whose modal was submitted.
    opened_by: int | None = None
    # Its authorizing integration owners: the server's install, the person's own, or both.
    guild_installed: bool = True
    user_installed: bool = False
    # Followup messages created through its token (capped for a user install alone).
    followups: int = 0
    # Whether INTERACTION_CREATE reached a session (none may own the guild's shard).
    delivered: bool = True

    @property
    def only_user_installed(self) -> bool:
        """Used through the person's own install of an app the server does not have."""
        return self.user_installed and not self.guild_installed


@dataclass(frozen=True)
class VisibleMessage:
    """A message as the people in a channel see it now, after edits."""

    id: int
    author_id: int
    content: str
    ephemeral: bool
    visible_to: int | None
    loading: bool
    edited: bool
    embeds: list[JsonObject]
    components: list[JsonObject]
    attachments: list[str]
    interaction_id: int | None
    notified: Mentions
    channel_id: int = 0
    # The message this one replies to (its id), if it is a reply.
    reply_to: int | None = None

    @property
    def text(self) -> str:
        """What the client renders for the body: "thinking…" while a defer is pending."""
        return "thinking…" if self.loading else self.content


@dataclass(frozen=True)
class CommandSync:
    """One bulk overwrite of commands; ``guild_id`` is ``None`` for global commands."""

    guild_id: int | None
    names: tuple[str, ...]


class World:
    """The fake's data and the rule-enforcing operations on it."""

    def __init__(
        self,
        clock: Clock,
        *,
        application_name: str,
        bot_username: str,
        user_names: Iterable[str],
        bot_permissions: int,
    ) -> None:
        self.clock = clock
        # Where attachment URLs point; set once the server has a port.
        self.cdn_base = "http://127.0.0.1"
        self.snowflakes = Snowflakes(clock)
        self.changes = Changes()
        # Told of MESSAGE_CREATE/UPDATE/DELETE for messages everyone can see.
        self.on_message_event: MessageEvent = lambda event, message: None
        self.on_typing: TypingEvent = lambda channel, user: None
        # Every typing indicator: (channel id, user id, wall-clock time).
        self.typing: list[tuple[int, int, float]] = []
        self.application_id = self.snowflakes.next()
        self.application_name = application_name
        self.bot = User(self.snowflakes.next(), bot_username, None, bot=True)
        self.owner = User(self.snowflakes.next(), "owner", "Owner")
        self.users = [User(self.snowflakes.next(), name, name.title()) for name in user_names]
        self.guild_id = self.snowflakes.next()
        self.guild_name = "Test Server"
        self.created_at = clock.wall()
        self.roles = [
            Role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
            Role(self.snowflakes.next(), bot_username, bot_permissions, 1, bot_id=self.bot.id),
            Role(self.snowflakes.next(), "helpers", 0, 2, mentionable=True),
        ]
        self.channel_id = self.snowflakes.next()
        self.channels: dict[int, Channel] = {
            self.channel_id: Channel(self.channel_id, GUILD_TEXT, "general", self.guild_id)
        }
        self.guilds: dict[int, Guild] = {
            self.guild_id: Guild(self.guild_id, self.guild_name, self.channel_id)
        }
        self.members: dict[int, Member] = {
            self.bot.id: Member(self.bot, [self.roles[1].id], self.created_at),
            self.owner.id: Member(self.owner, [], self.created_at),
        }
        for user in self.users:
            self.members[user.id] = Member(user, [self.roles[2].id], self.created_at)
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, Interaction] = {}
        # Files people attached to command options (Discord's ephemeral attachments).
        self.uploads: dict[int, Attachment] = {}
        # Ids of the attachments downloaded from the local CDN, in order.
        self.downloads: list[int] = []
        self.commands: dict[int | None, list[JsonObject]] = {None: []}
        # Commands the server's admins allowed for everyone (Server Settings > Integrations),
        # whatever their default member permissions.
        self.commands_allowed: set[str] = set()
        self.command_syncs: list[CommandSync] = []
        # Another server the people are in but the bot is not, with one text channel:
        # only a person's own install of the app reaches it.
        self.external_guild_id = self.snowflakes.next()
        self.external_channel_id = self.snowflakes.next()
        self.channels[self.external_channel_id] = Channel(
            self.external_channel_id, GUILD_TEXT, "elsewhere", self.external_guild_id
        )
        # Whether that server lets members' apps answer in public (USE_EXTERNAL_APPS).
        self.external_apps_public = False
        # A group DM of the people, without the bot: again only their own installs.
        self.group_dm_id = self.snowflakes.next()
        self.channels[self.group_dm_id] = Channel(
            self.group_dm_id, GROUP_DM, "friends", None, owner_id=self.users[0].id
        )

    # People and places

    @property
    def user(self) -> User:
        """The first member who is not the bot: who runs commands unless a test says otherwise."""
        return self.users[0]

    def find_user(self, user_id: int) -> User:
        for user in (self.bot, self.owner, *self.users):
            if user.id == user_id:
                return user
        raise KeyError(f"no user {user_id}")

    def channel(self, channel_id: int) -> Channel:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise unknown_channel() from None

    def add_guild(self, name: str, *, guild_id: int | None = None) -> Guild:
        """The bot joins a new guild ``name`` (id ``guild_id``, or the next snowflake) with
        one text channel "general" and the same people and roles as the first guild."""
        if not 1 <= len(name) <= 100:
            raise ValueError("a guild name is 1-100 characters")
        new_id = self.snowflakes.next() if guild_id is None else guild_id
        if new_id in self.guilds or new_id in self.channels or new_id == self.external_guild_id:
            raise ValueError(f"id {new_id} is taken")
        channel_id = self.snowflakes.next()
        self.channels[channel_id] = Channel(channel_id, GUILD_TEXT, "general", new_id)
        guild = Guild(new_id, name, channel_id)
        self.guilds[new_id] = guild
        return guild

    def guild(self, guild_id: int) -> Guild:
        try:
            return self.guilds[guild_id]
        except KeyError:
            raise LookupError(f"the bot is in no guild {guild_id}") from None

    def guild_roles(self, guild_id: int) -> list[Role]:
        """The roles of a guild of the bot; each has its own @everyone (id = guild id)."""
        if guild_id == self.guild_id:
            return self.roles
        everyone = self.roles[0]
        return [Role(guild_id, everyone.name, everyone.permissions, 0), *self.roles[1:]]

    def dm_channel(self, user: User) -> Channel:
        """The DM channel between ``user`` and the bot, opened on first use."""
        for channel in self.channels.values():
            if channel.type == DM and channel.recipient_id == user.id:
                return channel
        channel = Channel(self.snowflakes.next(), DM, None, None, recipient_id=user.id)
        self.channels[channel.id] = channel
        return channel

    def permissions_of(self, user_id: int) -> int:
        """Guild-wide permissions, from the member's roles."""
        member = self.members.get(user_id)
        if member is None:
            return 0
        value = self.roles[0].permissions
        for role in self.roles:
            if role.id in member.role_ids:
                value |= role.permissions
        return value

    def permissions_in(self, user_id: int, channel: Channel) -> int:
        """What ``user_id`` may do in a guild ``channel``, by Discord's order: roles, then
        the channel's @everyone overwrite, its role overwrites together, its member
        overwrite. A thread uses its parent's; without VIEW_CHANNEL nothing is allowed.
        In the external server the bot is no member, and people have @everyone's."""
        if channel.guild_id == self.external_guild_id or channel.type == GROUP_DM:
            if user_id == self.bot.id:
                return 0
            external = USE_EXTERNAL_APPS if self.external_apps_public else 0
            return self.roles[0].permissions | external
        base = self.permissions_of(user_id)
        if base & ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel.parent_id is not None:
            channel = self.channels[channel.parent_id]
        member = self.members.get(user_id)
        if member is None:
            return 0
        everyone = channel.overwrites.get(channel.guild_id or self.guild_id)
        if everyone is not None:
            base = (base & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            overwrite = channel.overwrites.get(role_id)
            if overwrite is not None:
                allow, deny = allow | overwrite.allow, deny | overwrite.deny
        base = (base & ~deny) | allow
        own = channel.overwrites.get(user_id)
        if own is not None and own.kind == MEMBER:
            base = (base & ~own.deny) | own.allow
        return base if base & VIEW_CHANNEL else 0

    def set_overwrite(self, channel: Channel, target_id: int, *, allow: int, deny: int) -> None:
        """Set (or, with nothing allowed or denied, remove) an overwrite on ``channel``."""
        if channel.type != GUILD_TEXT:
            raise ValueError("only guild text channels have permission overwrites here")
        kind = MEMBER if target_id in self.members else ROLE
        if kind == ROLE and target_id not in {role.id for role in self.roles} | set(self.guilds):
            raise LookupError(f"no member or role {target_id}")
        if allow or deny:
            channel.overwrites[target_id] = Overwrite(target_id, kind, allow, deny)
        else:
            channel.overwrites.pop(target_id, None)

    def create_thread(self, name: str, parent: Channel, owner: User) -> Channel:
        """A public thread under ``parent``, started by ``owner``."""
        if parent.type != GUILD_TEXT:
            raise ValueError("public threads live under guild text channels")
        if not 1 <= len(name) <= 100:
            raise ValueError("a thread name is 1-100 characters")
        thread = Channel(
            self.snowflakes.next(),
            PUBLIC_THREAD,
            name,
            parent.guild_id,
            parent_id=parent.id,
            owner_id=owner.id,
            created_at=self.clock.wall(),
        )
        self.channels[thread.id] = thread
        return thread

    def mentionable_role_ids(self) -> set[int]:
        return {role.id for role in self.roles if role.mentionable}

    # Messages

    def create_message(
        self,
        channel_id: int,
        author: User,
        body: JsonObject,
        *,
        attachments: list[Attachment],
        type: int = DEFAULT,
        webhook_id: int | None = None,
        interaction: Interaction | None = None,
        flags: int = 0,
        replying_to: Message | None = None,
    ) -> Message:
        """Store a new message after checking Discord's rules; publish it if it is public.

        ``replying_to`` makes it a reply (type 19) to that message, which pings its author
        when ``allowed_mentions`` is absent or says ``replied_user``.
        """
        rules.check_message_fields(body)
        rules.require_visible(body, files=len(attachments))
        message = Message(
            id=self.snowflakes.next(),
            channel_id=channel_id,
            author=author,
            type=REPLY if replying_to is not None else type,
            created_at=self.clock.wall(),
            flags=flags,
            webhook_id=webhook_id,
            interaction_id=interaction.id if interaction else None,
            nonce=None if body.get("nonce") is None else str(body["nonce"]),
            message_reference=self.reference_to(replying_to) if replying_to else None,
        )
        if flags & rules.EPHEMERAL and interaction is not None:
            message.visible_to = interaction.user.id
        self._apply(message, body, attachments)
        message.notified = self._pings(message, body)
        allowed = body.get("allowed_mentions")
        if (
            replying_to is not None
            and replying_to.author.id != author.id
            and (allowed is None or allowed.get("replied_user"))
        ):
            message.notified = message.notified | Mentions(users=frozenset({replying_to.author.id}))
        self.messages[message.id] = message
        self._announce("MESSAGE_CREATE", message)
        return message

    def create_loading_message(self, interaction: Interaction, *, ephemeral: bool) -> Message:
        """The "thinking…" placeholder a deferred interaction shows until it is resolved."""
        flags = rules.LOADING | (rules.EPHEMERAL if ephemeral else 0)
        message = Message(
            id=self.snowflakes.next(),
            channel_id=interaction.channel_id,
            author=self.bot,
            type=self.response_type(interaction),
            created_at=self.clock.wall(),
            flags=flags,
            webhook_id=self.application_id,
            interaction_id=interaction.id,
            visible_to=interaction.user.id if ephemeral else None,
        )
        self.messages[message.id] = message
        self._announce("MESSAGE_CREATE", message)
        return message

    def edit_message(
        self, message: Message, body: JsonObject, *, attachments: list[Attachment]
    ) -> Message:
        """Apply an edit; the first edit of a loading message resolves it (and may ping)."""
        rules.check_message_fields(body)
        candidate: JsonObject = {
            "content": message.content,
            "embeds": message.embeds,
            "components": message.components,
            "attachments": message.attachments,
        }
        for key in candidate:
            if key in body:
                candidate[key] = body[key]
        if "attachments" in body:
            kept = _kept_attachment_ids(body["attachments"])
            candidate["attachments"] = [a for a in message.attachments if a.id in kept]
        rules.require_visible(candidate, files=len(attachments))
        resolving = message.loading
        self._apply(message, body, attachments)
        if resolving:
            message.flags &= ~rules.LOADING
            message.notified = self._pings(message, body)
        else:
            message.edited_at = self.clock.wall()
            message.allowed_mentions.append(body.get("allowed_mentions"))
        self._announce("MESSAGE_UPDATE", message)
        return message

    def delete_message(self, message: Message) -> None:
        message.deleted = True
        self._announce("MESSAGE_DELETE", message)

    def post_as(
        self,
        author: User,
        channel: Channel,
        content: str,
        *,
        replying_to: Message | None,
        ping_reply: bool,
        attachments: list[Attachment],
    ) -> Message:
        """A person's message as Discord's client sends it: every mention in the text may
        ping, and a reply pings the replied-to author unless ``ping_reply`` is off."""
        allowed: JsonObject = {"parse": ["users", "roles", "everyone"], "replied_user": ping_reply}
        body: JsonObject = {"content": content, "allowed_mentions": allowed}
        return self.create_message(
            channel.id, author, body, attachments=attachments, replying_to=replying_to
        )

    def start_typing(self, channel: Channel, user: User) -> None:
        self.typing.append((channel.id, user.id, self.clock.wall()))
        self.on_typing(channel, user)
        self.changes.notify()

    def reference_to(self, message: Message) -> JsonObject:
        """The ``message_reference`` of a reply to ``message``, as Discord stores it."""
        reference: JsonObject = {
            "type": 0,
            "message_id": str(message.id),
            "channel_id": str(message.channel_id),
        }
        guild_id = self.channels[message.channel_id].guild_id
        if guild_id is not None:
            reference["guild_id"] = str(guild_id)
        return reference

    def live_message(self, message_id: int, channel_id: int | None = None) -> Message:
        message = self.messages.get(message_id)
        if message is None or message.deleted:
            raise unknown_message()
        if channel_id is not None and message.channel_id != channel_id:
            raise unknown_message()
        return message

    def bot_edit_message(self, message: Message) -> None:
        if message.author.id != self.bot.id:
            raise cannot_edit_others_message()

    def find_by_nonce(self, channel_id: int, author: User, nonce: str) -> Message | None:
        for message in reversed(self.messages.values()):
            if (
                message.channel_id == channel_id
                and message.author.id == author.id
                and message.nonce == nonce
                and not message.deleted
            ):
                return message
        return None

    def response_type(self, interaction: Interaction) -> int:
        return CHAT_INPUT_COMMAND if interaction.type == APPLICATION_COMMAND else DEFAULT

    def messages_replying_to(self, message_id: int) -> list[Message]:
        """Standing replies to ``message_id``, oldest first."""
        return [
            message
            for message in sorted(self.messages.values(), key=lambda m: m.id)
            if not message.deleted
            and message.message_reference is not None
            and message.message_reference.get("message_id") == str(message_id)
        ]

    def _apply(self, message: Message, body: JsonObject, attachments: list[Attachment]) -> None:
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = [{"type": "rich", **embed} for embed in body["embeds"] or []]
        if "components" in body:
            message.components = numbered(body["components"] or [])
        if "attachments" in body:
            kept = _kept_attachment_ids(body["attachments"])
            message.attachments = [a for a in message.attachments if a.id in kept]
        if "tts" in body:
            message.tts = bool(body["tts"])
        for attachment in attachments:
            for item in body.get("attachments") or []:
                if str(item.get("id")) == str(attachment.id) and item.get("description"):
                    attachment.description = item["description"]
            attachment.id = self.snowflakes.next()
            message.attachments.append(attachment)
        if "flags" in body and body["flags"] is not None:
            # Only SUPPRESS_EMBEDS can change after sending.
            keep = message.flags & ~rules.SUPPRESS_EMBEDS
            message.flags = keep | (int(body["flags"]) & rules.SUPPRESS_EMBEDS)

    def _pings(self, message: Message, body: JsonObject) -> Mentions:
        allowed = body.get("allowed_mentions")
        message.allowed_mentions.append(allowed)
        if message.ephemeral:
            return Mentions()  # ephemeral messages never notify anyone
        if allowed is None and message.webhook_id is not None:
            allowed = {"parse": ["users"]}  # what interactions and webhooks parse by default
        return pings(
            message.content,
            allowed,
            can_mention_everyone=bool(self.permissions_of(message.author.id) & MENTION_EVERYONE),
            mentionable_roles=self.mentionable_role_ids(),
        )

    def _announce(self, event: str, message: Message) -> None:
        if message.visible_to is None:
            self.on_message_event(event, message)
        self.changes.notify()

    # Interactions

    def new_interaction(
        self,
        *,
        type: int,
        channel: Channel,
        user: User,
        command_name: str | None = None,
        custom_id: str | None = None,
        source_message_id: int | None = None,
        opened_by: int | None = None,
        user_installed: bool = False,
    ) -> Interaction:
        """A new interaction; in the external server only the person's own install can
        have made it, elsewhere the server's (or, in a DM, the app's) install, and the
        person's too when `user_installed`."""
        external = channel.guild_id == self.external_guild_id or channel.type == GROUP_DM
        interaction = Interaction(
            id=self.snowflakes.next(),
            token=f"aW50ZXJhY3Rpb246{secrets.token_urlsafe(96)}",
            type=type,
            channel_id=channel.id,
            guild_id=channel.guild_id,
            user=user,
            dispatched_at=self.clock.monotonic(),
            command_name=command_name,
            custom_id=custom_id,
            source_message_id=source_message_id,
            opened_by=opened_by,
            guild_installed=not external,
            user_installed=user_installed or external,
        )
        self.interactions[interaction.id] = interaction
        return interaction

    def forced_ephemeral(self, interaction: Interaction) -> bool:
        """Whether Discord makes every response of `interaction` visible to its user alone:
        a user-installed app the server lacks, where members may not use external apps
        in public."""
        if not interaction.only_user_installed or interaction.guild_id is None:
            return False
        channel = self.channels[interaction.channel_id]
        return not self.permissions_in(interaction.user.id, channel) & USE_EXTERNAL_APPS

    def interaction_by_token(self, token: str) -> Interaction | None:
        for interaction in self.interactions.values():
            if interaction.token == token:
                return interaction
        return None

    def since_dispatch(self, interaction: Interaction) -> float:
        return self.clock.monotonic() - interaction.dispatched_at

    # What people see

    def transcript(self, channel_id: int, *, viewer: int | None = None) -> list[VisibleMessage]:
        """Messages in ``channel_id`` as they stand now, oldest first, deleted ones gone.

        With ``viewer`` set, ephemeral messages meant for someone else are left out;
        without it every message is listed, each saying who can see it.
        """
        return [
            self.visible(message)
            for message in sorted(self.messages.values(), key=lambda m: m.id)
            if message.channel_id == channel_id
            and not message.deleted
            and (viewer is None or message.visible_to in (None, viewer))
        ]

    def interaction_messages(self, interaction: Interaction) -> list[VisibleMessage]:
        return [
            self.visible(self.messages[message_id])
            for message_id in interaction.message_ids
            if not self.messages[message_id].deleted
        ]

    def visible(self, message: Message) -> VisibleMessage:
        return VisibleMessage(
            id=message.id,
            author_id=message.author.id,
            content=message.content,
            ephemeral=message.ephemeral,
            visible_to=message.visible_to,
            loading=message.loading,
            edited=message.edited_at is not None,
            embeds=list(message.embeds),
            components=list(message.components),
            attachments=[a.filename for a in message.attachments],
            interaction_id=message.interaction_id,
            notified=message.notified,
            channel_id=message.channel_id,
            reply_to=_referenced_id(message),
        )


def _referenced_id(message: Message) -> int | None:
    reference = message.message_reference
    return int(reference["message_id"]) if reference and message.type == REPLY else None


def numbered(components: list[JsonObject]) -> list[JsonObject]:
    """Components as Discord stores them: nulls dropped, each numbered in tree order
    (an ``id`` the sender gave is kept)."""
    counter = 0

    def number(component: JsonObject) -> JsonObject:
        nonlocal counter
        counter += 1
        stored = _without_nulls(component)
        stored.setdefault("id", counter)
        if isinstance(stored.get("components"), list):
            stored["components"] = [number(child) for child in stored["components"]]
        if isinstance(stored.get("component"), dict):  # a label's one child
            stored["component"] = number(stored["component"])
        return stored

    return [number(component) for component in components]


def _without_nulls(value: JsonObject) -> JsonObject:
    return {
        key: _without_nulls(item) if isinstance(item, dict) else item
        for key, item in value.items()
        if item is not None
    }


def _kept_attachment_ids(items: list[JsonObject] | None) -> set[int]:
    """Ids of already-uploaded attachments an edit keeps (new files carry small indexes)."""
    kept = set()
    for item in items or []:
        try:
            kept.add(int(item["id"]))
        except (KeyError, TypeError, ValueError):
            continue
    return kept
