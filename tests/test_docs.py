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
