"""The `hsm` command line without a daemon: arguments, output and exit codes.

The client is replaced by one that answers in-process and records what the CLI asked for;
tests/unit/test_client_rpc.py runs the CLI over a real mTLS channel.
"""

import base64
import inspect
import io
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hsmclient import aws, cli, errors
from hsmclient.channel import ConnectionSettings
from hsmclient.cli import batch
from hsmclient.client import (
    AdminClient,
    Alias,
    AuditEvent,
    AuditVerification,
    Capabilities,
    DataKey,
    DataKeyPair,
    DecryptResult,
    EncryptedDataKey,
    EncryptedDataKeyPair,
    EncryptItem,
    EncryptResult,
    HsmClient,
    ImportParameters,
    KeyMetadata,
    KeyPolicy,
    KeyRotation,
    KeyRotationStatus,
    MacResult,
    PublicKey,
    ReEncryptResult,
    RotateKeyOnDemandResult,
    SignResult,
    TimeReversal,
    VerifyMacResult,
    VerifyResult,
    WrappedKey,
)

CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
LATER = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
KEY = KeyMetadata(
    key_id="0b5e3d4a-1111-4222-8333-944445555666",
    tenant="acme",
    name="tenants/acme/keys/0b5e3d4a-1111-4222-8333-944445555666",
    description="payroll",
    key_spec="AES_256",
    key_usage="ENCRYPT_DECRYPT",
    origin="GENERATED",
    key_state="ENABLED",
    creation_time=CREATED,
    primary_version=2,
    encryption_algorithms=("SYMMETRIC_DEFAULT",),
    signing_algorithms=(),
    mac_algorithms=(),
    tags={"team": "pay", "env": "prod"},
    deletion_date=None,
    exportable=False,
    valid_to=None,
    tenancy_mode="SHARED",
    multi_region=False,
    multi_region_configuration=None,
)
POLICY = KeyPolicy(("admin", "ops-*"), ("app",))
IMPORTED = replace(KEY, origin="EXTERNAL", valid_to=LATER)
ROTATING = KeyRotationStatus(KEY.key_id, True, 365, LATER, None)
ALIASES = [Alias(f"alias/a{n}", KEY.key_id, CREATED, LATER) for n in range(3)]
ROTATIONS = [KeyRotation(KEY.key_id, n, LATER, "AUTOMATIC") for n in range(2, 5)]
EVENTS = [
    AuditEvent(
        sequence=n,
        time=LATER,
        request_id=f"req-{n}",
        tenant="acme",
        principal="tenant/acme/app",
        operation="Decrypt",
        key_id=KEY.key_id,
        key_version=2,
        encryption_context_keys=("file",),
        outcome="OK",
        peer="ipv4:10.0.0.1:4000",
        previous_hash="00" * 32,
        hash="11" * 32,
        regions=(),
    )
    for n in range(1, 4)
]
BLOB = b"\x01blob\xff"
TOKEN = b"\x00token\xfe"
DATA_KEY = b"k" * 32
SIGNATURE = b"\x30sig\xfe"
MAC = b"\x00mac\x01"
PRIVATE_KEY = b"\x30pkcs8 private key"
_ED25519 = ed25519.Ed25519PrivateKey.generate().public_key()
PUBLIC_KEY_DER = _ED25519.public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
PUBLIC_KEY_PEM = _ED25519.public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()


def page(items: list, page_size: int, page_token: str) -> tuple[list, str]:
    """Pages of two items at most; the token is the index of the next item."""
    start = int(page_token or 0)
    end = start + min(page_size or 2, 2)
    return items[start:end], str(end) if end < len(items) else ""


class Answers:
    """A fake of the `cls` method of the name it is assigned to: records the arguments as the
    real method binds them (defaults filled in; a call its signature refuses fails the test)
    and returns answer(fake, *arguments)."""

    def __init__(self, cls: type, answer: Callable[..., object]) -> None:
        self.cls, self.answer = cls, answer

    def __set_name__(self, owner: type, name: str) -> None:
        self.signature = inspect.signature(getattr(self.cls, name))
        self.name = name

    def __get__(self, fake: object, owner: type | None = None) -> Callable[..., object]:
        return partial(self.call, fake)

    def call(self, fake, *args, **kwargs) -> object:
        bound = self.signature.bind(fake, *args, **kwargs)
        bound.apply_defaults()
        arguments = tuple(bound.arguments.values())[1:]
        fake._record(self.name, *arguments)
        return self.answer(fake, *arguments)


def returns(cls: type, value: object) -> Answers:
    return Answers(cls, lambda fake, *arguments: value)


class _FakeClient(HsmClient):
    """Answers every call in-process; records (method, arguments) and raises `raises` if set."""

    def __init__(self) -> None:
        super().__init__(grpc.insecure_channel("127.0.0.1:1"))
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.raises: Exception | None = None
        self.keys = [
            replace(KEY, key_id=f"key-{n}", name=f"tenants/acme/keys/key-{n}") for n in range(5)
        ]
        self.settings: list[ConnectionSettings] = []

    def _record(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        if self.raises is not None:
            raise self.raises

    create_key = returns(HsmClient, KEY)
    describe_key = returns(HsmClient, KEY)
    list_keys = Answers(HsmClient, lambda self, size, token, _: page(self.keys, size, token))
    enable_key = returns(HsmClient, KEY)
    disable_key = returns(HsmClient, replace(KEY, key_state="DISABLED"))
    schedule_key_deletion = returns(
        HsmClient, replace(KEY, key_state="PENDING_DELETION", deletion_date=LATER)
    )
    cancel_key_deletion = returns(HsmClient, replace(KEY, key_state="DISABLED"))
    update_key_description = returns(HsmClient, KEY)
    tag_key = returns(HsmClient, KEY)
    untag_key = returns(HsmClient, KEY)
    get_key_policy = returns(HsmClient, POLICY)
    put_key_policy = Answers(HsmClient, lambda self, key_id, policy: policy)
    enable_key_rotation = returns(HsmClient, ROTATING)
    disable_key_rotation = returns(HsmClient, KeyRotationStatus(KEY.key_id, False, 0, None, None))
    get_key_rotation_status = returns(HsmClient, ROTATING)
    rotate_key_on_demand = Answers(
        HsmClient, lambda self, key_id: RotateKeyOnDemandResult(key_id, 5)
    )
    list_key_rotations = Answers(HsmClient, lambda self, _, *paging: page(ROTATIONS, *paging))
    create_alias = returns(HsmClient, ALIASES[0])
    update_alias = returns(HsmClient, ALIASES[0])
    delete_alias = returns(HsmClient, None)
    list_aliases = Answers(HsmClient, lambda self, _, *paging: page(ALIASES, *paging))
    list_audit_events = Answers(HsmClient, lambda self, size, token, _: page(EVENTS, size, token))
    wrap_key = Answers(
        HsmClient, lambda self, key_id, wrapping: WrappedKey(BLOB, key_id, 2, wrapping)
    )
    unwrap_key = returns(HsmClient, replace(KEY, origin="UNWRAPPED", exportable=True))
    get_parameters_for_import = Answers(
        HsmClient, lambda self, key_id, *_: ImportParameters(key_id, TOKEN, PUBLIC_KEY_DER, LATER)
    )
    import_key_material = returns(HsmClient, IMPORTED)
    delete_imported_key_material = returns(
        HsmClient, replace(KEY, origin="EXTERNAL", key_state="PENDING_IMPORT")
    )
    import_key = returns(HsmClient, IMPORTED)

    def encrypt(
        self, key_id, plaintext, encryption_context=None, encryption_algorithm="SYMMETRIC_DEFAULT"
    ):
        self._record("encrypt", key_id, plaintext, encryption_context, encryption_algorithm)
        return EncryptResult(BLOB, key_id, 2, encryption_algorithm)

    def decrypt(
        self, ciphertext_blob, encryption_context=None, key_id=None, encryption_algorithm=None
    ):
        self._record("decrypt", ciphertext_blob, encryption_context, key_id, encryption_algorithm)
        return DecryptResult(b"secret", KEY.key_id, 2, encryption_algorithm or "SYMMETRIC_DEFAULT")

    def re_encrypt(self, ciphertext_blob, destination_key_id, **options):
        self._record("re_encrypt", ciphertext_blob, destination_key_id, options)
        return ReEncryptResult(
            BLOB, "source", 1, destination_key_id, 3, "SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_256"
        )

    def generate_data_key(
        self, key_id, key_spec=None, number_of_bytes=None, encryption_context=None
    ):
        self._record("generate_data_key", key_id, key_spec, number_of_bytes, encryption_context)
        return DataKey(DATA_KEY, BLOB, key_id, 2)

    def generate_data_key_without_plaintext(
        self, key_id, key_spec=None, number_of_bytes=None, encryption_context=None
    ):
        self._record("without_plaintext", key_id, key_spec, number_of_bytes, encryption_context)
        return EncryptedDataKey(BLOB, key_id, 2)

    def generate_data_key_pair(self, key_id, key_pair_spec, encryption_context=None):
        self._record("generate_data_key_pair", key_id, key_pair_spec, encryption_context)
        return DataKeyPair(PUBLIC_KEY_DER, PRIVATE_KEY, BLOB, key_id, 2, key_pair_spec)

    def generate_data_key_pair_without_plaintext(
        self, key_id, key_pair_spec, encryption_context=None
    ):
        self._record("pair_without_plaintext", key_id, key_pair_spec, encryption_context)
        return EncryptedDataKeyPair(PUBLIC_KEY_DER, BLOB, key_id, 2, key_pair_spec)

    def sign(self, key_id, message, signing_algorithm, message_type="RAW"):
        self._record("sign", key_id, message, signing_algorithm, message_type)
        return SignResult(SIGNATURE, key_id, 2, signing_algorithm)

    def verify(self, key_id, message, signature, signing_algorithm, message_type="RAW"):
        self._record("verify", key_id, message, signature, signing_algorithm, message_type)
        return VerifyResult(signature == SIGNATURE, key_id, 2, signing_algorithm)

    def get_public_key(self, key_id):
        self._record("get_public_key", key_id)
        return PublicKey(
            PUBLIC_KEY_DER, key_id, 2, "ED25519", "SIGN_VERIFY", (), ("ED25519_SHA_512",)
        )

    def generate_mac(self, key_id, message, mac_algorithm):
        self._record("generate_mac", key_id, message, mac_algorithm)
        return MacResult(MAC, key_id, 2, mac_algorithm)

    def verify_mac(self, key_id, message, mac, mac_algorithm):
        self._record("verify_mac", key_id, message, mac, mac_algorithm)
        return VerifyMacResult(mac == MAC, key_id, 2, mac_algorithm)

    def get_capabilities(self):
        self._record("get_capabilities")
        return Capabilities(
            ("AES_256", "ED25519"),
            ("SYMMETRIC_DEFAULT",),
            ("ED25519_SHA_512",),
            (),
            ("no HMAC: the token lacks CKM_SHA256_HMAC",),
            "SHARED",
        )

    def generate_random(self, number_of_bytes):
        self._record("generate_random", number_of_bytes)
        return b"\x00" * number_of_bytes


class _FakeAdmin(AdminClient):
    """An AdminClient that records into the KMS fake's calls, as "admin.<method>"."""

    def __init__(self, kms: _FakeClient) -> None:
        super().__init__(grpc.insecure_channel("127.0.0.1:1"))
        self.kms = kms
        self.verification = AuditVerification(True, 3, 0, "")

    def _record(self, method: str, *args: object) -> None:
        self.kms._record(f"admin.{method}", *args)

    list_audit_events = Answers(
        AdminClient, lambda self, size, token, key_id, tenant: page(EVENTS, size, token)
    )
    verify_audit_log = Answers(AdminClient, lambda self: self.verification)


_ENV = {
    "HSM_ENDPOINT": "env.example:8443",
    "HSM_CA_CERT": "/env/ca.pem",
    "HSM_CLIENT_CERT": "/env/client.pem",
    "HSM_CLIENT_KEY": "/env/client.key",
}


@pytest.fixture
def fake(monkeypatch):
    client = _FakeClient()
    for variable, value in _ENV.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("HSM_SERVER_NAME", raising=False)

    def open_channel(settings):
        client.settings.append(settings)
        return grpc.insecure_channel("127.0.0.1:1")

    monkeypatch.setattr(ConnectionSettings, "open_channel", open_channel)
    monkeypatch.setattr(cli, "HsmClient", lambda channel: client)
    client.admin = _FakeAdmin(client)
    monkeypatch.setattr(cli, "AdminClient", lambda channel: client.admin)
    return client


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> object:
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    return json.loads(out)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- key metadata -------------------------------------------------------------------------------


def test_create_key_prints_aws_key_metadata(fake, capsys) -> None:
    output = run_json(capsys, "create-key", "--description", "payroll")
    assert fake.calls == [
        ("create_key", ("AES_256", None, "payroll", None, None, False, "GENERATED", None, False))
    ]
    # AWS's fields in AWS's spellings (the tenant is the account), and hsmd's Exportable and
    # PrimaryVersion besides.
    assert output == {
        "KeyMetadata": {
            "AWSAccountId": "acme",
            "KeyId": KEY.key_id,
            "Arn": f"tenants/acme/keys/{KEY.key_id}",
            "CreationDate": "2024-05-06T07:08:09+00:00",
            "Enabled": True,
            "Description": "payroll",
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "Enabled",
            "Origin": "AWS_KMS",
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
            "KeySpec": "SYMMETRIC_DEFAULT",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
            "Exportable": False,
            "PrimaryVersion": 2,
        }
    }


def test_an_external_key_has_an_expiration_model(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fake, "describe_key", lambda key_id: replace(KEY, origin="EXTERNAL"))
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert metadata["Origin"] == "EXTERNAL"
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    expiring = replace(KEY, origin="EXTERNAL", valid_to=KEY.creation_time)
    monkeypatch.setattr(fake, "describe_key", lambda key_id: expiring)
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert metadata["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"


@pytest.mark.parametrize(
    ("given", "sent"),
    [("SYMMETRIC_DEFAULT", "AES_256"), ("ECC_NIST_P256", "EC_P256"), ("EC_P256", "EC_P256")],
)
def test_create_key_takes_aws_and_hsmd_spellings(fake, capsys, given: str, sent: str) -> None:
    # The client maps AWS's spellings (hsmclient.aws); the fake records what it was given.
    run_json(capsys, "create-key", "--customer-master-key-spec", given, "--origin", "AWS_KMS")
    assert fake.calls[0][1][0] == given and fake.calls[0][1][6] == "AWS_KMS"
    assert aws.hsmd_name("KeySpec", given) == sent
    assert aws.hsmd_name("KeyOrigin", "AWS_KMS") == "GENERATED"


def test_create_key_passes_spec_and_usage(fake, capsys) -> None:
    run_json(capsys, "create-key", "--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY")
    assert fake.calls == [
        ("create_key", ("RSA_2048", "SIGN_VERIFY", "", None, None, False, "GENERATED", None, False))
    ]


def test_a_disabled_key_is_not_enabled(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fake, "describe_key", lambda key_id: replace(KEY, key_state="DISABLED"))
    output = run_json(capsys, "describe-key", "--key-id", KEY.key_id)
    assert output["KeyMetadata"]["Enabled"] is False
    assert output["KeyMetadata"]["KeyState"] == "Disabled"


def test_output_keeps_non_ascii_text(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fake, "describe_key", lambda key_id: replace(KEY, description="Gehälter"))
    code, out, _ = run(capsys, "describe-key", "--key-id", "k")
    assert code == 0
    assert '"Description": "Gehälter"' in out


def test_describe_key_as_text_follows_aws(fake, capsys) -> None:
    code, out, _ = run(capsys, "describe-key", "--key-id", KEY.key_id, "--output", "text")
    assert code == 0
    # AWS: the dict's scalars sorted by key name, led by its upper-cased name; lists after.
    assert out.splitlines() == [
        "\t".join(
            [
                "KEYMETADATA",
                "acme",
                f"tenants/acme/keys/{KEY.key_id}",
                "2024-05-06T07:08:09+00:00",
                "SYMMETRIC_DEFAULT",
                "payroll",
                "True",
                "False",
                KEY.key_id,
                "CUSTOMER",
                "SYMMETRIC_DEFAULT",
                "Enabled",
                "ENCRYPT_DECRYPT",
                "False",
                "AWS_KMS",
                "2",
            ]
        ),
        "ENCRYPTIONALGORITHMS\tSYMMETRIC_DEFAULT",
    ]


# --- list-keys ----------------------------------------------------------------------------------


def test_list_keys_pages_through_everything_by_default(fake, capsys) -> None:
    output = run_json(capsys, "list-keys")
    assert [key["KeyId"] for key in output["Keys"]] == [f"key-{n}" for n in range(5)]
    assert output["Keys"][0] == {"KeyId": "key-0", "KeyArn": "tenants/acme/keys/key-0"}
    assert "NextMarker" not in output
    assert [args for _, args in fake.calls] == [(0, "", None), (0, "2", None), (0, "4", None)]


def test_list_keys_with_limit_returns_one_page_and_the_marker(fake, capsys) -> None:
    output = run_json(capsys, "list-keys", "--limit", "2", "--marker", "2")
    assert [key["KeyId"] for key in output["Keys"]] == ["key-2", "key-3"]
    assert output["NextMarker"] == "4" and output["Truncated"] is True
    assert fake.calls == [("list_keys", (2, "2", None))]


def test_no_paginate_makes_one_call_as_the_api_answers(fake, capsys) -> None:
    output = run_json(capsys, "list-keys", "--no-paginate", "--marker", "4")
    assert output == {
        "Keys": [{"KeyId": "key-4", "KeyArn": "tenants/acme/keys/key-4"}],
        "Truncated": False,
    }
    assert fake.calls == [("list_keys", (0, "4", None))]


@pytest.mark.parametrize(
    ("argv", "expected", "next_token"),
    [
        (["--max-items", "3"], ["key-0", "key-1", "key-2"], "2~1"),  # ends inside a page
        (["--max-items", "2"], ["key-0", "key-1"], "2"),  # ends at a page's end
        (["--starting-token", "2~1"], ["key-3", "key-4"], None),
        (["--starting-token", "2~1", "--max-items", "1"], ["key-3"], "4"),
        (["--max-items", "9"], [f"key-{n}" for n in range(5)], None),
        # A token of larger pages, resumed with smaller ones: its position is kept.
        (["--starting-token", "~3"], ["key-3", "key-4"], None),
        (["--starting-token", "~3", "--max-items", "1"], ["key-3"], "4"),
    ],
)
def test_max_items_and_starting_token_page_as_aws_cli_does(
    fake, capsys, argv: list[str], expected: list[str], next_token: str | None
) -> None:
    output = run_json(capsys, "list-keys", *argv)
    assert [key["KeyId"] for key in output["Keys"]] == expected
    assert output.get("NextToken") == next_token
    assert "Truncated" not in output and "NextMarker" not in output


def test_limit_takes_the_starting_token_as_its_marker(fake, capsys) -> None:
    output = run_json(capsys, "list-keys", "--limit", "2", "--starting-token", "2")
    assert [key["KeyId"] for key in output["Keys"]] == ["key-2", "key-3"]
    assert output["NextMarker"] == "4"


@pytest.mark.parametrize("argv", [["--starting-token", "2~x"], ["--marker", "~-1"]])
def test_a_token_hsm_did_not_issue_is_an_invalid_marker(fake, capsys, argv: list[str]) -> None:
    code, out, err = run(capsys, "list-keys", *argv)
    assert (code, out) == (cli.EXIT_SERVICE_ERROR, "")
    assert err.startswith("An error occurred (InvalidMarkerException) when calling the ListKeys")


def test_a_blob_may_be_text_from_a_file(fake, capsys, tmp_path) -> None:
    (tmp_path / "plain.b64").write_text(b64(b"from a file") + "\n")
    run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", f"file://{tmp_path}/plain.b64")
    assert fake.calls[0][1][1] == b"from a file"


def test_page_size_sets_the_calls_page_size(fake, capsys) -> None:
    run_json(capsys, "list-keys", "--page-size", "7")
    assert {args[0] for _, args in fake.calls} == {7}


def test_list_keys_as_text(fake, capsys) -> None:
    code, out, _ = run(capsys, "list-keys", "--limit", "2", "--output", "text")
    assert code == 0
    assert out.splitlines() == [
        "2\tTrue",
        "KEYS\ttenants/acme/keys/key-0\tkey-0",
        "KEYS\ttenants/acme/keys/key-1\tkey-1",
    ]


def test_describe_key_as_a_table(fake, capsys) -> None:
    code, out, _ = run(capsys, "describe-key", "--key-id", KEY.key_id, "--output", "table")
    assert code == 0
    lines = out.splitlines()
    assert len({len(line) for line in lines}) == 1  # one box, every line as wide
    assert "DescribeKey" in lines[1] and "KeyMetadata" in lines[3]
    assert any(line.startswith("||  KeyState ") and "Enabled" in line for line in lines)
    assert any("SYMMETRIC_DEFAULT" in line and line.startswith("|||") for line in lines)


@pytest.mark.parametrize("limit", ["0", "-1", "many"])
def test_list_keys_limit_must_be_positive(fake, capsys, limit: str) -> None:
    code, _, err = run(capsys, "list-keys", "--limit", limit)
    assert code == cli.EXIT_USAGE
    assert "--limit" in err
    assert fake.calls == []


# --- blobs --------------------------------------------------------------------------------------


def test_encrypt_takes_base64_and_prints_aws_fields(fake, capsys) -> None:
    output = run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", b64(b"hello\x00"))
    assert fake.calls == [("encrypt", ("k", b"hello\x00", None, "SYMMETRIC_DEFAULT"))]
    assert output == {
        "CiphertextBlob": b64(BLOB),
        "KeyId": "k",
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "KeyVersion": 2,
    }


def test_base64_may_be_wrapped_over_lines(fake, capsys) -> None:
    wrapped = b64(b"x" * 60)[:40] + "\n" + b64(b"x" * 60)[40:]
    run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", wrapped)
    assert fake.calls[0][1][1] == b"x" * 60


def test_fileb_reads_raw_bytes(fake, capsys, tmp_path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\xff\xfe raw")
    run_json(capsys, "decrypt", "--ciphertext-blob", f"fileb://{path}")
    assert fake.calls == [("decrypt", (b"\xff\xfe raw", None, None, None))]


def test_fileb_dash_reads_stdin(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x80from stdin")))
    run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", "fileb://-")
    assert fake.calls[0][1][1] == b"\x80from stdin"


@pytest.mark.parametrize("blob", ["not base64!", "abc", "e!A==", "fileb:///no/such/file"])
def test_a_bad_blob_is_a_usage_error(fake, capsys, blob: str) -> None:
    code, out, err = run(capsys, "encrypt", "--key-id", "k", "--plaintext", blob)
    assert code == cli.EXIT_USAGE
    assert "argument --plaintext" in err
    assert out == ""
    assert fake.calls == []


# --- encryption context -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "context"),
    [
        (["--encryption-context", "purpose=test"], {"purpose": "test"}),
        (["--encryption-context", "a=1", "b=2"], {"a": "1", "b": "2"}),
        (["--encryption-context", "a=1", "--encryption-context", "b=2"], {"a": "1", "b": "2"}),
        (["--encryption-context", "a=1,b=x=y"], {"a": "1", "b": "x=y"}),
        (["--encryption-context", "empty="], {"empty": ""}),
        (["--encryption-context", '{"a": "1", "b": "two, three"}'], {"a": "1", "b": "two, three"}),
        ([], None),
    ],
)
def test_encryption_context_forms(fake, capsys, words: list[str], context) -> None:
    run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", b64(b"x"), *words)
    assert fake.calls == [("encrypt", ("k", b"x", context, "SYMMETRIC_DEFAULT"))]


@pytest.mark.parametrize("word", ["novalue", "=value", "a=1,", '{"a": 1}', '["a"]', "{broken"])
def test_a_bad_encryption_context_is_a_usage_error(fake, capsys, word: str) -> None:
    code, _, err = run(
        capsys, "decrypt", "--ciphertext-blob", b64(BLOB), "--encryption-context", word
    )
    assert code == cli.EXIT_USAGE
    assert "--encryption-context" in err
    assert fake.calls == []


def test_decrypt_passes_context_and_key_id(fake, capsys) -> None:
    output = run_json(
        capsys,
        "decrypt",
        "--ciphertext-blob",
        b64(BLOB),
        "--encryption-context",
        "tenant=acme",
        "--key-id",
        "k",
    )
    assert fake.calls == [("decrypt", (BLOB, {"tenant": "acme"}, "k", None))]
    assert output == {
        "KeyId": KEY.key_id,
        "Plaintext": b64(b"secret"),
        "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "KeyVersion": 2,
    }


# --- data keys and random -----------------------------------------------------------------------


def test_generate_data_key(fake, capsys) -> None:
    output = run_json(capsys, "generate-data-key", "--key-id", "k", "--encryption-context", "a=b")
    assert fake.calls == [("generate_data_key", ("k", None, None, {"a": "b"}))]
    assert output == {
        "CiphertextBlob": b64(BLOB),
        "Plaintext": b64(DATA_KEY),
        "KeyId": "k",
        "KeyVersion": 2,
    }


def test_generate_data_key_without_plaintext_has_no_plaintext(fake, capsys) -> None:
    output = run_json(
        capsys, "generate-data-key-without-plaintext", "--key-id", "k", "--number-of-bytes", "64"
    )
    assert fake.calls == [("without_plaintext", ("k", None, 64, None))]
    assert output == {"CiphertextBlob": b64(BLOB), "KeyId": "k", "KeyVersion": 2}


def test_key_spec_and_number_of_bytes_exclude_each_other(fake, capsys) -> None:
    argv = ["generate-data-key", "--key-id", "k", "--key-spec", "AES_256", "--number-of-bytes", "8"]
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "not allowed with" in err
    assert fake.calls == []


def test_generate_random(fake, capsys) -> None:
    assert run_json(capsys, "generate-random", "--number-of-bytes", "4") == {
        "Plaintext": "AAAAAA=="
    }


# --- algorithms in key metadata, encrypt and decrypt --------------------------------------------


def test_describe_key_lists_only_the_algorithms_the_key_has(fake, capsys, monkeypatch) -> None:
    signing = replace(
        KEY,
        key_spec="EC_P256",
        key_usage="SIGN_VERIFY",
        encryption_algorithms=(),
        signing_algorithms=("ECDSA_SHA_256",),
    )
    monkeypatch.setattr(fake, "describe_key", lambda key_id: signing)
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert metadata["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    assert "EncryptionAlgorithms" not in metadata
    assert "MacAlgorithms" not in metadata


def test_describe_key_gives_the_servers_lists(fake, capsys, monkeypatch) -> None:
    mac = replace(
        KEY,
        encryption_algorithms=("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1"),
        mac_algorithms=("HMAC_SHA_512",),
    )
    monkeypatch.setattr(fake, "describe_key", lambda key_id: mac)
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert metadata["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1"]
    assert metadata["MacAlgorithms"] == ["HMAC_SHA_512"]
    assert "SigningAlgorithms" not in metadata


def test_encrypt_and_decrypt_take_an_encryption_algorithm(fake, capsys) -> None:
    algorithm = ["--encryption-algorithm", "RSAES_OAEP_SHA_256"]
    encrypted = run_json(capsys, "encrypt", "--key-id", "k", "--plaintext", "eA==", *algorithm)
    decrypted = run_json(
        capsys, "decrypt", "--ciphertext-blob", b64(BLOB), "--key-id", "k", *algorithm
    )
    assert fake.calls == [
        ("encrypt", ("k", b"x", None, "RSAES_OAEP_SHA_256")),
        ("decrypt", (BLOB, None, "k", "RSAES_OAEP_SHA_256")),
    ]
    assert encrypted["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert decrypted["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"


def test_re_encrypt(fake, capsys) -> None:
    output = run_json(
        capsys,
        "re-encrypt",
        "--ciphertext-blob",
        b64(BLOB),
        "--destination-key-id",
        "dest",
        "--source-encryption-context",
        "a=1",
        "--destination-encryption-context",
        '{"b": "2"}',
        "--source-key-id",
        "src",
        "--source-encryption-algorithm",
        "RSAES_OAEP_SHA_1",
        "--destination-encryption-algorithm",
        "SYMMETRIC_DEFAULT",
    )
    options = {
        "source_encryption_context": {"a": "1"},
        "destination_encryption_context": {"b": "2"},
        "source_key_id": "src",
        "source_encryption_algorithm": "RSAES_OAEP_SHA_1",
        "destination_encryption_algorithm": "SYMMETRIC_DEFAULT",
    }
    assert fake.calls == [("re_encrypt", (BLOB, "dest", options))]
    assert output == {
        "CiphertextBlob": b64(BLOB),
        "SourceKeyId": "source",
        "KeyId": "dest",
        "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "SourceKeyVersion": 1,
        "KeyVersion": 3,
    }


def test_re_encrypt_options_default_to_unset(fake, capsys) -> None:
    run_json(capsys, "re-encrypt", "--ciphertext-blob", b64(BLOB), "--destination-key-id", "d")
    unset = {
        "source_encryption_context": None,
        "destination_encryption_context": None,
        "source_key_id": None,
        "source_encryption_algorithm": None,
        "destination_encryption_algorithm": None,
    }
    assert fake.calls == [("re_encrypt", (BLOB, "d", unset))]


# --- data key pairs -----------------------------------------------------------------------------


def test_generate_data_key_pair(fake, capsys) -> None:
    output = run_json(
        capsys,
        "generate-data-key-pair",
        "--key-id",
        "k",
        "--key-pair-spec",
        "EC_P256",
        "--encryption-context",
        "app=x",
    )
    assert fake.calls == [("generate_data_key_pair", ("k", "EC_P256", {"app": "x"}))]
    assert output == {
        "PrivateKeyCiphertextBlob": b64(BLOB),
        "PrivateKeyPlaintext": b64(PRIVATE_KEY),
        "PublicKey": b64(PUBLIC_KEY_DER),
        "KeyId": "k",
        "KeyPairSpec": "ECC_NIST_P256",
        "KeyVersion": 2,
    }


def test_generate_data_key_pair_without_plaintext(fake, capsys) -> None:
    argv = ["generate-data-key-pair-without-plaintext", "--key-id", "k", "--key-pair-spec", "R"]
    output = run_json(capsys, *argv)
    assert fake.calls == [("pair_without_plaintext", ("k", "R", None))]
    assert output == {
        "PrivateKeyCiphertextBlob": b64(BLOB),
        "PublicKey": b64(PUBLIC_KEY_DER),
        "KeyId": "k",
        "KeyPairSpec": "R",
        "KeyVersion": 2,
    }


# --- sign, verify, get-public-key ---------------------------------------------------------------


def test_sign(fake, capsys) -> None:
    output = run_json(
        capsys,
        "sign",
        "--key-id",
        "k",
        "--message",
        b64(b"msg\x00"),
        "--signing-algorithm",
        "ECDSA_SHA_256",
    )
    assert fake.calls == [("sign", ("k", b"msg\x00", "ECDSA_SHA_256", "RAW"))]
    assert output == {
        "KeyId": "k",
        "Signature": b64(SIGNATURE),
        "SigningAlgorithm": "ECDSA_SHA_256",
        "KeyVersion": 2,
    }


def test_sign_a_digest_from_a_file(fake, capsys, tmp_path) -> None:
    (tmp_path / "digest").write_bytes(b"\xaa" * 32)
    argv = ["--message", f"fileb://{tmp_path / 'digest'}", "--message-type", "DIGEST"]
    run_json(capsys, "sign", "--key-id", "k", *argv, "--signing-algorithm", "ECDSA_SHA_256")
    assert fake.calls == [("sign", ("k", b"\xaa" * 32, "ECDSA_SHA_256", "DIGEST"))]


def test_text_output_of_a_signature_is_its_base64(fake, capsys) -> None:
    argv = ["sign", "--key-id", "k", "--message", "eA==", "--signing-algorithm", "A"]
    assert run(capsys, *argv, "--output", "text", "--query", "Signature") == (
        0,
        b64(SIGNATURE) + "\n",
        "",
    )


def test_verify_prints_a_valid_signature(fake, capsys) -> None:
    output = run_json(
        capsys,
        "verify",
        "--key-id",
        "k",
        "--message",
        "eA==",
        "--message-type",
        "RAW",
        "--signature",
        b64(SIGNATURE),
        "--signing-algorithm",
        "ED25519_SHA_512",
    )
    assert fake.calls == [("verify", ("k", b"x", SIGNATURE, "ED25519_SHA_512", "RAW"))]
    assert output == {
        "KeyId": "k",
        "SignatureValid": True,
        "SigningAlgorithm": "ED25519_SHA_512",
        "KeyVersion": 2,
    }


def test_get_public_key(fake, capsys) -> None:
    output = run_json(capsys, "get-public-key", "--key-id", "k")
    assert fake.calls == [("get_public_key", ("k",))]
    assert output == {
        "KeyId": "k",
        "PublicKey": b64(PUBLIC_KEY_DER),
        "KeySpec": "ECC_NIST_EDWARDS25519",
        "KeyUsage": "SIGN_VERIFY",
        "SigningAlgorithms": ["ED25519_SHA_512"],
        "KeyVersion": 2,
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["get-public-key", "--key-id", "k", "--output", "pem"],
        ["--output", "pem", "get-public-key", "--key-id", "k"],
    ],
)
def test_get_public_key_as_pem(fake, capsys, argv: list[str]) -> None:
    assert run(capsys, *argv) == (0, PUBLIC_KEY_PEM, "")
    assert PUBLIC_KEY_PEM.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert fake.calls == [("get_public_key", ("k",))]


@pytest.mark.parametrize(
    "argv",
    [
        ["describe-key", "--key-id", "k", "--output", "pem"],
        [
            "--output",
            "pem",
            "sign",
            "--key-id",
            "k",
            "--message",
            "eA==",
            "--signing-algorithm",
            "A",
        ],
        ["get-public-key", "--key-id", "k", "--output", "pem", "--query", "PublicKey"],
    ],
)
def test_pem_output_is_only_for_get_public_key(fake, capsys, argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert "usage: hsm" in err
    assert "pem" in err
    assert fake.calls == []


# --- MACs and capabilities ----------------------------------------------------------------------


def test_generate_mac(fake, capsys) -> None:
    argv = ["--key-id", "k", "--message", "eA==", "--mac-algorithm", "HMAC_SHA_384"]
    output = run_json(capsys, "generate-mac", *argv)
    assert fake.calls == [("generate_mac", ("k", b"x", "HMAC_SHA_384"))]
    assert output == {
        "Mac": b64(MAC),
        "MacAlgorithm": "HMAC_SHA_384",
        "KeyId": "k",
        "KeyVersion": 2,
    }


def test_verify_mac_prints_a_valid_mac(fake, capsys) -> None:
    argv = ["--key-id", "k", "--message", "eA==", "--mac", b64(MAC), "--mac-algorithm", "M"]
    output = run_json(capsys, "verify-mac", *argv)
    assert fake.calls == [("verify_mac", ("k", b"x", MAC, "M"))]
    assert output == {"KeyId": "k", "MacValid": True, "MacAlgorithm": "M", "KeyVersion": 2}


@pytest.mark.parametrize(
    ("command", "blob_option", "error"),
    [
        ("verify", "--signature", "KMSInvalidSignatureException"),
        ("verify-mac", "--mac", "KMSInvalidMacException"),
    ],
)
def test_an_invalid_signature_or_mac_is_an_aws_error(
    fake, capsys, command: str, blob_option: str, error: str
) -> None:
    # As aws: the verification failing is an error (exit 254), not SignatureValid false.
    algorithm = "--signing-algorithm" if command == "verify" else "--mac-algorithm"
    argv = [command, "--key-id", "k", "--message", "eA==", blob_option, "Zm9yZ2Vk"]
    code, out, err = run(capsys, *argv, algorithm, "ED25519_SHA_512")
    assert (code, out) == (cli.EXIT_SERVICE_ERROR, "")
    operation = "Verify" if command == "verify" else "VerifyMac"
    assert err.startswith(f"An error occurred ({error}) when calling the {operation} operation")


def test_get_capabilities(fake, capsys) -> None:
    assert run_json(capsys, "get-capabilities") == {
        "KeySpecs": ["AES_256", "ED25519"],
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "SigningAlgorithms": ["ED25519_SHA_512"],
        "MacAlgorithms": [],
        "Notes": ["no HMAC: the token lacks CKM_SHA256_HMAC"],
    }
    assert fake.calls == [("get_capabilities", ())]


# Blob options of the newer commands, each with the rest of its command line; see
# test_a_bad_argument_is_a_usage_error.
BLOB_OPTIONS = [
    (["sign", "--key-id", "k", "--signing-algorithm", "A"], "--message"),
    (["verify", "--key-id", "k", "--message", "eA==", "--signing-algorithm", "A"], "--signature"),
    (["verify-mac", "--key-id", "k", "--message", "eA==", "--mac-algorithm", "A"], "--mac"),
    (["re-encrypt", "--destination-key-id", "k"], "--ciphertext-blob"),
]


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["sign", "--key-id", "k", "--message", "eA=="], "--signing-algorithm"),
        (
            ["verify", "--key-id", "k", "--message", "eA==", "--signing-algorithm", "A"],
            "--signature",
        ),
        (["generate-mac", "--key-id", "k", "--message", "eA=="], "--mac-algorithm"),
        (["verify-mac", "--key-id", "k", "--message", "eA==", "--mac-algorithm", "A"], "--mac"),
        (["generate-data-key-pair", "--key-id", "k"], "--key-pair-spec"),
        (["generate-data-key-pair-without-plaintext", "--key-pair-spec", "R"], "--key-id"),
        (["re-encrypt", "--ciphertext-blob", "eA=="], "--destination-key-id"),
        (["get-public-key"], "--key-id"),
        (["schedule-key-deletion"], "--key-id"),
        (["update-key-description", "--key-id", "k"], "--description"),
        (["tag-resource", "--key-id", "k"], "--tags"),
        (["untag-resource", "--key-id", "k"], "--tag-keys"),
        (["put-key-policy", "--key-id", "k"], "--policy"),
        (["create-alias", "--alias-name", "alias/a"], "--target-key-id"),
        (["update-alias", "--target-key-id", "k"], "--alias-name"),
        (["delete-alias"], "--alias-name"),
        (["list-key-rotations"], "--key-id"),
        (["audit"], "COMMAND"),
        (["get-parameters-for-import", "--key-id", "k"], "--wrapping-algorithm"),
        (
            ["import-key-material", "--key-id", "k", "--import-token", "eA=="],
            "--encrypted-key-material",
        ),
        (["import-key-material", "--encrypted-key-material", "eA=="], "--import-token"),
        (["delete-imported-key-material"], "--key-id"),
        (["import-key", "--key-id", "k"], "--key-file"),
        (["wrap-key", "--key-id", "k"], "--wrapping-key-id"),
        (["unwrap-key", "--wrapping-key-id", "w"], "--wrapped-key"),
        (["unwrap-key", "--wrapped-key", "eA=="], "--wrapping-key-id"),
    ],
)
def test_new_commands_need_their_required_options(
    fake, capsys, argv: list[str], missing: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "required" in err
    assert missing in err
    assert fake.calls == []


@pytest.mark.parametrize(
    ("argv", "operation"),
    [
        (["get-public-key", "--key-id", "k"], "GetPublicKey"),
        (["re-encrypt", "--ciphertext-blob", "eA==", "--destination-key-id", "k"], "ReEncrypt"),
        (
            [
                "verify-mac",
                "--key-id",
                "k",
                "--message",
                "eA==",
                "--mac",
                "eA==",
                "--mac-algorithm",
                "A",
            ],
            "VerifyMac",
        ),
        (
            ["generate-data-key-pair-without-plaintext", "--key-id", "k", "--key-pair-spec", "R"],
            "GenerateDataKeyPairWithoutPlaintext",
        ),
        (["get-capabilities"], "GetCapabilities"),
    ],
)
def test_new_commands_name_their_operation_in_errors(
    fake, capsys, argv: list[str], operation: str
) -> None:
    fake.raises = errors.FailedPreconditionError("key is not SIGN_VERIFY")
    code, out, err = run(capsys, *argv)
    assert (code, out) == (254, "")
    assert err == (
        f"An error occurred (KMSInvalidStateException) when calling the {operation} operation: "
        "key is not SIGN_VERIFY\n"
    )


# --- --query and --output -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--query", "KeyMetadata.KeyId"], f'"{KEY.key_id}"\n'),
        (["--query", "KeyMetadata.KeyId", "--output", "text"], f"{KEY.key_id}\n"),
        (["--query", "KeyMetadata.Enabled", "--output", "text"], "True\n"),
        (
            ["--query", "KeyMetadata.EncryptionAlgorithms[0]", "--output", "text"],
            "SYMMETRIC_DEFAULT\n",
        ),
        (["--query", "KeyMetadata.NoSuchField"], "null\n"),
        (["--query", "KeyMetadata.EncryptionAlgorithms[5]", "--output", "text"], "None\n"),
        (["--query", "KeyMetadata.EncryptionAlgorithms"], '[\n    "SYMMETRIC_DEFAULT"\n]\n'),
    ],
)
def test_query(fake, capsys, argv: list[str], expected: str) -> None:
    assert run(capsys, "describe-key", "--key-id", "k", *argv) == (0, expected, "")


def test_query_picks_a_list_element(fake, capsys) -> None:
    code, out, _ = run(capsys, "list-keys", "--query", "Keys[-1].KeyId", "--output", "text")
    assert (code, out) == (0, "key-4\n")


def test_query_of_a_ciphertext_gives_just_the_base64(fake, capsys) -> None:
    argv = ["encrypt", "--key-id", "k", "--plaintext", "eA==", "--output", "text"]
    assert run(capsys, *argv, "--query", "CiphertextBlob") == (0, b64(BLOB) + "\n", "")


def test_text_output_of_a_flat_result_is_one_sorted_line(fake, capsys) -> None:
    code, out, _ = run(
        capsys, "encrypt", "--key-id", "k", "--plaintext", "eA==", "--output", "text"
    )
    assert (code, out) == (0, f"{b64(BLOB)}\tSYMMETRIC_DEFAULT\tk\t2\n")


@pytest.mark.parametrize("query", ["Keys[*].KeyId", "Keys.", "a b", "length(Keys)"])
def test_an_unsupported_query_is_refused_before_any_call(fake, capsys, query: str) -> None:
    code, _, err = run(capsys, "list-keys", "--query", query)
    assert code == cli.EXIT_USAGE
    assert "--query" in err
    assert fake.calls == []


def test_global_options_go_before_or_after_the_command(fake, capsys) -> None:
    before = run(
        capsys, "--output", "text", "--query", "KeyMetadata.KeyId", "describe-key", "--key-id", "k"
    )
    after = run(
        capsys, "describe-key", "--key-id", "k", "--output", "text", "--query", "KeyMetadata.KeyId"
    )
    assert before == after == (0, f"{KEY.key_id}\n", "")


# --- connection settings ------------------------------------------------------------------------


def test_connection_comes_from_the_environment(fake, capsys) -> None:
    run_json(capsys, "describe-key", "--key-id", "k")
    assert fake.settings == [ConnectionSettings.from_env(_ENV)]


def test_connection_options_override_the_environment(fake, capsys) -> None:
    run_json(
        capsys,
        "--endpoint",
        "cli.example:1",
        "describe-key",
        "--key-id",
        "k",
        "--ca-cert",
        "/cli/ca.pem",
        "--cert",
        "/cli/c.pem",
        "--key",
        "/cli/c.key",
        "--server-name",
        "hsmd.test",
    )
    (settings,) = fake.settings
    assert settings.endpoint == "cli.example:1"
    assert [str(settings.ca_cert_path), str(settings.client_cert_path)] == [
        "/cli/ca.pem",
        "/cli/c.pem",
    ]
    assert str(settings.client_key_path) == "/cli/c.key"
    assert settings.server_name == "hsmd.test"


def test_a_missing_setting_exits_255_and_names_it(fake, capsys, monkeypatch) -> None:
    monkeypatch.delenv("HSM_CLIENT_KEY")
    code, out, err = run(capsys, "describe-key", "--key-id", "k")
    assert code == cli.EXIT_CONNECTION_ERROR == 255
    assert "HSM_CLIENT_KEY" in err
    assert "--key" in err
    assert out == ""
    assert fake.calls == []


# --- errors and exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "name", "exit_code"),
    [
        (errors.InvalidArgumentError("bad"), "ValidationException", 254),
        (errors.NotFoundError("bad"), "NotFoundException", 254),
        (errors.AlreadyExistsError("bad"), "AlreadyExistsException", 254),
        (errors.FailedPreconditionError("bad"), "KMSInvalidStateException", 254),
        (errors.PermissionDeniedError("bad"), "AccessDeniedException", 254),
        (errors.UnauthenticatedError("bad"), "UnrecognizedClientException", 254),
        (errors.ResourceExhaustedError("bad"), "LimitExceededException", 254),
        (errors.UnimplementedError("bad"), "UnsupportedOperationException", 254),
        (errors.InternalError("bad"), "KMSInternalException", 254),
        (errors.HsmError("bad", grpc.StatusCode.CANCELLED), "KMSInternalException", 254),
        (errors.UnavailableError("bad"), "ServiceUnavailableException", 255),
        (errors.DeadlineExceededError("bad"), "DependencyTimeoutException", 255),
        (errors.ChecksumMismatchError("bad"), "ChecksumMismatchException", 255),
    ],
)
def test_service_errors_are_reported_as_aws_does(
    fake, capsys, error: errors.HsmError, name: str, exit_code: int
) -> None:
    fake.raises = error
    code, out, err = run(capsys, "generate-data-key-without-plaintext", "--key-id", "k")
    assert code == exit_code
    assert out == ""
    assert err == (
        f"An error occurred ({name}) when calling the GenerateDataKeyWithoutPlaintext "
        "operation: bad\n"
    )


def _with_reason(error: errors.HsmError, reason: str) -> errors.HsmError:
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (_with_reason(errors.FailedPreconditionError("x"), "KEY_DISABLED"), "DisabledException"),
        (
            _with_reason(errors.FailedPreconditionError("x"), "KEY_USAGE"),
            "InvalidKeyUsageException",
        ),
        (
            _with_reason(errors.FailedPreconditionError("x"), "UNSUPPORTED_OPERATION"),
            "UnsupportedOperationException",
        ),
        (
            _with_reason(errors.InvalidArgumentError("x"), "INVALID_CIPHERTEXT"),
            "InvalidCiphertextException",
        ),
        (
            _with_reason(errors.InvalidArgumentError("x"), "INVALID_PAGE_TOKEN"),
            "InvalidMarkerException",
        ),
        (_with_reason(errors.InvalidArgumentError("x"), "SOMETHING_NEW"), "ValidationException"),
    ],
)
def test_the_daemons_reason_names_the_aws_exception(
    fake, capsys, error: errors.HsmError, name: str
) -> None:
    fake.raises = error
    code, _, err = run(capsys, "generate-data-key-without-plaintext", "--key-id", "k")
    assert code == cli.EXIT_SERVICE_ERROR
    assert err.startswith(f"An error occurred ({name}) ")


def test_a_throttled_call_prints_the_retry_delay_the_daemon_asked_for(fake, capsys) -> None:
    fake.raises = errors.ResourceExhaustedError("rate exceeded", retry_after=0.25)
    code, _, err = run(capsys, "generate-data-key-without-plaintext", "--key-id", "k")
    assert code == 254
    assert err == (
        "An error occurred (ThrottlingException) when calling the"
        " GenerateDataKeyWithoutPlaintext operation: rate exceeded (retry after 0.250s)\n"
    )


def test_an_argument_the_client_refuses_is_a_usage_error(fake, capsys) -> None:
    fake.raises = ValueError("unknown KeySpec 'AES_512' (expected one of: AES_256)")
    code, _, err = run(capsys, "create-key", "--key-spec", "AES_512")
    assert code == cli.EXIT_USAGE
    assert err == "hsm: error: unknown KeySpec 'AES_512' (expected one of: AES_256)\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["no-such-command"],
        ["describe-key"],
        ["describe-key", "--key-id", "k", "--output", "yaml"],
        ["encrypt", "--key-id", "k", "--plaintext", "eA==", "--unknown"],
        ["generate-random", "--number-of-bytes", "four"],
        ["describe-key", "--key", "/k", "--key-i", "k"],
    ],
)
def test_a_bad_command_line_exits_252_without_calling(fake, capsys, argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE == 252
    assert out == ""
    assert "usage: hsm" in err
    assert fake.calls == []


@pytest.mark.parametrize("argv", [["--help"], ["encrypt", "--help"]])
def test_help_returns_zero(capsys, argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert out.startswith("usage: hsm")


# --- key lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "method"),
    [
        ("enable-key", "enable_key"),
        ("disable-key", "disable_key"),
        ("disable-key-rotation", "disable_key_rotation"),
    ],
)
@pytest.mark.parametrize("key_id", ["k", "alias/payroll"])
def test_commands_aws_answers_silently_print_nothing(
    fake, capsys, command: str, method: str, key_id: str
) -> None:
    assert run(capsys, command, "--key-id", key_id) == (0, "", "")
    assert run(capsys, command, "--key-id", key_id, "--query", "KeyId") == (0, "", "")
    assert fake.calls == [(method, (key_id,))] * 2


def test_schedule_key_deletion(fake, capsys) -> None:
    output = run_json(
        capsys, "schedule-key-deletion", "--key-id", "k", "--pending-window-in-days", "7"
    )
    assert fake.calls == [("schedule_key_deletion", ("k", 7))]
    assert output == {
        "KeyId": KEY.key_id,
        "DeletionDate": "2024-07-01T12:00:00+00:00",
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": 7,
    }


def test_schedule_key_deletion_leaves_the_window_to_the_daemon(fake, capsys) -> None:
    output = run_json(capsys, "schedule-key-deletion", "--key-id", "alias/old")
    assert fake.calls == [("schedule_key_deletion", ("alias/old", None))]
    assert output["PendingWindowInDays"] == 30


@pytest.mark.parametrize(
    "argv",
    [
        ["schedule-key-deletion", "--key-id", "k", "--pending-window-in-days", "0"],
        ["enable-key-rotation", "--key-id", "k", "--rotation-period-in-days", "-90"],
        ["list-aliases", "--limit", "0"],
        ["audit", "list", "--limit", "none"],
    ],
)
def test_day_counts_and_limits_must_be_positive(fake, capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "must be at least 1" in err or "invalid" in err
    assert fake.calls == []


def test_cancel_key_deletion(fake, capsys) -> None:
    assert run_json(capsys, "cancel-key-deletion", "--key-id", "alias/x") == {"KeyId": KEY.key_id}
    assert fake.calls == [("cancel_key_deletion", ("alias/x",))]


def test_describe_key_shows_the_deletion_date_when_there_is_one(fake, capsys, monkeypatch) -> None:
    pending = replace(KEY, key_state="PENDING_DELETION", deletion_date=LATER)
    monkeypatch.setattr(fake, "describe_key", lambda key_id: pending)
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert metadata["DeletionDate"] == "2024-07-01T12:00:00+00:00"
    assert (metadata["KeyState"], metadata["Enabled"]) == ("PendingDeletion", False)


@pytest.mark.parametrize("description", ["new text", ""])
def test_update_key_description(fake, capsys, description: str) -> None:
    argv = ["update-key-description", "--key-id", "k", "--description", description]
    assert run(capsys, *argv) == (0, "", "")
    assert fake.calls == [("update_key_description", ("k", description))]


# --- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "tags"),
    [
        (["--tags", "TagKey=env,TagValue=prod"], {"env": "prod"}),
        (["--tags", "TagKey=a,TagValue=1", "TagKey=b,TagValue="], {"a": "1", "b": ""}),
        (["--tags", "TagKey=a,TagValue=1", "--tags", "TagKey=b,TagValue=2"], {"a": "1", "b": "2"}),
        (["--tags", "TagKey=cc,TagValue=x,y=z"], {"cc": "x,y=z"}),
        (
            ["--tags", '[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2, 3"}]'],
            {"a": "1", "b": "2, 3"},
        ),
        (["--tags", "TagKey=a,TagValue=1", '[{"TagKey": "a", "TagValue": "2"}]'], {"a": "2"}),
    ],
)
def test_tag_resource_takes_aws_shorthand_and_json(
    fake, capsys, words: list[str], tags: dict[str, str]
) -> None:
    assert run(capsys, "tag-resource", "--key-id", "k", *words) == (0, "", "")
    assert fake.calls == [("tag_key", ("k", tags))]


def test_untag_resource(fake, capsys) -> None:
    argv = ["untag-resource", "--key-id", "k", "--tag-keys", "env", "team", "--tag-keys", "x"]
    assert run(capsys, *argv) == (0, "", "")
    assert fake.calls == [("untag_key", ("k", ["env", "team", "x"]))]


def test_list_resource_tags_comes_from_the_key_sorted(fake, capsys) -> None:
    assert run_json(capsys, "list-resource-tags", "--key-id", "alias/p") == {
        "Tags": [{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "pay"}],
    }
    assert fake.calls == [("describe_key", ("alias/p",))]


def test_create_key_with_tags_and_a_policy(fake, capsys) -> None:
    policy = '{"Administrators": ["admin", "ops-*"], "Users": ["app"]}'
    run_json(capsys, "create-key", "--tags", "TagKey=env,TagValue=prod", "--policy", policy)
    assert fake.calls == [
        (
            "create_key",
            ("AES_256", None, "", POLICY, {"env": "prod"}, False, "GENERATED", None, False),
        )
    ]


def test_list_keys_by_tag(fake, capsys) -> None:
    argv = ["list-keys", "--tag-filter", "env=prod", "team=pay", "--limit", "2"]
    assert len(run_json(capsys, *argv)["Keys"]) == 2
    assert fake.calls == [("list_keys", (2, "", {"env": "prod", "team": "pay"}))]
    fake.calls.clear()
    run_json(capsys, "list-keys", "--tag-filter", '{"env": "prod"}')
    assert {args[2]["env"] for _, args in fake.calls} == {"prod"}  # on every page
    assert len(fake.calls) == 3


# --- key policies -------------------------------------------------------------------------------


def test_get_key_policy_returns_the_policy_as_a_json_string(fake, capsys) -> None:
    output = run_json(capsys, "get-key-policy", "--key-id", "k", "--policy-name", "default")
    assert fake.calls == [("get_key_policy", ("k",))]
    assert isinstance(output["Policy"], str)
    assert json.loads(output["Policy"]) == {"Administrators": ["admin", "ops-*"], "Users": ["app"]}


def test_put_key_policy_takes_what_get_key_policy_gives(fake, capsys) -> None:
    policy = run_json(capsys, "get-key-policy", "--key-id", "k")["Policy"]
    assert run(capsys, "put-key-policy", "--key-id", "k", "--policy", policy) == (0, "", "")
    assert fake.calls[-1] == ("put_key_policy", ("k", POLICY))


def test_put_key_policy_reads_file_urls(fake, capsys, tmp_path) -> None:
    (tmp_path / "policy.json").write_text('{\n  "Administrators": ["ops-*"]\n}\n')
    argv = ["--key-id", "k", "--policy", f"file://{tmp_path / 'policy.json'}"]
    assert run(capsys, "put-key-policy", *argv) == (0, "", "")
    assert fake.calls == [("put_key_policy", ("k", KeyPolicy(("ops-*",), ())))]


BAD_TAGS = [
    "env=prod",
    "TagKey=,TagValue=x",
    "TagValue=x,TagKey=y",
    "TagKey=a",
    '[{"TagKey": "a"}]',
    '[{"TagKey": "a", "TagValue": 1}]',
    '[{"TagKey": "a", "TagValue": "1", "Extra": "x"}]',
    '{"TagKey": "a", "TagValue": "1"}',
    "[broken",
]
BAD_POLICIES = [
    '{"Users": ["app"]}',
    '{"Administrators": "admin"}',
    '{"Administrators": ["admin"], "Users": [1]}',
    '{"Administrators": ["admin"], "Statement": []}',
    '["admin"]',
    "not json",
    "file:///no/such/policy.json",
]


@pytest.mark.parametrize(
    ("argv", "option", "word"),
    [
        (argv, option, blob)
        for argv, option in BLOB_OPTIONS
        for blob in ("not base64!", "fileb:///no/such/file")
    ]
    + [(["tag-resource", "--key-id", "k"], "--tags", word) for word in BAD_TAGS]
    + [(["create-key"], "--tags", BAD_TAGS[0]), (["create-key"], "--policy", BAD_POLICIES[0])]
    + [(["put-key-policy", "--key-id", "k"], "--policy", policy) for policy in BAD_POLICIES],
)
def test_a_bad_argument_is_a_usage_error(
    fake, capsys, argv: list[str], option: str, word: str
) -> None:
    code, out, err = run(capsys, *argv, option, word)
    assert code == cli.EXIT_USAGE
    assert f"argument {option}" in err
    assert (out, fake.calls) == ("", [])


def test_a_policy_file_that_is_not_utf8_is_a_usage_error(fake, capsys, tmp_path) -> None:
    (tmp_path / "policy.json").write_bytes(b"\xff\xfe{}")
    argv = ["--key-id", "k", "--policy", f"file://{tmp_path / 'policy.json'}"]
    code, _, err = run(capsys, "put-key-policy", *argv)
    assert (code, fake.calls) == (cli.EXIT_USAGE, [])
    assert "not UTF-8" in err


def test_only_the_default_policy_name_exists(fake, capsys) -> None:
    code, _, err = run(capsys, "get-key-policy", "--key-id", "k", "--policy-name", "other")
    assert code == cli.EXIT_USAGE
    assert "--policy-name" in err


# --- rotation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "period"), [([], None), (["--rotation-period-in-days", "90"], 90)]
)
def test_enable_key_rotation(fake, capsys, words: list[str], period: int | None) -> None:
    assert run(capsys, "enable-key-rotation", "--key-id", "k", *words) == (0, "", "")
    assert fake.calls == [("enable_key_rotation", ("k", period))]


def test_get_key_rotation_status(fake, capsys) -> None:
    assert run_json(capsys, "get-key-rotation-status", "--key-id", "k") == {
        "KeyId": KEY.key_id,
        "KeyRotationEnabled": True,
        "RotationPeriodInDays": 365,
        "NextRotationDate": "2024-07-01T12:00:00+00:00",
    }
    assert fake.calls == [("get_key_rotation_status", ("k",))]


def test_rotation_status_of_a_key_that_rotated_on_demand_only(fake, capsys, monkeypatch) -> None:
    status = KeyRotationStatus(KEY.key_id, False, 0, None, CREATED)
    monkeypatch.setattr(fake, "get_key_rotation_status", lambda key_id: status)
    assert run_json(capsys, "get-key-rotation-status", "--key-id", "k") == {
        "KeyId": KEY.key_id,
        "KeyRotationEnabled": False,
        "OnDemandRotationStartDate": "2024-05-06T07:08:09+00:00",
    }


def test_rotate_key_on_demand(fake, capsys) -> None:
    output = run_json(capsys, "rotate-key-on-demand", "--key-id", "alias/k")
    assert output == {"KeyId": "alias/k", "KeyVersion": 5}
    assert fake.calls == [("rotate_key_on_demand", ("alias/k",))]


def test_list_key_rotations_pages_through_everything(fake, capsys) -> None:
    output = run_json(capsys, "list-key-rotations", "--key-id", "alias/rotated")
    assert [args for _, args in fake.calls] == [("alias/rotated", 0, ""), ("alias/rotated", 0, "2")]
    assert output == {
        "Rotations": [
            {
                "KeyId": KEY.key_id,
                "RotationDate": "2024-07-01T12:00:00+00:00",
                "RotationType": "AUTOMATIC",
                "KeyVersion": version,
            }
            for version in (2, 3, 4)
        ]
    }


# --- aliases ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "call"),
    [
        (
            ["create-alias", "--alias-name", "alias/pay", "--target-key-id", "k"],
            ("create_alias", ("alias/pay", "k")),
        ),
        (
            ["update-alias", "--alias-name", "alias/pay", "--target-key-id", "k2"],
            ("update_alias", ("alias/pay", "k2")),
        ),
        (["delete-alias", "--alias-name", "alias/pay"], ("delete_alias", ("alias/pay",))),
    ],
)
def test_alias_commands_print_nothing(fake, capsys, argv: list[str], call: tuple) -> None:
    assert run(capsys, *argv) == (0, "", "")
    assert fake.calls == [call]


def test_list_aliases(fake, capsys) -> None:
    output = run_json(capsys, "list-aliases", "--key-id", "k", "--limit", "2")
    assert fake.calls == [("list_aliases", ("k", 2, ""))]
    assert output == {
        "Aliases": [
            {
                "AliasName": f"alias/a{n}",
                "TargetKeyId": KEY.key_id,
                "CreationDate": "2024-05-06T07:08:09+00:00",
                "LastUpdatedDate": "2024-07-01T12:00:00+00:00",
            }
            for n in range(2)
        ],
        "NextMarker": "2",
        "Truncated": True,
    }


def test_list_aliases_of_every_key(fake, capsys) -> None:
    assert len(run_json(capsys, "list-aliases")["Aliases"]) == 3
    assert fake.calls == [("list_aliases", (None, 0, "")), ("list_aliases", (None, 0, "2"))]


# --- audit --------------------------------------------------------------------------------------

EVENT_JSON = {
    "Sequence": 1,
    "Time": "2024-07-01T12:00:00+00:00",
    "RequestId": "req-1",
    "Tenant": "acme",
    "Principal": "tenant/acme/app",
    "Operation": "Decrypt",
    "KeyId": KEY.key_id,
    "KeyVersion": 2,
    "EncryptionContextKeys": ["file"],
    "Outcome": "OK",
    "Peer": "ipv4:10.0.0.1:4000",
    "PreviousHash": "00" * 32,
    "Hash": "11" * 32,
}


def test_audit_list_uses_the_tenant_service_by_default(fake, capsys) -> None:
    output = run_json(capsys, "audit", "list", "--key-id", "alias/k", "--limit", "1")
    assert fake.calls == [("list_audit_events", (1, "", "alias/k"))]
    assert output == {"Events": [EVENT_JSON], "NextMarker": "1", "Truncated": True}


@pytest.mark.parametrize(
    ("words", "call"),
    [
        (["--admin"], (0, "", None, None)),
        (["--tenant", "acme"], (0, "", None, "acme")),
        (["--admin", "--tenant", "acme", "--key-id", "k"], (0, "", "k", "acme")),
    ],
)
def test_audit_list_with_admin_or_tenant_uses_the_admin_service(
    fake, capsys, words: list[str], call: tuple
) -> None:
    output = run_json(capsys, "audit", "list", *words)
    assert [event["Sequence"] for event in output["Events"]] == [1, 2, 3]
    assert fake.calls[0] == ("admin.list_audit_events", call)
    assert {method for method, _ in fake.calls} == {"admin.list_audit_events"}


def test_audit_verify_exits_zero_when_the_chain_holds(fake, capsys) -> None:
    assert run_json(capsys, "audit", "verify") == {
        "Valid": True,
        "EventsChecked": 3,
        "FirstBrokenPosition": 0,
        "Problem": "",
        "CheckpointsVerified": 0,
        "LastCheckpointPosition": 0,
        "LastCheckpointHead": 0,
        "CheckpointFilePosition": 0,
        "TimeReversals": [],
        "TimeReversalCount": 0,
    }
    assert fake.calls == [("admin.verify_audit_log", ())]


def test_audit_verify_shows_checkpoints_and_exits_one_when_time_goes_back(fake, capsys) -> None:
    signed = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    fake.admin.verification = AuditVerification(
        True,
        9,
        0,
        "",
        checkpoints_verified=2,
        last_checkpoint_position=8,
        last_checkpoint_time=signed,
        last_checkpoint_head=7,
        checkpoint_file_position=8,
        time_reversals=(TimeReversal(5, signed, 4, signed.replace(hour=4)),),
        time_reversal_count=1,
        previous_log="audit.jsonl.archived-20250102T030405Z",
        previous_log_position=41,
        previous_log_hash="ab" * 32,
    )
    code, out, err = run(capsys, "audit", "verify")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "Valid": True,
        "EventsChecked": 9,
        "FirstBrokenPosition": 0,
        "Problem": "",
        "CheckpointsVerified": 2,
        "LastCheckpointPosition": 8,
        "LastCheckpointTime": "2025-01-02T03:04:05+00:00",
        "LastCheckpointHead": 7,
        "CheckpointFilePosition": 8,
        "TimeReversals": [
            {
                "Position": 5,
                "Time": "2025-01-02T03:04:05+00:00",
                "PreviousPosition": 4,
                "PreviousTime": "2025-01-02T04:04:05+00:00",
            }
        ],
        "TimeReversalCount": 1,
        "PreviousLog": "audit.jsonl.archived-20250102T030405Z",
        "PreviousLogPosition": 41,
        "PreviousLogHash": "ab" * 32,
    }


def test_audit_verify_exits_one_when_the_chain_is_broken(fake, capsys) -> None:
    fake.admin.verification = AuditVerification(False, 7, 7, "previous_hash does not match")
    code, out, err = run(capsys, "audit", "verify")
    assert (code, err) == (cli.EXIT_AUDIT_CHAIN_BROKEN, "") and code == 1
    assert json.loads(out)["FirstBrokenPosition"] == 7
    argv = ["audit", "verify", "--query", "Problem", "--output", "text"]
    assert run(capsys, *argv) == (1, "previous_hash does not match\n", "")


@pytest.mark.parametrize(
    ("argv", "operation"),
    [
        (["audit", "list"], "ListAuditEvents"),
        (["audit", "list", "--tenant", "acme"], "ListAuditEvents"),
        (["audit", "verify"], "VerifyAuditLog"),
        (["tag-resource", "--key-id", "k", "--tags", "TagKey=a,TagValue=b"], "TagResource"),
        (["list-resource-tags", "--key-id", "k"], "ListResourceTags"),
        (["schedule-key-deletion", "--key-id", "k"], "ScheduleKeyDeletion"),
        (["enable-key", "--key-id", "k"], "EnableKey"),
        (["wrap-key", "--key-id", "k", "--wrapping-key-id", "w"], "WrapKey"),
        (["unwrap-key", "--wrapped-key", "eA==", "--wrapping-key-id", "w"], "UnwrapKey"),
        (
            ["get-parameters-for-import", "--key-id", "k", "--wrapping-algorithm", "A"],
            "GetParametersForImport",
        ),
        (
            [
                "import-key-material",
                "--key-id",
                "k",
                "--import-token",
                "eA==",
                "--encrypted-key-material",
                "eA==",
            ],
            "ImportKeyMaterial",
        ),
        (["delete-imported-key-material", "--key-id", "k"], "DeleteImportedKeyMaterial"),
        (["import-key", "--key-id", "k", "--key-file", __file__], "ImportKey"),
    ],
)
def test_lifecycle_commands_name_their_operation_in_errors(
    fake, capsys, argv: list[str], operation: str
) -> None:
    fake.raises = errors.PermissionDeniedError("not an administrator of the key")
    assert run(capsys, *argv) == (
        254,
        "",
        f"An error occurred (AccessDeniedException) when calling the {operation} operation: "
        "not an administrator of the key\n",
    )


@pytest.mark.parametrize("argv", [["audit", "--help"], ["audit", "list", "--help"]])
def test_audit_help_says_which_service_answers(capsys, argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "AdminService" in " ".join(out.split())
    assert "operator certificate" in " ".join(out.split())


# --- wrapping and import ------------------------------------------------------------------------


def test_create_key_for_import_or_export(fake, capsys) -> None:
    run_json(capsys, "create-key", "--origin", "EXTERNAL", "--exportable")
    assert fake.calls == [
        ("create_key", ("AES_256", None, "", None, None, True, "EXTERNAL", None, False))
    ]


def test_describe_key_shows_the_origin_exportable_and_valid_to(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fake, "describe_key", lambda key_id: replace(IMPORTED, exportable=True))
    metadata = run_json(capsys, "describe-key", "--key-id", "k")["KeyMetadata"]
    assert (metadata["Origin"], metadata["Exportable"]) == ("EXTERNAL", True)
    assert metadata["ValidTo"] == "2024-07-01T12:00:00+00:00"


@pytest.mark.parametrize(
    ("words", "spec"), [([], "RSA_2048"), (["--wrapping-key-spec", "RSA_4096"], "RSA_4096")]
)
def test_get_parameters_for_import(fake, capsys, words: list[str], spec: str) -> None:
    argv = [
        "get-parameters-for-import",
        "--key-id",
        "k",
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_1",
    ]
    assert run_json(capsys, *argv, *words) == {
        "KeyId": "k",
        "ImportToken": b64(TOKEN),
        "PublicKey": b64(PUBLIC_KEY_DER),
        "ParametersValidTo": "2024-07-01T12:00:00+00:00",
    }
    assert fake.calls == [("get_parameters_for_import", ("k", "RSAES_OAEP_SHA_1", spec))]


IMPORT_KEY_MATERIAL = [
    "import-key-material",
    "--key-id",
    "k",
    "--import-token",
    b64(TOKEN),
    "--encrypted-key-material",
    b64(BLOB),
]
VALID_TO = datetime(2030, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("words", "valid_to"),
    [
        ([], None),
        (["--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE"], None),
        (["--valid-to", "2030-01-31T12:00:00Z"], VALID_TO),
        (["--valid-to", "2030-01-31T14:00:00+02:00"], VALID_TO),
        (["--valid-to", "2030-01-31T12:00"], VALID_TO),  # no offset: UTC
        (
            ["--expiration-model", "KEY_MATERIAL_EXPIRES", "--valid-to", "2030-01-31T12:00Z"],
            VALID_TO,
        ),
    ],
)
def test_import_key_material(fake, capsys, words: list[str], valid_to: datetime | None) -> None:
    assert run_json(capsys, *IMPORT_KEY_MATERIAL, *words) == {"KeyId": KEY.key_id}
    assert fake.calls == [("import_key_material", ("k", TOKEN, BLOB, valid_to, None))]
    if valid_to is not None:  # an aware datetime: a naive one would not compare equal
        assert fake.calls[0][1][3].utcoffset() is not None


def test_import_key_material_passes_the_public_key(fake, capsys) -> None:
    run_json(capsys, *IMPORT_KEY_MATERIAL, "--public-key", b64(PUBLIC_KEY_DER))
    assert fake.calls == [("import_key_material", ("k", TOKEN, BLOB, None, PUBLIC_KEY_DER))]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--expiration-model", "KEY_MATERIAL_EXPIRES"], "KEY_MATERIAL_EXPIRES needs --valid-to"),
        (
            ["--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE", "--valid-to", "2030-01-31"],
            "KEY_MATERIAL_DOES_NOT_EXPIRE refuses --valid-to",
        ),
        (["--expiration-model", "NEVER"], "invalid choice"),
        (["--valid-to", "tomorrow"], "expected an ISO 8601 time"),
        (["--valid-to", "2030-13-01"], "expected an ISO 8601 time"),
    ],
)
def test_a_bad_expiry_is_a_usage_error(fake, capsys, words: list[str], message: str) -> None:
    code, out, err = run(capsys, *IMPORT_KEY_MATERIAL, *words)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert message in err
    assert fake.calls == []


def test_delete_imported_key_material(fake, capsys) -> None:
    output = run_json(capsys, "delete-imported-key-material", "--key-id", "alias/byok")
    assert output == {"KeyId": KEY.key_id}
    assert fake.calls == [("delete_imported_key_material", ("alias/byok",))]


@pytest.mark.parametrize(
    ("words", "options"),
    [
        ([], (None, None)),
        (
            ["--wrapping-algorithm", "RSA_AES_KEY_WRAP_SHA_256", "--valid-to", "2030-01-31T12:00Z"],
            ("RSA_AES_KEY_WRAP_SHA_256", VALID_TO),
        ),
    ],
)
def test_import_key_imports_a_key_file_into_the_described_key(
    fake, capsys, tmp_path, words: list[str], options: tuple
) -> None:
    (tmp_path / "key.bin").write_bytes(DATA_KEY)
    argv = ["import-key", "--key-id", "alias/byok", "--key-file", str(tmp_path / "key.bin")]
    output = run_json(capsys, *argv, *words)
    assert fake.calls == [
        ("describe_key", ("alias/byok",)),  # for the spec, which the key file must fit
        ("import_key", (KEY.key_id, DATA_KEY, "AES_256", *options)),
    ]
    assert output["KeyMetadata"]["KeyId"] == KEY.key_id
    assert output["KeyMetadata"]["ValidTo"] == "2024-07-01T12:00:00+00:00"


def test_import_key_reads_the_key_file_from_stdin(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DATA_KEY)))
    run_json(capsys, "import-key", "--key-id", "k", "--key-file", "-")
    assert fake.calls[-1] == ("import_key", (KEY.key_id, DATA_KEY, "AES_256", None, None))


def test_an_unreadable_key_file_is_a_usage_error(fake, capsys, tmp_path) -> None:
    code, out, err = run(capsys, "import-key", "--key-id", "k", "--key-file", str(tmp_path / "no"))
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert "cannot read" in err
    assert fake.calls == []


def test_wrap_key(fake, capsys) -> None:
    output = run_json(capsys, "wrap-key", "--key-id", "alias/k", "--wrapping-key-id", "w")
    assert output == {
        "WrappedKey": b64(BLOB),
        "KeyId": "alias/k",
        "KeyVersion": 2,
        "WrappingKeyId": "w",
    }
    assert fake.calls == [("wrap_key", ("alias/k", "w"))]


def test_unwrap_key(fake, capsys, tmp_path) -> None:
    (tmp_path / "wrapped").write_bytes(BLOB)
    argv = ["unwrap-key", "--wrapped-key", f"fileb://{tmp_path / 'wrapped'}", "--wrapping-key-id"]
    output = run_json(capsys, *argv, "w")
    assert fake.calls == [("unwrap_key", (BLOB, "w", "", None, None, False, None))]
    assert (output["KeyMetadata"]["Origin"], output["KeyMetadata"]["Exportable"]) == (
        "UNWRAPPED",
        True,
    )
    fake.calls.clear()
    policy = '{"Administrators": ["admin", "ops-*"], "Users": ["app"]}'
    options = ["--description", "dr", "--tags", "TagKey=env,TagValue=dr", "--policy", policy]
    run_json(capsys, *argv, "w", *options, "--exportable")
    assert fake.calls == [("unwrap_key", (BLOB, "w", "dr", POLICY, {"env": "dr"}, True, None))]


def test_batch_input_lines_become_items_a_call_at_a_time() -> None:
    line = json.dumps({"KeyId": "k", "Plaintext": "cA==", "EncryptionContext": {"a": "1"}})
    batches = list(batch.batches(io.StringIO((line + "\n\n") * 1001), EncryptItem))
    assert [len(batch) for batch in batches] == [1000, 1]
    assert batches[0][0] == EncryptItem("k", b"p", {"a": "1"})
    for bad, problem in (
        ('{"KeyId": "k", "Plaintext": "!"}', "line 1: Plaintext is not base64"),
        ('{"KeyId": "k", "Colour": "red"}', "line 1: unknown field 'Colour'"),
        ('{"KeyId": "k"}', "line 1: "),
        ("[1]", "line 1: expected a JSON object"),
    ):
        with pytest.raises(ValueError, match=problem):
            list(batch.batches(io.StringIO(bad), EncryptItem))
