"""The edge of the program: read settings, configure logging, own resources, run.

    python -m bot          run the bot until SIGTERM or Ctrl-C
    python -m bot sync     register the slash commands globally, then exit
    python -m bot ask "…"  answer in the terminal exactly as the bot would in Discord

Settings come from the environment and from `.env` in the working directory; real
environment variables win. Exit status: 0 after a clean shutdown, 1 when Discord or the
provider cannot be reached or refuses, or start-up fails, 2 for bad configuration, and
128 + the signal's number (130 for Ctrl-C) when a second SIGINT or SIGTERM cuts a graceful
shutdown short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import NoReturn, TextIO
from urllib.parse import urlsplit

import aiohttp
import discord
import discord.http
import yarl
from dotenv import load_dotenv
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot import logs
from bot.config import ConfigError, Settings, load_settings
from bot.conversation.retention import keep_pruned as keep_conversations_pruned
from bot.conversation.retention import retention
from bot.conversation.settings import ServerSettings
from bot.conversation.tokens import EstimateCounter, open_counter
from bot.conversation.turns import ConversationStore, NewTurn, Turn, TurnId
from bot.discord_app.client import AskBot
from bot.discord_app.pipeline import PROMPT_OVERHEAD_TOKENS, FairUse
from bot.fair_use.access import AccessRules
from bot.fair_use.budgets import (
    Budget,
    DailyBudgets,
    Reservation,
    Scope,
    Totals,
    ask_estimate,
    estimate_tokens,
)
from bot.fair_use.concurrency import AdaptiveConcurrency
from bot.fair_use.limits import AskGate, InFlight, PerUserCap
from bot.fair_use.user_limits import LocalUserLimits
from bot.metrics import Metrics
from bot.model.llm import Completer, make_client, open_completer
from bot.model.local_model import LocalModelError
from bot.store.sqlite import SqliteDatabase
from bot.store.stores import Stores, local_stores, make_redis, redis_address, shared_stores
from bot.terminal import Terminal

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
# Answers the built-in model writes at once for the bot (each slot holds its own context).
LOCAL_SLOTS = 4
# Seconds answers cut off at shutdown get to write their closing note.
CLOSING_TIMEOUT = 5.0
ENV_FILE = ".env"


class StartupError(Exception):
    """Something the operator must fix before the bot can start; the message says what."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        settings = read_settings(require_discord=args.command != "ask")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    # In the terminal, stdout carries the answer; logs go beside it.
    configure_logging(settings, stream=sys.stderr if args.command == "ask" else sys.stdout)
    try:
        if args.command == "sync":
            return asyncio.run(sync_commands(settings))
        if args.command == "ask":
            return asyncio.run(ask_in_terminal(settings, args.prompt))
        return asyncio.run(run_bot(settings))
    except (LocalModelError, StartupError) as error:
        log.error("%s", error)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def read_settings(*, require_discord: bool = True) -> Settings:
    """The settings as `python -m bot` reads them: `.env`, then `os.environ` on top.

    The file is the working directory's `.env`; without a path, python-dotenv searches
    upwards from this module's folder, which misses the operator's `.env` once the bot is
    installed as a package. Real environment variables win over the file. Raises
    `ConfigError` listing every problem.
    """
    load_dotenv(ENV_FILE, override=False)
    return load_settings(os.environ, require_discord=require_discord)


def configure_logging(settings: Settings, stream: TextIO = sys.stdout) -> None:
    """Log to `stream`, one line per record, with the bot's secrets redacted from each."""
    secrets = [
        secret.reveal()
        for secret in (settings.discord_token, settings.openai_api_key, settings.redis_url)
        if secret is not None
    ]
    if settings.redis_url is not None:
        # Libraries may log the password alone, or the URL rebuilt around it.
        password = urlsplit(settings.redis_url.reveal()).password
        if password:
            secrets.append(password)
    logs.configure_logging(
        settings.log_level,
        stream,
        library_level=settings.library_log_level,
        secrets=secrets,
    )
    # The bot never joins voice, so discord.py's warnings about missing voice libraries
    # would only worry operators.
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


async def run_bot(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set (SIGTERM/SIGINT set it), then shut down gracefully.

    On stop, new asks are told the bot is restarting, answers in flight get up to
    SHUTDOWN_GRACE seconds to finish, then everything closes. A second SIGINT or SIGTERM
    during that ends the process at once. Returns the exit status; raises nothing for
    the failures an operator can fix.
    """
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    assert settings.discord_token is not None, "load_settings requires the token"
    metrics = Metrics()
    async with (
        open_database(settings) as database,
        open_stores(settings, database, metrics) as stores,
        open_fair_use(settings, stores, metrics) as fair_use,
        open_completer(
            settings, local_slots=LOCAL_SLOTS, observer=fair_use.concurrency
        ) as completer,
        open_counter(settings, local_base_url=completer.base_url) as counter,
        open_conversations(settings, stores.conversations) as conversations,
        AskBot(
            settings,
            completer,
            fair_use,
            conversations,
            counter,
            settings_store=stores.settings,
            identify_turns=stores.identify_turns,
            shard_claims=stores.shard_claims,
        ) as bot,
    ):
        _fail_fast_on_first_gateway_connect(bot)
        runner = asyncio.create_task(bot.start(settings.discord_token.reveal()))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not runner.done():
            await _drain(fair_use, settings.shutdown_grace)
            await bot.close()
        try:
            await runner
        except discord.LoginFailure:
            log.error("Discord rejected DISCORD_TOKEN: reset the token in the developer portal")
            return EXIT_FAILURE
        except discord.PrivilegedIntentsRequired:
            log.error("Discord refused a privileged intent this bot does not need")
            return EXIT_FAILURE
        except (Exception, _GatewayUnreachable) as error:
            unreachable = discord_unreachable(error)
            if unreachable is None:
                raise
            log.error("%s", unreachable)
            return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK


async def _drain(fair_use: FairUse, grace: float) -> None:
    """Turn new asks away, give those in flight `grace` seconds, then end them."""
    # Asks still waiting in line are told to come back, and need no grace.
    answering = len(fair_use.in_flight) - fair_use.gate.queued
    fair_use.gate.close()
    in_flight = fair_use.in_flight
    if answering:
        log.info("shutting down: finishing %d answer(s), waiting up to %g s", answering, grace)
    else:
        log.info("shutting down")
    try:
        async with asyncio.timeout(grace):
            await in_flight.drained()
    except TimeoutError:
        log.warning("shutting down: ending %d unfinished answer(s)", len(in_flight))
        in_flight.cancel_all()
        # Each one closes its messages with a note as it unwinds; Discord still answers.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSING_TIMEOUT):
                await in_flight.drained()


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[SqliteDatabase]:
    """The SQLite file in DATA_PATH that usage counts and conversations share."""
    try:
        database = await SqliteDatabase.open(settings.data_path)
    except (OSError, sqlite3.Error) as error:
        raise StartupError(
            f"cannot open the usage database in DATA_PATH={settings.data_path}: {error}"
        ) from error
    try:
        yield database
    finally:
        await database.close()


@asynccontextmanager
async def open_stores(
    settings: Settings, database: SqliteDatabase, metrics: Metrics
) -> AsyncIterator[Stores]:
    """This process's stores: in `database` and memory, or in Redis with REDIS_URL.

    Redis is this process's one client and pool, closed on exit; it must answer at start.
    """
    if settings.redis_url is None:
        if settings.shard_ids is not None and settings.shard_count != len(settings.shard_ids):
            log.warning(
                "running shards %s of %s without REDIS_URL: cooldowns and asks in flight are "
                "counted per process, and budgets and conversations are shared only through "
                "DATA_PATH on this machine",
                ",".join(map(str, settings.shard_ids)),
                settings.shard_count,
            )
        yield local_stores(settings, database)
        return
    address = redis_address(settings.redis_url.reveal())
    client = make_redis(settings)
    try:
        try:
            await client.ping()
        except RedisError as error:
            raise StartupError(
                f"cannot reach Redis at {address} (REDIS_URL): {describe_redis_failure(error)}"
            ) from None
        log.info("sharing limits, budgets, conversations and settings through Redis at %s", address)
        stores = shared_stores(settings, client, database, metrics)
        try:
            yield stores
        finally:
            if stores.failover is not None:
                await stores.failover.aclose()
    finally:
        await client.aclose()


def describe_redis_failure(error: RedisError) -> str:
    """A short reason, without the URL (which may carry a password)."""
    if isinstance(error, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return "it refused the password in REDIS_URL"
    if isinstance(error, RedisTimeoutError):
        return "no answer within REDIS_TIMEOUT"
    cause = error.__cause__ or error.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@asynccontextmanager
async def open_conversations(
    settings: Settings, store: ConversationStore
) -> AsyncIterator[ConversationStore]:
    """The store of conversation turns, pruned to CONVERSATION_RETENTION_DAYS while open."""
    pruning = asyncio.create_task(keep_conversations_pruned(store, retention(settings)))
    try:
        yield store
    finally:
        pruning.cancel()
        await asyncio.wait({pruning})


@asynccontextmanager
async def open_fair_use(
    settings: Settings, stores: Stores | None = None, metrics: Metrics | None = None
) -> AsyncIterator[FairUse]:
    """The limits, budgets and metrics of this process, closed on exit.

    The usage store and per-user limits come from `stores`, or from a database in
    DATA_PATH opened here; `metrics` are made here when not given.
    """
    metrics = metrics or Metrics()
    if stores is None:
        async with (
            open_database(settings) as database,
            open_fair_use(settings, local_stores(settings, database), metrics) as fair_use,
        ):
            yield fair_use
        return
    store = stores.usage
    if settings.uses_builtin_model:
        # llama.cpp answers this many at once; more would wait inside it unseen, and a
        # place in line shown here would not be true.
        gate = AskGate(LOCAL_SLOTS, settings.max_queued_asks)
        concurrency = None
    else:
        gate = AskGate(settings.max_concurrent_asks, settings.max_queued_asks)
        concurrency = AdaptiveConcurrency(gate) if settings.adaptive_concurrency else None
    metrics.track_gate(lambda: gate.running, lambda: gate.queued, lambda: gate.limit)
    budgets = DailyBudgets(store, Budget(settings.user_daily_tokens, settings.guild_daily_tokens))
    pruning = asyncio.create_task(budgets.keep_pruned())
    stop_metrics = None
    try:
        if settings.metrics_port is not None:
            try:
                stop_metrics = metrics.serve(settings.metrics_port, settings.metrics_host)
            except OSError as error:
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port} "
                    f"(METRICS_HOST, METRICS_PORT): {error}"
                ) from error
        yield FairUse(
            rules=AccessRules(
                guild_ids=settings.allowed_guild_ids,
                channel_ids=settings.allowed_channel_ids,
                role_ids=settings.allowed_role_ids,
                allow_dms=settings.allow_dms,
            ),
            max_prompt_chars=settings.max_prompt_chars,
            user_limits=stores.user_limits,
            gate=gate,
            in_flight=InFlight(),
            budgets=budgets,
            metrics=metrics,
            concurrency=concurrency,
            reserve_tokens=ask_estimate(
                estimate_tokens(settings.system_prompt) + PROMPT_OVERHEAD_TOKENS,
                settings.max_output_tokens,
            ),
            answer_seconds=settings.openai_timeout,
        )
    finally:
        pruning.cancel()
        await asyncio.wait({pruning})
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)


async def ask_in_terminal(settings: Settings, prompt: str | None) -> int:
    """Answer `prompt`, or every prompt read from stdin, printing the Discord messages.

    stdout gets the messages only; hints, the prompt and why an answer failed go to stderr.
    Returns the exit status documented in `bot.terminal`.
    """
    # One prompt at a time: one slot of the built-in model is enough.
    async with open_completer(settings, local_slots=1) as completer:
        terminal = Terminal(completer, settings, out=sys.stdout, err=sys.stderr)
        if prompt is not None:
            return await terminal.answer(prompt)
        return await terminal.repl(sys.stdin)


async def sync_commands(settings: Settings) -> int:
    """Register the slash commands for every server the bot is in."""
    assert settings.discord_token is not None, "load_settings requires the token"
    # Syncing only logs in and registers commands: no provider (or built-in model), no
    # usage database and no metrics port, so it works beside a running bot.
    async with make_client(settings) as client:
        completer = Completer.from_settings(client, settings)
        fair_use = _fair_use_for_sync(settings)
        async with AskBot(
            settings,
            completer,
            fair_use,
            _NoConversationStore(),
            EstimateCounter(),
            settings_store=_NoSettingsStore(),
            sync_on_start=False,
        ) as bot:
            try:
                await bot.login(settings.discord_token.reveal())
                count = await bot.sync_globally()
                guild_id = settings.discord_guild_id
                if guild_id is not None:
                    await _clear_guild_copies(bot, guild_id)
            except discord.LoginFailure:
                log.error("Discord rejected DISCORD_TOKEN: reset the token in the developer portal")
                return EXIT_FAILURE
            except Exception as error:
                unreachable = discord_unreachable(error)
                if unreachable is None:
                    raise
                log.error("%s", unreachable)
                return EXIT_FAILURE
    log.info("synced %d command(s) globally; Discord may take up to an hour to show them", count)
    return EXIT_OK


async def _clear_guild_copies(bot: AskBot, guild_id: int) -> None:
    """Remove the copies `python -m bot` synced to DISCORD_GUILD_ID on start.

    Discord shows a server both its own commands and the global ones, so with both every
    command would appear twice there.
    """
    guild = discord.Object(id=guild_id)
    bot.tree.clear_commands(guild=guild)
    try:
        await bot.tree.sync(guild=guild)
    except discord.Forbidden:
        log.warning(
            "could not remove the commands synced to DISCORD_GUILD_ID=%d: the bot is not in "
            "that server (or lacks the applications.commands scope there)",
            guild_id,
        )
        return
    log.warning(
        "removed the commands synced to DISCORD_GUILD_ID=%d, which would show twice there "
        "beside the global ones; unset DISCORD_GUILD_ID before starting the bot again, or "
        "it syncs them to that server again and they show twice",
        guild_id,
    )


class _GatewayUnreachable(BaseException):
    """The first gateway connection failed; its cause is the network error.

    A BaseException on purpose: discord.py's shard launcher retries every `Exception`
    forever, five seconds apart, with a traceback each time; this one must end the start.
    """


def _fail_fast_on_first_gateway_connect(bot: AskBot) -> None:
    """Make a failure of the first gateway connection end `bot.start` with its cause.

    discord.py retries every failed gateway connection, logging a traceback each time,
    and a first connection it never made it cannot even resume. Until one connection is
    up, network errors are raised as `_GatewayUnreachable`, which its retry loop does not
    catch; after that its reconnects are left as they are.
    """
    http = bot.http
    connect = http.ws_connect
    connected = False

    async def ws_connect(url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        nonlocal connected
        if connected:
            return await connect(url, compress=compress)
        try:
            socket = await connect(url, compress=compress)
        except _NETWORK_ERRORS as error:
            raise _GatewayUnreachable(str(yarl.URL(url).with_query(None))) from error
        connected = True
        return socket

    http.ws_connect = ws_connect  # type: ignore[method-assign]


class _NoUsageStore:
    """The usage store of a process that answers no asks (`sync`): never opened or read."""

    async def add(self, day: str, user_id: int, guild_id: int | None, tokens: int) -> None:
        raise RuntimeError("this process answers no asks and records no usage")

    async def totals(self, day: str, user_id: int, guild_id: int | None) -> Totals:
        raise RuntimeError("this process answers no asks and reads no usage")

    async def reserve(
        self,
        reservation: Reservation,
        user_limit: int | None,
        guild_limit: int | None,
        now: float,
    ) -> Scope | None:
        raise RuntimeError("this process answers no asks and reserves no tokens")

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        raise RuntimeError("this process answers no asks and records no usage")

    async def prune(self, before: str, now: float | None = None) -> int:
        return 0

    async def close(self) -> None:
        return None


class _NoConversationStore:
    """The conversation store of a process that answers no asks (`sync`): never used."""

    async def save(self, turn: NewTurn, message_ids: Sequence[int] = ()) -> Turn:
        raise RuntimeError("this process answers no asks and stores no conversations")

    async def add_messages(self, turn_id: TurnId, message_ids: Sequence[int]) -> bool:
        return False

    async def turn(self, turn_id: TurnId) -> Turn | None:
        return None

    async def turn_for_message(self, message_id: int) -> Turn | None:
        return None

    async def chain(self, turn_id: TurnId, max_turns: int) -> list[Turn]:
        return []

    async def forget_user(self, user_id: int) -> int:
        return 0

    async def prune(self, older_than: datetime) -> int:
        return 0

    async def close(self) -> None:
        return None


class _NoSettingsStore:
    """The settings store of a process that answers no asks (`sync`): never used."""

    async def server(self, guild_id: int) -> ServerSettings:
        return ServerSettings()

    async def set_model(self, guild_id: int, model: str | None, *, by: int) -> None:
        raise RuntimeError("this process answers no commands and stores no settings")

    async def set_prompt(
        self, guild_id: int, channel_id: int | None, prompt: str | None, *, by: int
    ) -> None:
        raise RuntimeError("this process answers no commands and stores no settings")

    async def reset(self, guild_id: int, *, by: int) -> int:
        raise RuntimeError("this process answers no commands and stores no settings")


def _fair_use_for_sync(settings: Settings) -> FairUse:
    """What `AskBot` needs to build its command tree, with no store and no metrics port."""
    return FairUse(
        rules=AccessRules(
            guild_ids=settings.allowed_guild_ids,
            channel_ids=settings.allowed_channel_ids,
            role_ids=settings.allowed_role_ids,
            allow_dms=settings.allow_dms,
        ),
        max_prompt_chars=settings.max_prompt_chars,
        user_limits=LocalUserLimits(None, PerUserCap(settings.max_asks_per_user)),
        gate=AskGate(settings.max_concurrent_asks, settings.max_queued_asks),
        in_flight=InFlight(),
        budgets=DailyBudgets(_NoUsageStore(), Budget()),
        metrics=Metrics(),
    )


def discord_unreachable(error: BaseException) -> str | None:
    """One line naming Discord and why it could not be reached, or None if `error` is
    not a network failure (it, or what it was raised while handling)."""
    cause = _network_cause(error)
    if cause is None:
        return None
    where = _discord_host()
    if isinstance(cause, aiohttp.ClientConnectorError):
        where = f"{cause.host}:{cause.port}" if cause.port else cause.host
    what = "Discord's gateway" if isinstance(error, _GatewayUnreachable) else "Discord"
    return f"cannot reach {what} at {where}: {_describe_network_failure(cause)}"


# What a failure to reach Discord raises: aiohttp's errors (DNS, refused, TLS, proxy),
# plain socket errors and timeouts, and Discord's own outage answers.
_NETWORK_ERRORS = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    discord.GatewayNotFound,
    discord.DiscordServerError,
)


def _network_cause(error: BaseException | None) -> BaseException | None:
    # discord.py can fail on a first gateway connection with an unrelated error raised
    # while handling the network one, so the chain is searched too.
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _NETWORK_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


def _describe_network_failure(error: BaseException) -> str:
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup failed ({error.os_error.strerror or error.os_error}); check the network"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted ({error.certificate_error})"
    if isinstance(error, aiohttp.ClientSSLError):
        return f"TLS handshake failed ({error.os_error})"
    if isinstance(error, aiohttp.ClientProxyConnectionError):
        return f"the proxy could not be reached ({_os_reason(error.os_error)})"
    if isinstance(error, aiohttp.ClientConnectorError):
        return _os_reason(error.os_error)
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the connection was closed before Discord answered"
    if isinstance(error, discord.GatewayNotFound):
        return "the gateway was not found; Discord may be having an outage"
    if isinstance(error, discord.DiscordServerError):
        return f"Discord answered HTTP {error.status}; Discord may be having an outage"
    if isinstance(error, OSError):
        return _os_reason(error)
    return str(error) or type(error).__name__


def _os_reason(error: OSError) -> str:
    if error.errno == errno.ECONNREFUSED:
        return "connection refused"
    reason = error.strerror or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:]


def _discord_host() -> str:
    url = yarl.URL(discord.http.Route.BASE)
    return f"{url.host}:{url.port}" if url.port and not url.is_default_port() else str(url.host)


def _stop_on_signals(stop: asyncio.Event) -> None:
    # discord.py installs no signal handlers, and hosts send SIGTERM on every deploy.
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            _exit_now(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        # Not on Windows, nor in a loop outside the main thread (tests): the caller stops us.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)


def _exit_now(signum: signal.Signals) -> NoReturn:
    """A second signal during shutdown: the operator wants out now, whatever is unfinished."""
    log.warning(
        "%s again while shutting down: exiting at once; answers still being written are "
        "left as they are",
        signum.name,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    # Not SystemExit: unwinding would wait on the very answers and closes being skipped.
    os._exit(128 + signum)


_SETTINGS_HELP = (
    "Settings are read from the environment and from .env in the working directory; real "
    "environment variables win over .env. .env.example lists every setting with its meaning."
)
_CONFIG_STATUS = "2    configuration missing or malformed (every problem is listed)"
_INTERRUPTED_STATUS = (
    "130  a second Ctrl-C during the graceful shutdown (143: a second SIGTERM); exits at once"
)


def _epilog(*statuses: str) -> str:
    settings = textwrap.fill(_SETTINGS_HELP, 88, initial_indent="  ", subsequent_indent="  ")
    lines = "\n".join(f"  {status}" for status in statuses)
    return f"settings:\n{settings}\n\nexit status:\n{lines}\n"


def _command_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    *statuses: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=_epilog(*statuses),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    run_statuses = (
        "0    stopped cleanly after SIGTERM or Ctrl-C",
        "1    Discord or the model provider could not be reached or refused, or start-up failed",
        _CONFIG_STATUS,
        _INTERRUPTED_STATUS,
    )
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description=textwrap.fill(
            "A Discord bot that answers /ask with a language model. Without a command it "
            "runs the bot (see python -m bot run --help); each command has its own --help.",
            88,
        ),
        epilog=_epilog(*run_statuses),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", title="commands")
    _command_parser(
        sub,
        "run",
        "run the bot (the default)",
        "Connect to Discord and answer /ask and /usage until SIGTERM or Ctrl-C. With "
        "DISCORD_GUILD_ID set, the commands are synced to that server on every start. On the "
        "first SIGTERM or Ctrl-C new asks are turned away and answers in flight get "
        "SHUTDOWN_GRACE seconds to finish; a second one exits at once.",
        *run_statuses,
    )
    _command_parser(
        sub,
        "sync",
        "register the slash commands globally, then exit",
        "Log in to Discord and register /ask and /usage for every server the bot is in, then "
        "exit; Discord may take up to an hour to show them. Opens no usage database, no "
        "metrics port and no model, so it can run beside the bot. With DISCORD_GUILD_ID set, "
        "the copies synced to that server are removed, as every command would otherwise "
        "show twice there; unset DISCORD_GUILD_ID before starting the bot again.",
        "0    the commands were registered",
        "1    Discord could not be reached or refused the token",
        _CONFIG_STATUS,
    )
    ask = _command_parser(
        sub,
        "ask",
        "answer in the terminal as the bot would in Discord (no Discord needed)",
        "Answer a prompt in the terminal, message by message, exactly as the bot would in "
        "Discord. Needs no Discord token; the model settings apply. Without a prompt, read "
        "prompts until end of input (Ctrl-D).",
        "0    answered",
        "1    the answer could not be given (the provider or the built-in model failed)",
        _CONFIG_STATUS,
    )
    ask.add_argument("prompt", nargs="?", help="the prompt; without it, read prompts until EOF")
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    return args


if __name__ == "__main__":
    raise SystemExit(main())
