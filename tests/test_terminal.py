"""Terminal mode: the same answers as in Discord, printed message by message."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import re
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from bot.answers import replies
from bot.answers.chunking import split_message
from bot.answers.formatting import final_parts
from bot.config import Settings, load_settings
from bot.model.llm import Completer
from bot.model.local_model import INSTALL_HINT
from bot.terminal import (
    BUILTIN_HINT,
    EMPTY_PROMPT,
    ERASE_LINE,
    HINT,
    PROMPT,
    THINKING,
    Terminal,
)
from tests.fakes.openai_server import (
    FakeOpenAI,
    Reply,
    StreamReply,
    server_error,
    start_fake_openai,
)

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


async def run_terminal(server: FakeOpenAI, prompt: str, *, stream: bool, status: int = 0) -> str:
    settings = settings_for(server, stream=stream)
    out = io.StringIO()
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        completer = Completer.from_settings(client, settings)
        # A short edit interval keeps streamed tests quick; pacing is benchmarked, not asserted.
        terminal = Terminal(completer, settings, out=out, err=io.StringIO())
        assert await terminal.answer(prompt) == status
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
    output = await run_terminal(server, "anything", stream=False, status=1)
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


@pytest.mark.real_model
def test_builtin_model_answers_with_no_accounts() -> None:
    result = run_cli("ask", "Say hello.", env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "─── message 1 · " in result.stdout
    assert "built-in model" in result.stderr


# --- exit statuses: stdout is the Discord messages, stderr says why there was no answer ----


def clean_env(**variables: str) -> dict[str, str]:
    """An environment built from scratch, so no variable of the machine running the tests
    leaks into the child."""
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **variables}


async def test_a_provider_failure_exits_1_with_the_reason_on_stderr(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    server.script(server_error(500))
    env = clean_env(OPENAI_BASE_URL=server.base_url, OPENAI_MAX_RETRIES="0")
    result = await asyncio.to_thread(run_cli, "ask", "hi", env=env, cwd=tmp_path)
    assert result.returncode == 1
    sentence = (
        "The language model service is unavailable right now. Please try again in a few minutes."
    )
    assert result.stdout == f"{sentence}\n─── message 1 · {len(sentence)} characters ───\n"
    assert "No answer: the provider could not be reached or failed." in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_prompt_exits_2_with_the_reason_on_stderr(tmp_path: Path) -> None:
    # Checked before any model is asked, so no provider is needed.
    result = run_cli(
        "ask", "  ", env=clean_env(OPENAI_BASE_URL="http://127.0.0.1:9/v1"), cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert EMPTY_PROMPT in result.stderr


async def test_prompts_from_a_pipe_exit_1_if_any_had_no_answer(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    server.script(Reply("One."), server_error(503), Reply("Three."))
    env = clean_env(OPENAI_BASE_URL=server.base_url, OPENAI_MAX_RETRIES="0")
    result = await asyncio.to_thread(
        run_cli, "ask", env=env, stdin="first\nsecond\nthird\n", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "One." in result.stdout
    assert "Three." in result.stdout
    assert result.stderr.count("No answer:") == 1


# --- no provider and no built-in model --------------------------------------------------


def test_no_provider_and_no_builtin_model_names_both_ways_out(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['xllamacpp'] = None; "
        "from bot.__main__ import main; raise SystemExit(main(['ask', 'hi']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()  # one short message
    assert "set OPENAI_API_KEY (or OPENAI_BASE_URL for a compatible server" in line
    assert f"install the built-in model (xllamacpp is missing) with: {INSTALL_HINT}" in line
    assert "Traceback" not in result.stderr


# --- the live display on a terminal ------------------------------------------------------

# Bounds every wait on the child; never reached unless something hangs.
WAIT = 60.0
RULE_LINE = re.compile(r"\n─── message (\d+) · (\d+) characters ───\n")
# Starts with a code block, and has one cut inside code and one between paragraphs.
CODE_ANSWER = (
    "```python\ndef main() -> None:\n    total = 0\n"
    + "\n".join(f"    total += compute({n})  # step {n} of the long loop" for n in range(60))
    + "\n    print(total)\n```\n\n"
    + "".join(
        f"Step {n} explained: " + "the value grows as each step adds its share. " * 6 + "\n\n"
        for n in range(8)
    )
    + "```bash\n"
    + "\n".join(f"echo line {n}" for n in range(40))
    + "\n```\n\nThat is all."
)


def _take_terminal() -> None:
    # In the child, after setsid: make the pseudo-terminal its controlling terminal, so that
    # Ctrl-C typed there sends it SIGINT as a real terminal would.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Screen:
    """`python -m bot ...` on a pseudo-terminal, read as the person at that terminal sees it."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self._raw = bytearray()
        self._changed = asyncio.Event()
        self._closed = False
        self._seen = 0
        asyncio.get_running_loop().add_reader(master, self._read)

    @classmethod
    async def start(cls, *args: str, env: dict[str, str], cwd: Path) -> Screen:
        master, slave = os.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                *args,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master)

    @property
    def text(self) -> str:
        """Everything printed so far, with the terminal's line ends as plain newlines."""
        return self._raw.decode(errors="replace").replace("\r\n", "\n")

    def type(self, keys: str) -> None:
        os.write(self._master, keys.encode())

    async def expect(self, wanted: str) -> str:
        """Wait until `wanted` is printed after what earlier calls waited for; return the
        screen up to the end of it."""
        async with asyncio.timeout(WAIT):
            while (found := self.text.find(wanted, self._seen)) < 0:
                if self._closed:
                    raise AssertionError(f"{wanted!r} never appeared in {self.text!r}")
                self._changed.clear()
                await self._changed.wait()
        self._seen = found + len(wanted)
        return self.text[: self._seen]

    async def exit_status(self) -> int:
        """Wait for the child to exit and close the terminal; return its exit status."""
        async with asyncio.timeout(WAIT):
            status = await self.process.wait()
            while not self._closed:
                self._changed.clear()
                await self._changed.wait()
        return status

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if not self._closed:
            self._stop_reading()

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the child and all it started have closed the terminal
            data = b""
        if data:
            self._raw += data
        else:
            self._stop_reading()
        self._changed.set()

    def _stop_reading(self) -> None:
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        self._closed = True


@pytest.fixture
async def terminal_env(server: FakeOpenAI) -> dict[str, str]:
    # A short edit interval makes the live display redraw often, as a fast model would.
    return clean_env(OPENAI_BASE_URL=server.base_url, STREAM_EDIT_INTERVAL="0.01")


def visible(screen: str) -> str:
    """The screen without the thinking indicator, which is erased once text arrives."""
    return screen.replace(f"{THINKING}\r", "").replace(ERASE_LINE, "")


def rules_and_bodies(screen: str) -> tuple[list[tuple[int, int]], list[str]]:
    """The (number, length) of every message rule on `screen`, and the text before each."""
    pieces = RULE_LINE.split(screen)
    rules = [(int(pieces[i]), int(pieces[i + 1])) for i in range(1, len(pieces) - 1, 3)]
    return rules, pieces[0:-1:3]


@pytest.mark.parametrize(
    "answer", [CODE_ANSWER, LONG_ANSWER], ids=["starting-with-code", "paragraphs"]
)
async def test_a_long_streamed_answer_shows_each_message_once_with_its_rule(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path, answer: str
) -> None:
    server.script(StreamReply(answer, interval=0.001))
    expected = split_message(answer)
    assert len(expected) > 2
    screen = await Screen.start("ask", "explain", env=terminal_env, cwd=tmp_path)
    try:
        last_rule = f"─── message {len(expected)} · {len(expected[-1])} characters ───\n"
        shown = visible(await screen.expect(last_rule))
        assert await screen.exit_status() == 0
    finally:
        await screen.close()

    rules, bodies = rules_and_bodies(shown)
    assert rules == [(number, len(message)) for number, message in enumerate(expected, start=1)]
    assert bodies == expected  # nothing printed twice, nothing taken back
    assert "as sent" not in shown
    assert not shown.startswith("```python\n```")  # no empty code block first


async def test_a_message_shown_whole_while_writing_still_gets_its_rule(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    expected = split_message(LONG_ANSWER)
    # Past the limit but not yet settled: message 1 is already cut where it will stay.
    unsettled = LONG_ANSWER[:2050]
    assert split_message(unsettled)[0] == expected[0]
    gate = server.gated_stream()
    screen = await Screen.start("ask", "essay", env=terminal_env, cwd=tmp_path)
    try:
        await gate.send(LONG_ANSWER[:1000])
        await screen.expect(LONG_ANSWER[:1000])
        await gate.send(unsettled[1000:])
        # The one redraw for this text: message 1 in full, still being written.
        await screen.expect(LONG_ANSWER[1000:1400])
        await gate.send(LONG_ANSWER[2050:])
        await gate.finish()
        last_rule = f"─── message {len(expected)} · {len(expected[-1])} characters ───\n"
        shown = visible(await screen.expect(last_rule))
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    rules, bodies = rules_and_bodies(shown)
    assert rules == [(number, len(message)) for number, message in enumerate(expected, start=1)]
    assert bodies == expected


async def test_an_answer_starting_with_code_shows_no_empty_code_block(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    answer = "```python\nprint('hello')\n```\n\nThat prints hello."
    gate = server.gated_stream()
    screen = await Screen.start("ask", "code", env=terminal_env, cwd=tmp_path)
    try:
        # Shown at once, as the first text always is, while the block is still open.
        await gate.send("```python")
        await screen.expect("```python")
        await gate.send(answer.removeprefix("```python"))
        await gate.finish()
        shown = visible(await screen.expect(f"─── message 1 · {len(answer)} characters ───\n"))
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    assert shown == f"{answer}\n─── message 1 · {len(answer)} characters ───\n"


async def test_the_thinking_indicator_shows_until_the_first_text(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    gate = server.gated_stream()
    screen = await Screen.start("ask", "hi", env=terminal_env, cwd=tmp_path)
    try:
        await gate.started()
        await screen.expect(THINKING)
        await gate.send("Hello there.")
        shown = await screen.expect("Hello there.")
        await gate.finish()
        await screen.expect("─── message 1 · 12 characters ───\n")
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    # Erased from the start of its line just before the text is printed there.
    assert shown.endswith(f"{THINKING}\r{ERASE_LINE}Hello there.")


async def test_interactive_session_hint_prompt_and_ctrl_d(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    server.script(Reply("Forty-two."))
    screen = await Screen.start("ask", env=terminal_env, cwd=tmp_path)
    try:
        start = await screen.expect(PROMPT)
        assert start.endswith(f"{HINT}\n{PROMPT}")
        assert BUILTIN_HINT not in start  # a provider is configured
        screen.type("What is the answer?\r")
        await screen.expect("Forty-two.\n─── message 1 · 10 characters ───\n")
        await screen.expect(PROMPT)
        screen.type("\x04")  # Ctrl-D
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    # The shell's prompt then starts on a new line.
    assert screen.text.endswith(f"{PROMPT}\n")


async def test_ctrl_c_at_the_prompt_quits_at_once(
    terminal_env: dict[str, str], tmp_path: Path
) -> None:
    screen = await Screen.start("ask", env=terminal_env, cwd=tmp_path)
    try:
        await screen.expect(PROMPT)
        screen.type("\x03")  # Ctrl-C
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    assert screen.text.endswith("\n")
    assert "Traceback" not in screen.text


async def test_ctrl_c_during_an_answer_stops_it_and_returns_to_the_prompt(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    gate = server.gated_stream()
    server.script(Reply("Next answer."))
    kept = "Partial answer so far."
    [stopped] = final_parts(kept, replies.STOPPED_NOTE)
    screen = await Screen.start("ask", env=terminal_env, cwd=tmp_path)
    try:
        await screen.expect(PROMPT)
        screen.type("Tell me a story\r")
        request = await gate.started()
        await gate.send(kept)
        await screen.expect(kept)
        screen.type("\x03")
        await screen.expect(
            f"{replies.STOPPED_NOTE}\n─── message 1 · {len(stopped)} characters ───\n"
        )
        await screen.expect(PROMPT)
        # The stop reached the model: the request was abandoned, like the Stop button does.
        assert await request.finished() == "client_disconnected"
        # The session goes on.
        screen.type("And then?\r")
        await screen.expect("Next answer.\n─── message 1 · 12 characters ───\n")
        await screen.expect(PROMPT)
        screen.type("\x04")
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    assert "restart" not in screen.text
    assert "Traceback" not in screen.text


async def test_ctrl_c_stops_a_single_prompt_keeping_its_text(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path
) -> None:
    gate = server.gated_stream()
    kept = "The first part of the answer."
    [stopped] = final_parts(kept, replies.STOPPED_NOTE)
    screen = await Screen.start("ask", "Tell me a story", env=terminal_env, cwd=tmp_path)
    try:
        await gate.send(kept)
        await screen.expect(kept)
        screen.type("\x03")
        await screen.expect(
            f"{replies.STOPPED_NOTE}\n─── message 1 · {len(stopped)} characters ───\n"
        )
        assert await screen.exit_status() == 130  # as for any command ended by Ctrl-C
    finally:
        await screen.close()
    assert "restart" not in screen.text


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
async def test_ctrl_c_before_any_text_stops_the_answer(
    server: FakeOpenAI, terminal_env: dict[str, str], tmp_path: Path, stream: bool
) -> None:
    gate = server.gated_stream()
    env = {**terminal_env, "STREAM_RESPONSES": str(stream).lower()}
    screen = await Screen.start("ask", env=env, cwd=tmp_path)
    try:
        await screen.expect(PROMPT)
        screen.type("Tell me a story\r")
        request = await gate.started()
        await screen.expect(THINKING)
        screen.type("\x03")
        note = replies.STOPPED_NOTE
        shown = await screen.expect(f"{note}\n─── message 1 · {len(note)} characters ───\n")
        await screen.expect(PROMPT)
        assert await request.finished() == "client_disconnected"
        screen.type("\x04")
        assert await screen.exit_status() == 0
    finally:
        await screen.close()
    assert "restart" not in screen.text
    assert ERASE_LINE in shown  # the indicator is gone


async def test_the_hint_says_when_the_builtin_model_is_tiny(server: FakeOpenAI) -> None:
    # Settings with no provider mean the built-in model; the completer here still talks to
    # the fake, so only what the session says about the model is under test.
    builtin = load_settings({}, require_discord=False)
    assert builtin.uses_builtin_model
    master, slave = os.openpty()
    err = io.StringIO()
    try:
        # Wrapping a descriptor opens nothing, so it cannot block.
        with os.fdopen(slave, encoding="utf-8") as stdin:
            os.write(master, b"\x04")  # Ctrl-D at once
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k") as client:
                completer = Completer.from_settings(client, builtin)
                terminal = Terminal(completer, builtin, out=io.StringIO(), err=err)
                assert await terminal.repl(stdin) == 0
    finally:
        os.close(master)
    assert err.getvalue().splitlines()[0] == HINT + BUILTIN_HINT
    assert "tiny" in BUILTIN_HINT
