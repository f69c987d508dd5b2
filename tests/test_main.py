"""The entry point's own decisions: how settings are loaded, how network failures read."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from bot.__main__ import _GatewayUnreachable, discord_unreachable, read_settings
from bot.model.llm import make_client

ROOT = Path(__file__).resolve().parent.parent
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty environment and an empty working directory, as on a fresh machine."""
    for name in list(os.environ):
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_env_from_example(directory: Path, **values: str) -> None:
    """`cp .env.example .env`, then fill in `values` as a user would in an editor."""
    shutil.copyfile(ROOT / ".env.example", directory / ".env")
    text = (directory / ".env").read_text()
    for name, value in values.items():
        assert f"\n{name}=\n" in text, f"{name} is not an empty line of .env.example"
        text = text.replace(f"\n{name}=\n", f"\n{name}={value}\n")
    (directory / ".env").write_text(text)


async def test_the_shipped_env_example_with_two_secrets_talks_to_openai(
    clean_env: Path,
) -> None:
    write_env_from_example(clean_env, DISCORD_TOKEN="discord-token", OPENAI_API_KEY="sk-key")

    settings = read_settings()
    client = make_client(settings)
    try:
        assert str(client.base_url).rstrip("/") == OPENAI_DEFAULT_BASE_URL
        headers = client.default_headers
        assert not isinstance(headers.get("OpenAI-Organization"), str)
        assert not isinstance(headers.get("OpenAI-Project"), str)
        assert client.api_key == "sk-key"
    finally:
        await client.close()
    assert settings.discord_token is not None
    assert settings.discord_token.reveal() == "discord-token"


def test_real_environment_variables_win_over_env(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env_from_example(clean_env, DISCORD_TOKEN="from-file")
    monkeypatch.setenv("DISCORD_TOKEN", "from-environment")
    monkeypatch.setenv("OPENAI_MODEL", "a-model-of-my-own")

    settings = read_settings()

    assert settings.discord_token is not None
    assert settings.discord_token.reveal() == "from-environment"
    assert settings.openai_model == "a-model-of-my-own"


def test_env_is_read_from_the_working_directory_only(clean_env: Path) -> None:
    (clean_env / "sub").mkdir()
    write_env_from_example(clean_env, DISCORD_TOKEN="from-parent")
    os.chdir(clean_env / "sub")

    settings = read_settings(require_discord=False)

    assert settings.discord_token is None


def key(host: str, port: int, *, tls: bool = True) -> ConnectionKey:
    return ConnectionKey(host, port, tls, True, None, None, None)


def test_connection_refused_names_discord_the_address_and_the_cause() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    error = aiohttp.ClientConnectorError(key("127.0.0.1", 9, tls=False), refused)

    assert discord_unreachable(error) == "cannot reach Discord at 127.0.0.1:9: connection refused"


def test_a_dns_failure_says_so() -> None:
    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    error = aiohttp.ClientConnectorDNSError(key("discord.com", 443), lookup)

    assert discord_unreachable(error) == (
        "cannot reach Discord at discord.com:443: DNS lookup failed "
        "(Name or service not known); check the network"
    )


def test_a_rejected_certificate_says_tls() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    error = aiohttp.ClientConnectorCertificateError(key("discord.com", 443), verify)

    message = discord_unreachable(error)

    assert message is not None
    assert message.startswith("cannot reach Discord at discord.com:443: TLS certificate not")
    assert "self-signed certificate" in message


def test_a_failed_tls_handshake_says_tls() -> None:
    handshake = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error = aiohttp.ClientConnectorSSLError(key("discord.com", 443), handshake)

    message = discord_unreachable(error)

    assert message is not None
    assert message.startswith("cannot reach Discord at discord.com:443: TLS handshake failed")
    assert "WRONG_VERSION_NUMBER" in message


def test_a_timeout_and_a_dropped_connection_say_so() -> None:
    assert discord_unreachable(TimeoutError()) is not None
    assert str(discord_unreachable(TimeoutError())).endswith(": timed out")
    dropped = discord_unreachable(aiohttp.ServerDisconnectedError())
    assert str(dropped).endswith(": the connection was closed before Discord answered")


def test_a_failed_first_gateway_connection_names_the_gateway() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    cause = aiohttp.ClientConnectorError(key("gateway.discord.gg", 443), refused)
    error = _GatewayUnreachable("wss://gateway.discord.gg/")
    error.__cause__ = cause

    assert discord_unreachable(error) == (
        "cannot reach Discord's gateway at gateway.discord.gg:443: connection refused"
    )


def test_a_network_error_behind_another_error_is_still_found() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    # As `raise AttributeError(...) from None` inside `except ClientError` leaves it: the
    # context is hidden from tracebacks, not from the chain.
    error = AttributeError("'NoneType' object has no attribute 'sequence'")
    error.__context__ = aiohttp.ClientConnectorError(key("127.0.0.1", 9, tls=False), refused)
    error.__suppress_context__ = True

    assert discord_unreachable(error) == "cannot reach Discord at 127.0.0.1:9: connection refused"


def test_other_errors_are_not_network_failures() -> None:
    assert discord_unreachable(ValueError("a bug")) is None
    assert discord_unreachable(KeyError("token")) is None
