"""An answer longer than its messages may hold: its first messages, then the whole of it
as a Markdown file on the last one.

Discord lets an app that someone installed to their own account, used in a server it is
not in, send only 5 followup messages per interaction; a long answer there is still given
in full, as `answer.md`.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.answers import replies
from bot.answers.messages import Attachment

ANSWER_FILE = "answer.md"


def capped(
    parts: Sequence[str], whole: str, cap: int | None
) -> tuple[list[str], Attachment | None]:
    """`parts` as at most `cap` messages, and the file for the last one (None: not needed).

    Past the cap, the first `cap - 1` parts are kept and the last message says that
    `whole` (the complete answer) is attached.
    """
    if cap is None or len(parts) <= cap:
        return list(parts), None
    kept = [*parts[: max(cap - 1, 0)], replies.WHOLE_ANSWER_ATTACHED]
    return kept, answer_file(whole)


def answer_file(text: str) -> Attachment:
    """`text` as an `answer.md` attachment."""
    return Attachment(ANSWER_FILE, text.encode())
