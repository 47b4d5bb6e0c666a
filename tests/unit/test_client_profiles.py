"""Connection settings from a profile file, as the AWS CLI's profiles work: [default] and
[profile.NAME] tables in ~/.config/hsm/config.toml (hsmclient.channel), under the HSM_*
variables, under the command line's options."""

from __future__ import annotations

from pathlib import Path

import pytest
from hsmclient import ConfigurationError, cli
from hsmclient.channel import ConnectionSettings
from hsmclient.cli import commands

CONFIG = """
[default]
endpoint = "hsm.example:7443"
ca_cert = "certs/ca.pem"
cert = "~/app.pem"
key = "/abs/app-key.pem"

[profile.staging]
endpoint = "staging.example:7443"
ca_cert = "staging-ca.pem"
cert = "staging.pem"
key = "staging-key.pem"
server_name = "hsm.staging"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hsm" / "config.toml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


def test_the_default_profile_fills_what_the_environment_does_not(config: Path) -> None:
    settings = ConnectionSettings.from_env({"XDG_CONFIG_HOME": str(config.parents[1])})
    assert settings.endpoint == "hsm.example:7443"
    assert settings.ca_cert_path == config.parent / "certs" / "ca.pem"  # beside the file
    assert settings.client_cert_path == Path.home() / "app.pem"
    assert settings.client_key_path == Path("/abs/app-key.pem")
    assert settings.server_name is None
    overridden = ConnectionSettings.from_env(
        {"HSM_CONFIG_FILE": str(config), "HSM_ENDPOINT": "other:1"}
    )
    assert overridden.endpoint == "other:1" and overridden.client_key_path.name == "app-key.pem"


def test_a_profile_is_picked_by_name_and_a_missing_one_is_refused(config: Path) -> None:
    staging = ConnectionSettings.from_env(
        {"HSM_CONFIG_FILE": str(config), "HSM_PROFILE": "staging"}
    )
    assert (staging.endpoint, staging.server_name) == ("staging.example:7443", "hsm.staging")
    with pytest.raises(ConfigurationError, match=r"profile 'prod' is not in") as refused:
        ConnectionSettings.from_env({"HSM_CONFIG_FILE": str(config), "HSM_PROFILE": "prod"})
    assert refused.value.variable == "HSM_PROFILE"


def test_without_a_file_or_a_variable_the_setting_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="HSM_ENDPOINT is not set") as refused:
        ConnectionSettings.from_env({"HSM_CONFIG_FILE": str(tmp_path / "none.toml")})
    assert refused.value.variable == "HSM_ENDPOINT"


@pytest.mark.parametrize("text", ["[default", "[default]\nendpoint = 7443"])
def test_a_broken_file_is_refused_clearly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=str(path)) as refused:
        ConnectionSettings.from_env({"HSM_CONFIG_FILE": str(path)})
    assert refused.value.variable == "HSM_CONFIG_FILE"


def test_the_cli_takes_profile_then_variables_then_options(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HSM_CONFIG_FILE", str(config))
    for variable in ("HSM_ENDPOINT", "HSM_CA_CERT", "HSM_CLIENT_CERT", "HSM_CLIENT_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HSM_PROFILE", "staging")
    args = commands.build_parser().parse_args(["--profile", "default", "list-keys"])
    assert cli._connection_settings(args).endpoint == "hsm.example:7443"  # option over variable
    args = commands.build_parser().parse_args(["list-keys", "--endpoint", "cli:1"])
    settings = cli._connection_settings(args)
    assert (settings.endpoint, settings.server_name) == ("cli:1", "hsm.staging")
    assert cli.main(["--profile", "prod", "list-keys"]) == cli.EXIT_CONNECTION_ERROR
    assert "(option --profile)" in capsys.readouterr().err
