"""The `hsm` command line without a daemon: arguments, output and exit codes.

The client is replaced by one that answers in-process and records what the CLI asked for;
tests/unit/test_client_rpc.py runs the CLI over a real mTLS channel.
"""

import base64
import io
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hsmclient import cli, errors
from hsmclient.channel import ConnectionSettings
from hsmclient.client import (
    Capabilities,
    DataKey,
    DataKeyPair,
    DecryptResult,
    EncryptedDataKey,
    EncryptedDataKeyPair,
    EncryptResult,
    HsmClient,
    KeyMetadata,
    MacResult,
    PublicKey,
    ReEncryptResult,
    SignResult,
    VerifyMacResult,
    VerifyResult,
)

KEY = KeyMetadata(
    key_id="0b5e3d4a-1111-4222-8333-944445555666",
    tenant="acme",
    name="tenants/acme/keys/0b5e3d4a-1111-4222-8333-944445555666",
    description="payroll",
    key_spec="AES_256",
    key_usage="ENCRYPT_DECRYPT",
    origin="GENERATED",
    key_state="ENABLED",
    creation_time=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    primary_version=2,
    encryption_algorithms=("SYMMETRIC_DEFAULT",),
    signing_algorithms=(),
    mac_algorithms=(),
)
BLOB = b"\x01blob\xff"
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

    def create_key(self, key_spec="AES_256", key_usage=None, description=""):
        self._record("create_key", key_spec, key_usage, description)
        return KEY

    def describe_key(self, key_id):
        self._record("describe_key", key_id)
        return KEY

    def list_keys(self, page_size=0, page_token=""):
        """Pages of two keys at most; the token is the index of the next key."""
        self._record("list_keys", page_size, page_token)
        start = int(page_token or 0)
        end = start + min(page_size or 2, 2)
        return self.keys[start:end], str(end) if end < len(self.keys) else ""

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
        )

    def generate_random(self, number_of_bytes):
        self._record("generate_random", number_of_bytes)
        return b"\x00" * number_of_bytes


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
    assert fake.calls == [("create_key", ("AES_256", None, "payroll"))]
    assert output == {
        "KeyMetadata": {
            "KeyId": KEY.key_id,
            "Arn": f"tenants/acme/keys/{KEY.key_id}",
            "CreationDate": "2024-05-06T07:08:09+00:00",
            "Enabled": True,
            "Description": "payroll",
            "KeyUsage": "ENCRYPT_DECRYPT",
            "KeyState": "ENABLED",
            "Origin": "GENERATED",
            "KeySpec": "AES_256",
            "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "PrimaryVersion": 2,
        }
    }


def test_create_key_passes_spec_and_usage(fake, capsys) -> None:
    run_json(capsys, "create-key", "--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY")
    assert fake.calls == [("create_key", ("RSA_2048", "SIGN_VERIFY", ""))]


def test_a_disabled_key_is_not_enabled(fake, capsys, monkeypatch) -> None:
    monkeypatch.setattr(fake, "describe_key", lambda key_id: replace(KEY, key_state="DISABLED"))
    output = run_json(capsys, "describe-key", "--key-id", KEY.key_id)
    assert output["KeyMetadata"]["Enabled"] is False
    assert output["KeyMetadata"]["KeyState"] == "DISABLED"


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
                f"tenants/acme/keys/{KEY.key_id}",
                "2024-05-06T07:08:09+00:00",
                "payroll",
                "True",
                KEY.key_id,
                "AES_256",
                "ENABLED",
                "ENCRYPT_DECRYPT",
                "GENERATED",
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
    assert [args for _, args in fake.calls] == [(0, ""), (0, "2"), (0, "4")]


def test_list_keys_with_limit_returns_one_page_and_the_marker(fake, capsys) -> None:
    output = run_json(capsys, "list-keys", "--limit", "2", "--starting-token", "2")
    assert [key["KeyId"] for key in output["Keys"]] == ["key-2", "key-3"]
    assert output["NextMarker"] == "4"
    assert fake.calls == [("list_keys", (2, "2"))]


def test_list_keys_as_text(fake, capsys) -> None:
    code, out, _ = run(capsys, "list-keys", "--limit", "2", "--output", "text")
    assert code == 0
    assert out.splitlines() == [
        "2",
        "KEYS\ttenants/acme/keys/key-0\tkey-0",
        "KEYS\ttenants/acme/keys/key-1\tkey-1",
    ]


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
        "KeyPairSpec": "EC_P256",
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


@pytest.mark.parametrize(("signature", "valid"), [(SIGNATURE, True), (b"forged", False)])
def test_verify_exits_zero_whether_valid_or_not(fake, capsys, signature: bytes, valid) -> None:
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
        b64(signature),
        "--signing-algorithm",
        "ED25519_SHA_512",
    )
    assert fake.calls == [("verify", ("k", b"x", signature, "ED25519_SHA_512", "RAW"))]
    assert output == {
        "KeyId": "k",
        "SignatureValid": valid,
        "SigningAlgorithm": "ED25519_SHA_512",
        "KeyVersion": 2,
    }


def test_get_public_key(fake, capsys) -> None:
    output = run_json(capsys, "get-public-key", "--key-id", "k")
    assert fake.calls == [("get_public_key", ("k",))]
    assert output == {
        "KeyId": "k",
        "PublicKey": b64(PUBLIC_KEY_DER),
        "KeySpec": "ED25519",
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


@pytest.mark.parametrize(("mac", "valid"), [(MAC, True), (b"\x00" * 32, False)])
def test_verify_mac_exits_zero_whether_valid_or_not(fake, capsys, mac: bytes, valid) -> None:
    argv = ["--key-id", "k", "--message", "eA==", "--mac", b64(mac), "--mac-algorithm", "M"]
    output = run_json(capsys, "verify-mac", *argv)
    assert fake.calls == [("verify_mac", ("k", b"x", mac, "M"))]
    assert output == {"KeyId": "k", "MacValid": valid, "MacAlgorithm": "M", "KeyVersion": 2}


def test_get_capabilities(fake, capsys) -> None:
    assert run_json(capsys, "get-capabilities") == {
        "KeySpecs": ["AES_256", "ED25519"],
        "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
        "SigningAlgorithms": ["ED25519_SHA_512"],
        "MacAlgorithms": [],
        "Notes": ["no HMAC: the token lacks CKM_SHA256_HMAC"],
    }
    assert fake.calls == [("get_capabilities", ())]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["sign", "--key-id", "k", "--signing-algorithm", "A"], "--message"),
        (
            ["verify", "--key-id", "k", "--message", "eA==", "--signing-algorithm", "A"],
            "--signature",
        ),
        (["verify-mac", "--key-id", "k", "--message", "eA==", "--mac-algorithm", "A"], "--mac"),
        (["re-encrypt", "--destination-key-id", "k"], "--ciphertext-blob"),
    ],
)
@pytest.mark.parametrize("blob", ["not base64!", "fileb:///no/such/file"])
def test_a_bad_blob_in_the_new_commands_is_a_usage_error(
    fake, capsys, argv: list[str], option: str, blob: str
) -> None:
    code, out, err = run(capsys, *argv, option, blob)
    assert code == cli.EXIT_USAGE
    assert f"argument {option}" in err
    assert (out, fake.calls) == ("", [])


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
        (errors.ResourceExhaustedError("bad"), "ThrottlingException", 254),
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
