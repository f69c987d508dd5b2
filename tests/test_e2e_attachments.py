"""Files and images end to end: `/ask file:` and attachments on a reply, through the local
Discord (its CDN serves the files) and the scripted model server.

What is asserted is what people see and what the model was sent: a file's text in the
request under its name, an image as an image part (or left out, with a note, for a model
that cannot see), and refusals shown before anything is downloaded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as Pillow

from bot.answers import replies
from tests.fakes.discord import FakeDiscord, Upload
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.stack import WAIT, Asked, Stack, run_stack

NOT_STREAMED = {"STREAM_RESPONSES": "false"}
CODE = b'def greet(name):\n    return f"Hello, {name}!"  # caf\xc3\xa9\n'


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Pillow.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF showing `text` in Helvetica, written by hand (offsets computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@asynccontextmanager
async def bot(
    discord: FakeDiscord, model: FakeOpenAI, data: Path, overrides: Mapping[str, str]
) -> AsyncIterator[Stack]:
    async with run_stack(discord, model, data, {**NOT_STREAMED, **overrides}) as running:
        yield running


async def ask_with_file(stack: Stack, prompt: str, upload: Upload) -> Asked:
    handle = stack.discord.dispatch_interaction("ask", {"prompt": prompt, "file": upload})
    return await stack.finished(handle)


def user_content(model: FakeOpenAI, index: int = -1) -> Any:
    """The content of the last user message of the model request at `index`."""
    messages = model.requests[index].json["messages"]
    return next(m for m in reversed(messages) if m["role"] == "user")["content"]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


async def test_a_code_file_is_answered_with_its_content_in_the_request(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Reply("It greets someone."))
    async with bot(fake_discord, fake_openai, tmp_path, {}) as stack:
        asked = await ask_with_file(stack, "What does this do?", Upload("greet.py", CODE))
    assert asked.outcome == "answered"
    assert asked.contents[0].startswith("It greets someone.")
    sent = text_of(user_content(fake_openai))
    assert sent.startswith("What does this do?")
    assert "`greet.py`" in sent
    assert "```py\n" + CODE.decode() in sent + "\n"
    assert len(fake_discord.downloads) == 1


async def test_an_image_goes_to_a_vision_model_as_an_image_part(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    picture = png()
    fake_openai.script(Reply("A red square."))
    async with bot(fake_discord, fake_openai, tmp_path, {"OPENAI_MODEL": "gpt-4o"}) as stack:
        asked = await ask_with_file(stack, "What is this?", Upload("square.png", picture))
    assert asked.outcome == "answered"
    assert asked.contents[0] == "A red square."
    [image] = fake_openai.requests[-1].images
    assert image["url"] == "data:image/png;base64," + base64.b64encode(picture).decode()
    assert text_of(user_content(fake_openai)).startswith("What is this?")


@pytest.mark.parametrize("streamed", [False, True], ids=["not_streamed", "streamed"])
async def test_a_text_only_model_refusing_the_image_still_answers_the_text_and_says_so(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, streamed: bool
) -> None:
    fake_openai.text_only = "vllm"
    fake_openai.script(Reply("It sounds like a square."), Reply("Still no pictures."))
    # A name the bot knows nothing of: images are tried until the provider says no.
    overrides = {"OPENAI_MODEL": "house-model", "STREAM_RESPONSES": str(streamed).lower()}
    async with bot(fake_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await ask_with_file(stack, "Describe it", Upload("square.png", png()))
        [refused, answered] = fake_openai.requests
        assert refused.images
        assert refused.status == 400
        assert answered.images == []
        assert text_of(user_content(fake_openai)).startswith("Describe it")
        assert asked.outcome == "answered"
        assert asked.contents[0] == f"It sounds like a square.\n\n{replies.IMAGES_NOT_SEEN}"

        # Remembered: the next image is not sent at all.
        again = await ask_with_file(stack, "And this?", Upload("other.png", png((0, 0, 0))))
    assert len(fake_openai.requests) == 3
    assert fake_openai.requests[-1].images == []
    assert again.contents[0] == f"Still no pictures.\n\n{replies.IMAGES_NOT_SEEN}"


async def test_a_model_known_to_be_blind_is_never_sent_the_image(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Reply("From the text alone."))
    async with bot(fake_discord, fake_openai, tmp_path, {"VISION": "false"}) as stack:
        asked = await ask_with_file(stack, "What is it?", Upload("a.webp", b"RIFF\0\0\0\0WEBPVP8 "))
    [request] = fake_openai.requests
    assert request.images == []
    assert asked.contents[0] == f"From the text alone.\n\n{replies.IMAGES_NOT_SEEN}"


async def test_an_oversized_file_is_refused_before_it_is_downloaded(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    overrides = {"MAX_ATTACHMENT_BYTES": "1024"}
    async with bot(fake_discord, fake_openai, tmp_path, overrides) as stack:
        asked = await ask_with_file(stack, "Summarise", Upload("big.log", b"x" * 2000))
    assert asked.outcome == "attachment_refused"
    assert asked.contents == ["`big.log` is too large: I read files of up to 1 KB."]
    assert asked.messages[0].visible_to == fake_discord.user.id, "only the asker sees it"
    assert fake_discord.downloads == []
    assert fake_openai.requests == ()


async def test_an_unsupported_file_is_refused_naming_what_is_accepted(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(fake_discord, fake_openai, tmp_path, {}) as stack:
        upload = Upload("setup.exe", b"MZ\x90\x00", "application/x-msdownload")
        asked = await ask_with_file(stack, "Is this safe?", upload)
    assert asked.outcome == "attachment_refused"
    assert asked.contents == [f"I can't read `setup.exe`. I can read {replies.ACCEPTED_FILES}."]
    assert fake_discord.downloads == []
    assert fake_openai.requests == ()


async def test_a_pdf_is_read_as_text(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Reply("It is an invoice."))
    async with bot(fake_discord, fake_openai, tmp_path, {}) as stack:
        pdf = Upload("invoice.pdf", minimal_pdf("Invoice 42: three apples"))
        asked = await ask_with_file(stack, "What is this document?", pdf)
    assert asked.contents[0] == "It is an invoice."
    sent = text_of(user_content(fake_openai))
    assert "`invoice.pdf`" in sent
    assert "Invoice 42: three apples" in sent


async def test_a_broken_pdf_is_explained_and_not_asked(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with bot(fake_discord, fake_openai, tmp_path, {}) as stack:
        asked = await ask_with_file(stack, "Read it", Upload("broken.pdf", b"%PDF-1.4 nonsense"))
    assert asked.outcome == "attachment_unreadable"
    assert asked.contents == ["I couldn't read `broken.pdf`. Please check the file and try again."]
    assert fake_openai.requests == ()


class MessageAsks(logging.Handler):
    """Resolves when the bot logs that the ask of a channel message is over."""

    LINE = re.compile(r"^ask message=(\d+) .*outcome=(\S+)")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.outcomes: dict[int, asyncio.Future[str]] = {}

    def future(self, message_id: int) -> asyncio.Future[str]:
        return self.outcomes.setdefault(message_id, asyncio.get_running_loop().create_future())

    def emit(self, record: logging.LogRecord) -> None:
        match = self.LINE.match(record.getMessage())
        if match:
            future = self.future(int(match.group(1)))
            if not future.done():
                future.set_result(match.group(2))


@contextmanager
def message_asks() -> Iterator[MessageAsks]:
    handler = MessageAsks()
    logger = logging.getLogger("bot")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_a_message_mentioning_the_bot_may_carry_a_file(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Reply("Three rows."))
    csv = b"name,count\napples,3\npears,5\n"
    with message_asks() as asks:
        async with bot(fake_discord, fake_openai, tmp_path, {}):
            posted = fake_discord.post_message(
                fake_discord.user,
                "How many rows?",
                mention_bot=True,
                attachments=[("fruit.csv", csv)],
            )
            async with asyncio.timeout(WAIT):
                outcome = await asks.future(posted.id)
    assert outcome == "answered"
    sent = text_of(user_content(fake_openai))
    assert "`fruit.csv`" in sent
    assert csv.decode().strip() in sent
    [answer] = fake_discord.replies_to(posted.id)
    assert answer.content.startswith("Three rows.")


@pytest.mark.parametrize("name", ["notes.txt", "data.json"])
async def test_bad_bytes_in_a_text_file_never_stop_the_answer(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path, name: str
) -> None:
    fake_openai.script(Reply("Read it."))
    async with bot(fake_discord, fake_openai, tmp_path, {"MAX_ATTACHMENT_CHARS": "50"}) as stack:
        asked = await ask_with_file(stack, "Read", Upload(name, b"ok \xff\xfe bad " + b"y" * 500))
    assert asked.contents[0].startswith("Read it.")
    sent = text_of(user_content(fake_openai))
    assert "ok \ufffd\ufffd bad " in sent
    assert "y" * 51 not in sent, "the text is capped at MAX_ATTACHMENT_CHARS"
    assert "(cut: only its beginning fit)" in sent


async def test_a_reply_to_an_answer_may_carry_an_image_after_the_history(
    fake_discord: FakeDiscord, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.script(Reply("Send me a picture."), Reply("That is red."))
    with message_asks() as asks:
        async with bot(fake_discord, fake_openai, tmp_path, {"OPENAI_MODEL": "gpt-4o"}) as stack:
            first = await stack.ask("Can you judge colours?")
            posted = fake_discord.post_message(
                fake_discord.user,
                "What colour is this?",
                reply_to=first.messages[-1].id,
                attachments=[("red.png", png())],
            )
            async with asyncio.timeout(WAIT):
                outcome = await asks.future(posted.id)
    assert outcome == "answered"
    messages = fake_openai.requests[-1].json["messages"]
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user"]
    assert "Can you judge colours?" in messages[1]["content"]
    last = messages[-1]["content"]
    assert "What colour is this?" in text_of(last)
    assert "(Image attached: `red.png`)" in text_of(last)
    assert [part["type"] for part in last] == ["text", "image_url"]
    [answer] = fake_discord.replies_to(posted.id)
    assert answer.content.startswith("That is red.")
