"""The bot running in-process against the local Discord and model server, as in production.

`run_stack` starts `bot.__main__.run_bot` (the code path of `python -m bot`) with settings
pointing at the fakes, waits until its commands are registered and it is connected, and
on exit stops it the way SIGTERM does, checking that it exits with status 0.

Completion is observed, never slept for: the bot writes one log line per ask when the
ask is over, and `Stack.ask` resolves on that line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bot.__main__ import run_bot
from bot.config import load_settings
from tests.fakes.discord import FakeDiscord, InteractionHandle, User, VisibleMessage
from tests.fakes.openai_server import FakeOpenAI

ASK_LINE = re.compile(r"^ask interaction=(\d+) .*outcome=(\S+)")
MESSAGE_ASK_LINE = re.compile(r"^ask message=(\d+) .*outcome=(\S+)")
WAIT = 30.0


class AskLog(logging.Handler):
    """Resolves a future per interaction when the bot logs that the ask is over."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.connected = asyncio.Event()
        """Set once the bot says it is connected (discord.py's `ready` has fired)."""
        self.outcomes: dict[int, asyncio.Future[str]] = {}
        self.message_outcomes: dict[int, asyncio.Future[str]] = {}
        self.lines: list[str] = []

    def future(self, interaction_id: int) -> asyncio.Future[str]:
        if interaction_id not in self.outcomes:
            self.outcomes[interaction_id] = asyncio.get_running_loop().create_future()
        return self.outcomes[interaction_id]

    def message_future(self, message_id: int) -> asyncio.Future[str]:
        """Resolves when the ask made by channel message `message_id` is over."""
        if message_id not in self.message_outcomes:
            self.message_outcomes[message_id] = asyncio.get_running_loop().create_future()
        return self.message_outcomes[message_id]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("connected to Discord as "):
            self.connected.set()
        self.lines.append(message)
        match = ASK_LINE.match(message)
        if match:
            future = self.future(int(match.group(1)))
            if not future.done():
                future.set_result(match.group(2))
        match = MESSAGE_ASK_LINE.match(message)
        if match:
            future = self.message_future(int(match.group(1)))
            if not future.done():
                future.set_result(match.group(2))


@dataclass
class Asked:
    handle: InteractionHandle
    outcome: str
    messages: list[VisibleMessage] = field(default_factory=list)

    @property
    def contents(self) -> list[str]:
        return [message.content for message in self.messages]


@dataclass
class Stack:
    discord: FakeDiscord
    model: FakeOpenAI
    log: AskLog
    task: asyncio.Task[int]
    stop: asyncio.Event

    def send(
        self, prompt: str, *, user: User | None = None, private: bool | None = None
    ) -> InteractionHandle:
        """A person runs `/ask prompt:…` now."""
        options: dict[str, str | bool] = {"prompt": prompt}
        if private is not None:
            options["private"] = private
        return self.discord.dispatch_interaction("ask", options, user=user)

    async def finished(self, handle: InteractionHandle) -> Asked:
        """Wait until the bot says this ask is over; return what the channel shows for it."""
        async with asyncio.timeout(WAIT):
            outcome = await self.log.future(handle.id)
        return Asked(handle, outcome, self.messages_of(handle))

    async def ask(
        self, prompt: str, *, user: User | None = None, private: bool | None = None
    ) -> Asked:
        return await self.finished(self.send(prompt, user=user, private=private))

    async def replied(self, asked: VisibleMessage) -> Replied:
        """Wait until the bot says the ask made by channel message `asked` is over (the
        `ask message=<id>` line); return the answer the channel shows for it."""
        async with asyncio.timeout(WAIT):
            outcome = await self.log.message_future(asked.id)
        transcript = self.discord.transcript(asked.channel_id or None)
        return Replied(
            asked, outcome, answer_in_channel(transcript, asked, self.discord.bot_user_id)
        )

    async def post(
        self,
        user: User,
        content: str,
        *,
        reply_to: int | None = None,
        mention_bot: bool = False,
        channel_id: int | None = None,
    ) -> Replied:
        """`user` posts a message in the channel; wait until the bot has answered it."""
        asked = self.discord.post_message(
            user, content, reply_to=reply_to, mention_bot=mention_bot, channel_id=channel_id
        )
        return await self.replied(asked)

    def press_follow_up(self, message: VisibleMessage, *, user: User) -> InteractionHandle:
        """`user` presses the "Follow up" button on `message`."""
        button = follow_up_button(message)
        assert button is not None, f"message {message.id} has no Follow up button"
        return self.discord.press_button(message.id, button, user=user)

    async def follow_up(self, message: VisibleMessage, text: str, *, user: User) -> Asked:
        """`user` presses "Follow up" on `message`, types `text` into the modal and submits
        it; wait until the bot says that ask is over."""
        press = self.press_follow_up(message, user=user)
        await press.acknowledged()
        assert press.modal is not None, "the Follow up button opened no modal"
        (field_id,) = modal_inputs(press.modal)
        return await self.finished(self.discord.submit_modal(press, {field_id: text}, user=user))

    def messages_of(self, handle: InteractionHandle) -> list[VisibleMessage]:
        return [
            message
            for message in self.discord.transcript(viewer=handle.interaction.user)
            if message.interaction_id == handle.id
        ]


@dataclass
class Replied:
    """A channel message the bot answered: its outcome and the answer's messages."""

    asked: VisibleMessage
    outcome: str
    messages: list[VisibleMessage] = field(default_factory=list)

    @property
    def contents(self) -> list[str]:
        return [message.content for message in self.messages]


def answer_in_channel(
    transcript: list[VisibleMessage], asked: VisibleMessage, bot_id: int
) -> list[VisibleMessage]:
    """The bot's answer to `asked` as the channel shows it: its reply to `asked`, then
    the bot's messages straight after it that reply to nothing (an answer's later parts)."""
    answer: list[VisibleMessage] = []
    for message in transcript:
        if not answer:
            if message.author_id == bot_id and message.reply_to == asked.id:
                answer.append(message)
            continue
        if (
            message.author_id != bot_id
            or message.reply_to is not None
            or message.interaction_id is not None
        ):
            break
        answer.append(message)
    return answer


def stack_settings(
    discord: FakeDiscord, model: FakeOpenAI, data: Path, overrides: Mapping[str, str]
) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": discord.token,
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-test-key",
        "OPENAI_MAX_RETRIES": "0",
        "OPENAI_TIMEOUT": "5",
        "DISCORD_GUILD_ID": str(discord.guild_id),
        "DATA_PATH": str(data),
        # Streaming pace is measured in bench/; tests keep it short.
        "STREAM_EDIT_INTERVAL": "0.05",
        **overrides,
    }


@asynccontextmanager
async def run_stack(
    discord: FakeDiscord,
    model: FakeOpenAI,
    data: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    wait: float = WAIT,
) -> AsyncIterator[Stack]:
    """`wait` bounds start-up and shutdown; raise it for a slow start (the built-in model)."""
    settings = load_settings(stack_settings(discord, model, data, overrides or {}))
    ask_log = AskLog()
    logger = logging.getLogger("bot")
    logger.addHandler(ask_log)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    stop = asyncio.Event()
    # A bot run earlier on the same fake has been sent READY already: wait for this one's.
    readies_before = discord.gateway.readies_sent
    task = asyncio.create_task(run_bot(settings, stop))
    try:
        async with asyncio.timeout(wait):
            await discord.wait_for(
                lambda: (
                    task.done()
                    or (
                        bool(discord.commands(discord.guild_id))
                        and discord.gateway.readies_sent > readies_before
                    )
                )
            )
        if task.done():
            task.result()
        # discord.py fires `ready` a moment after READY arrives; a bot stopped before that
        # would leave its `ready` event unawaited. Its own "connected" line marks it.
        connected = asyncio.create_task(ask_log.connected.wait())
        async with asyncio.timeout(wait):
            await asyncio.wait({connected, task}, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        if task.done():
            task.result()
        yield Stack(discord, model, ask_log, task, stop)
    finally:
        stop.set()
        status = await asyncio.wait_for(task, wait)
        logger.removeHandler(ask_log)
        logger.setLevel(previous_level)
    assert status == 0


FOLLOW_UP = "Follow up"


def button_labels(components: object) -> list[str]:
    """The labels of the buttons in a message's component rows, in order."""
    labels: list[str] = []
    for row in components if isinstance(components, list) else []:
        for component in row.get("components") or []:
            if component.get("type") == 2:
                labels.append(str(component.get("label")))
    return labels


def follow_up_button(message: VisibleMessage) -> str | None:
    """The custom id of the "Follow up" button on `message`, if it has one."""
    for row in message.components if isinstance(message.components, list) else []:
        for component in row.get("components") or []:
            if component.get("type") == 2 and FOLLOW_UP in str(component.get("label")):
                return str(component.get("custom_id"))
    return None


def modal_inputs(modal: Mapping[str, object]) -> list[str]:
    """The custom ids of the text inputs of a modal as the bot sent it."""
    found: list[str] = []
    rows = modal.get("components")
    for component in rows if isinstance(rows, list) else []:
        child = component.get("component") or (component.get("components") or [{}])[0]
        if child.get("type") == 4:
            found.append(str(child["custom_id"]))
    return found


def no_live_buttons(message: VisibleMessage) -> bool:
    """Nothing left to press but "Follow up": no Stop button outlives its answer."""
    return set(button_labels(message.components)) <= {FOLLOW_UP}
