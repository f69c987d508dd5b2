"""Pure helpers that turn answer text (plus an optional note) into Discord messages."""

from __future__ import annotations

from bot.answers.chunking import close_open_fence, split_message

MESSAGE_LIMIT = 2000


def final_parts(text: str, note: str | None = None, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The messages for an answer, with `note` after it when the answer is incomplete.

    The note (cut off, interrupted, stopped) is appended after closing any code block
    the model left open, so it renders as text. Because the result only ever extends
    `text`, messages already settled while streaming `text` stay identical.
    """
    if note is None:
        return split_message(text, limit)
    if not text.strip():
        return split_message(note, limit)
    return split_message(f"{close_open_fence(text)}\n\n{note}", limit)
