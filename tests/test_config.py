"""Settings: defaults, every problem reported together, secrets kept out of sight."""

from __future__ import annotations

import pytest

from bot.config import DEFAULT_MODEL, ConfigError, Secret, load_settings

MINIMAL = {"DISCORD_TOKEN": "discord-secret-token", "OPENAI_API_KEY": "sk-secret-key"}


def test_minimal_environment_gives_documented_defaults() -> None:
    settings = load_settings(MINIMAL)
    assert settings.openai_model == DEFAULT_MODEL
    assert settings.openai_timeout == 60.0
    assert settings.openai_max_retries == 2
    assert settings.openai_base_url is None
    assert settings.max_output_tokens is None
    assert settings.discord_guild_id is None
    assert settings.log_level == "INFO"
    assert "Discord" in settings.system_prompt


def test_values_are_parsed_and_typed() -> None:
    settings = load_settings(
        {
            **MINIMAL,
            "OPENAI_BASE_URL": "http://localhost:11434/v1",
            "OPENAI_MODEL": "llama3.2",
            "OPENAI_TIMEOUT": "12.5",
            "OPENAI_MAX_RETRIES": "0",
            "SYSTEM_PROMPT": "Answer like a pirate.",
            "MAX_OUTPUT_TOKENS": "300",
            "DISCORD_GUILD_ID": "123456789012345678",
            "LOG_LEVEL": "debug",
        }
    )
    assert settings.openai_base_url == "http://localhost:11434/v1"
    assert settings.openai_model == "llama3.2"
    assert settings.openai_timeout == 12.5
    assert settings.openai_max_retries == 0
    assert settings.system_prompt == "Answer like a pirate."
    assert settings.max_output_tokens == 300
    assert settings.discord_guild_id == 123456789012345678
    assert settings.log_level == "DEBUG"


def test_base_url_alone_needs_no_api_key() -> None:
    settings = load_settings({"DISCORD_TOKEN": "t", "OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"})
    assert settings.openai_api_key is None
    assert not settings.uses_builtin_model


def test_blank_values_count_as_unset() -> None:
    settings = load_settings({**MINIMAL, "OPENAI_MODEL": "  ", "MAX_OUTPUT_TOKENS": ""})
    assert settings.openai_model == DEFAULT_MODEL
    assert settings.max_output_tokens is None


def test_every_problem_is_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "OPENAI_TIMEOUT": "soon",
                "OPENAI_MAX_RETRIES": "-1",
                "MAX_OUTPUT_TOKENS": "0",
                "DISCORD_GUILD_ID": "my-server",
                "LOG_LEVEL": "LOUD",
                "OPENAI_BASE_URL": "localhost:11434",
            }
        )
    message = str(caught.value)
    for name in (
        "DISCORD_TOKEN",
        "OPENAI_TIMEOUT",
        "OPENAI_MAX_RETRIES",
        "MAX_OUTPUT_TOKENS",
        "DISCORD_GUILD_ID",
        "LOG_LEVEL",
        "OPENAI_BASE_URL",
    ):
        assert name in message
    assert len(caught.value.problems) == 7


def test_no_provider_means_the_builtin_model() -> None:
    settings = load_settings({"DISCORD_TOKEN": "t", "LOCAL_MODEL_PATH": "/models/x.gguf"})
    assert settings.uses_builtin_model
    assert str(settings.local_model_path) == "/models/x.gguf"
    assert not load_settings(MINIMAL).uses_builtin_model


def test_discord_token_can_be_optional() -> None:
    settings = load_settings({"OPENAI_API_KEY": "k"}, require_discord=False)
    assert settings.discord_token is None


def test_secrets_never_show_in_repr_or_str() -> None:
    settings = load_settings(MINIMAL)
    for text in (repr(settings), str(settings), repr(settings.discord_token), f"{settings}"):
        assert "discord-secret-token" not in text
        assert "sk-secret-key" not in text
    assert settings.discord_token == Secret("discord-secret-token")
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.reveal() == "sk-secret-key"


@pytest.mark.parametrize(
    ("shards", "expected"),
    [
        ({"SHARD_COUNT": "4"}, (4, None)),
        ({"SHARD_COUNT": "4", "SHARD_IDS": "0,2-3"}, (4, (0, 2, 3))),
        ({"SHARD_COUNT": "2", "SHARD_IDS": " 1 , 0 "}, (2, (0, 1))),
        ({}, (None, None)),
    ],
)
def test_shards_of_this_process(shards: dict[str, str], expected: tuple[object, object]) -> None:
    settings = load_settings({"DISCORD_TOKEN": "t", **shards})
    assert (settings.shard_count, settings.shard_ids) == expected


@pytest.mark.parametrize(
    ("shards", "problem"),
    [
        ({"SHARD_IDS": "0"}, "SHARD_IDS needs SHARD_COUNT"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "0-2"}, "names shard 2, but SHARD_COUNT=2"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "1,1"}, "SHARD_IDS must be shard numbers"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "1-0"}, "SHARD_IDS must be shard numbers"),
        ({"SHARD_COUNT": "2", "SHARD_IDS": "a"}, "SHARD_IDS must be shard numbers"),
        ({"SHARD_COUNT": "0"}, "SHARD_COUNT must be a whole number > 0"),
    ],
)
def test_impossible_shard_layouts_are_reported(shards: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"DISCORD_TOKEN": "t", "REDIS_URL": "nope", **shards})
    # Reported together with the rest.
    assert problem in str(raised.value)
    assert "REDIS_URL must start with redis://" in str(raised.value)


def test_the_redis_url_is_a_secret_and_its_password_never_shows() -> None:
    settings = load_settings(
        {"DISCORD_TOKEN": "t", "REDIS_URL": "redis://:hunter2@cache:6379/0", "REDIS_TIMEOUT": "2.5"}
    )
    assert settings.redis_url is not None
    assert settings.redis_url.reveal() == "redis://:hunter2@cache:6379/0"
    assert "hunter2" not in repr(settings)
    assert settings.redis_timeout == 2.5
