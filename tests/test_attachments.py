"""Attached files: what is read and how (`bot.conversation.files`), and the downloader that
fetches only from Discord (`bot.discord_app.attachments`), against real local HTTP servers."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable

import discord.http
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image as Pillow

from bot.answers import replies
from bot.conversation import files
from bot.conversation.files import FileRules, Offered, Refusal, TextFile
from bot.discord_app import attachments
from bot.discord_app.attachments import DownloadRefused, download, from_discord
from bot.model.vision import Image
from tests.fakes.discord import FakeDiscord, Upload, spec_available
from tests.fakes.discord.interactions import command_data

RULES = FileRules(max_bytes=1000, max_chars=100)


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("main.py", "text/x-python", "text"),
        ("main.py", None, "text"),
        ("app.ts", "video/mp2t", "text"),  # Discord's guess for TypeScript
        ("notes.md", "application/octet-stream", "text"),
        ("data.csv", "text/csv; charset=utf-8", "text"),
        ("server.log", None, "text"),
        ("report", "application/json", "text"),
        ("Dockerfile", None, "text"),
        ("paper.pdf", "application/pdf", "pdf"),
        ("scan", "application/pdf", "pdf"),
        ("photo.JPG", "image/jpeg", "image"),
        ("anim.gif", "image/gif", "image"),
        ("shot.webp", None, "image"),
        ("setup.exe", "application/x-msdownload", None),
        ("archive.zip", "application/zip", None),
        ("song.mp3", "audio/mpeg", None),
        ("picture.bmp", "image/bmp", None),
    ],
)
def test_files_are_read_by_extension_and_content_type(
    filename: str, content_type: str | None, kind: str | None
) -> None:
    assert files.kind_of(filename, content_type) == kind


def test_every_file_is_checked_before_any_is_downloaded() -> None:
    small = Offered("a.py", None, 10)
    assert files.accept([small, Offered("b.zip", None, 10)], RULES) == Refusal(
        "b.zip", "unsupported"
    )
    assert files.accept([small, Offered("c.txt", None, 1001)], RULES) == Refusal(
        "c.txt", "too_large"
    )
    accepted = files.accept([small, Offered("d.png", None, 900)], RULES)
    assert not isinstance(accepted, Refusal)
    assert [kind for _, kind in accepted.files] == ["text", "image"]
    assert accepted.tokens == 3 + files.IMAGE_TOKENS


@given(st.binary(max_size=600))
def test_reading_any_bytes_as_text_never_fails_and_keeps_to_the_cap(data: bytes) -> None:
    read = files.read("any.txt", "text", data, max_chars=100)
    assert isinstance(read, TextFile)
    assert len(read.text) <= 100
    assert "\x00" not in read.text


def test_text_is_utf8_without_its_byte_order_mark_and_cut_with_a_flag() -> None:
    read = files.read("a.md", "text", "\ufeffcafé ".encode() + b"\xff" + b"z" * 200, max_chars=10)
    assert read == TextFile("a.md", "café \ufffdzzzz", cut=True, language="md")


def test_text_files_are_fenced_under_their_names_and_share_the_cap() -> None:
    code = TextFile("x.md", "use ``` fences", language="md")
    prompt = files.with_files("Explain", [code], ["cat.png"])
    assert (
        prompt
        == "Explain\n\nFile `x.md`:\n````md\nuse ``` fences\n````\n\n(Image attached: `cat.png`)"
    )
    first, second = files.budgeted([TextFile("a", "x" * 70), TextFile("b", "y" * 70)], 100)
    assert (first.text, first.cut) == ("x" * 70, False)
    assert (second.text, second.cut) == ("y" * 30, True)


def test_an_images_bytes_must_be_what_it_claims() -> None:
    assert files.read("a.png", "image", b"<html>not an image</html>", max_chars=10) == Refusal(
        "a.png", "unreadable"
    )
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 10
    assert files.read("a.png", "image", jpeg, max_chars=10) == Image(jpeg, "image/jpeg")


def test_a_gif_goes_as_its_first_frame_in_png() -> None:
    frames = [Pillow.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    read = files.read("anim.gif", "image", out.getvalue(), max_chars=10)
    assert isinstance(read, Image)
    assert read.media_type == "image/png"
    with Pillow.open(io.BytesIO(read.data)) as frame:
        assert frame.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert files.read("bad.gif", "image", b"GIF89a broken", max_chars=10) == Refusal(
        "bad.gif", "unreadable"
    )


def test_a_pdf_without_text_is_said_to_have_none() -> None:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=100, height=100)
    out = io.BytesIO()
    writer.write(out)
    assert files.read("scan.pdf", "pdf", out.getvalue(), max_chars=100) == Refusal(
        "scan.pdf", "no_text"
    )
    sentence = replies.attachment_refused(Refusal("scan.pdf", "no_text"), 10)
    assert sentence.startswith("I found no text in `scan.pdf`")


def test_refusals_name_the_file_safely() -> None:
    sentence = replies.attachment_refused(Refusal("a`b\nc.exe", "unsupported"), 10)
    assert sentence.startswith("I can't read `a'b c.exe`.")
    assert replies.attachment_refused(Refusal("x", "too_large"), 8 * 1024 * 1024).endswith(
        "up to 8 MB."
    )


# --- Downloads ------------------------------------------------------------------------------


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts aiohttp apps on 127.0.0.1; returns each one's base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def discord_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Points discord.py's API base at a local server, as the local Discord does."""

    def point(base: str) -> None:
        monkeypatch.setattr(discord.http.Route, "BASE", base + "/api/v10")

    return point


def test_only_discords_hosts_are_trusted(discord_at: Callable[[str], None]) -> None:
    import yarl

    discord_at("http://127.0.0.1:5000")
    assert from_discord(yarl.URL("https://cdn.discordapp.com/attachments/1/2/a.png"))
    assert from_discord(yarl.URL("https://media.discordapp.net/attachments/1/2/a.png"))
    assert from_discord(yarl.URL("http://127.0.0.1:5000/attachments/1/2/a.png"))
    assert not from_discord(yarl.URL("http://cdn.discordapp.com/attachments/1/2/a.png"))
    assert not from_discord(yarl.URL("https://cdn.discordapp.com.evil.example/a.png"))
    assert not from_discord(yarl.URL("http://127.0.0.1:5001/attachments/1/2/a.png"))
    assert not from_discord(yarl.URL("https://files.example.com/a.png"))


async def test_a_file_elsewhere_is_never_fetched(discord_at: Callable[[str], None]) -> None:
    discord_at("http://127.0.0.1:5000")
    with pytest.raises(DownloadRefused) as refused:
        await download("https://files.example.com/a.png", max_bytes=100)
    assert refused.value.reason == "not_from_discord"


async def test_a_redirect_away_from_discord_is_not_followed(
    serve: Serve, discord_at: Callable[[str], None]
) -> None:
    elsewhere_hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        elsewhere_hits.append(request.path)
        return web.Response(body=b"secret")

    other = web.Application()
    other.router.add_get("/{tail:.*}", elsewhere)
    other_base = await serve(other)

    async def cdn(request: web.Request) -> web.Response:
        if request.path == "/attachments/hop":
            raise web.HTTPFound("/attachments/file.txt")  # same host: followed
        if request.path == "/attachments/away":
            raise web.HTTPFound(other_base + "/file.txt")
        return web.Response(body=b"hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", cdn)
    base = await serve(app)
    discord_at(base)

    assert await download(base + "/attachments/hop", max_bytes=100) == b"hello"
    with pytest.raises(DownloadRefused) as refused:
        await download(base + "/attachments/away", max_bytes=100)
    assert refused.value.reason == "not_from_discord"
    assert elsewhere_hits == []


async def test_a_download_stops_at_the_byte_cap_even_without_a_length(
    serve: Serve, discord_at: Callable[[str], None]
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 1024)
        return response

    app = web.Application()
    app.router.add_get("/attachments/big", endless)
    base = await serve(app)
    discord_at(base)
    with pytest.raises(DownloadRefused) as refused:
        await download(base + "/attachments/big", max_bytes=4096)
    assert refused.value.reason == "too_large"
    with pytest.raises(DownloadRefused) as missing:
        await download(base + "/attachments/gone", max_bytes=4096)
    assert missing.value.reason == "unreadable"


async def test_fetch_reads_every_accepted_file_in_order(
    serve: Serve, discord_at: Callable[[str], None]
) -> None:
    async def cdn(request: web.Request) -> web.Response:
        return web.Response(body=request.path.encode())

    app = web.Application()
    app.router.add_get("/{tail:.*}", cdn)
    base = await serve(app)
    discord_at(base)
    offered = [Offered(name, None, 20, f"{base}/{name}") for name in ("a.txt", "b.txt")]
    accepted = files.accept(offered, RULES)
    assert not isinstance(accepted, Refusal)
    read = await attachments.fetch(accepted, RULES)
    assert not isinstance(read, Refusal)
    assert [(file.filename, file.text) for file in read.texts] == [
        ("a.txt", "/a.txt"),
        ("b.txt", "/b.txt"),
    ]


# --- The local Discord -----------------------------------------------------------------------


@pytest.mark.skipif(not spec_available(), reason="Discord's OpenAPI description is absent")
async def test_the_local_discord_resolves_attachment_options_as_discord_describes_them(
    fake_discord: FakeDiscord,
) -> None:
    world = fake_discord.world
    world.commands[None] = [
        {
            "id": "1",
            "name": "ask",
            "type": 1,
            "options": [{"name": "file", "type": 11, "description": "a file", "required": True}],
        }
    ]
    data = command_data(
        world, world.channel(world.channel_id), "ask", {"file": Upload("a.py", b"x")}
    )
    [option] = data["options"]
    payload = data["resolved"]["attachments"][option["value"]]
    assert fake_discord.spec is not None
    assert fake_discord.spec.schema_violations("AttachmentResponse", payload) == []
    assert payload["content_type"] == "text/x-python"
    with pytest.raises(ValueError, match="takes a file"):
        command_data(world, world.channel(world.channel_id), "ask", {"file": "a.py"})
