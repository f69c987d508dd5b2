"""The documented settings are the settings the bot reads, and the documented commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from dotenv import dotenv_values

from bot.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = (ROOT / "bot" / "config.py").read_text()
ENV_EXAMPLE = ROOT / ".env.example"
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()

READ_NAMES = set(re.findall(r'reader\.\w+\(\s*"([A-Z_]+)"', CONFIG))


def test_config_reads_the_settings_we_expect() -> None:
    assert {"DISCORD_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ASK_COOLDOWN"} <= READ_NAMES


def test_every_setting_is_in_env_example_with_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name in READ_NAMES:
        index = next((i for i, line in enumerate(lines) if line.startswith(f"{name}=")), None)
        assert index is not None, f"{name} missing from .env.example"
        above = lines[index - 1]
        assert above.startswith("#") or re.match(r"[A-Z_]+=", above), name


def test_env_example_names_only_real_settings() -> None:
    assert set(dotenv_values(ENV_EXAMPLE)) == READ_NAMES


def test_every_setting_is_in_the_readme_table() -> None:
    for name in READ_NAMES:
        assert f"| `{name}` |" in README, f"{name} missing from the README settings table"


def test_env_example_values_are_valid_settings() -> None:
    values = {k: v or "" for k, v in dotenv_values(ENV_EXAMPLE).items()}
    settings = load_settings({**values, "DISCORD_TOKEN": "token"})
    assert settings.uses_builtin_model


def test_ci_runs_the_readme_test_command() -> None:
    command = next(
        line for line in README.splitlines() if "pytest" in line and line.startswith("python3")
    )
    assert command in CI.splitlines()


def _provider_blocks() -> list[dict[str, str]]:
    """The `env` blocks of the README's "Connecting a model" section, as settings."""
    section = README.split("### Connecting a model", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```env\n(.*?)```", section, flags=re.DOTALL)
    parsed = []
    for block in blocks:
        pairs = [line.split("=", 1) for line in block.splitlines() if line.strip()]
        parsed.append({name: value for name, value in pairs})
    return parsed


def test_each_documented_provider_setup_is_valid_and_reaches_its_url() -> None:
    from bot.model.llm import OPENAI_BASE_URL, make_client

    blocks = _provider_blocks()
    assert len(blocks) == 6
    for block in blocks:
        settings = load_settings({"DISCORD_TOKEN": "token", **block})
        assert not settings.uses_builtin_model, block
        client = make_client(settings)
        expected = block.get("OPENAI_BASE_URL", OPENAI_BASE_URL)
        # The SDK keeps the URL with a trailing slash; requests go to `<base>/chat/completions`.
        assert str(client.base_url).rstrip("/") == expected, block
        assert expected.endswith("/v1"), f"{expected}: compatible servers serve the API under /v1"
        assert settings.openai_model == block["OPENAI_MODEL"]


def test_every_metric_the_bot_serves_is_in_the_readme() -> None:
    from bot.metrics import Metrics

    section = README.split("## Operating it", 1)[1].split("\n## ", 1)[0]
    families = list(Metrics().registry.collect())
    assert len(families) >= 10
    for family in families:
        # Counters are scraped with the `_total` suffix, which is the name people query.
        name = family.name + ("_total" if family.type == "counter" else "")
        assert re.search(rf"`{name}[`{{]", section), f"{name} missing from the README's metrics"
