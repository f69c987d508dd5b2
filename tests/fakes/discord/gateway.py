"""The gateway: Discord's WebSocket (v10, JSON, optional ``zlib-stream`` compression).

A connection gets HELLO, then must IDENTIFY (a new session: READY, then GUILD_CREATE) or
RESUME (the events it missed, then RESUMED). Heartbeats are acknowledged at any time.
Discord's close codes are enforced: 4004 bad token, 4014 a privileged intent the
application has not enabled, 4013 unknown intent bits, 4003 anything before identifying,
4005 identifying twice, 4001 unknown opcode, 4002 undecodable or oversized (> 4096 byte)
payloads, 4012 an API version other than 10, 4010 an invalid shard, 4011 too few shards
for the application's guilds (more than :data:`MAX_GUILDS_PER_SHARD` per shard).

Sharding: a session with ``shard=[id, count]`` gets READY and GUILD_CREATE for the guilds
on its shard only (``(guild_id >> 22) % count``), and their events; DMs and other events
outside guilds go to shard 0. An event whose shard no session owns is dropped, as Discord
drops it (:attr:`Gateway.dropped`). Sessions of one bot may use different shard counts at
once, as they do while resharding. IDENTIFY is rate limited as Discord limits it: one per
``identify_window`` seconds (5) in each bucket ``shard_id % max_concurrency``; one over the
limit is answered op 9 INVALID_SESSION (``d: false``) and recorded in
:attr:`Gateway.identify_rate_limited`.

With ``compress=zlib-stream`` the whole connection is one zlib stream: every message is
compressed by the same compressor and flushed with Z_SYNC_FLUSH, so each ends in
``00 00 ff ff``.

A session outlives its connection unless the client closed with 1000 or 1001, so a client
told to RECONNECT (op 7) can RESUME at ``resume_gateway_url`` and get every event it
missed. Events are never dropped for a session whose connection is gone; they wait in its
log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .clock import Clock
from .errors import JsonObject
from .payloads import current_user_payload, guild_create_payload, member_payload
from .state import World

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE_UPDATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_GUILD_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    6,
    7,
    8,
    9,
    10,
    11,
)

GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
# Bits 0-16, the two auto-moderation intents (20, 21) and the two poll intents (24, 25).
KNOWN_INTENTS = sum(1 << bit for bit in (*range(17), 20, 21, 24, 25))

MAX_PAYLOAD_BYTES = 4096
# Discord requires sharding past this many guilds per shard (close 4011).
MAX_GUILDS_PER_SHARD = 2500
# Each rate-limit bucket (``shard_id % max_concurrency``) may IDENTIFY once per window.
IDENTIFY_WINDOW = 5.0


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    compressor: Any  # zlib.compressobj(); typeshed's class is private
    # Frames to send in order; a _Close sends a close frame, None just stops the writer.
    queue: asyncio.Queue[JsonObject | _Close | None] = field(default_factory=asyncio.Queue)
    session: _Session | None = None
    closing: bool = False

    def send(self, payload: JsonObject) -> None:
        if not self.closing:
            self.queue.put_nowait(payload)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(_Close(code, reason))


@dataclass
class _Session:
    id: str
    intents: int
    shard: tuple[int, int] | None
    seq: int = 0
    log: list[JsonObject] = field(default_factory=list)
    connection: _Connection | None = None
    ready: bool = False  # READY has been written to a connection

    @property
    def shard_pair(self) -> tuple[int, int]:
        """The shard as Discord sees it: no shard is shard 0 of 1."""
        return self.shard if self.shard is not None else (0, 1)


class Gateway:
    """Serves gateway connections for one :class:`World` and one bot token.

    For assertions: :attr:`identifies` (each IDENTIFY's ``d``), :attr:`dispatched`
    (every event sent, with its data; :meth:`events` filters it), :attr:`resumes`,
    :attr:`readies_sent`, :attr:`heartbeats`, :attr:`connected`,
    :attr:`connection_queries` (each connection's query string), :attr:`server_close_codes`
    (codes the fake closed with), :attr:`client_close_codes` (codes clients closed with),
    :attr:`presence_updates`, :attr:`identify_rate_limited` (the shard id of each IDENTIFY
    answered op 9 for breaking the rate limit), :attr:`dropped` (events no session owned)
    and :meth:`connected_shards` / :meth:`ready_shards`.

    ``max_concurrency`` and ``identify_window`` may be changed between connections.
    """

    def __init__(
        self,
        world: World,
        *,
        token: str,
        enabled_intents: int,
        heartbeat_interval_ms: int,
        on_change: Callable[[], None],
        clock: Clock | None = None,
        max_concurrency: int = 1,
        identify_window: float = IDENTIFY_WINDOW,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency is at least 1")
        self._world = world
        self._clock = clock or world.clock
        self.max_concurrency = max_concurrency
        self.identify_window = identify_window
        # When each rate-limit bucket last accepted an IDENTIFY, on the fake's clock.
        self._last_identify: dict[int, float] = {}
        self.identify_rate_limited: list[int] = []
        self.dropped: list[tuple[str, JsonObject]] = []
        self._token = token
        self._enabled_intents = enabled_intents
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._on_change = on_change
        self._sessions: dict[str, _Session] = {}
        self._connections: set[_Connection] = set()
        self._writers: set[asyncio.Task[None]] = set()
        self.resume_url = "ws://127.0.0.1/"
        self.connection_queries: list[dict[str, str]] = []
        self.identifies: list[JsonObject] = []
        self.resumes = 0
        self.readies_sent = 0
        self.heartbeats = 0
        self.presence_updates: list[JsonObject] = []
        # Every DISPATCH sent, to any session: (event name, data).
        self.dispatched: list[tuple[str, JsonObject]] = []
        self.server_close_codes: list[int] = []
        self.client_close_codes: list[int | None] = []

    @property
    def enabled_intents(self) -> int:
        """The privileged intents the application has enabled."""
        return self._enabled_intents

    @property
    def connected(self) -> int:
        """Connections that have identified or resumed and are still open."""
        return sum(1 for c in self._connections if c.session is not None and not c.closing)

    def connected_shards(self) -> set[tuple[int, int]]:
        """``(shard_id, shard_count)`` of every open, identified or resumed connection
        (a session without a shard counts as ``(0, 1)``)."""
        return {
            c.session.shard_pair
            for c in self._connections
            if c.session is not None and not c.closing
        }

    def ready_shards(self) -> set[tuple[int, int]]:
        """The :meth:`connected_shards` whose session has been sent READY."""
        return {
            c.session.shard_pair
            for c in self._connections
            if c.session is not None and c.session.ready and not c.closing
        }

    # Serving a connection

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.connection_queries.append(dict(request.query))
        compress = request.query.get("compress")
        connection = _Connection(ws, zlib.compressobj() if compress == "zlib-stream" else None)
        self._connections.add(connection)
        writer = asyncio.create_task(self._write(connection))
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        try:
            if not self._accepts_query(connection, request):
                return ws
            connection.send(_frame(HELLO, {"heartbeat_interval": self._heartbeat_interval_ms}))
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    self._receive(connection, message.data)
                    self._on_change()
                elif message.type is WSMsgType.BINARY:
                    connection.close(4002, "Error while decoding payload.")
                if connection.closing:
                    break
        finally:
            by_client = not connection.closing
            self._detach(connection, by_client=by_client)
            await writer
            self._connections.discard(connection)
            self._on_change()
        return ws

    def _accepts_query(self, connection: _Connection, request: web.Request) -> bool:
        query = request.query
        if query.get("v") != "10":
            connection.close(4012, "Invalid API version")
        elif query.get("encoding", "json") != "json":
            connection.close(4002, "only JSON encoding is simulated")
        elif query.get("compress") not in (None, "zlib-stream"):
            connection.close(4002, f"compress={query.get('compress')} is not simulated")
        return not connection.closing

    async def _write(self, connection: _Connection) -> None:
        """Send queued frames in order; a close frame ends the connection."""
        ws = connection.ws
        while True:
            item = await connection.queue.get()
            if item is None:
                return
            if isinstance(item, _Close):
                self.server_close_codes.append(item.code)
                await ws.close(code=item.code, message=item.reason.encode())
                return
            text = json.dumps(item, separators=(",", ":"))
            try:
                if connection.compressor is not None:
                    data = connection.compressor.compress(text.encode())
                    data += connection.compressor.flush(zlib.Z_SYNC_FLUSH)
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(text)
            except ConnectionError:
                return  # the client went away; its session log keeps the event
            if item.get("t") == "READY":
                self.readies_sent += 1
                if connection.session is not None:
                    connection.session.ready = True
                self._on_change()

    def _detach(self, connection: _Connection, *, by_client: bool) -> None:
        connection.closing = True
        connection.queue.put_nowait(None)
        if by_client:
            self.client_close_codes.append(connection.ws.close_code)
        session = connection.session
        if session is None or session.connection is not connection:
            return
        session.connection = None
        if by_client and connection.ws.close_code in (1000, 1001):
            # A clean close ends the session: Discord will not let it resume.
            self._sessions.pop(session.id, None)

    # Receiving

    def _receive(self, connection: _Connection, text: str) -> None:
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            connection.close(4002, "Error while decoding payload.")
            return
        try:
            payload = json.loads(text)
            op = payload["op"]
            data = payload.get("d")
        except (ValueError, TypeError, KeyError):
            connection.close(4002, "Error while decoding payload.")
            return
        if op == HEARTBEAT:
            self.heartbeats += 1
            connection.send(_frame(HEARTBEAT_ACK, None))
        elif op == IDENTIFY:
            self._identify(connection, data)
        elif op == RESUME:
            self._resume(connection, data)
        elif connection.session is None:
            connection.close(4003, "Not authenticated.")
        elif op == PRESENCE_UPDATE:
            self.presence_updates.append(data)
        elif op == REQUEST_GUILD_MEMBERS:
            self._request_members(connection.session, data)
        elif op == VOICE_STATE_UPDATE:
            pass  # the fake guild has no voice channels
        else:
            connection.close(4001, "Unknown opcode.")

    def _identify(self, connection: _Connection, data: Any) -> None:
        if connection.session is not None:
            connection.close(4005, "Already authenticated.")
            return
        if not isinstance(data, dict) or data.get("token") != self._token:
            connection.close(4004, "Authentication failed.")
            return
        intents = data.get("intents")
        if not isinstance(intents, int) or intents & ~KNOWN_INTENTS:
            connection.close(4013, "Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS & ~self._enabled_intents:
            connection.close(4014, "Disallowed intent(s).")
            return
        shard = data.get("shard")
        if shard is not None and not (
            isinstance(shard, list)
            and len(shard) == 2
            and all(isinstance(part, int) for part in shard)
            and 0 <= shard[0] < shard[1]
        ):
            connection.close(4010, "Invalid shard.")
            return
        world = self._world
        shard_count = shard[1] if shard is not None else 1
        if len(world.guilds) > MAX_GUILDS_PER_SHARD * shard_count:
            connection.close(4011, "Sharding required.")
            return
        if not self._may_identify(shard[0] if shard is not None else 0):
            connection.send(_frame(INVALID_SESSION, False))
            return
        session = _Session(
            id=secrets.token_hex(16),
            intents=intents,
            shard=(shard[0], shard[1]) if shard is not None else None,
        )
        self._sessions[session.id] = session
        session.connection = connection
        connection.session = session
        self.identifies.append(data)
        here = [guild_id for guild_id in world.guilds if self._routes_to(session, guild_id)]
        ready: JsonObject = {
            "v": 10,
            "user": current_user_payload(world.bot),
            "guilds": [{"id": str(guild_id), "unavailable": True} for guild_id in here],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_url,
            "application": {"id": str(world.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ['["fake-discord-gateway"]'],
        }
        if session.shard is not None:
            ready["shard"] = list(session.shard)
        self._send_to(session, "READY", ready)
        for guild_id in here:
            self._send_guild_create(session, guild_id)

    def _may_identify(self, shard_id: int) -> bool:
        """Take the IDENTIFY slot of ``shard_id``'s bucket, or record that it is taken."""
        bucket = shard_id % self.max_concurrency
        now = self._clock.monotonic()
        last = self._last_identify.get(bucket)
        if last is not None and now - last < self.identify_window:
            self.identify_rate_limited.append(shard_id)
            return False
        self._last_identify[bucket] = now
        return True

    def _send_guild_create(self, session: _Session, guild_id: int) -> None:
        world = self._world
        # Without GUILD_PRESENCES Discord sends only the bot's own member.
        members = [
            member
            for member in world.members.values()
            if session.intents & GUILD_PRESENCES or member.user.id == world.bot.id
        ]
        payload = guild_create_payload(world, guild_id, members=members)
        self._send_to(session, "GUILD_CREATE", payload)

    def guild_joined(self, guild_id: int) -> int:
        """The bot joined ``guild_id``: GUILD_CREATE to the sessions on its shard.
        Returns how many sessions it went to."""
        sessions = [s for s in self._sessions.values() if self._routes_to(s, guild_id)]
        # With none, it is no loss: the guild is in the next READY of its shard.
        for session in sessions:
            self._send_guild_create(session, guild_id)
        return len(sessions)

    def _resume(self, connection: _Connection, data: Any) -> None:
        if connection.session is not None:
            connection.close(4005, "Already authenticated.")
            return
        if not isinstance(data, dict) or data.get("token") != self._token:
            connection.close(4004, "Authentication failed.")
            return
        session = self._sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        if session is None or not isinstance(seq, int) or seq > session.seq:
            connection.send(_frame(INVALID_SESSION, False))
            return
        if session.connection is not None:
            session.connection.close(4009, "Session timed out.")
        session.connection = connection
        connection.session = session
        self.resumes += 1
        for event in session.log:
            if event["s"] > seq:
                connection.send(event)
        self._send_to(session, "RESUMED", {})

    def _request_members(self, session: _Session, data: Any) -> None:
        world = self._world
        if not isinstance(data, dict):
            return
        guild_id = next((g for g in world.guilds if str(g) == str(data.get("guild_id"))), None)
        if guild_id is None or not self._routes_to(session, guild_id):
            return
        if not session.intents & GUILD_MEMBERS and not data.get("user_ids"):
            if session.connection is not None:
                session.connection.close(4013, "Invalid intent(s).")
            return
        wanted = {int(x) for x in data.get("user_ids") or []}
        query = str(data.get("query") or "")
        members = [
            member_payload(world, member)
            for member in world.members.values()
            if (not wanted or member.user.id in wanted) and member.user.username.startswith(query)
        ]
        chunk: JsonObject = {
            "guild_id": str(guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        self._send_to(session, "GUILD_MEMBERS_CHUNK", chunk)

    # Sending

    @property
    def application_flags(self) -> int:
        """The LIMITED gateway flags an unverified bot has for each enabled privileged intent."""
        flags = 0
        if self._enabled_intents & GUILD_PRESENCES:
            flags |= 1 << 13
        if self._enabled_intents & GUILD_MEMBERS:
            flags |= 1 << 15
        if self._enabled_intents & MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    def dispatch(
        self,
        event: str,
        data: JsonObject,
        *,
        intent: int = 0,
        guild_id: int | None = None,
        without_content: JsonObject | None = None,
    ) -> int:
        """Send a DISPATCH to every session subscribed by ``intent`` (0: to all) on the
        shard that owns ``guild_id`` (shard 0 for events outside guilds).

        Sessions that did not identify with MESSAGE_CONTENT get ``without_content``
        instead, when given. Returns how many sessions owned the shard (a session away
        from its connection counts: it gets the event on RESUME); with none, the event is
        recorded in :attr:`dropped`.
        """
        owners = [s for s in self._sessions.values() if self._routes_to(s, guild_id)]
        if not owners:
            self.dropped.append((event, data))
        for session in owners:
            if intent and not session.intents & intent:
                continue
            if without_content is not None and not session.intents & MESSAGE_CONTENT:
                self._send_to(session, event, without_content)
            else:
                self._send_to(session, event, data)
        return len(owners)

    def events(self, event: str) -> list[JsonObject]:
        """The data of every ``event`` dispatched so far, to any session."""
        return [data for name, data in self.dispatched if name == event]

    def reconnect(self) -> None:
        """Ask every connected client to reconnect and resume (op 7 RECONNECT)."""
        for connection in list(self._connections):
            if connection.session is not None:
                connection.send(_frame(RECONNECT, None))

    def _send_to(self, session: _Session, event: str, data: JsonObject) -> None:
        session.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": session.seq, "d": data}
        session.log.append(frame)
        self.dispatched.append((event, data))
        if session.connection is not None:
            session.connection.send(frame)

    @staticmethod
    def _routes_to(session: _Session, guild_id: int | None) -> bool:
        if session.shard is None:
            return True
        shard_id, shard_count = session.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % shard_count == shard_id

    async def aclose(self) -> None:
        """Close every connection (1001 going away) and wait for the writers to finish."""
        for connection in list(self._connections):
            connection.close(1001, "Going away.")
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)


def _frame(op: int, data: Any) -> JsonObject:
    return {"op": op, "d": data, "s": None, "t": None}
