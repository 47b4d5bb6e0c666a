"""Encrypt, Decrypt, data keys and random bytes through the real daemon.

Every decryption failure (a flipped byte anywhere, truncation, a wrong or missing context
entry, a blob re-labelled for another key) must fail the same opaque way.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from hsmclient import HsmClient, InvalidArgumentError, NotFoundError

from hsmd.v1 import service_pb2, service_pb2_grpc
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess

CONTEXT = {"purpose": "test", "record": "42"}
OPAQUE = "ciphertext is invalid, or does not match the key and encryption context"


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "crypto")


@pytest.fixture(scope="module")
def raw_stub(daemon: DaemonProcess) -> service_pb2_grpc.KeyManagementServiceStub:
    """The generated stub without the client library's own checks, to send what it would refuse."""
    cert, key = daemon.pki.tenant_client(TENANT_A, "crypto")
    credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
    channel = grpc.secure_channel(daemon.endpoint, credentials)
    return service_pb2_grpc.KeyManagementServiceStub(channel)


@pytest.fixture(scope="module")
def key_id(client: HsmClient) -> str:
    return client.create_key(description="crypto tests").key_id


@pytest.fixture(scope="module")
def blob(client: HsmClient, key_id: str) -> bytes:
    return client.encrypt(key_id, b"attack at dawn", CONTEXT).ciphertext_blob


def _assert_opaque_failure(client: HsmClient, blob: bytes, context: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.decrypt(blob, context)
    assert caught.value.message == OPAQUE


@pytest.mark.parametrize("size", [1, 4096])
def test_round_trip_at_the_size_limits(client: HsmClient, key_id: str, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    sealed = client.encrypt(key_id, plaintext, CONTEXT)
    assert (sealed.key_id, sealed.key_version) == (key_id, 1)
    opened = client.decrypt(sealed.ciphertext_blob, CONTEXT)
    assert (opened.plaintext, opened.key_id, opened.key_version) == (plaintext, key_id, 1)


@pytest.mark.parametrize("size", [0, 4097])
def test_plaintext_out_of_range_is_invalid_argument(
    client: HsmClient, key_id: str, size: int
) -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"plaintext (must be 1 to|is longer than) 4096 bytes"
    ):
        client.encrypt(key_id, b"x" * size)


def test_the_same_plaintext_encrypts_differently(client: HsmClient, key_id: str) -> None:
    assert (
        client.encrypt(key_id, b"same").ciphertext_blob
        != client.encrypt(key_id, b"same").ciphertext_blob
    )


def test_a_flipped_byte_anywhere_fails_the_same_way(client: HsmClient, blob: bytes) -> None:
    for position in range(len(blob)):
        flipped = bytearray(blob)
        flipped[position] ^= 0x01
        _assert_opaque_failure(client, bytes(flipped), CONTEXT)


@pytest.mark.parametrize("keep", [0, 1, 20, 33, 48, -1])
def test_truncation_fails_the_same_way(client: HsmClient, blob: bytes, keep: int) -> None:
    _assert_opaque_failure(client, blob[:keep], CONTEXT)


def test_appended_bytes_fail_the_same_way(client: HsmClient, blob: bytes) -> None:
    _assert_opaque_failure(client, blob + b"\x00", CONTEXT)


@pytest.mark.parametrize(
    "context",
    [
        {},
        {"purpose": "test"},
        {"purpose": "test", "record": "43"},
        {"purpose": "test", "record": "42", "extra": ""},
        {"Purpose": "test", "record": "42"},
    ],
    ids=["missing", "entry-missing", "wrong-value", "extra-entry", "wrong-key"],
)
def test_a_wrong_or_missing_context_fails_the_same_way(
    client: HsmClient, blob: bytes, context: dict[str, str]
) -> None:
    _assert_opaque_failure(client, blob, context)


def test_context_order_does_not_matter(client: HsmClient, blob: bytes) -> None:
    reordered = dict(reversed(list(CONTEXT.items())))
    assert client.decrypt(blob, reordered).plaintext == b"attack at dawn"


def test_a_blob_relabelled_for_another_key_fails_the_same_way(
    client: HsmClient, key_id: str, blob: bytes
) -> None:
    other = client.create_key().key_id
    relabelled = blob[:1] + uuid.UUID(other).bytes + blob[17:]
    _assert_opaque_failure(client, relabelled, CONTEXT)
    unknown = blob[:1] + uuid.uuid4().bytes + blob[17:]
    _assert_opaque_failure(client, unknown, CONTEXT)
    for wrong_key_id in (other, "not-a-key-id"):
        with pytest.raises(InvalidArgumentError, match=OPAQUE):
            client.decrypt(blob, CONTEXT, key_id=wrong_key_id)


def test_a_blob_naming_another_version_fails_the_same_way(client: HsmClient, blob: bytes) -> None:
    for version in (0, 2, 0xFFFFFFFF):
        _assert_opaque_failure(client, blob[:17] + version.to_bytes(4, "big") + blob[21:], CONTEXT)


def test_a_data_keys_plaintext_is_what_decrypt_returns(client: HsmClient, key_id: str) -> None:
    data_key = client.generate_data_key(key_id, encryption_context=CONTEXT)
    assert len(data_key.plaintext) == 32
    assert client.decrypt(data_key.ciphertext_blob, CONTEXT).plaintext == data_key.plaintext
    _assert_opaque_failure(client, data_key.ciphertext_blob, {})
    sized = client.generate_data_key(key_id, number_of_bytes=1024)
    assert client.decrypt(sized.ciphertext_blob).plaintext == sized.plaintext
    assert len(sized.plaintext) == 1024


@pytest.mark.parametrize(("spec", "size"), [("AES_128", 16), ("AES_256", 32)])
def test_a_data_key_spec_names_its_size(
    client: HsmClient, key_id: str, spec: str, size: int
) -> None:
    data_key = client.generate_data_key(key_id, key_spec=spec)
    assert len(data_key.plaintext) == size
    assert client.decrypt(data_key.ciphertext_blob).plaintext == data_key.plaintext
    sealed = client.generate_data_key_without_plaintext(key_id, key_spec=spec)
    assert len(client.decrypt(sealed.ciphertext_blob).plaintext) == size


def test_a_data_key_without_plaintext_decrypts_to_a_fresh_key(
    client: HsmClient, key_id: str
) -> None:
    first = client.generate_data_key_without_plaintext(key_id, number_of_bytes=16)
    second = client.generate_data_key_without_plaintext(key_id, number_of_bytes=16)
    one, two = (
        client.decrypt(first.ciphertext_blob).plaintext,
        client.decrypt(second.ciphertext_blob).plaintext,
    )
    assert len(one) == len(two) == 16
    assert one != two


@pytest.mark.parametrize("size", [-1, 1025])
def test_data_key_size_out_of_range_is_invalid_argument(
    raw_stub: service_pb2_grpc.KeyManagementServiceStub, key_id: str, size: int
) -> None:
    request = service_pb2.GenerateDataKeyRequest(key_id=key_id, number_of_bytes=size)
    with pytest.raises(grpc.RpcError) as caught:
        raw_stub.GenerateDataKey(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "number_of_bytes" in (caught.value.details() or "")


def test_generate_random(client: HsmClient) -> None:
    assert len(client.generate_random(1)) == 1
    values = {client.generate_random(32) for _ in range(4)}
    assert len(values) == 4
    for size in (0, 1025):
        with pytest.raises(InvalidArgumentError, match="number_of_bytes"):
            client.generate_random(size)


def test_unknown_and_malformed_key_ids(client: HsmClient) -> None:
    with pytest.raises(NotFoundError):
        client.encrypt(str(uuid.uuid4()), b"x")
    with pytest.raises(NotFoundError):
        client.describe_key("not-a-key")
    with pytest.raises(InvalidArgumentError, match="key_id is required"):
        client.describe_key("")


def test_context_over_the_limits_is_invalid_argument(client: HsmClient, key_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="more than 64 entries"):
        client.encrypt(key_id, b"x", {str(i): "v" for i in range(65)})
    with pytest.raises(InvalidArgumentError, match="larger than 8192 bytes"):
        client.encrypt(key_id, b"x", {"big": "v" * 9000})
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        client.encrypt(key_id, b"x", {"": "v"})


def test_describe_and_list_keys(client: HsmClient) -> None:
    created = [client.create_key(description=f"page {i}") for i in range(5)]
    described = client.describe_key(created[0].key_id)
    assert (described.description, described.key_state, described.key_spec) == (
        "page 0",
        "ENABLED",
        "AES_256",
    )
    first_page, token = client.list_keys(page_size=2)
    assert len(first_page) <= 2 and token  # other principals' keys are not shown
    all_ids = [key.key_id for key in client.iter_keys(page_size=2)]
    assert len(all_ids) == len(set(all_ids))
    assert {key.key_id for key in created} <= set(all_ids)
    with pytest.raises(InvalidArgumentError, match="page_token"):
        client.list_keys(page_token="not a token")
    with pytest.raises(InvalidArgumentError, match="page_size"):
        client.list_keys(page_size=1001)


def test_description_too_long_is_invalid_argument(client: HsmClient) -> None:
    with pytest.raises(InvalidArgumentError, match="description"):
        client.create_key(description="d" * 8193)


def test_a_corrupted_request_is_refused_by_its_checksum(
    raw_stub: service_pb2_grpc.KeyManagementServiceStub, key_id: str
) -> None:
    request = service_pb2.EncryptRequest(key_id=key_id, plaintext=b"hello", plaintext_crc32c=1)
    with pytest.raises(grpc.RpcError) as caught:
        raw_stub.Encrypt(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CRC32C" in (caught.value.details() or "")
