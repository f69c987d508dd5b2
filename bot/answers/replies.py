"""What users read when something is not a plain answer: pure wording, one place.

Every sentence here is short, human, says what happened and what to do, and never
contains exception text: details go to the operator's log instead.
"""

from __future__ import annotations

import math

from bot.conversation import files
from bot.fair_use import budgets as usage
from bot.model import llm

EMPTY_PROMPT = "Please type a question after `/ask`, for example `/ask prompt: What is a monad?`"
UNEXPECTED = (
    "Sorry, something went wrong while answering. The error has been logged; please try again."
)
TRUNCATED_NOTE = "*(The answer was cut off because it reached the length limit.)*"
STOPPED_NOTE = "*(Stopped.)*"
THINKING = "-# \N{THOUGHT BALLOON} Thinking\N{HORIZONTAL ELLIPSIS}"
"""How the status a reasoning model's message shows before its answer begins."""
REASONING_FILE = "reasoning.md"


def thinking(seconds: float) -> str:
    """The live status of an answer whose model has been reasoning for `seconds`."""
    return f"{THINKING} {max(0, int(seconds))} s"


def error_message(error: llm.CompletionError) -> str:
    """The one sentence shown to the user for a failed model call."""
    if isinstance(error, llm.RateLimited):
        return "The language model is getting too many requests right now. " + _retry_hint(
            error.retry_after
        )
    if isinstance(error, llm.TimedOut):
        return (
            "The language model took too long to answer. "
            "Please try again, perhaps with a shorter question."
        )
    if isinstance(error, llm.PromptTooLong):
        return (
            "Your prompt is too long for this model's context window. "
            "Please shorten it and try again."
        )
    if isinstance(error, llm.ProviderMisconfigured):
        return (
            "I can't reach my language model because of a configuration problem. "
            "Please ask a server admin to check the bot's logs."
        )
    if isinstance(error, llm.ProviderUnavailable):
        return (
            "The language model service is unavailable right now. "
            "Please try again in a few minutes."
        )
    if isinstance(error, llm.EmptyAnswer):
        return "The model returned an empty answer. Please try rephrasing your question."
    if isinstance(error, llm.Refused):
        return "The model declined to answer that. Please try asking differently."
    return UNEXPECTED


def interrupted_note(error: llm.CompletionError) -> str:
    """The note after a partial answer whose stream failed midway."""
    return f"*(The answer was interrupted. {error_message(error)})*"


def _retry_hint(retry_after: float | None) -> str:
    if retry_after is None:
        return "Please try again in a minute."
    seconds = max(1, math.ceil(retry_after))
    if seconds < 120:
        unit = "second" if seconds == 1 else "seconds"
        return f"Please try again in {seconds} {unit}."
    return f"Please try again in {math.ceil(seconds / 60)} minutes."


def prompt_too_long(limit: int) -> str:
    return f"Your prompt is too long: please keep it to at most {limit:,} characters."


def cooldown(retry_after: float) -> str:
    return f"You're asking quickly! {_retry_hint(retry_after)}"


BUSY = "I'm answering a lot of questions right now. Please try again shortly."
RESTARTING = "I'm restarting right now. Please try again in a minute."
TOO_LATE = (
    "Sorry, I couldn't get to your question in time: it waited too long in line. Please ask again."
)


def too_many(limit: int) -> str:
    questions = "question" if limit == 1 else "questions"
    return (
        f"You already have {limit} {questions} waiting or being answered. "
        "Please wait for an answer before asking again."
    )


RESTARTED_NOTE = "*(I had to restart before finishing this answer. Please ask again.)*"


def queue_position(place: int, *, at_once: int) -> str:
    """An ask's place in line, and how many asks are answered at once (the gate's limit now)."""
    return (
        f"\N{HOURGLASS WITH FLOWING SAND} You're #{place} in line (answering {at_once} at a "
        "time); I'll start on your question as soon as I can."
    )


def budget_exhausted(scope: usage.Scope, resets_at_unix: int) -> str:
    whose = "You've" if scope is usage.Scope.USER else "This server has"
    return f"{whose} used today's token budget. It resets <t:{resets_at_unix}:R>."


def usage_report(report: usage.UsageReport) -> str:
    lines = [f"You've used **{report.user_tokens:,}** tokens today{_of(report.user_limit)}."]
    if report.guild_tokens is not None:
        lines.append(
            f"This server has used **{report.guild_tokens:,}** tokens{_of(report.guild_limit)}."
        )
    lines.append(f"Counts reset <t:{report.resets_at_unix}:R>.")
    return "\n".join(lines)


def _of(limit: int | None) -> str:
    return f" of {limit:,}" if limit is not None else " (no limit)"


FOLLOW_UP_GONE = (
    "This conversation has expired or was deleted, so I can't continue it. "
    "Start a new one with /ask."
)
FOLLOW_UP_NOT_YOURS = "Only the person who asked can follow up on a private answer."
OLDER_TURNS_LEFT_OUT = "-# Older messages of this conversation were left out to fit the model."


def forgotten(turns: int) -> str:
    if turns == 0:
        return "I had nothing stored from you."
    what = "question and its answer" if turns == 1 else "questions and their answers"
    return f"Done: I deleted {turns:,} {what} of yours. Conversations with them can't be continued."


# Models and /settings.
UNKNOWN_MODEL = "That model isn't offered here. Pick one from the list."
SETTINGS_NOT_PERMITTED = "Only members who can manage this server can change my settings."
SETTINGS_UNAVAILABLE = "Settings can't be changed right now, so nothing was saved. Try again soon."
SETTINGS_SERVER_ONLY = "Settings belong to a server: use /settings in one."
SETTINGS_EMPTY_PROMPT = "A system prompt needs some text; to remove one, use /settings reset."


def prompt_too_long_to_save(limit: int, length: int) -> str:
    return f"That prompt has {length:,} characters; a system prompt may have at most {limit:,}."


def setting_saved(what: str, value: str | None) -> str:
    if value is None:
        return f"Done: {what} is back to the bot's default."
    return f"Done: {what} is now:\n{quoted(value)}"


def settings_reset(count: int) -> str:
    if count == 0:
        return "This server had no settings of its own."
    return f"Done: removed {count:,} setting(s); this server uses the bot's defaults again."


PROMPT_WITH_FENCE = "A system prompt can't contain ``` (it is shown back in a code block)."


def quoted(text: str) -> str:
    """`text` shown exactly as saved: in a code block, which Discord renders verbatim
    (a saved prompt never holds a fence)."""
    return f"```\n{text}\n```"


def effective_settings(
    model: str, model_source: str, prompt: str, prompt_source: str, channel_prompt: bool
) -> str:
    lines = [
        f"**Model:** `{model}` ({model_source})",
        f"**System prompt here** ({prompt_source}):",
        quoted(prompt),
    ]
    if not channel_prompt:
        lines.append("-# This channel has no prompt of its own.")
    return "\n".join(lines)


ACCEPTED_FILES = (
    "text files (code, Markdown, CSV, JSON, logs…), PDFs and images (PNG, JPEG, WebP, GIF)"
)
IMAGES_NOT_SEEN = "-# This model can't see images, so I answered from your text alone."


def attachment_refused(refusal: files.Refusal, max_bytes: int) -> str:
    """Why an attached file is not read, naming it (and what is accepted, when it is its type)."""
    name = _file_name(refusal.filename)
    if refusal.reason == "unsupported":
        return f"I can't read {name}. I can read {ACCEPTED_FILES}."
    if refusal.reason == "too_large":
        return f"{name} is too large: I read files of up to {_size(max_bytes)}."
    if refusal.reason == "not_from_discord":
        return f"I only read files uploaded to Discord, and {name} isn't one."
    if refusal.reason == "no_text":
        return f"I found no text in {name}; a scanned PDF holds only pictures of its pages."
    return f"I couldn't read {name}. Please check the file and try again."


def _file_name(filename: str) -> str:
    # A name is the uploader's text: one line, no backticks to break out of the code span.
    name = " ".join(filename.replace("`", "'").split())[:100] or "that file"
    return f"`{name}`"


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.3g} MB"
    if size >= 1024:
        return f"{size / 1024:.3g} KB"
    return f"{size:,} bytes"


WHOLE_ANSWER_ATTACHED = (
    "*(This answer is longer than the messages I may send here: "
    "the whole answer is in the attached file.)*"
)
