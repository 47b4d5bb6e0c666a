"""`hsm` against AWS KMS's service model (botocore): every operation is a command, every input
of a command's operation is an option, and what hsmd cannot honour is refused with its reason.
The JSON the commands print is checked against the model through a real daemon, in
tests/integration/test_cli_aws.py."""

from __future__ import annotations

import argparse

import pytest
from hsmclient import cli
from hsmclient.cli import arguments, commands

from tests.aws_model import KMS, command_name, operation, option_name


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = commands.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_aws_kms_operation_is_a_command() -> None:
    missing = {command_name(name) for name in KMS.operation_names} - set(_subcommands())
    assert not missing


@pytest.mark.parametrize("command", sorted(command_name(name) for name in KMS.operation_names))
def test_every_input_of_an_operation_is_an_option_of_its_command(command: str) -> None:
    sub = _subcommands()[command]
    if sub.get_default("unsupported"):
        return  # refused whole, whatever its options
    model = operation(command).input_shape
    expected = {option_name(member) for member in model.members} if model else set()
    flags = {
        "--no-" + option_name(name).removeprefix("--")
        for name, shape in (model.members.items() if model else ())
        if shape.type_name == "boolean"
    }
    assert expected | flags <= _options(sub)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "option", "reason"),
    [
        (
            ["encrypt", "--key-id", "k", "--plaintext", "eA==", "--grant-tokens", "t"],
            "--grant-tokens",
            "grants",
        ),
        (["encrypt", "--key-id", "k", "--plaintext", "eA==", "--dry-run"], "--dry-run", "dry runs"),
        (["decrypt", "--ciphertext-blob", "eA==", "--recipient", "{}"], "--recipient", "Nitro"),
        (["list-keys", "--resource-owners", "OTHER_ACCOUNTS_VIA_RAM"], "--resource-owners", "own"),
        (["create-key", "--custom-key-store-id", "cks-1"], "--custom-key-store-id", "key store"),
        (
            [
                "put-key-policy",
                "--key-id",
                "k",
                "--policy",
                '{"Administrators": ["a"]}',
                "--bypass-policy-lockout-safety-check",
            ],
            "--bypass-policy-lockout-safety-check",
            "lock its author out",
        ),
        (
            ["list-key-rotations", "--key-id", "k", "--include-key-material", "ALL_KEY_MATERIAL"],
            "--include",
            "only",
        ),
        (
            ["describe-key", "--key-id", "k", "--no-verify-ssl"],
            "--no-verify-ssl",
            "always verifies",
        ),
    ],
)
def test_options_hsmd_cannot_honour_are_refused_with_the_reason(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str, reason: str
) -> None:
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (arguments.EXIT_USAGE, "")
    assert option in err and "hsmd cannot honour it" in err and reason in err


@pytest.mark.parametrize(
    "argv",
    [
        ["list-keys", "--resource-owners", "SELF"],
        ["list-key-rotations", "--key-id", "k", "--include-key-material", "ROTATIONS_ONLY"],
        ["encrypt", "--key-id", "k", "--plaintext", "eA==", "--no-dry-run"],
        ["create-key", "--no-multi-region", "--no-bypass-policy-lockout-safety-check"],
        ["create-key", "--customer-master-key-spec", "ECC_NIST_P256", "--origin", "AWS_KMS"],
        ["list-keys", "--region", "eu-west-1", "--no-cli-pager", "--color", "off"],
    ],
)
def test_options_that_ask_for_what_hsmd_does_are_accepted(argv: list[str]) -> None:
    commands.build_parser().parse_args(argv)


def test_operations_hsmd_does_not_have_answer_unsupported_without_a_connection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HSM_ENDPOINT", raising=False)  # no daemon is asked
    argv = ["create-grant", "--key-id", "k", "--grantee-principal", "p", "--operations", "Decrypt"]
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (cli.EXIT_SERVICE_ERROR, "")
    assert err.startswith(
        "An error occurred (UnsupportedOperationException) when calling the CreateGrant"
        " operation: hsmd has no grants"
    )


@pytest.mark.parametrize(
    ("binary_format", "text", "data"),
    [("base64", "aGk=", b"hi"), ("raw-in-base64-out", "hi", b"hi")],
)
def test_cli_binary_format_says_how_text_blobs_are_read(
    binary_format: str, text: str, data: bytes
) -> None:
    parser = commands.build_parser()
    argv = ["encrypt", "--key-id", "k", "--plaintext", text, "--cli-binary-format", binary_format]
    args = parser.parse_args(argv)
    arguments.decode_blobs(parser, args)
    assert args.plaintext == data


def test_aws_clis_connection_options_name_hsms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_CLIENT_CERT", "/c.pem")
    monkeypatch.setenv("HSM_CLIENT_KEY", "/c.key")
    argv = ["list-keys", "--endpoint-url", "https://hsm.example:7443/", "--ca-bundle", "/ca.pem"]
    settings = cli._connection_settings(commands.build_parser().parse_args(argv))
    assert (settings.endpoint, str(settings.ca_cert_path)) == ("hsm.example:7443", "/ca.pem")
