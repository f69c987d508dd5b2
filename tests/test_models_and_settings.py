"""The offered models (OPENAI_MODELS, MODELS_FILE) and a model per call; the settings store is
tested in test_settings_store.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.answers.answering import Question
from bot.config import ConfigError, ModelLimits, load_settings
from bot.conversation.context import context_budget
from bot.conversation.settings import ServerSettings, effective_prompt
from bot.discord_app.ask import matching
from bot.model import llm
from bot.model.vision import Image, user_message
from tests.fakes.openai_server import FakeOpenAI, Reply

BASE = {"DISCORD_TOKEN": "t", "OPENAI_API_KEY": "sk-test"}


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings({**BASE, **env})
    return raised.value.problems


# --- OPENAI_MODELS ----------------------------------------------------------------------------


def test_openai_models_lists_the_choice_and_its_first_is_the_default() -> None:
    settings = load_settings({**BASE, "OPENAI_MODELS": " gpt-4o-mini , gpt-4o,o4-mini,"})
    assert settings.openai_models == ("gpt-4o-mini", "gpt-4o", "o4-mini")
    assert settings.openai_model == "gpt-4o-mini"


def test_openai_model_alone_is_the_one_model() -> None:
    settings = load_settings({**BASE, "OPENAI_MODEL": "llama3.2"})
    assert settings.openai_models == ("llama3.2",)
    assert settings.openai_model == "llama3.2"


def test_openai_model_and_models_must_agree() -> None:
    agreeing = load_settings({**BASE, "OPENAI_MODEL": "a", "OPENAI_MODELS": "a,b"})
    assert agreeing.openai_models == ("a", "b")
    [problem] = problems(OPENAI_MODEL="b", OPENAI_MODELS="a,b")
    assert "OPENAI_MODEL" in problem
    assert "disagree" in problem


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        (",", "at least one"),
        ("a,b,a", "twice"),
        (",".join(f"m{i}" for i in range(26)), "at most 25"),
        ("x" * 101, "at most 100"),
    ],
)
def test_a_malformed_model_list_is_reported(listed: str, expected: str) -> None:
    [problem] = problems(OPENAI_MODELS=listed)
    assert expected in problem


# --- MODELS_FILE ------------------------------------------------------------------------------


def test_models_file_gives_per_model_limits(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(
        json.dumps(
            {
                "big": {"context_tokens": 200_000, "max_output_tokens": 8000, "vision": True},
                "small": {"context_tokens": 4096},
            }
        )
    )
    settings = load_settings({**BASE, "OPENAI_MODELS": "big,small,other", "MODELS_FILE": str(path)})
    assert settings.model_limits["big"] == ModelLimits(200_000, 8000, True)
    big = context_budget(settings, "big")
    assert (big.context_tokens, big.reserved_output) == (200_000, 8000)
    assert context_budget(settings, "small").context_tokens == 4096
    assert context_budget(settings, "other").context_tokens == 8192, "an unknown name's default"
    assert context_budget(settings).context_tokens == 200_000, "the default model's"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "cannot be read as JSON"),
        ("[]", "JSON object"),
        ('{"m": {"context": 5}}', "unknown field"),
        ('{"m": {"context_tokens": -1}}', "whole number > 0"),
        ('{"m": {"context_tokens": true}}', "whole number > 0"),
        ('{"m": {"vision": "yes"}}', "true or false"),
        ('{"m": {"context_tokens": 100, "max_output_tokens": 100}}', "less than"),
    ],
)
def test_a_malformed_models_file_is_reported(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "models.json"
    path.write_text(content)
    [problem] = problems(MODELS_FILE=str(path))
    assert expected in problem
    assert str(path) in problem


def test_a_missing_models_file_is_reported(tmp_path: Path) -> None:
    [problem] = problems(MODELS_FILE=str(tmp_path / "absent.json"))
    assert "MODELS_FILE" in problem


# --- Autocomplete and prompts -----------------------------------------------------------------


def test_suggestions_contain_what_was_typed_those_starting_with_it_first() -> None:
    models = ["gpt-4o-mini", "gpt-4o", "o4-mini", "llama3.2"]
    assert matching(models, "") == models
    assert matching(models, "MINI") == ["gpt-4o-mini", "o4-mini"]
    assert matching(models, "o") == ["o4-mini", "gpt-4o-mini", "gpt-4o"]
    assert matching([f"m{i}" for i in range(40)], "m") == [f"m{i}" for i in range(25)]


def test_the_channel_prompt_wins_over_the_servers_which_wins_over_the_default() -> None:
    server = ServerSettings(system_prompt="server", channel_prompts={7: "channel"})
    assert effective_prompt(server, 7, "default") == "channel"
    assert effective_prompt(server, 8, "default") == "server"
    assert effective_prompt(ServerSettings(), 7, "default") == "default"


# --- A model per call -------------------------------------------------------------------------


async def test_the_completer_answers_with_the_model_asked_for_and_its_cap(
    fake_openai: FakeOpenAI,
) -> None:
    settings = load_settings(
        {**BASE, "OPENAI_BASE_URL": fake_openai.base_url, "MAX_OUTPUT_TOKENS": "300"}
    )
    async with llm.make_client(settings) as client:
        completer = llm.Completer(
            client,
            model="gpt-4o-mini",
            system_prompt="Be brief.",
            max_output_tokens=300,
            limits={"gpt-4o": ModelLimits(max_output_tokens=900)},
        )
        fake_openai.script(Reply("one"), Reply("two"), Reply("three"))
        assert (await completer.complete("Hi", model="gpt-4o")).text == "one"
        streamed = [chunk.text async for chunk in completer.stream("Hi", model="gpt-4o")]
        assert "".join(streamed) == "two"
        assert (await completer.complete("Hi")).text == "three"
    sent = [(r.json["model"], r.json.get("max_completion_tokens")) for r in fake_openai.requests]
    assert sent == [("gpt-4o", 900), ("gpt-4o", 900), ("gpt-4o-mini", 300)]


def test_vision_can_differ_by_model() -> None:
    settings = load_settings(BASE)
    client = llm.make_client(settings)
    completer = llm.Completer(
        client,
        model="gpt-4o-mini",
        system_prompt="",
        limits={"llama3.2": ModelLimits(vision=False), "llava": ModelLimits(vision=True)},
    )
    assert completer.sees_images is True, "judged by its name"
    assert completer.sees_images_of("llama3.2") is False
    assert completer.sees_images_of("llava") is True


def test_a_question_asked_again_without_its_images_keeps_the_chosen_model() -> None:
    # A model that cannot see images is asked the text alone: by the model the asker chose.
    picture = Image(b"\x89PNG\r\n\x1a\n", "image/png")
    question = Question([user_message("What is this?", [picture])], model="gpt-4o")

    text_only = question.without_images()

    assert question.has_images
    assert not text_only.has_images
    assert text_only.model == "gpt-4o"
