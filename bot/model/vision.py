"""Images in a conversation: building image parts, taking them out, and who can see them.

Images go to the model as OpenAI's content parts,
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,...", "detail": "auto"}}`,
next to the text parts of a user message. Whether a model sees them is decided by
`VISION` (`true`, `false`, or `auto`: `sees_images_by_name`), and, when the provider rejects
image input, by its error (`rejects_images`), which `Completer` then remembers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bot.model.llm import ChatMessage, ContentPart

ImageDetail = Literal["auto", "low", "high"]

IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
"""The image types OpenAI-compatible providers accept (a GIF only without animation)."""


@dataclass(frozen=True)
class Image:
    """An image's bytes and its media type (one of `IMAGE_MEDIA_TYPES`)."""

    data: bytes = field(repr=False)
    media_type: str

    def __post_init__(self) -> None:
        if self.media_type not in IMAGE_MEDIA_TYPES:
            accepted = ", ".join(sorted(IMAGE_MEDIA_TYPES))
            raise ValueError(f"not an image type models accept: {self.media_type!r} ({accepted})")
        if not self.data:
            raise ValueError("an image needs its bytes")

    def data_url(self) -> str:
        """The image as a `data:` URL, the form every compatible server accepts."""
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def image_part(image: Image, *, detail: ImageDetail = "auto") -> ContentPart:
    """The content part that carries `image`."""
    return {"type": "image_url", "image_url": {"url": image.data_url(), "detail": detail}}


def user_message(
    text: str, images: Sequence[Image] = (), *, detail: ImageDetail = "auto"
) -> ChatMessage:
    """A user message of `text` followed by `images`; plain text content when there are none."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[Any] = [{"type": "text", "text": text}] if text else []
    parts.extend(image_part(image, detail=detail) for image in images)
    return {"role": "user", "content": parts}


def has_images(messages: Iterable[ChatMessage]) -> bool:
    """Whether any message carries an image part."""
    return any(_is_image(part) for message in messages for part in _parts(message))


def without_images(
    messages: Iterable[ChatMessage], *, placeholder: str | None = None
) -> list[ChatMessage]:
    """`messages` with every image part taken out (or replaced by a `placeholder` text).

    A message left with text parts only gets them joined into plain text content, which
    text-only servers accept even when they know nothing of content parts. Messages without
    images come back as they were.
    """
    result: list[ChatMessage] = []
    for message in messages:
        parts = _parts(message)
        if not any(_is_image(part) for part in parts):
            result.append(message)
            continue
        kept: list[Any] = []
        for part in parts:
            if not _is_image(part):
                kept.append(part)
            elif placeholder is not None:
                kept.append({"type": "text", "text": placeholder})
        stripped: dict[str, Any] = dict(message)
        if all(isinstance(part, dict) and part.get("type") == "text" for part in kept):
            stripped["content"] = "\n\n".join(str(part.get("text", "")) for part in kept)
        else:
            stripped["content"] = kept
        result.append(stripped)  # type: ignore[arg-type]  # same shape, fewer parts
    return result


def _parts(message: ChatMessage) -> list[Any]:
    content = message.get("content")
    return list(content) if isinstance(content, list) else []


def _is_image(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") == "image_url"


# --- Which models see images ---------------------------------------------------------------

# Checked in order on the model's name, lower-cased, without an organisation prefix
# ("openai/", "meta-llama/"): the first rule that matches decides.
_RULES: tuple[tuple[re.Pattern[str], bool | None], ...] = tuple(
    (re.compile(pattern), sees)
    for pattern, sees in (
        # Names that say so: llava, llama3.2-vision, qwen2.5-vl, qwen2.5vl, glm-4v, ...
        (r"vision|llava|pixtral|minicpm-?v|moondream|internvl|multimodal", True),
        (r"(^|[-_.:\d])vl($|[-_.:\d])|^glm-?\d(\.\d)?v\b", True),
        # The small members of families that otherwise see.
        (r"^o1-(mini|preview)|^o3-mini|gemma-?3[-:_]?(1b|270m)", False),
        # Sees on some servers and not on others.
        (r"^gemma-?3n", None),
        (r"^gpt-4o|^chatgpt-4o|^gpt-4\.[15]|^gpt-4-turbo|^gpt-5|^o[134]\b", True),
        (r"^claude-(3|.*-4|opus|sonnet|haiku)", True),
        (
            r"^gemini|^gemma-?3|^llama-?4|^mistral-(small|medium)-?3\.?[12]?|^grok-(2-vision|4)",
            True,
        ),
        (r"^gpt-3\.5|^gpt-4($|-\d|-32k)|^gpt-oss|^claude-(2|instant)", False),
        (
            r"^(llama|codellama|tinyllama|qwen|qwq|mistral|mixtral|codestral|smollm|deepseek|"
            r"phi|gemma|command-r|falcon|starcoder|granite|olmo|yi-|vicuna|zephyr|nous-)",
            False,
        ),
    )
)


def sees_images_by_name(model: str) -> bool | None:
    """Whether a model sees images, judged from its name: `None` when the name is unknown.

    Families known to see (gpt-4o, gpt-4.1, gpt-5, o1/o3/o4, Claude 3 and 4, Gemini, Gemma 3,
    Llama 4, llava, llama3.2-vision, Qwen-VL, Pixtral, MiniCPM-V, ...) say yes; text models
    (gpt-3.5, gpt-4, plain Llama, Qwen, Mistral, DeepSeek, SmolLM, ...) say no.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    for pattern, sees in _RULES:
        if pattern.search(name):
            return sees
    return None


# --- Providers refusing images --------------------------------------------------------------

# How providers word "this model takes no images", as their error messages put it:
# OpenAI ("Invalid content type. image_url is only supported by certain models."), vLLM
# ("<model> is not a multimodal model"), llama.cpp without a projector ("image input is not
# supported - hint: ... mmproj"; older builds "Only 'text' content type is supported."),
# Ollama ("this model is missing data required for image input"), and the many
# "does not support image input" variants of gateways.
_REJECTS_IMAGES = re.compile(
    r"image_url is only supported by certain models"
    r"|is not a multimodal model"
    r"|image input is not supported"
    r"|only 'text' content type is supported"
    r"|missing data required for image input"
    r"|(does not|doesn't|do not|don't|not) supports? (image|vision|multimodal|multi-modal)"
    r"|(image|vision|multimodal) (input )?(is )?not supported"
)


def rejects_images(message: str) -> bool:
    """Whether a provider's error message says the model cannot take image input.

    A broken image (bad base64, an unsupported file) is not this: the model could see a
    good one.
    """
    return _REJECTS_IMAGES.search(message.lower()) is not None
