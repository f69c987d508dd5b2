"""The JSON shapes Discord sends for the fake's objects (ids as strings, nulls explicit).

Fields follow Discord's API v10 responses and gateway events closely enough that
discord.py parses them and the official OpenAPI description accepts them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import JsonObject
from .state import (
    APPLICATION_COMMAND,
    ATTACHMENT_SIZE_LIMIT,
    DM,
    GROUP_DM,
    MODAL_SUBMIT,
    REPLY,
    Attachment,
    Channel,
    Interaction,
    Member,
    Message,
    Role,
    User,
    World,
)


def timestamp(seconds: float) -> str:
    """ISO 8601 with microseconds and an explicit UTC offset, as Discord writes them."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def user_payload(user: User) -> JsonObject:
    payload: JsonObject = {
        "id": str(user.id),
        "username": user.username,
        "avatar": None,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "global_name": user.global_name,
        "avatar_decoration_data": None,
        "collectibles": None,
        "banner_color": None,
        "clan": None,
        "primary_guild": None,
    }
    if user.bot:
        payload["bot"] = True
    return payload


def current_user_payload(user: User) -> JsonObject:
    """``GET /users/@me`` and READY's ``user``: the public fields plus the account's own."""
    return {
        **user_payload(user),
        "mfa_enabled": False,
        "locale": "en-US",
        "premium_type": 0,
        "email": None,
        "verified": True,
    }


def member_payload(world: World, member: Member, *, with_user: bool = True) -> JsonObject:
    payload: JsonObject = {
        "avatar": None,
        "banner": None,
        "communication_disabled_until": None,
        "flags": 0,
        "joined_at": timestamp(member.joined_at),
        "nick": None,
        "pending": False,
        "premium_since": None,
        "roles": [str(role_id) for role_id in member.role_ids],
        "unusual_dm_activity_until": None,
        "deaf": False,
        "mute": False,
    }
    if with_user:
        payload["user"] = user_payload(member.user)
    return payload


def role_payload(role: Role) -> JsonObject:
    payload: JsonObject = {
        "id": str(role.id),
        "name": role.name,
        "description": None,
        "permissions": str(role.permissions),
        "position": role.position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "managed": role.bot_id is not None,
        "mentionable": role.mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }
    if role.bot_id is not None:
        payload["tags"] = {"bot_id": str(role.bot_id)}
    return payload


def channel_payload(world: World, channel: Channel) -> JsonObject:
    if channel.type == DM:
        recipient = world.find_user(channel.recipient_id or 0)
        return {
            "id": str(channel.id),
            "type": DM,
            "last_message_id": _last_message_id(world, channel),
            "flags": 0,
            "recipients": [user_payload(recipient)],
        }
    if channel.type == GROUP_DM:
        return {
            "id": str(channel.id),
            "type": GROUP_DM,
            "name": channel.name,
            "icon": None,
            "owner_id": str(channel.owner_id),
            "last_message_id": _last_message_id(world, channel),
            "flags": 0,
            "recipients": [user_payload(user) for user in world.users],
        }
    if channel.is_thread:
        return thread_payload(world, channel)
    return {
        "id": str(channel.id),
        "type": channel.type,
        "guild_id": str(channel.guild_id),
        "name": channel.name,
        "position": 0,
        "permission_overwrites": [
            {
                "id": str(overwrite.id),
                "type": overwrite.kind,
                "allow": str(overwrite.allow),
                "deny": str(overwrite.deny),
            }
            for overwrite in channel.overwrites.values()
        ],
        "parent_id": None,
        "topic": None,
        "nsfw": False,
        "last_message_id": _last_message_id(world, channel),
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def thread_payload(world: World, thread: Channel) -> JsonObject:
    """A public thread: its parent, its starter, and the counts Discord keeps."""
    messages = [m for m in world.messages.values() if m.channel_id == thread.id]
    standing = [m for m in messages if not m.deleted]
    members = {m.author.id for m in standing} | {thread.owner_id}
    return {
        "id": str(thread.id),
        "type": thread.type,
        "guild_id": str(thread.guild_id),
        "parent_id": str(thread.parent_id),
        "owner_id": str(thread.owner_id),
        "name": thread.name,
        "last_message_id": _last_message_id(world, thread),
        "message_count": len(standing),
        "total_message_sent": len(messages),
        "member_count": min(50, len(members)),
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": timestamp(thread.created_at),
            "locked": False,
            "create_timestamp": timestamp(thread.created_at),
        },
    }


def _last_message_id(world: World, channel: Channel) -> str | None:
    ids = [m.id for m in world.messages.values() if m.channel_id == channel.id and not m.deleted]
    return str(max(ids)) if ids else None


def guild_create_payload(world: World, guild_id: int, *, members: list[Member]) -> JsonObject:
    """GUILD_CREATE for the bot's guild ``guild_id`` with ``members`` (Discord sends only
    some)."""
    guild = world.guild(guild_id)
    in_guild = [c for c in world.channels.values() if c.guild_id == guild.id]
    channels = [channel_payload(world, c) for c in in_guild if not c.is_thread]
    threads = [channel_payload(world, c) for c in in_guild if c.is_thread]
    for channel in channels:
        del channel["guild_id"]  # omitted inside GUILD_CREATE
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(world.owner.id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "nsfw": False,
        "features": [],
        "roles": [role_payload(role) for role in world.guild_roles(guild.id)],
        "emojis": [],
        "stickers": [],
        "application_id": None,
        "system_channel_id": str(guild.channel_id),
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": "en-US",
        "max_members": 500000,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "incidents_data": None,
        "hub_type": None,
        "latest_onboarding_question_id": None,
        "home_header": None,
        "inventory_settings": None,
        "version": 0,
        "lazy": True,
        "large": False,
        "unavailable": False,
        "joined_at": timestamp(world.created_at),
        "member_count": len(world.members),
        "members": [member_payload(world, member) for member in members],
        "channels": channels,
        "threads": threads,
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "embedded_activities": [],
        "activity_instances": [],
        "application_command_counts": {},
    }


def application_payload(world: World, flags: int) -> JsonObject:
    """``GET /oauth2/applications/@me``: the bot's application, owned by the guild owner."""
    return {
        "id": str(world.application_id),
        "name": world.application_name,
        "icon": None,
        "description": "",
        "summary": "",
        "type": None,
        "is_monetized": False,
        "is_verified": False,
        "is_discoverable": False,
        "bot_public": True,
        "bot_require_code_grant": False,
        "bot": user_payload(world.bot),
        "verify_key": "0" * 64,
        "flags": flags,
        "flags_new": str(flags),
        "hook": True,
        "storefront_available": False,
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "role_connections_verification_url": None,
        "owner": user_payload(world.owner),
        "team": None,
        "approximate_guild_count": len(world.guilds),
        "approximate_user_install_count": 0,
        "approximate_user_authorization_count": 0,
        "explicit_content_filter": 0,
        "eligible_oauth2_scopes": [],
        "integration_types_config": {"0": {}},
        "tags": [],
    }


def attachment_payload(world: World, message: Message, attachment: Attachment) -> JsonObject:
    url = f"{world.cdn_base}/attachments/{message.channel_id}/{attachment.id}/{attachment.filename}"
    payload: JsonObject = {
        "id": str(attachment.id),
        "filename": attachment.filename,
        "size": len(attachment.data),
        "url": url,
        "proxy_url": url,
    }
    if attachment.content_type is not None:
        payload["content_type"] = attachment.content_type
    if attachment.description is not None:
        payload["description"] = attachment.description
    return payload


def upload_payload(world: World, attachment: Attachment) -> JsonObject:
    """A file attached to a command option, as ``data.resolved.attachments`` carries it:
    an ephemeral attachment on the CDN, under the application's id."""
    url = (
        f"{world.cdn_base}/ephemeral-attachments/{world.application_id}/"
        f"{attachment.id}/{attachment.filename}"
    )
    payload: JsonObject = {
        "id": str(attachment.id),
        "filename": attachment.filename,
        "size": len(attachment.data),
        "url": url,
        "proxy_url": url,
        "ephemeral": True,
    }
    if attachment.content_type is not None:
        payload["content_type"] = attachment.content_type
    return payload


def interaction_metadata_payload(
    world: World, interaction: Interaction, message: Message | None
) -> JsonObject:
    payload: JsonObject = {
        "id": str(interaction.id),
        "type": interaction.type,
        "user": user_payload(interaction.user),
        "authorizing_integration_owners": integration_owners(interaction),
    }
    if interaction.type == APPLICATION_COMMAND:
        payload["name"] = interaction.command_name
        payload["command_type"] = 1
    if (
        interaction.original_id is not None
        and message is not None
        and interaction.original_id != message.id
    ):
        payload["original_response_message_id"] = str(interaction.original_id)
    if interaction.type == MODAL_SUBMIT:
        opener = world.interactions[interaction.opened_by or 0]
        payload["triggering_interaction_metadata"] = interaction_metadata_payload(
            world, opener, None
        )
    elif interaction.source_message_id is not None:
        payload["interacted_message_id"] = str(interaction.source_message_id)
    return payload


def integration_owners(interaction: Interaction) -> dict[str, str]:
    """By install: "0" the guild's id (or "0" when used in a DM with the bot) for the
    server's install, "1" the person's id for their own install."""
    owners: dict[str, str] = {}
    if interaction.guild_installed:
        owners["0"] = str(interaction.guild_id or 0)
    if interaction.user_installed:
        owners["1"] = str(interaction.user.id)
    return owners


def readable_without_intent(world: World, message: Message) -> bool:
    """Whether an app without MESSAGE_CONTENT still gets this message's content: its own
    messages, DMs with it, and messages that mention it."""
    channel = world.channels[message.channel_id]
    return (
        message.author.id == world.bot.id
        or channel.type == DM
        or world.bot.id in message.notified.users
    )


def without_content(payload: JsonObject) -> JsonObject:
    """What an app without MESSAGE_CONTENT receives: content, embeds, attachments and
    components empty, no poll."""
    emptied = {**payload, "content": "", "embeds": [], "attachments": [], "components": []}
    emptied.pop("poll", None)
    return emptied


def message_payload(
    world: World,
    message: Message,
    *,
    gateway: bool = False,
    content_intent: bool = True,
    nested: bool = False,
) -> JsonObject:
    """A message as REST returns it; ``gateway`` adds what MESSAGE_CREATE carries.

    Without ``content_intent`` the content fields are emptied unless the app may read the
    message anyway (:func:`readable_without_intent`); a reply's ``referenced_message`` is
    judged on its own.
    """
    notified = message.notified
    channel = world.channels[message.channel_id]
    mentioned_users = [world.find_user(u) for u in sorted(notified.users) if _known(world, u)]
    mentions = [user_payload(user) for user in mentioned_users]
    if gateway and channel.guild_id is not None:
        for mention in mentions:
            member = world.members.get(int(mention["id"]))
            if member is not None:
                mention["member"] = member_payload(world, member, with_user=False)
    payload: JsonObject = {
        "type": message.type,
        "content": message.content,
        "mentions": mentions,
        "mention_roles": [str(role) for role in sorted(notified.roles)],
        "attachments": [attachment_payload(world, message, a) for a in message.attachments],
        "embeds": message.embeds,
        "timestamp": timestamp(message.created_at),
        "edited_timestamp": timestamp(message.edited_at) if message.edited_at else None,
        "flags": message.flags,
        "components": message.components,
        "id": str(message.id),
        "channel_id": str(message.channel_id),
        "author": user_payload(message.author),
        "pinned": False,
        "mention_everyone": notified.everyone,
        "tts": message.tts,
    }
    if message.nonce is not None:
        payload["nonce"] = message.nonce
    if message.message_reference is not None:
        payload["message_reference"] = dict(message.message_reference)
        if message.type == REPLY and not nested:
            target = world.messages.get(int(message.message_reference["message_id"]))
            payload["referenced_message"] = (
                message_payload(world, target, content_intent=content_intent, nested=True)
                if target is not None and not target.deleted
                else None
            )
    if message.webhook_id is not None:
        payload["webhook_id"] = str(message.webhook_id)
        payload["application_id"] = str(world.application_id)
    if message.interaction_id is not None:
        interaction = world.interactions[message.interaction_id]
        payload["interaction_metadata"] = interaction_metadata_payload(world, interaction, message)
        if interaction.type == APPLICATION_COMMAND:
            payload["interaction"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "name": interaction.command_name,
                "user": user_payload(interaction.user),
            }
    if gateway:
        payload["channel_type"] = channel.type
    if gateway and channel.guild_id is not None:
        payload["guild_id"] = str(channel.guild_id)
        member = world.members.get(message.author.id)
        if member is not None:
            payload["member"] = member_payload(world, member, with_user=False)
    if not content_intent and not readable_without_intent(world, message):
        return without_content(payload)
    return payload


def _known(world: World, user_id: int) -> bool:
    try:
        world.find_user(user_id)
    except KeyError:
        return False
    return True


def command_payload(
    world: World, command: JsonObject, *, command_id: int, version: int, guild_id: int | None
) -> JsonObject:
    """A registered command as Discord echoes it back, defaults filled in."""
    kind = int(command.get("type") or 1)
    payload: JsonObject = {
        "id": str(command_id),
        "application_id": str(world.application_id),
        "version": str(version),
        # Discord takes the bit set as a number or a string and echoes a string.
        "default_member_permissions": _permission_string(command.get("default_member_permissions")),
        "type": kind,
        "name": command["name"],
        "name_localizations": command.get("name_localizations"),
        "description": command.get("description") or "",
        "description_localizations": command.get("description_localizations"),
        "dm_permission": command.get("dm_permission", True),
        "contexts": command.get("contexts"),
        "integration_types": command.get("integration_types") or [0],
        "nsfw": bool(command.get("nsfw", False)),
    }
    if command.get("options"):
        payload["options"] = command["options"]
    if guild_id is not None:
        payload["guild_id"] = str(guild_id)
        del payload["dm_permission"]
    return payload


def _permission_string(value: object) -> str | None:
    return None if value is None else str(value)


def interaction_channel_payload(world: World, interaction: Interaction) -> JsonObject:
    channel = world.channels[interaction.channel_id]
    payload = channel_payload(world, channel)
    if channel.guild_id is not None:
        payload["permissions"] = str(world.permissions_in(interaction.user.id, channel))
    return payload


def interaction_payload(world: World, interaction: Interaction, data: JsonObject) -> JsonObject:
    """INTERACTION_CREATE as the app receives it: through the server's install, or a
    person's own (in the external server, where the bot is no member)."""
    payload: JsonObject = {
        "id": str(interaction.id),
        "application_id": str(world.application_id),
        "type": interaction.type,
        "data": data,
        "channel": interaction_channel_payload(world, interaction),
        "channel_id": str(interaction.channel_id),
        "token": interaction.token,
        "version": 1,
        "app_permissions": str(_app_permissions(world, interaction)),
        "locale": "en-US",
        "entitlements": [],
        "entitlement_sku_ids": [],
        "authorizing_integration_owners": integration_owners(interaction),
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if interaction.guild_id is not None:
        member = world.members[interaction.user.id]
        if interaction.guild_id not in world.guilds:
            member = Member(member.user, [], member.joined_at)  # no roles out there
        payload["guild_id"] = str(interaction.guild_id)
        payload["guild"] = {"id": str(interaction.guild_id), "locale": "en-US", "features": []}
        payload["guild_locale"] = "en-US"
        payload["member"] = {
            **member_payload(world, member),
            "permissions": str(
                world.permissions_in(interaction.user.id, world.channels[interaction.channel_id])
            ),
        }
        payload["context"] = 0
    else:
        payload["user"] = user_payload(interaction.user)
        payload["context"] = 2 if world.channels[interaction.channel_id].type == GROUP_DM else 1
    if interaction.source_message_id is not None:
        source = world.messages[interaction.source_message_id]
        payload["message"] = message_payload(world, source)
    return payload


def _app_permissions(world: World, interaction: Interaction) -> int:
    if interaction.guild_id is None or interaction.guild_id not in world.guilds:
        # In a DM, or in a server it is not in through someone's own install, the app
        # can do what @everyone can.
        return world.roles[0].permissions
    return world.permissions_in(world.bot.id, world.channels[interaction.channel_id])
