"""The bot as an operator runs it: a real process, its exit status, its log, its signals.

Each test starts `python -m tests.fakes.launch` (the unmodified `python -m bot` aimed at the
local Discord) from an empty directory, so no `.env` is read, and waits on what the local
Discord or the process's own output shows, never on the clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from bot.answers import replies
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.processes import ROOT, WAIT, launched, settings_for
from tests.stack import Stack, no_live_buttons

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT


def files_in(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in directory.iterdir()}


async def connected(discord_fake: FakeDiscord) -> None:
    """Wait until the bot has registered its commands and been sent READY."""
    await discord_fake.wait_for(
        lambda: (
            bool(discord_fake.commands(discord_fake.guild_id))
            and discord_fake.gateway.readies_sent > 0
        )
    )


async def test_sync_registers_the_commands_for_every_server_then_exits(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path, DISCORD_GUILD_ID="")
    async with launched(fake_discord, settings, tmp_path, "sync") as bot:
        status = await bot.exit_status()

    assert status == EXIT_OK, bot.output
    assert sorted(str(command["name"]) for command in fake_discord.commands()) == [
        "Ask about this",
        "ask",
        "forget",
        "settings",
        "usage",
    ]
    # Without a development server, a global sync touches no server's commands, and
    # needs no gateway connection.
    assert [sync.guild_id for sync in fake_discord.command_syncs] == [None]
    assert fake_discord.gateway.readies_sent == 0
    assert "synced 5 command(s) globally" in bot.output
    assert not fake_openai.requests


async def test_a_rejected_token_exits_1_with_one_clear_line(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    wrong = "MTExMTExMTExMTExMTExMTEx.wrong.not-a-token-discord-issued"
    settings = settings_for(fake_discord, fake_openai, tmp_path, DISCORD_TOKEN=wrong)
    async with launched(fake_discord, settings, tmp_path) as bot:
        status = await bot.exit_status()

    assert status == EXIT_FAILURE
    about_token = [line for line in bot.lines if "DISCORD_TOKEN" in line]
    assert len(about_token) == 1, bot.output
    assert "ERROR" in about_token[0]
    assert "Traceback" not in bot.output
    assert wrong not in bot.output
    assert fake_discord.gateway.identifies == [], "it never got as far as connecting"


async def test_missing_or_malformed_settings_exit_2_naming_each(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    settings = {"OPENAI_TIMEOUT": "soon", "OPENAI_BASE_URL": "localhost:8080"}
    async with launched(fake_discord, settings, tmp_path) as bot:
        status = await bot.exit_status()

    assert status == EXIT_CONFIG
    for name in ("DISCORD_TOKEN", "OPENAI_TIMEOUT", "OPENAI_BASE_URL"):
        assert name in bot.errors, f"{name} not named in:\n{bot.errors}"
    assert "Traceback" not in bot.output
    assert fake_discord.calls == [], "nothing was attempted with a broken configuration"


async def test_an_unusable_data_path_exits_1_with_one_clear_line(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = settings_for(fake_discord, fake_openai, tmp_path, DATA_PATH=str(blocker))
    async with launched(fake_discord, settings, tmp_path) as bot:
        status = await bot.exit_status()

    assert status == EXIT_FAILURE
    errors = [line for line in bot.lines if " ERROR " in line]
    assert len(errors) == 1, bot.output
    assert "DATA_PATH" in errors[0]
    assert "Traceback" not in bot.output
    assert fake_discord.calls == [], "nothing was attempted without a usage database"


async def test_sigterm_while_connected_exits_0(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path)
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        bot.stop()
        status = await bot.exit_status()

    assert status == EXIT_OK
    assert "stopped" in bot.lines[-1]
    assert "Traceback" not in bot.output


async def test_sigterm_lets_the_answer_in_flight_finish(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path)
    gate = fake_openai.gated_stream()
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        in_flight = fake_discord.dispatch_interaction("ask", {"prompt": "A long question"})
        await gate.started()
        await gate.send("Here is")
        await fake_discord.wait_for(lambda: "Here is" in in_flight.messages()[0].content)

        bot.stop()
        await bot.logged("shutting down: finishing 1 answer(s)")
        latecomer = fake_discord.dispatch_interaction(
            "ask", {"prompt": "Another one"}, user=fake_discord.users[1]
        )
        turned_away = await latecomer.answered()
        await gate.send(" the whole answer.")
        await gate.finish()
        status = await bot.exit_status()

    assert status == EXIT_OK
    # The streamed answer was finished: all of it, without the marker or the Stop button.
    assert [message.content for message in in_flight.messages()] == ["Here is the whole answer."]
    assert not any(m.loading or not no_live_buttons(m) for m in in_flight.messages())
    assert turned_away is not None
    assert turned_away.content == replies.RESTARTING
    assert turned_away.ephemeral
    assert "Traceback" not in bot.output


async def test_a_gateway_reconnect_resumes_and_keeps_answering(stack: Stack) -> None:
    discord_fake = stack.discord
    stack.model.script(Reply("Before."), Reply("After."))
    assert (await stack.ask("First?")).contents == ["Before."]

    discord_fake.reconnect()
    # Sent right behind the RECONNECT: the bot only gets it once it has resumed.
    after = await stack.ask("Second?")

    assert after.outcome == "answered"
    assert after.contents == ["After."]
    assert discord_fake.gateway.resumes == 1
    assert len(discord_fake.gateway.identifies) == 1, "resumed, not a new session"


# --- Help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "what_it_does"),
    [
        ((), "Without a command it runs the bot"),
        (("run",), "SHUTDOWN_GRACE seconds to finish"),
        (("sync",), "register /ask and /usage for every server"),
        (("ask",), "Answer a prompt in the terminal"),
    ],
)
async def test_help_says_what_it_does_where_settings_come_from_and_the_exit_statuses(
    tmp_path: Path, command: tuple[str, ...], what_it_does: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *command,
        "--help",
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    text = " ".join(out.decode().split())

    assert process.returncode == EXIT_OK, err.decode()
    assert what_it_does in text
    assert ".env in the working directory" in text
    assert "real environment variables win over .env" in text
    for status in ("0", "1", "2"):
        assert f" {status} " in text.split("exit status:")[1], f"exit status {status}"
    assert "configuration missing or malformed" in text


# --- Discord unreachable ------------------------------------------------------------------


@pytest.mark.parametrize("command", [(), ("sync",)])
async def test_discord_unreachable_exits_1_with_one_line_naming_discord_and_the_cause(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    closed_port: int,
    command: tuple[str, ...],
) -> None:
    nowhere = f"127.0.0.1:{closed_port}"
    settings = settings_for(
        fake_discord,
        fake_openai,
        tmp_path,
        FAKE_DISCORD_URL=f"http://{nowhere}/api/v10",
        FAKE_DISCORD_GATEWAY=f"ws://{nowhere}/",
    )
    async with launched(fake_discord, settings, tmp_path, *command) as bot:
        status = await bot.exit_status()

    assert status == EXIT_FAILURE, bot.output
    errors = [line for line in bot.lines if " ERROR " in line]
    assert len(errors) == 1, bot.output
    assert errors[0].endswith(f"cannot reach Discord at {nowhere}: connection refused")
    assert "Traceback" not in bot.output
    assert len(bot.lines) <= 3, bot.output
    assert bot.errors == ""


@pytest.mark.parametrize("shard_count", ["", "2"])
async def test_an_unreachable_gateway_exits_1_with_one_line(
    fake_discord: FakeDiscord,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    closed_port: int,
    shard_count: str,
) -> None:
    nowhere = f"127.0.0.1:{closed_port}"
    # Where Discord says its gateway is (the bot asks when it picks its shard count), and
    # where discord.py looks with a fixed count.
    fake_discord.advertised_gateway_url = f"ws://{nowhere}/"
    settings = settings_for(
        fake_discord,
        fake_openai,
        tmp_path,
        FAKE_DISCORD_GATEWAY=f"ws://{nowhere}/",
        SHARD_COUNT=shard_count,
    )
    async with launched(fake_discord, settings, tmp_path) as bot:
        status = await bot.exit_status()

    assert status == EXIT_FAILURE, bot.output
    errors = [line for line in bot.lines if " ERROR " in line]
    assert len(errors) == 1, bot.output
    assert errors[0].endswith(f"cannot reach Discord's gateway at {nowhere}: connection refused")
    assert "Traceback" not in bot.output
    assert fake_discord.gateway.identifies == []


# --- sync beside a running bot --------------------------------------------------------------


async def test_sync_opens_neither_the_metrics_port_nor_the_usage_database(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # The running bot holds the metrics port and the database; sync must need neither.
    with socket.socket() as metrics_in_use:
        metrics_in_use.bind(("127.0.0.1", 0))
        metrics_in_use.listen()
        port = metrics_in_use.getsockname()[1]
        unusable = tmp_path / "not-a-directory"
        unusable.write_text("")
        settings = settings_for(
            fake_discord,
            fake_openai,
            tmp_path,
            DISCORD_GUILD_ID="",
            METRICS_PORT=str(port),
            DATA_PATH=str(unusable),
        )
        async with launched(fake_discord, settings, tmp_path, "sync") as bot:
            status = await bot.exit_status()

    assert status == EXIT_OK, bot.output
    assert sorted(str(command["name"]) for command in fake_discord.commands()) == [
        "Ask about this",
        "ask",
        "forget",
        "settings",
        "usage",
    ]
    assert "metrics on" not in bot.output
    assert files_in(tmp_path) == {"not-a-directory": ""}, "no database was created"


async def test_sync_with_a_development_server_removes_its_copies_and_says_so(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path)
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        bot.stop()
        assert await bot.exit_status() == EXIT_OK
    assert fake_discord.commands(fake_discord.guild_id), "the bot synced to its server"

    async with launched(fake_discord, settings, tmp_path, "sync") as sync:
        status = await sync.exit_status()

    assert status == EXIT_OK, sync.output
    assert sorted(str(command["name"]) for command in fake_discord.commands()) == [
        "Ask about this",
        "ask",
        "forget",
        "settings",
        "usage",
    ]
    # Discord shows a server its own commands and the global ones: each would show twice.
    assert fake_discord.commands(fake_discord.guild_id) == []
    warning = await sync.logged("DISCORD_GUILD_ID")
    assert " WARNING " in warning
    assert "twice" in warning
    assert "unset DISCORD_GUILD_ID" in warning
    assert "Traceback" not in sync.output


# --- Secrets in logs ------------------------------------------------------------------------


async def test_no_secret_or_prompt_is_logged_even_at_debug(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    api_key = "sk-test-secret-0123456789abcdefghij"
    settings = settings_for(
        fake_discord,
        fake_openai,
        tmp_path,
        OPENAI_API_KEY=api_key,
        LOG_LEVEL="DEBUG",
        LIBRARY_LOG_LEVEL="DEBUG",
    )
    prompts = [
        "What is the capital of Portugal, please?",
        "Tell me a secret about octopuses",
        "Whisper privately about lighthouses",
    ]
    fake_openai.script(*(Reply(f"Answer number {n}.") for n in range(len(prompts))))
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        handles = []
        for n, prompt in enumerate(prompts):
            options: dict[str, str | bool] = {"prompt": prompt}
            if n == 2:
                options["private"] = True
            handle = fake_discord.dispatch_interaction("ask", options)
            handles.append(handle)
            line = await bot.logged(f"ask interaction={handle.id} ")
            assert "outcome=answered" in line, bot.output
        bot.stop()
        status = await bot.exit_status()

    assert status == EXIT_OK, bot.output
    logged = bot.output
    # The libraries did log their payloads and requests, so the scan below means something.
    assert " DEBUG   discord.gateway: " in logged
    assert "INTERACTION_CREATE" in logged
    assert "/webhooks/" in logged
    assert " DEBUG   openai." in logged
    secrets = {"bot token": fake_discord.token, "API key": api_key}
    secrets |= {f"interaction token {h.id}": h.token for h in handles}
    secrets |= {f"prompt {n}": prompt for n, prompt in enumerate(prompts)}
    for name, secret in secrets.items():
        leaks = [line for line in logged.splitlines() if secret in line]
        assert not leaks, f"the {name} was logged:\n" + "\n".join(leaks)


async def test_library_debug_lines_need_to_be_asked_for(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path, LOG_LEVEL="DEBUG")
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        bot.stop()
        status = await bot.exit_status()

    assert status == EXIT_OK, bot.output
    assert " INFO    discord." in bot.output
    # LOG_LEVEL is the bot's own level; the libraries' payload dumps stay off.
    library_debug = [line for line in bot.lines if re.search(r" DEBUG +(?!bot[.:])\S", line)]
    assert library_debug == []


# --- Signals --------------------------------------------------------------------------------


async def test_a_second_ctrl_c_exits_at_once_with_130(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake_discord, fake_openai, tmp_path)
    gate = fake_openai.gated_stream()
    async with launched(fake_discord, settings, tmp_path) as bot:
        await connected(fake_discord)
        in_flight = fake_discord.dispatch_interaction("ask", {"prompt": "A long question"})
        request = await gate.started()
        await gate.send("Here is")
        await fake_discord.wait_for(lambda: "Here is" in in_flight.messages()[0].content)

        bot.interrupt()
        await bot.logged("shutting down: finishing 1 answer(s)")
        bot.interrupt()
        status = await bot.exit_status()

    assert status == EXIT_INTERRUPTED, bot.output
    why = [line for line in bot.lines if "SIGINT again" in line]
    assert len(why) == 1, bot.output
    assert "exiting at once" in why[0]
    assert "Traceback" not in bot.output
    # The held answer was still being written: the process left without waiting for it.
    async with asyncio.timeout(WAIT):
        assert await request.finished() == "client_disconnected"
