"""The edge of the program: read settings, configure logging, own resources, run.

    python -m bot          run the bot until SIGTERM or Ctrl-C
    python -m bot sync     register the slash commands globally, then exit
    python -m bot ask "…"  answer in the terminal exactly as the bot would in Discord

Exit status: 0 after a clean shutdown, 1 when Discord or the provider refuses to start,
2 for bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TextIO

import discord
from dotenv import load_dotenv

from bot.config import ConfigError, Settings, load_settings
from bot.discord_app.ask import FairUse
from bot.discord_app.client import AskBot
from bot.fair_use.access import AccessRules
from bot.fair_use.budgets import Budget, DailyBudgets
from bot.fair_use.limits import AskGate, Cooldown, InFlight
from bot.metrics import Metrics
from bot.model.llm import Completer, make_client, open_completer
from bot.model.local_model import LocalModelError
from bot.store.sqlite import SqliteUsageStore
from bot.terminal import Terminal

log = logging.getLogger("bot")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
# Seconds answers cut off at shutdown get to write their closing note.
CLOSING_TIMEOUT = 5.0


class StartupError(Exception):
    """Something the operator must fix before the bot can start; the message says what."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    # Real environment variables win over the .env file. The file is the working
    # directory's: without a path, python-dotenv searches upwards from this module's
    # folder, which misses the operator's .env once the bot is installed as a package.
    load_dotenv(".env", override=False)
    try:
        settings = load_settings(os.environ, require_discord=args.command != "ask")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    # In the terminal, stdout carries the answer; logs go beside it.
    configure_logging(
        settings.log_level, stream=sys.stderr if args.command == "ask" else sys.stdout
    )
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


def configure_logging(level: str, stream: TextIO = sys.stdout) -> None:
    """Log to stdout (hosted platforms keep no files), one line per record."""
    logging.basicConfig(
        level=level,
        stream=stream,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    # The HTTP client logs every request at INFO; that is noise for operators.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # The bot never joins voice, so discord.py's warnings about missing voice libraries
    # would only worry operators.
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


async def run_bot(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Run until `stop` is set (SIGTERM/SIGINT set it), then shut down gracefully.

    On stop, new asks are told the bot is restarting, answers in flight get up to
    SHUTDOWN_GRACE seconds to finish, then everything closes. Returns the exit status;
    raises nothing for the failures an operator can fix.
    """
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    assert settings.discord_token is not None, "load_settings requires the token"
    async with (
        open_fair_use(settings) as fair_use,
        open_completer(settings) as completer,
        AskBot(settings, completer, fair_use) as bot,
    ):
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
async def open_fair_use(settings: Settings) -> AsyncIterator[FairUse]:
    """The limits, usage store and metrics of this process, closed on exit."""
    try:
        store = await SqliteUsageStore.open(settings.data_path)
    except (OSError, sqlite3.Error) as error:
        raise StartupError(
            f"cannot open the usage database in DATA_PATH={settings.data_path}: {error}"
        ) from error
    metrics = Metrics()
    gate = AskGate(settings.max_concurrent_asks, settings.max_queued_asks)
    metrics.track_gate(lambda: gate.running, lambda: gate.queued)
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
            cooldown=Cooldown(settings.ask_cooldown) if settings.ask_cooldown else None,
            gate=gate,
            in_flight=InFlight(),
            budgets=DailyBudgets(
                store, Budget(settings.user_daily_tokens, settings.guild_daily_tokens)
            ),
            metrics=metrics,
        )
    finally:
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)
        await store.close()


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
    # Syncing never calls the model, so no provider (or built-in model) is started.
    async with make_client(settings) as client, open_fair_use(settings) as fair_use:
        completer = Completer.from_settings(client, settings)
        async with AskBot(settings, completer, fair_use, sync_on_start=False) as bot:
            try:
                await bot.login(settings.discord_token.reveal())
            except discord.LoginFailure:
                log.error("Discord rejected DISCORD_TOKEN: reset the token in the developer portal")
                return EXIT_FAILURE
            count = await bot.sync_globally()
    log.info("synced %d command(s) globally; Discord may take up to an hour to show them", count)
    return EXIT_OK


def _stop_on_signals(stop: asyncio.Event) -> None:
    # discord.py installs no signal handlers, and hosts send SIGTERM on every deploy.
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Not on Windows, nor in a loop outside the main thread (tests): the caller stops us.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="A Discord bot that answers /ask with a language model.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot (the default)")
    sub.add_parser("sync", help="register the slash commands globally, then exit")
    ask = sub.add_parser(
        "ask", help="answer in the terminal as the bot would in Discord (no Discord needed)"
    )
    ask.add_argument("prompt", nargs="?", help="the prompt; without it, read prompts until EOF")
    args = parser.parse_args(argv)
    args.command = args.command or "run"
    return args


if __name__ == "__main__":
    raise SystemExit(main())
