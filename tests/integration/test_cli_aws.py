"""`hsm` as a drop-in for `aws kms`, through a real daemon: the JSON of every command that is an
AWS KMS operation conforms to botocore's service model (AWS's fields, types and enum
spellings; hsmd's own fields besides), AWS's spellings and ARNs are taken as input, and errors
carry the AWS exception names that the model lists for the operation."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hsmclient import HsmClient, cli, keyimport
from hsmclient.cli import commands

from tests.aws_model import KMS, command_name, operation, problems
from tests.harness import DaemonProcess, TestPki, serving

TENANT = "awscli"
CONTEXT = {"app": "test"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("awscli"), pki, (TENANT,))


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> Iterator[HsmClient]:
    with daemon.client(TENANT) as made:
        yield made


@pytest.fixture
def hsm(
    daemon: DaemonProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    """Runs `hsm ARGS...` in-process as the tenant: (exit code, stdout, stderr)."""
    for variable, value in daemon.client_env(TENANT, tmp_path).items():
        if variable.startswith("HSM_"):
            monkeypatch.setenv(variable, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class _Keys:
    """A key of each kind the commands need, made once."""

    aes: str
    rsa: str
    ec: str
    hmac: str


@pytest.fixture(scope="module")
def keys(client: HsmClient) -> _Keys:
    return _Keys(
        aes=client.create_key(tags={"team": "pay"}).key_id,
        rsa=client.create_key("RSA_2048", "ENCRYPT_DECRYPT").key_id,
        ec=client.create_key("ECC_NIST_P256", "SIGN_VERIFY").key_id,
        hmac=client.create_key("HMAC_256").key_id,
    )


def _external_key(client: HsmClient, imported: bool) -> str:
    key_id = client.create_key(origin="EXTERNAL").key_id
    if imported:
        client.import_key(key_id, os.urandom(32), "AES_256")
    return key_id


def _import_material(client: HsmClient) -> list[str]:
    key_id = _external_key(client, imported=False)
    parameters = client.get_parameters_for_import(key_id, "RSAES_OAEP_SHA_1")
    wrapped = keyimport.wrap_for_import(os.urandom(32), parameters.public_key, "RSAES_OAEP_SHA_1")
    return [
        "--key-id",
        key_id,
        "--import-token",
        _b64(parameters.import_token),
        "--encrypted-key-material",
        _b64(wrapped),
        "--expiration-model",
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    ]


def _disabled_key(client: HsmClient) -> str:
    key_id = client.create_key().key_id
    client.disable_key(key_id)
    return key_id


def _alias(client: HsmClient, key_id: str) -> str:
    name = f"alias/aws-{os.urandom(4).hex()}"
    client.create_alias(name, key_id)
    return name


# Each AWS command hsm has, and its arguments; a case may first make what it needs.
_Case = Callable[[HsmClient, _Keys], list[str]]
CASES: dict[str, _Case] = {
    "create-key": lambda c, k: [
        "--key-spec",
        "ECC_NIST_P256",
        "--key-usage",
        "SIGN_VERIFY",
        "--tags",
        "TagKey=a,TagValue=b",
    ],
    "describe-key": lambda c, k: ["--key-id", k.aes],
    "list-keys": lambda c, k: ["--limit", "2"],
    "encrypt": lambda c, k: [
        "--key-id",
        k.aes,
        "--plaintext",
        "aGk=",
        "--encryption-context",
        "app=test",
    ],
    "decrypt": lambda c, k: [
        "--ciphertext-blob",
        _b64(c.encrypt(k.aes, b"hi", CONTEXT).ciphertext_blob),
        "--encryption-context",
        "app=test",
    ],
    "re-encrypt": lambda c, k: [
        "--ciphertext-blob",
        _b64(c.encrypt(k.aes, b"hi").ciphertext_blob),
        "--destination-key-id",
        k.rsa,
        "--destination-encryption-algorithm",
        "RSAES_OAEP_SHA_1",
    ],
    "generate-data-key": lambda c, k: ["--key-id", k.aes, "--key-spec", "AES_128"],
    "generate-data-key-without-plaintext": lambda c, k: [
        "--key-id",
        k.aes,
        "--number-of-bytes",
        "64",
    ],
    "generate-data-key-pair": lambda c, k: ["--key-id", k.aes, "--key-pair-spec", "ECC_NIST_P256"],
    "generate-data-key-pair-without-plaintext": lambda c, k: [
        "--key-id",
        k.aes,
        "--key-pair-spec",
        "RSA_2048",
    ],
    "generate-random": lambda c, k: ["--number-of-bytes", "16"],
    "sign": lambda c, k: [
        "--key-id",
        k.ec,
        "--message",
        "aGk=",
        "--signing-algorithm",
        "ECDSA_SHA_256",
    ],
    "verify": lambda c, k: [
        "--key-id",
        k.ec,
        "--message",
        "aGk=",
        "--signature",
        _b64(c.sign(k.ec, b"hi", "ECDSA_SHA_256").signature),
        "--signing-algorithm",
        "ECDSA_SHA_256",
    ],
    "get-public-key": lambda c, k: ["--key-id", k.ec],
    "generate-mac": lambda c, k: [
        "--key-id",
        k.hmac,
        "--message",
        "aGk=",
        "--mac-algorithm",
        "HMAC_SHA_256",
    ],
    "verify-mac": lambda c, k: [
        "--key-id",
        k.hmac,
        "--message",
        "aGk=",
        "--mac",
        _b64(c.generate_mac(k.hmac, b"hi", "HMAC_SHA_256").mac),
        "--mac-algorithm",
        "HMAC_SHA_256",
    ],
    "enable-key": lambda c, k: ["--key-id", k.aes],
    "disable-key": lambda c, k: ["--key-id", c.create_key().key_id],
    "schedule-key-deletion": lambda c, k: [
        "--key-id",
        c.create_key().key_id,
        "--pending-window-in-days",
        "7",
    ],
    "cancel-key-deletion": lambda c, k: [
        "--key-id",
        c.schedule_key_deletion(c.create_key().key_id, 7).key_id,
    ],
    "update-key-description": lambda c, k: ["--key-id", k.aes, "--description", "payroll"],
    "tag-resource": lambda c, k: ["--key-id", k.aes, "--tags", "TagKey=env,TagValue=prod"],
    "untag-resource": lambda c, k: ["--key-id", k.aes, "--tag-keys", "nothing"],
    "list-resource-tags": lambda c, k: ["--key-id", k.aes],
    "get-key-policy": lambda c, k: ["--key-id", k.aes, "--policy-name", "default"],
    "put-key-policy": lambda c, k: [
        "--key-id",
        k.aes,
        "--policy",
        '{"Administrators": ["app"], "Users": ["app"]}',
    ],
    "list-key-policies": lambda c, k: ["--key-id", k.aes],
    "enable-key-rotation": lambda c, k: ["--key-id", k.aes, "--rotation-period-in-days", "90"],
    "disable-key-rotation": lambda c, k: ["--key-id", c.create_key().key_id],
    "get-key-rotation-status": lambda c, k: ["--key-id", k.aes],
    "rotate-key-on-demand": lambda c, k: ["--key-id", c.create_key().key_id],
    "list-key-rotations": lambda c, k: [
        "--key-id",
        c.rotate_key_on_demand(c.create_key().key_id).key_id,
    ],
    "create-alias": lambda c, k: [
        "--alias-name",
        f"alias/new-{os.urandom(4).hex()}",
        "--target-key-id",
        k.aes,
    ],
    "update-alias": lambda c, k: [
        "--alias-name",
        _alias(c, k.aes),
        "--target-key-id",
        c.create_key().key_id,
    ],
    "delete-alias": lambda c, k: ["--alias-name", _alias(c, k.aes)],
    "list-aliases": lambda c, k: ["--key-id", k.aes],
    "get-parameters-for-import": lambda c, k: [
        "--key-id",
        _external_key(c, imported=False),
        "--wrapping-algorithm",
        "RSA_AES_KEY_WRAP_SHA_1",
        "--wrapping-key-spec",
        "RSA_3072",
    ],
    "import-key-material": lambda c, k: _import_material(c),
    "delete-imported-key-material": lambda c, k: ["--key-id", _external_key(c, imported=True)],
}


# Checked against the model in test_regions.py, which has daemons in peer regions.
CHECKED_WITH_REGIONS = {"replicate-key", "update-primary-region"}


def test_every_aws_command_of_hsm_is_checked_here() -> None:
    parser = commands.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    offered = {
        name
        for name, sub in action.choices.items()  # type: ignore[union-attr]
        if not sub.get_default("unsupported")
    }
    aws_commands = {command_name(name) for name in KMS.operation_names}
    assert offered & aws_commands == set(CASES) | CHECKED_WITH_REGIONS


@pytest.mark.parametrize("command", sorted(CASES))
def test_the_json_of_every_command_conforms_to_the_aws_model(
    command: str, hsm: Callable[..., tuple[int, str, str]], client: HsmClient, keys: _Keys
) -> None:
    code, out, err = hsm(command, *CASES[command](client, keys))
    assert (code, err) == (0, "")
    printed = json.loads(out) if out else None
    assert problems(printed, operation(command).output_shape) == []


def test_aws_spellings_and_arns_go_in_and_come_out(
    hsm: Callable[..., tuple[int, str, str]],
) -> None:
    code, out, _ = hsm("create-key", "--key-spec", "ECC_NIST_P384", "--key-usage", "SIGN_VERIFY")
    metadata = json.loads(out)["KeyMetadata"]
    assert code == 0
    assert (metadata["KeySpec"], metadata["KeyState"], metadata["Origin"]) == (
        "ECC_NIST_P384",
        "Enabled",
        "AWS_KMS",
    )
    key_id, arn = metadata["KeyId"], metadata["Arn"]
    aws_arn = f"arn:aws:kms:eu-west-1:{TENANT}:key/{key_id}"
    for name in (arn, aws_arn):
        code, out, err = hsm("get-public-key", "--key-id", name, "--query", "KeySpec")
        assert (code, out, err) == (0, '"ECC_NIST_P384"\n', "")


@pytest.mark.parametrize(
    ("command", "make", "exception"),
    [
        (
            "encrypt",
            lambda c, k: ["--key-id", _disabled_key(c), "--plaintext", "aGk="],
            "DisabledException",
        ),
        (
            "decrypt",
            lambda c, k: [
                "--ciphertext-blob",
                _b64(c.encrypt(k.aes, b"hi", CONTEXT).ciphertext_blob),
            ],
            "InvalidCiphertextException",
        ),
        (
            "encrypt",
            lambda c, k: ["--key-id", k.ec, "--plaintext", "aGk="],
            "InvalidKeyUsageException",
        ),
        (
            "verify",
            lambda c, k: [
                "--key-id",
                k.ec,
                "--message",
                "aGk=",
                "--signature",
                _b64(c.sign(k.ec, b"other", "ECDSA_SHA_256").signature),
                "--signing-algorithm",
                "ECDSA_SHA_256",
            ],
            "KMSInvalidSignatureException",
        ),
        (
            "verify-mac",
            lambda c, k: [
                "--key-id",
                k.hmac,
                "--message",
                "aGk=",
                "--mac",
                _b64(b"\0" * 32),
                "--mac-algorithm",
                "HMAC_SHA_256",
            ],
            "KMSInvalidMacException",
        ),
        (
            "rotate-key-on-demand",
            lambda c, k: ["--key-id", k.ec],
            "UnsupportedOperationException",
        ),
        (
            "create-alias",
            lambda c, k: ["--alias-name", "nope", "--target-key-id", k.aes],
            "InvalidAliasNameException",
        ),
        ("list-keys", lambda c, k: ["--marker", "not-a-marker"], "InvalidMarkerException"),
        ("describe-key", lambda c, k: ["--key-id", "alias/missing"], "NotFoundException"),
    ],
)
def test_errors_carry_the_aws_exception_the_model_lists(
    hsm: Callable[..., tuple[int, str, str]],
    client: HsmClient,
    keys: _Keys,
    command: str,
    make: _Case,
    exception: str,
) -> None:
    code, out, err = hsm(command, *make(client, keys))
    assert (code, out) == (cli.EXIT_SERVICE_ERROR, "")
    assert err.startswith(f"An error occurred ({exception}) "), err
    assert exception in {shape.name for shape in operation(command).error_shapes}


def test_a_reader_that_stops_early_gets_no_traceback(
    daemon: DaemonProcess, client: HsmClient, tmp_path: Path
) -> None:
    """`hsm list-keys | head -1`: the pipe closes before hsm writes; hsm exits quietly."""
    client.create_key()
    hsm_command = str(Path(sys.executable).parent / "hsm")
    listing = subprocess.Popen(
        [hsm_command, "list-keys", "--output", "table"],
        env=daemon.client_env(TENANT, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # the reader is gone before hsm has answered
    errors = listing.stderr.read().decode()
    assert (listing.wait(120), errors) == (0, "")
