"""Files people attach, turned into what the model reads: pure, no Discord, no network.

    FileRules       the limits: bytes per file (before download), characters of text per ask
    Offered         a file as Discord describes it before download: name, type, size
    kind_of         text, pdf or image, judged by content type and by extension; None: refused
    accept          every offered file checked before anything is downloaded (`Accepted`,
                    or a `Refusal` naming the file and why)
    read            a downloaded file's bytes to a `TextFile` or a vision `Image` (or a Refusal)
    with_files      the prompt followed by each text file, fenced, under its name

Text is read as UTF-8 (a byte-order mark dropped); bytes that are not UTF-8 become U+FFFD,
so no file makes reading fail. All the text files of one ask share `max_chars`; what does
not fit is cut, and the model is told so. A PDF gives the text of at most `MAX_PDF_PAGES`
pages. An image is kept only if its bytes are the PNG, JPEG, WebP or GIF it claims to be;
a GIF goes as its first frame, in PNG (providers refuse animated ones).
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from bot.model.vision import Image

log = logging.getLogger(__name__)

Kind = Literal["text", "pdf", "image"]
Reason = Literal["unsupported", "too_large", "not_from_discord", "unreadable", "no_text"]

MAX_PDF_PAGES = 30
"""The most pages of a PDF whose text is read."""

IMAGE_TOKENS = 1000
"""What one image is counted as against the context and the token budgets: about what
providers charge for a detailed picture (OpenAI: 765 tokens for 1024 x 1024)."""

CHARS_PER_TOKEN = 4

TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/x-shellscript",
        "application/x-python",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/sql",
        "application/x-httpd-php",
        "application/x-ndjson",
        "application/x-tex",
    }
)
"""Content types of text besides `text/*`."""

_TEXT_EXTENSIONS = (
    "txt md markdown rst adoc org csv tsv log json jsonl ndjson yaml yml toml ini cfg conf "
    "xml html htm css scss sass less svg tex bib diff patch sql graphql proto "
    "py pyi ipynb js mjs cjs ts tsx jsx vue svelte java kt kts scala groovy gradle c h "
    "cc cpp cxx hpp hh cs fs go rs rb php pl pm swift m mm r jl lua dart ex exs erl hs "
    "ml clj elm nim zig v sol sh bash zsh fish ps1 bat cmd asm s make cmake dockerfile "
    "tf hcl nix properties env.example gitignore editorconfig"
)
TEXT_EXTENSIONS = frozenset(_TEXT_EXTENSIONS.split())
"""File name extensions read as text whatever their content type (`.ts` comes as video)."""

TEXT_NAMES = frozenset(
    {"dockerfile", "makefile", "procfile", "gemfile", "rakefile", "license", "readme"}
)
"""Whole file names (lower case, no extension) that are text."""

PDF_TYPE = "application/pdf"

IMAGE_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/gif": "gif",
}
IMAGE_EXTENSIONS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp", "gif": "gif"}


@dataclass(frozen=True)
class FileRules:
    """`max_bytes` per file (the size Discord reports, and again while downloading) and
    `max_chars` of text for all the files of one ask together."""

    max_bytes: int
    max_chars: int


@dataclass(frozen=True)
class Offered:
    """A file as Discord describes it: its name, its content type if any, its size in
    bytes, and where to download it."""

    filename: str
    content_type: str | None
    size: int
    url: str = ""


@dataclass(frozen=True)
class Refusal:
    """Why the file `filename` is not read."""

    filename: str
    reason: Reason


@dataclass(frozen=True)
class Accepted:
    """Offered files that may be downloaded, in order, each with its kind."""

    files: tuple[tuple[Offered, Kind], ...] = ()
    tokens: int = 0
    """A first estimate of what the files add to the prompt, before they are read: the
    text they can give (at most `max_chars` in all, about 4 characters a token) and
    `IMAGE_TOKENS` an image."""


@dataclass(frozen=True)
class TextFile:
    """The text of one file for the model; `cut` when it was longer than what fit."""

    filename: str
    text: str
    cut: bool = False
    language: str = ""
    """A code block's language tag, from the extension."""


@dataclass(frozen=True)
class Files:
    """What the files of one ask give the model: text files and named images."""

    texts: tuple[TextFile, ...] = ()
    images: tuple[tuple[str, Image], ...] = ()

    def prompt(self, prompt: str) -> str:
        """`prompt` with the text files after it and a line naming each image."""
        if not self.texts and not self.images:
            return prompt
        return with_files(prompt, self.texts, [name for name, _ in self.images])

    @property
    def pictures(self) -> list[Image]:
        return [image for _, image in self.images]


def _extension(filename: str) -> str:
    name = PurePosixPath(filename.lower()).name
    if name.endswith(".env.example"):
        return "env.example"
    suffix = PurePosixPath(name).suffix
    return suffix[1:] if suffix else ""


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def kind_of(filename: str, content_type: str | None) -> Kind | None:
    """What a file is read as, or `None` when it is not read at all.

    The extension wins for images and text (Discord guesses `video/mp2t` for `.ts`,
    `application/octet-stream` for many source files); the content type decides the rest.
    """
    extension = _extension(filename)
    base = _base_type(content_type)
    if extension in IMAGE_EXTENSIONS or (not extension and base in IMAGE_TYPES):
        return "image"
    if extension == "pdf" or base == PDF_TYPE:
        return "pdf"
    stem = PurePosixPath(filename.lower()).stem
    if extension in TEXT_EXTENSIONS or (not extension and stem in TEXT_NAMES):
        return "text"
    if base.startswith("text/") or base in TEXT_TYPES or base.endswith(("+json", "+xml")):
        return "text"
    return None


def accept(offered: Sequence[Offered], rules: FileRules) -> Accepted | Refusal:
    """Check every file before any is downloaded: the first one refused decides."""
    files: list[tuple[Offered, Kind]] = []
    for item in offered:
        kind = kind_of(item.filename, item.content_type)
        if kind is None:
            return Refusal(item.filename, "unsupported")
        if item.size > rules.max_bytes:
            return Refusal(item.filename, "too_large")
        files.append((item, kind))
    text_bytes = sum(item.size for item, kind in files if kind != "image")
    text_tokens = math.ceil(min(text_bytes, rules.max_chars) / CHARS_PER_TOKEN)
    images = sum(1 for _, kind in files if kind == "image")
    return Accepted(tuple(files), tokens=text_tokens + images * IMAGE_TOKENS)


def read(filename: str, kind: Kind, data: bytes, *, max_chars: int) -> TextFile | Image | Refusal:
    """A downloaded file as the model takes it: text of at most `max_chars` characters, or
    an image; a `Refusal` when its bytes are not what it claims to be."""
    if kind == "image":
        image = _image(data)
        return image if image is not None else Refusal(filename, "unreadable")
    if kind == "pdf":
        text = _pdf_text(data)
        if text is None:
            return Refusal(filename, "unreadable")
        if not text.strip():
            return Refusal(filename, "no_text")
        return _text_file(filename, text, max_chars, language="")
    # Enough bytes for `max_chars` characters of any UTF-8 (at most 4 bytes each).
    head = data[: max_chars * 4 + 4]
    text = head.decode("utf-8-sig", errors="replace").replace("\x00", "")
    return _text_file(filename, text, max_chars, language=_language(filename))


def _text_file(filename: str, text: str, max_chars: int, *, language: str) -> TextFile:
    cut = len(text) > max_chars
    return TextFile(filename, text[:max_chars] if cut else text, cut=cut, language=language)


def _language(filename: str) -> str:
    extension = _extension(filename)
    return extension if re.fullmatch(r"[a-z0-9+#-]{1,12}", extension) else ""


def _pdf_text(data: bytes) -> str | None:
    """The text of a PDF's first `MAX_PDF_PAGES` pages; `None` when it cannot be read."""
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            return None
        pages = [page.extract_text() or "" for page in reader.pages[:MAX_PDF_PAGES]]
    except Exception as error:
        # pypdf raises many kinds of errors on broken files; all mean "not readable".
        log.info("could not read a PDF attachment: %s", type(error).__name__)
        return None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if len(reader.pages) > MAX_PDF_PAGES:
        text += f"\n\n(Only the first {MAX_PDF_PAGES} of {len(reader.pages)} pages were read.)"
    return text


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _image(data: bytes) -> Image | None:
    media_type = _sniff(data)
    if media_type is None:
        return None
    if media_type != "image/gif":
        return Image(data, media_type)
    first = _first_frame(data)
    return Image(first, "image/png") if first is not None else None


def _first_frame(data: bytes) -> bytes | None:
    """A GIF's first frame as PNG; `None` for a broken GIF or a decompression bomb."""
    from PIL import Image as Pillow

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Pillow.DecompressionBombWarning)
            with Pillow.open(io.BytesIO(data)) as gif:
                gif.seek(0)
                frame = gif.convert("RGBA")
        out = io.BytesIO()
        frame.save(out, format="PNG")
    except (OSError, ValueError, EOFError, Pillow.DecompressionBombError, Warning) as error:
        log.info("could not read a GIF attachment: %s", type(error).__name__)
        return None
    return out.getvalue()


def with_files(prompt: str, texts: Sequence[TextFile], image_names: Sequence[str] = ()) -> str:
    """The prompt, then each text file in a code block under its name (a fence longer than
    any run of backticks in it), then a line per image naming it."""
    blocks = [prompt]
    for file in texts:
        longest = max((len(run) for run in re.findall(r"`+", file.text)), default=0)
        fence = "`" * max(3, longest + 1)
        note = " (cut: only its beginning fit)" if file.cut else ""
        blocks.append(
            f"File {_shown_name(file.filename)}{note}:\n{fence}{file.language}\n"
            f"{file.text.rstrip()}\n{fence}"
        )
    blocks.extend(f"(Image attached: {_shown_name(name)})" for name in image_names)
    return "\n\n".join(blocks)


def _shown_name(filename: str) -> str:
    name = " ".join(filename.replace("`", "'").split())[:100]
    return f"`{name}`"


def budgeted(texts: Sequence[TextFile], max_chars: int) -> list[TextFile]:
    """`texts` sharing `max_chars`: each file in order keeps what is left of it."""
    left = max_chars
    kept: list[TextFile] = []
    for file in texts:
        if len(file.text) > left:
            file = TextFile(file.filename, file.text[:left], cut=True, language=file.language)
        left -= len(file.text)
        kept.append(file)
    return kept
