"""The built-in stores: one SQLite file in the data directory, used from one thread.

SqliteDatabase          the file, and the one thread that owns its only connection
SqliteUsageStore        daily token counts and holds (`bot.fair_use.budgets.UsageStore`)
SqliteConversationStore the turns of conversations (`bot.conversation.turns.ConversationStore`)
SqliteSettingsStore     servers' and channels' settings (`bot.conversation.settings.SettingsStore`)

The entry point opens the database once and makes both stores on it; they share its thread,
so calls from either run one at a time, in order, and never block the event loop:

    database = await SqliteDatabase.open(settings.data_path)
    usage, conversations = SqliteUsageStore(database), SqliteConversationStore(database)
    ...
    await database.close()
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bot.conversation.settings import ServerSettings
from bot.conversation.turns import NewTurn, Turn, TurnId
from bot.fair_use.budgets import Reservation, Scope, Totals

__all__ = [
    "FILE_NAME",
    "SqliteConversationStore",
    "SqliteDatabase",
    "SqliteSettingsStore",
    "SqliteUsageStore",
]

FILE_NAME = "usage.sqlite3"

T = TypeVar("T")


_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS usage (
        day    TEXT    NOT NULL,
        scope  TEXT    NOT NULL CHECK (scope IN ('user', 'guild')),
        id     INTEGER NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (day, scope, id)
    ) WITHOUT ROWID
    """,
    # The estimates held by asks still running; `expires_at` is in Unix seconds.
    """
    CREATE TABLE IF NOT EXISTS holds (
        id         TEXT    PRIMARY KEY,
        day        TEXT    NOT NULL,
        user_id    INTEGER NOT NULL,
        guild_id   INTEGER,
        tokens     INTEGER NOT NULL,
        expires_at REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS holds_by_user ON holds (day, user_id)",
    "CREATE INDEX IF NOT EXISTS holds_by_guild ON holds (day, guild_id)",
    # AUTOINCREMENT: an id is never handed out again, even after its turn is deleted, so an
    # old Follow up button cannot lead into a newer conversation. `created_at` is in Unix
    # seconds. A parent's id is always smaller than its children's.
    """
    CREATE TABLE IF NOT EXISTS turns (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        parent_id     INTEGER CHECK (parent_id < id),
        user_id       INTEGER NOT NULL,
        display_name  TEXT    NOT NULL,
        guild_id      INTEGER,
        channel_id    INTEGER NOT NULL,
        private       INTEGER NOT NULL,
        prompt        TEXT    NOT NULL,
        answer        TEXT    NOT NULL,
        model         TEXT    NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        answer_tokens INTEGER NOT NULL,
        created_at    REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS turns_by_parent ON turns (parent_id)",
    "CREATE INDEX IF NOT EXISTS turns_by_user ON turns (user_id)",
    "CREATE INDEX IF NOT EXISTS turns_by_age ON turns (created_at)",
    """
    CREATE TABLE IF NOT EXISTS turn_messages (
        message_id INTEGER PRIMARY KEY,
        turn_id    INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS turn_messages_by_turn ON turn_messages (turn_id)",
    # One row per setting: `channel_id` 0 for the server's own; `name` is `model` or
    # `prompt`. `changed_by` is the user id of whoever set it, `changed_at` Unix seconds.
    """
    CREATE TABLE IF NOT EXISTS settings (
        guild_id   INTEGER NOT NULL,
        channel_id INTEGER NOT NULL,
        name       TEXT    NOT NULL CHECK (name IN ('model', 'prompt')),
        value      TEXT    NOT NULL,
        changed_by INTEGER NOT NULL,
        changed_at REAL    NOT NULL,
        PRIMARY KEY (guild_id, channel_id, name)
    ) WITHOUT ROWID
    """,
)

_ADD = """
INSERT INTO usage (day, scope, id, tokens) VALUES (?, ?, ?, ?)
ON CONFLICT (day, scope, id) DO UPDATE SET tokens = tokens + excluded.tokens
"""

_USED = "SELECT COALESCE(SUM(tokens), 0) FROM usage WHERE day = ? AND scope = ? AND id = ?"

_HELD = {
    Scope.USER: "SELECT COALESCE(SUM(tokens), 0) FROM holds "
    "WHERE day = ? AND user_id = ? AND expires_at > ?",
    Scope.GUILD: "SELECT COALESCE(SUM(tokens), 0) FROM holds "
    "WHERE day = ? AND guild_id = ? AND expires_at > ?",
}


class SqliteDatabase:
    """One SQLite file, `usage.sqlite3` inside a data directory, and the thread that owns it.

    Every SQLite call runs on one dedicated thread that owns the only connection, so
    the event loop never waits on the disk and calls run one at a time in order. The
    file is in WAL mode, so readers from other processes do not block writes. Every
    write is one `BEGIN IMMEDIATE` transaction: it takes the file's write lock before
    reading, so a write in another process (or through another connection to the same file)
    waits for this one instead of deciding on the same figures. A call that is cancelled
    while its work is under way still completes on the thread.
    Open with `await SqliteDatabase.open(directory)`; close with `await database.close()`.
    """

    def __init__(
        self, path: Path, executor: ThreadPoolExecutor, connection: sqlite3.Connection
    ) -> None:
        self.path = path
        self._executor = executor
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(cls, directory: Path, *, busy_timeout: float = 5.0) -> SqliteDatabase:
        """Open (creating if need be) the directory and the file inside it, with every
        store's tables.

        `busy_timeout` is how long a write waits for another process holding the file.
        """
        path = directory / FILE_NAME
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bot-sqlite")
        loop = asyncio.get_running_loop()
        try:
            connection = await loop.run_in_executor(executor, _connect, path, busy_timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, executor, connection)

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection; use it only inside a function given to `run`."""
        return self._connection

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """Call `function(*args)` on the database's thread and return what it returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the file's write lock from its first read; only
        inside a function given to `run`."""
        connection = self._connection
        # Waits up to the busy timeout for another writer of the file.
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            # SQLite may have rolled back already (a full disk, an interrupt).
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    async def close(self) -> None:
        """Close the file and stop the thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await self.run(self._connection.close)
        # The thread has nothing left to run, so this does not hold up the loop.
        self._executor.shutdown(wait=True)


class SqliteUsageStore:
    """A `UsageStore` in the SQLite database (see `SqliteDatabase` for how it runs).

    Made on a shared database with `SqliteUsageStore(database)`, whose owner closes it (the
    store's `close` then does nothing); or alone with `await SqliteUsageStore.open(directory)`,
    and then `await store.close()` closes the file too.
    """

    def __init__(self, database: SqliteDatabase, *, owns_database: bool = False) -> None:
        self._database = database
        self._owns_database = owns_database
        self.path = database.path

    @classmethod
    async def open(cls, directory: Path, *, busy_timeout: float = 5.0) -> SqliteUsageStore:
        """Open (creating if need be) the directory and the store file inside it.

        `busy_timeout` is how long a write waits for another process holding the file.
        """
        database = await SqliteDatabase.open(directory, busy_timeout=busy_timeout)
        return cls(database, owns_database=True)

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        await self._run(self._add, _rows(day, user_id, guild_id, tokens))

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        return await self._run(self._totals, day, user_id, guild_id)

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        return await self._run(self._reserve, reservation, user_limit, guild_limit, now)

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        await self._run(self._settle, reservation, tokens)

    async def prune(self, before: str, now: float | None = None) -> int:
        return await self._run(self._prune, before, now)

    async def close(self) -> None:
        """Close the file and stop the thread if this store opened them; closing again does
        nothing."""
        if self._owns_database:
            await self._database.close()

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await self._database.run(function, *args)

    @property
    def _connection(self) -> sqlite3.Connection:
        return self._database.connection

    def _writing(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._database.writing()

    def _add(self, rows: list[tuple[str, str, int, int]]) -> None:
        with self._writing() as connection:
            connection.executemany(_ADD, rows)

    def _totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        rows = self._connection.execute(
            "SELECT scope, tokens FROM usage WHERE day = ? AND "
            "((scope = 'user' AND id = ?) OR (scope = 'guild' AND id = ?))",
            (day, user_id, guild_id),
        ).fetchall()
        counts = dict(rows)
        return Totals(user=counts.get("user", 0), guild=counts.get("guild", 0))

    def _reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        day = reservation.day
        limits = [(Scope.USER, reservation.user_id, user_limit)]
        if reservation.guild_id is not None:
            limits.append((Scope.GUILD, reservation.guild_id, guild_limit))
        with self._writing() as connection:
            for scope, scope_id, limit in limits:
                if limit is None:
                    continue
                (used,) = connection.execute(_USED, (day, scope.value, scope_id)).fetchone()
                (held,) = connection.execute(_HELD[scope], (day, scope_id, now)).fetchone()
                if used + held >= limit:
                    return scope
            connection.execute(
                "INSERT INTO holds (id, day, user_id, guild_id, tokens, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    reservation.id,
                    day,
                    reservation.user_id,
                    reservation.guild_id,
                    reservation.tokens,
                    reservation.expires_at,
                ),
            )
        return None

    def _settle(self, reservation: Reservation, tokens: int) -> None:
        with self._writing() as connection:
            connection.execute("DELETE FROM holds WHERE id = ?", (reservation.id,))
            if tokens:
                connection.executemany(
                    _ADD, _rows(reservation.day, reservation.user_id, reservation.guild_id, tokens)
                )

    def _prune(self, before: str, now: float | None) -> int:
        with self._writing() as connection:
            counts = connection.execute("DELETE FROM usage WHERE day < ?", (before,)).rowcount
            holds = connection.execute("DELETE FROM holds WHERE day < ?", (before,)).rowcount
            if now is not None:
                expired = "DELETE FROM holds WHERE expires_at <= ?"
                holds += connection.execute(expired, (now,)).rowcount
        return counts + holds


_TURN_COLUMNS = (
    "id, parent_id, user_id, display_name, guild_id, channel_id, private, prompt, answer, "
    "model, prompt_tokens, answer_tokens, created_at"
)

# The turn and its ancestors, nearest first, at most `max_turns` of them. A parent that is
# missing (deleted by another connection meanwhile) ends the walk like a root.
_CHAIN = f"""
WITH RECURSIVE up (id, parent_id, depth) AS (
    SELECT id, parent_id, 1 FROM turns WHERE id = ?
    UNION ALL
    SELECT turns.id, turns.parent_id, up.depth + 1
    FROM turns JOIN up ON turns.id = up.parent_id
    WHERE up.depth < ?
)
SELECT {", ".join(f"turns.{column.strip()}" for column in _TURN_COLUMNS.split(","))}
FROM up JOIN turns ON turns.id = up.id
ORDER BY up.depth DESC
"""


class SqliteConversationStore:
    """A `ConversationStore` in the SQLite database (see `SqliteDatabase` for how it runs).

    Made on a shared database with `SqliteConversationStore(database)`, whose owner closes
    it; or alone with `await SqliteConversationStore.open(directory)`, closed by its `close`.
    """

    def __init__(self, database: SqliteDatabase, *, owns_database: bool = False) -> None:
        self._database = database
        self._owns_database = owns_database
        self.path = database.path

    @classmethod
    async def open(cls, directory: Path, *, busy_timeout: float = 5.0) -> SqliteConversationStore:
        """Open (creating if need be) the directory and the database file inside it."""
        database = await SqliteDatabase.open(directory, busy_timeout=busy_timeout)
        return cls(database, owns_database=True)

    async def save(self, turn: NewTurn, message_ids: Sequence[int] = ()) -> Turn:
        return await self._database.run(self._save, turn, list(message_ids))

    async def add_messages(self, turn_id: TurnId, message_ids: Sequence[int]) -> bool:
        return await self._database.run(self._add_messages, turn_id, list(message_ids))

    async def turn(self, turn_id: TurnId) -> Turn | None:
        return await self._database.run(self._turn, turn_id)

    async def turn_for_message(self, message_id: int) -> Turn | None:
        return await self._database.run(self._turn_for_message, message_id)

    async def chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1 (got {max_turns})")
        return await self._database.run(self._chain, turn_id, max_turns)

    async def forget_user(self, user_id: int) -> int:
        return await self._database.run(self._delete, "user_id = ?", user_id)

    async def prune(self, older_than: datetime) -> int:
        if older_than.tzinfo is None or older_than.utcoffset() is None:
            raise ValueError("older_than must carry a time zone")
        return await self._database.run(self._delete, "created_at < ?", older_than.timestamp())

    async def close(self) -> None:
        """Close the file and stop the thread if this store opened them; closing again does
        nothing."""
        if self._owns_database:
            await self._database.close()

    def _save(self, turn: NewTurn, message_ids: list[int]) -> Turn:
        with self._database.writing() as connection:
            parent_id = turn.parent_id
            if parent_id is not None:
                found = connection.execute("SELECT 1 FROM turns WHERE id = ?", (parent_id,))
                if found.fetchone() is None:
                    parent_id = None
            cursor = connection.execute(
                "INSERT INTO turns (parent_id, user_id, display_name, guild_id, channel_id, "
                "private, prompt, answer, model, prompt_tokens, answer_tokens, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    parent_id,
                    turn.user_id,
                    turn.display_name,
                    turn.guild_id,
                    turn.channel_id,
                    int(turn.private),
                    turn.prompt,
                    turn.answer,
                    turn.model,
                    turn.prompt_tokens,
                    turn.answer_tokens,
                    turn.created_at.timestamp(),
                ),
            )
            turn_id = cursor.lastrowid
            assert turn_id is not None
            _link(connection, turn_id, message_ids)
        return Turn(
            user_id=turn.user_id,
            display_name=turn.display_name,
            guild_id=turn.guild_id,
            channel_id=turn.channel_id,
            private=turn.private,
            prompt=turn.prompt,
            answer=turn.answer,
            model=turn.model,
            prompt_tokens=turn.prompt_tokens,
            answer_tokens=turn.answer_tokens,
            parent_id=parent_id,
            created_at=turn.created_at,
            id=turn_id,
        )

    def _add_messages(self, turn_id: TurnId, message_ids: list[int]) -> bool:
        with self._database.writing() as connection:
            found = connection.execute("SELECT 1 FROM turns WHERE id = ?", (turn_id,))
            if found.fetchone() is None:
                return False
            _link(connection, turn_id, message_ids)
        return True

    def _turn(self, turn_id: TurnId) -> Turn | None:
        row = self._database.connection.execute(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,)
        ).fetchone()
        return None if row is None else _turn_from(row)

    def _turn_for_message(self, message_id: int) -> Turn | None:
        row = self._database.connection.execute(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE id = "
            "(SELECT turn_id FROM turn_messages WHERE message_id = ?)",
            (message_id,),
        ).fetchone()
        return None if row is None else _turn_from(row)

    def _chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        rows = self._database.connection.execute(_CHAIN, (turn_id, max_turns)).fetchall()
        return [_turn_from(row) for row in rows]

    def _delete(self, where: str, value: object) -> int:
        """Delete the turns matching `where` with their message ids; their children that
        stay become roots. One transaction, so no reader ever sees half of it."""
        doomed = f"SELECT id FROM turns WHERE {where}"
        with self._database.writing() as connection:
            connection.execute(
                f"UPDATE turns SET parent_id = NULL WHERE parent_id IN ({doomed}) "
                f"AND NOT ({where})",
                (value, value),
            )
            connection.execute(f"DELETE FROM turn_messages WHERE turn_id IN ({doomed})", (value,))
            return connection.execute(f"DELETE FROM turns WHERE {where}", (value,)).rowcount


class SqliteSettingsStore:
    """A `SettingsStore` in the SQLite database (see `SqliteDatabase` for how it runs),
    made on a shared database whose owner closes it."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def server(self, guild_id: int) -> ServerSettings:
        return await self._database.run(self._server, guild_id)

    async def set_model(self, guild_id: int, model: str | None, *, by: int) -> None:
        await self._database.run(self._set, guild_id, 0, "model", model, by)

    async def set_prompt(
        self, guild_id: int, channel_id: int | None, prompt: str | None, *, by: int
    ) -> None:
        await self._database.run(self._set, guild_id, channel_id or 0, "prompt", prompt, by)

    async def reset(self, guild_id: int, *, by: int) -> int:
        return await self._database.run(self._reset, guild_id)

    def _server(self, guild_id: int) -> ServerSettings:
        rows = self._database.connection.execute(
            "SELECT channel_id, name, value FROM settings WHERE guild_id = ?", (guild_id,)
        ).fetchall()
        model = prompt = None
        channels: dict[int, str] = {}
        for channel_id, name, value in rows:
            if channel_id:
                channels[channel_id] = value
            elif name == "model":
                model = value
            else:
                prompt = value
        return ServerSettings(model, prompt, channels)

    def _set(self, guild_id: int, channel_id: int, name: str, value: str | None, by: int) -> None:
        with self._database.writing() as connection:
            if value is None:
                connection.execute(
                    "DELETE FROM settings WHERE guild_id = ? AND channel_id = ? AND name = ?",
                    (guild_id, channel_id, name),
                )
                return
            connection.execute(
                "INSERT INTO settings VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (guild_id, channel_id, name) DO UPDATE SET value = excluded.value, "
                "changed_by = excluded.changed_by, changed_at = excluded.changed_at",
                (guild_id, channel_id, name, value, by, datetime.now(UTC).timestamp()),
            )

    def _reset(self, guild_id: int) -> int:
        with self._database.writing() as connection:
            return connection.execute(
                "DELETE FROM settings WHERE guild_id = ?", (guild_id,)
            ).rowcount


def _link(connection: sqlite3.Connection, turn_id: TurnId, message_ids: list[int]) -> None:
    # A message already given to a turn stays with it.
    connection.executemany(
        "INSERT OR IGNORE INTO turn_messages (message_id, turn_id) VALUES (?, ?)",
        [(message_id, turn_id) for message_id in message_ids],
    )


def _turn_from(row: tuple[Any, ...]) -> Turn:
    """A turn from a row of `_TURN_COLUMNS`; SQLite hands back the types that were stored."""
    (
        turn_id,
        parent_id,
        user_id,
        display_name,
        guild_id,
        channel_id,
        private,
        prompt,
        answer,
        model,
        prompt_tokens,
        answer_tokens,
        created_at,
    ) = row
    return Turn(
        user_id=user_id,
        display_name=display_name,
        guild_id=guild_id,
        channel_id=channel_id,
        private=bool(private),
        prompt=prompt,
        answer=answer,
        model=model,
        prompt_tokens=prompt_tokens,
        answer_tokens=answer_tokens,
        parent_id=parent_id,
        created_at=datetime.fromtimestamp(created_at, UTC),
        id=turn_id,
    )


def _rows(
    day: str, user_id: int, guild_id: int | None, tokens: int
) -> list[tuple[str, str, int, int]]:
    rows = [(day, "user", user_id, tokens)]
    if guild_id is not None:
        rows.append((day, "guild", guild_id, tokens))
    return rows


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Made on the store's own thread, which is the only one that ever uses it. Without
    # implicit transactions: every write opens its own with BEGIN IMMEDIATE.
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        # With WAL, NORMAL survives a crash of the bot; only a power cut can lose the
        # last few counts or turns, which is fine for usage figures and chat history.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.execute("COMMIT")
    except BaseException:
        connection.close()
        raise
    return connection
