"""Terminal mode: the same answers as in Discord, printed message by message."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from bot.answers.chunking import split_message
from bot.config import Settings, load_settings
from bot.model.llm import Completer
from bot.model.local_model import INSTALL_HINT
from bot.terminal import Terminal
from tests.fakes.openai_server import FakeOpenAI, Reply, StreamReply, start_fake_openai

ROOT = Path(__file__).resolve().parent.parent
LONG_ANSWER = "".join(
    f"Paragraph {n}: " + "the quick brown fox jumps over the lazy dog. " * 12 + "\n\n"
    f"```python\nprint({n})\n```\n\n"
    for n in range(12)
)


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with start_fake_openai() as fake:
        yield fake


async def run_terminal(server: FakeOpenAI, prompt: str, *, stream: bool) -> str:
    settings = settings_for(server, stream=stream)
    out = io.StringIO()
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        completer = Completer.from_settings(client, settings)
        # A short edit interval keeps streamed tests quick; pacing is benchmarked, not asserted.
        status = await Terminal(completer, settings, out=out).answer(prompt)
    assert status == 0
    return out.getvalue()


def settings_for(server: FakeOpenAI, *, stream: bool) -> Settings:
    return load_settings(
        {
            "OPENAI_BASE_URL": server.base_url,
            "STREAM_RESPONSES": str(stream).lower(),
            "STREAM_EDIT_INTERVAL": "0.01",
        },
        require_discord=False,
    )


def printed_messages(output: str) -> list[str]:
    """The messages between the rules, as the terminal printed them."""
    messages = []
    current = output
    while "─── message " in current:
        body, _, rest = current.partition("\n─── message ")
        messages.append(body)
        current = rest.split("───\n", 1)[1] if "───\n" in rest else ""
    return messages


@pytest.mark.parametrize("stream", [False, True])
async def test_short_answer_is_one_message(server: FakeOpenAI, stream: bool) -> None:
    server.script(Reply("The sea is calm tonight."))
    output = await run_terminal(server, "haiku", stream=stream)
    assert output == "The sea is calm tonight.\n─── message 1 · 24 characters ───\n"


@pytest.mark.parametrize("stream", [False, True])
async def test_long_answer_prints_each_discord_message(server: FakeOpenAI, stream: bool) -> None:
    behaviour = StreamReply(LONG_ANSWER) if stream else Reply(LONG_ANSWER)
    server.script(behaviour)
    output = await run_terminal(server, "essay", stream=stream)
    expected = split_message(LONG_ANSWER)
    assert len(expected) > 1
    assert printed_messages(output) == expected
    for number, message in enumerate(expected, start=1):
        assert f"─── message {number} · {len(message)} characters ───" in output


async def test_errors_are_printed_as_the_user_would_see_them(server: FakeOpenAI) -> None:
    server.script(Reply(""))
    output = await run_terminal(server, "anything", stream=False)
    assert "empty answer" in output


def run_cli(
    *args: str, env: dict[str, str], stdin: str = "", cwd: Path = ROOT / "tests"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,  # tests/ has no .env
        timeout=120,
        check=False,
    )


async def test_dotenv_is_read_from_the_working_directory_and_the_environment_wins(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"OPENAI_BASE_URL={server.base_url}\nOPENAI_MODEL=from-dotenv\nSYSTEM_PROMPT=Be terse.\n"
    )
    env = {"PYTHONPATH": str(ROOT), "OPENAI_MODEL": "from-environment"}
    result = await asyncio.to_thread(run_cli, "ask", "hi", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = server.requests[0].json
    assert body["model"] == "from-environment"
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}


def test_a_bad_dotenv_value_is_reported_with_exit_status_2(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_TIMEOUT=soon\n")
    result = run_cli("ask", "hi", env={"PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.returncode == 2
    assert "OPENAI_TIMEOUT" in result.stderr
    assert "Traceback" not in result.stderr


async def test_cli_answers_without_a_discord_token(server: FakeOpenAI) -> None:
    server.script(Reply("Forty-two."))
    env = {"OPENAI_BASE_URL": server.base_url, "PYTHONPATH": str(ROOT)}
    result = await asyncio_run_cli(["ask", "What is the answer?"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Forty-two.\n─── message 1 · 10 characters ───\n"


async def test_cli_reads_prompts_until_end_of_input(server: FakeOpenAI) -> None:
    server.script(Reply("One."), Reply("Two."))
    env = {"OPENAI_BASE_URL": server.base_url, "PYTHONPATH": str(ROOT)}
    result = await asyncio_run_cli(["ask"], env, stdin="first\n\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert "One." in result.stdout
    assert "Two." in result.stdout
    assert [r.json["messages"][-1]["content"] for r in server.requests] == ["first", "second"]


async def asyncio_run_cli(
    args: list[str], env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    # The fake server runs on this event loop, so the child runs in a worker thread.
    return await asyncio.to_thread(run_cli, *args, env=env, stdin=stdin)


def test_missing_local_model_extra_names_the_install_command(tmp_path: Path) -> None:
    # A Python that cannot import xllamacpp: shadow it with a module that fails to import.
    shadow = tmp_path / "xllamacpp.py"
    shadow.write_text("raise ImportError('not installed')\n")
    result = run_cli(
        "ask", "hello", env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    )
    assert result.returncode == 1
    assert INSTALL_HINT in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.real_model
def test_builtin_model_answers_with_no_accounts() -> None:
    result = run_cli("ask", "Say hello.", env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "─── message 1 · " in result.stdout
    assert "built-in model" in result.stderr
