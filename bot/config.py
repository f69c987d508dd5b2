"""Typed settings, read once from the environment at start-up.

`load_settings` turns a mapping of environment variables into a frozen `Settings`.
Every problem is collected first and reported together in one `ConfigError`, so an
operator fixes their `.env` in one pass instead of one variable per restart.
Secrets are wrapped in `Secret`, whose `repr` and `str` never show the value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from bot.fair_use.concurrency import INITIAL_LIMIT
from bot.fair_use.limits import CooldownSpec, parse_cooldown

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering in a Discord channel. "
    "Be concise and use Discord Markdown: short paragraphs, lists, and fenced code blocks "
    "with a language tag."
)

T = TypeVar("T")

ShowReasoning = Literal["false", "file"]
"""What to do with a reasoning model's thoughts: nothing, or attach them as `reasoning.md`."""


@dataclass(frozen=True)
class ModelLimits:
    """What differs from one offered model to another, from MODELS_FILE; `None`: the default
    (CONTEXT_TOKENS or the known window, MAX_OUTPUT_TOKENS, VISION)."""

    context_tokens: int | None = None
    max_output_tokens: int | None = None
    vision: bool | None = None


class ConfigError(Exception):
    """One or more settings are missing or malformed; the message lists each of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"The bot is not configured correctly:\n{lines}")


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in logs, tracebacks or `repr`."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        """Return the secret itself; call only where it is handed to a client."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """Every setting of the bot; the names mirror the environment variables."""

    discord_token: Secret | None
    openai_api_key: Secret | None
    openai_base_url: str | None
    openai_model: str = DEFAULT_MODEL
    """The default model: the first of `openai_models`."""
    openai_models: tuple[str, ...] = (DEFAULT_MODEL,)
    """The models members may choose from (OPENAI_MODELS, or OPENAI_MODEL alone)."""
    model_limits: Mapping[str, ModelLimits] = field(default_factory=dict)
    """Per-model limits read from MODELS_FILE, by model name."""
    openai_timeout: float = 60.0
    openai_max_retries: int = 2
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_output_tokens: int | None = None
    context_tokens: int | None = None
    conversation_retention_days: int = 30
    discord_guild_id: int | None = None
    log_level: str = "INFO"
    library_log_level: str | None = None
    stream_responses: bool = True
    stream_edit_interval: float = 1.0
    local_model_path: Path | None = None
    ask_cooldown: CooldownSpec | None = None
    max_concurrent_asks: int = INITIAL_LIMIT
    """The pinned limit on model calls at once, or where the adaptive limit starts."""
    adaptive_concurrency: bool = True
    """MAX_CONCURRENT_ASKS unset: the limit adapts to the provider (`AdaptiveConcurrency`)."""
    max_queued_asks: int = 200
    max_asks_per_user: int = 2
    max_prompt_chars: int = 6000
    max_attachment_bytes: int = 8 * 1024 * 1024
    """The largest attachment read, by the size Discord reports (checked before download)."""
    max_attachment_chars: int = 20_000
    """The most characters of text an ask's files give the model, all files together."""
    allowed_guild_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    allowed_role_ids: frozenset[int] = frozenset()
    allow_dms: bool = False
    user_daily_tokens: int | None = None
    guild_daily_tokens: int | None = None
    data_path: Path = Path("data")
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    shutdown_grace: float = 20.0
    vision: bool | None = None
    """Whether the model sees images; `None` (VISION=auto) judges by the model's name."""
    show_reasoning: ShowReasoning = "false"
    shard_count: int | None = None
    """How many gateway shards the whole bot runs (None: Discord's recommendation)."""
    shard_ids: tuple[int, ...] | None = None
    """The shards this process runs (None: all of them)."""
    redis_url: Secret | None = None
    """Where state shared by several processes lives (None: SQLite and memory)."""
    redis_timeout: float = 1.0
    """The longest one Redis command may take before Redis counts as away."""

    @property
    def uses_builtin_model(self) -> bool:
        """No provider configured: answer with the built-in local model."""
        return self.openai_api_key is None and self.openai_base_url is None


def load_settings(env: Mapping[str, str], *, require_discord: bool = True) -> Settings:
    """Build `Settings` from `env`, raising `ConfigError` that lists every problem.

    Blank values count as unset, so a copied `.env.example` with empty lines works.
    `require_discord=False` is for commands that never connect to Discord.
    """
    reader = _Reader(env)
    token = reader.secret("DISCORD_TOKEN")
    if token is None and require_discord:
        reader.problems.append(
            "DISCORD_TOKEN is required: the bot token from the Discord developer portal "
            "(Applications > your app > Bot > Reset Token). To try the bot without "
            'Discord, run: python -m bot ask "your question"'
        )
    api_key = reader.secret("OPENAI_API_KEY")
    base_url = reader.text("OPENAI_BASE_URL")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        reader.problems.append(
            f"OPENAI_BASE_URL must start with http:// or https:// (got {base_url!r})."
        )

    models = _models(reader)
    shard_count = reader.parse("SHARD_COUNT", _positive_int, None, "a whole number > 0")
    limits = _models_file(reader)
    pinned_concurrency = reader.parse(
        "MAX_CONCURRENT_ASKS",
        _positive_int,
        None,
        "a whole number > 0, or empty for a limit that adapts to the provider",
    )

    settings = Settings(
        discord_token=token,
        openai_api_key=api_key,
        openai_base_url=base_url,
        openai_model=models[0],
        openai_models=models,
        model_limits=limits,
        openai_timeout=reader.parse(
            "OPENAI_TIMEOUT", _positive_float, 60.0, "a number of seconds > 0"
        ),
        openai_max_retries=reader.parse("OPENAI_MAX_RETRIES", _count, 2, "a whole number >= 0"),
        system_prompt=reader.text("SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
        max_output_tokens=reader.parse(
            "MAX_OUTPUT_TOKENS", _positive_int, None, "a whole number of tokens > 0"
        ),
        context_tokens=reader.parse(
            "CONTEXT_TOKENS", _positive_int, None, "a whole number of tokens > 0"
        ),
        conversation_retention_days=reader.parse(
            "CONVERSATION_RETENTION_DAYS", _positive_int, 30, "a whole number of days > 0"
        ),
        discord_guild_id=reader.parse("DISCORD_GUILD_ID", _snowflake, None, "a numeric server id"),
        log_level=reader.parse("LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
        library_log_level=reader.parse(
            "LIBRARY_LOG_LEVEL", _log_level, None, "DEBUG, INFO, WARNING or ERROR"
        ),
        local_model_path=reader.parse("LOCAL_MODEL_PATH", Path, None, "a file path"),
        ask_cooldown=reader.parse(
            "ASK_COOLDOWN", parse_cooldown, None, "asks/seconds, for example 3/60"
        ),
        max_concurrent_asks=pinned_concurrency or INITIAL_LIMIT,
        adaptive_concurrency=pinned_concurrency is None,
        max_queued_asks=reader.parse("MAX_QUEUED_ASKS", _count, 200, "a whole number >= 0"),
        max_asks_per_user=reader.parse("MAX_ASKS_PER_USER", _positive_int, 2, "a whole number > 0"),
        max_prompt_chars=reader.parse(
            "MAX_PROMPT_CHARS", _prompt_chars, 6000, "a whole number from 1 to 6000"
        ),
        max_attachment_bytes=reader.parse(
            "MAX_ATTACHMENT_BYTES", _positive_int, 8 * 1024 * 1024, "a whole number of bytes > 0"
        ),
        max_attachment_chars=reader.parse(
            "MAX_ATTACHMENT_CHARS", _positive_int, 20_000, "a whole number of characters > 0"
        ),
        allowed_guild_ids=reader.parse(
            "ALLOWED_GUILD_IDS", _snowflakes, frozenset(), "comma-separated numeric ids"
        ),
        allowed_channel_ids=reader.parse(
            "ALLOWED_CHANNEL_IDS", _snowflakes, frozenset(), "comma-separated numeric ids"
        ),
        allowed_role_ids=reader.parse(
            "ALLOWED_ROLE_IDS", _snowflakes, frozenset(), "comma-separated numeric ids"
        ),
        allow_dms=reader.parse("ALLOW_DMS", _flag, False, "true or false"),
        user_daily_tokens=reader.parse(
            "USER_DAILY_TOKENS", _positive_int, None, "a whole number of tokens > 0"
        ),
        guild_daily_tokens=reader.parse(
            "GUILD_DAILY_TOKENS", _positive_int, None, "a whole number of tokens > 0"
        ),
        data_path=reader.parse("DATA_PATH", Path, Path("data"), "a directory path"),
        metrics_port=reader.parse("METRICS_PORT", _port, None, "a port number from 1 to 65535"),
        metrics_host=reader.text("METRICS_HOST") or "127.0.0.1",
        shutdown_grace=reader.parse("SHUTDOWN_GRACE", _seconds, 20.0, "a number of seconds >= 0"),
        stream_responses=reader.parse("STREAM_RESPONSES", _flag, True, "true or false"),
        stream_edit_interval=reader.parse(
            "STREAM_EDIT_INTERVAL", _positive_float, 1.0, "a number of seconds > 0"
        ),
        vision=reader.parse("VISION", _vision, None, "auto, true or false"),
        show_reasoning=reader.parse("SHOW_REASONING", _show_reasoning, "false", "false or file"),
        shard_count=shard_count,
        shard_ids=_shard_ids(reader, shard_count),
        redis_url=_redis_url(reader),
        redis_timeout=reader.parse(
            "REDIS_TIMEOUT", _positive_float, 1.0, "a number of seconds > 0"
        ),
    )
    if (
        settings.context_tokens is not None
        and settings.max_output_tokens is not None
        and settings.max_output_tokens >= settings.context_tokens
    ):
        reader.problems.append(
            f"MAX_OUTPUT_TOKENS ({settings.max_output_tokens}) must be less than "
            f"CONTEXT_TOKENS ({settings.context_tokens}): the answer shares the context "
            "with the prompt."
        )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def _shard_ids(reader: _Reader, shard_count: int | None) -> tuple[int, ...] | None:
    """SHARD_IDS such as "0,1" or "0-3" (or both: "0-3,8"), each below SHARD_COUNT."""
    raw = reader.text("SHARD_IDS")
    if raw is None:
        return None
    try:
        ids = _id_ranges(raw)
    except ValueError:
        reader.problems.append(f"SHARD_IDS must be shard numbers such as 0,1 or 0-3 (got {raw!r}).")
        return None
    if shard_count is None:
        reader.problems.append(
            "SHARD_IDS needs SHARD_COUNT: the number of shards of the whole bot, "
            "across every process."
        )
        return None
    outside = [shard for shard in ids if shard >= shard_count]
    if outside:
        reader.problems.append(
            f"SHARD_IDS names shard {outside[0]}, but SHARD_COUNT={shard_count} has "
            f"shards 0 to {shard_count - 1}."
        )
        return None
    return ids


def _id_ranges(raw: str) -> tuple[int, ...]:
    ids: list[int] = []
    for part in raw.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
            raise ValueError(raw)
        low = int(first)
        high = int(last) if dash else low
        if high < low:
            raise ValueError(raw)
        ids.extend(range(low, high + 1))
    if len(set(ids)) != len(ids):
        raise ValueError(raw)
    return tuple(sorted(ids))


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(reader: _Reader) -> Secret | None:
    # A Secret: the URL may carry Redis's password.
    url = reader.secret("REDIS_URL")
    if url is not None and not url.reveal().startswith(_REDIS_SCHEMES):
        reader.problems.append(
            "REDIS_URL must start with redis://, rediss:// or unix:// "
            "(for example redis://localhost:6379/0)."
        )
        return None
    return url


MAX_MODEL_NAME = 100
"""Discord's own limit on an autocomplete choice's value."""


def _models(reader: _Reader) -> tuple[str, ...]:
    """OPENAI_MODELS (the first is the default), or OPENAI_MODEL alone; both must agree."""
    single = reader.text("OPENAI_MODEL")
    listed = reader.text("OPENAI_MODELS")
    if listed is None:
        return (single or DEFAULT_MODEL,)
    names = [part.strip() for part in listed.split(",") if part.strip()]
    unique = tuple(dict.fromkeys(names))
    if not unique:
        reader.problems.append("OPENAI_MODELS must name at least one model.")
        return (single or DEFAULT_MODEL,)
    if len(unique) != len(names):
        reader.problems.append(f"OPENAI_MODELS names a model twice (got {listed!r}).")
    if len(unique) > 25:
        reader.problems.append(
            "OPENAI_MODELS may list at most 25 models, as many as Discord offers "
            f"(got {len(unique)})."
        )
    too_long = [name for name in unique if len(name) > MAX_MODEL_NAME]
    if too_long:
        reader.problems.append(
            f"OPENAI_MODELS: a model name may have at most {MAX_MODEL_NAME} characters "
            f"(got {too_long[0][:20]!r}…)."
        )
    if single is not None and single != unique[0]:
        reader.problems.append(
            f"OPENAI_MODEL ({single!r}) and OPENAI_MODELS (first {unique[0]!r}) disagree: "
            "set only OPENAI_MODELS, whose first model is the default."
        )
    return unique


_LIMIT_FIELDS = {"context_tokens", "max_output_tokens", "vision"}


def _models_file(reader: _Reader) -> dict[str, ModelLimits]:
    """MODELS_FILE: a JSON object of per-model limits, e.g.
    `{"gpt-4o": {"context_tokens": 128000, "max_output_tokens": 4096, "vision": true}}`."""
    raw = reader.text("MODELS_FILE")
    if raw is None:
        return {}
    try:
        document = json.loads(Path(raw).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reader.problems.append(f"MODELS_FILE ({raw}) cannot be read as JSON: {error}")
        return {}
    if not isinstance(document, dict):
        reader.problems.append(f"MODELS_FILE ({raw}) must hold a JSON object of models.")
        return {}
    limits: dict[str, ModelLimits] = {}
    for name, entry in document.items():
        problem = _limits_problem(entry)
        if problem is not None:
            reader.problems.append(f"MODELS_FILE ({raw}), model {name!r}: {problem}")
            continue
        assert isinstance(entry, dict)
        limits[name] = ModelLimits(**entry)
    for name, entry in limits.items():
        window, cap = entry.context_tokens, entry.max_output_tokens
        if window is not None and cap is not None and cap >= window:
            reader.problems.append(
                f"MODELS_FILE ({raw}), model {name!r}: max_output_tokens must be less than "
                "context_tokens."
            )
    return limits


def _limits_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "must be an object"
    unknown = set(entry) - _LIMIT_FIELDS
    if unknown:
        return f"unknown field(s) {sorted(unknown)}; known: {sorted(_LIMIT_FIELDS)}"
    for key in ("context_tokens", "max_output_tokens"):
        value = entry.get(key)
        if value is not None and (type(value) is not int or value <= 0):
            return f"{key} must be a whole number > 0"
    if entry.get("vision") is not None and type(entry["vision"]) is not bool:
        return "vision must be true or false"
    return None


class _Reader:
    """Reads variables from `env`, recording problems instead of raising at the first one."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def secret(self, name: str) -> Secret | None:
        value = self.text(name)
        return Secret(value) if value is not None else None

    def parse(self, name: str, parse: Callable[[str], T], default: T, expected: str) -> T:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            self.problems.append(f"{name} must be {expected} (got {raw!r}).")
            return default


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(raw: str) -> bool:
    value = raw.lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(raw)
    return value in _TRUE


def _vision(raw: str) -> bool | None:
    return None if raw.lower() == "auto" else _flag(raw)


def _show_reasoning(raw: str) -> ShowReasoning:
    value = raw.lower()
    if value == "file":
        return "file"
    if value in _FALSE:
        return "false"
    raise ValueError(raw)


def _snowflakes(raw: str) -> frozenset[int]:
    return frozenset(_snowflake(part.strip()) for part in raw.split(",") if part.strip())


def _prompt_chars(raw: str) -> int:
    value = int(raw)
    # Discord itself caps a string option at 6000 characters.
    if not 1 <= value <= 6000:
        raise ValueError(raw)
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise ValueError(raw)
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError(raw)
    return value


def _snowflake(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError(raw)
    return int(raw)


def _log_level(raw: str) -> str:
    level = raw.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(raw)
    return level
