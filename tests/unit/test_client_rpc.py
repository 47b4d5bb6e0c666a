"""hsmclient against an in-process gRPC server with a fake KeyManagementService.

The fake keeps blobs in a dict instead of encrypting; it exists to show what the client sends
and how it treats what comes back: CRC32C checks, enum names, paging, errors, timeouts, and the
mutual-TLS channel that the CLI opens.
"""

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import google_crc32c
import grpc
import pytest
from hsmclient import (
    AdminClient,
    ChecksumMismatchError,
    DeadlineExceededError,
    HsmClient,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    cli,
)

from hsmd import devpki
from hsmd.v1 import admin_pb2, admin_pb2_grpc, resources_pb2, service_pb2, service_pb2_grpc

CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


class FakeKms(service_pb2_grpc.KeyManagementServiceServicer):
    """A KeyManagementService that keeps everything in memory, with knobs to misbehave."""

    def __init__(self) -> None:
        self.keys: dict[str, resources_pb2.KeyMetadata] = {}
        self.blobs: dict[bytes, tuple[str, bytes, dict[str, str]]] = {}
        self.requests: list[object] = []
        self.corrupt_response_crc32c = False
        self.ignore_request_crc32c = False
        self.delay = 0.0

    def _key(self, key_id: str, context: grpc.ServicerContext) -> resources_pb2.KeyMetadata:
        if key_id not in self.keys:
            context.abort(grpc.StatusCode.NOT_FOUND, f"key {key_id} not found")
        return self.keys[key_id]

    def _response_crc32c(self, data: bytes) -> int:
        return crc32c(data) ^ (1 if self.corrupt_response_crc32c else 0)

    def _checked(self, request, field: str, data: bytes, context) -> bool:
        """As the daemon: refuse a wrong checksum; say whether one was checked."""
        if self.ignore_request_crc32c or not request.HasField(field):
            return False
        if getattr(request, field) != crc32c(data):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} does not match")
        return True

    def _seal(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        blob = os.urandom(16)
        self.blobs[blob] = (key_id, plaintext, dict(context))
        return blob

    def CreateKey(self, request, context):
        self.requests.append(request)
        key_id = str(uuid.uuid4())
        key = resources_pb2.KeyMetadata(
            key_id=key_id,
            tenant="acme",
            name=f"tenants/acme/keys/{key_id}",
            description=request.description,
            key_spec=request.key_spec,
            key_usage=request.key_usage,
            origin=resources_pb2.GENERATED,
            key_state=resources_pb2.ENABLED,
            primary_version=1,
        )
        key.creation_time.FromDatetime(CREATED)
        self.keys[key_id] = key
        return service_pb2.CreateKeyResponse(key_metadata=key)

    def DescribeKey(self, request, context):
        self.requests.append(request)
        time.sleep(self.delay)
        return service_pb2.DescribeKeyResponse(key_metadata=self._key(request.key_id, context))

    def ListKeys(self, request, context):
        self.requests.append(request)
        start = int(request.page_token or 0)
        end = start + (request.page_size or 100)
        keys = list(self.keys.values())
        token = str(end) if end < len(keys) else ""
        return service_pb2.ListKeysResponse(keys=keys[start:end], next_page_token=token)

    def Encrypt(self, request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        verified = self._checked(request, "plaintext_crc32c", request.plaintext, context)
        blob = self._seal(key.key_id, request.plaintext, request.encryption_context)
        return service_pb2.EncryptResponse(
            ciphertext_blob=blob,
            key_id=key.key_id,
            key_version=key.primary_version,
            verified_plaintext_crc32c=verified,
            ciphertext_crc32c=self._response_crc32c(blob),
        )

    def Decrypt(self, request, context):
        self.requests.append(request)
        verified = self._checked(request, "ciphertext_crc32c", request.ciphertext_blob, context)
        key_id, plaintext, bound = self.blobs.get(request.ciphertext_blob, ("", b"", {}))
        if (
            not key_id
            or bound != dict(request.encryption_context)
            or request.key_id not in ("", key_id)
        ):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext is invalid")
        return service_pb2.DecryptResponse(
            plaintext=plaintext,
            key_id=key_id,
            key_version=1,
            plaintext_crc32c=self._response_crc32c(plaintext),
            verified_ciphertext_crc32c=verified,
        )

    def _data_key(self, request, context) -> tuple[bytes, bytes, resources_pb2.KeyMetadata]:
        key = self._key(request.key_id, context)
        plaintext = os.urandom(request.number_of_bytes or 32)
        return plaintext, self._seal(key.key_id, plaintext, request.encryption_context), key

    def GenerateDataKey(self, request, context):
        self.requests.append(request)
        plaintext, blob, key = self._data_key(request, context)
        return service_pb2.GenerateDataKeyResponse(
            plaintext=plaintext, ciphertext_blob=blob, key_id=key.key_id, key_version=1
        )

    def GenerateDataKeyWithoutPlaintext(self, request, context):
        self.requests.append(request)
        _, blob, key = self._data_key(request, context)
        return service_pb2.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=blob, key_id=key.key_id, key_version=1
        )

    def GenerateRandom(self, request, context):
        self.requests.append(request)
        return service_pb2.GenerateRandomResponse(plaintext=os.urandom(request.number_of_bytes))


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.tenants: list[admin_pb2.Tenant] = []

    def CreateTenant(self, request, context):
        if request.name == "forbidden":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "operators only")
        tenant = admin_pb2.Tenant(name=request.name, token_label=f"hsmd-{request.name}")
        tenant.token_serial = "0123456789abcdef"
        tenant.creation_time.FromDatetime(CREATED)
        self.tenants.append(tenant)
        return admin_pb2.CreateTenantResponse(tenant=tenant)

    def ListTenants(self, request, context):
        return admin_pb2.ListTenantsResponse(tenants=self.tenants)


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


@pytest.fixture
def admin_fake() -> FakeAdmin:
    return FakeAdmin()


def _server(kms: FakeKms, admin: FakeAdmin) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_KeyManagementServiceServicer_to_server(kms, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    return server


@pytest.fixture
def endpoint(kms: FakeKms, admin_fake: FakeAdmin) -> Iterator[str]:
    server = _server(kms, admin_fake)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(endpoint: str) -> Iterator[HsmClient]:
    with HsmClient(grpc.insecure_channel(endpoint), timeout=5) as client:
        yield client


# --- key metadata and enums ---------------------------------------------------------------------


def test_create_and_describe_key_return_python_values(client: HsmClient, kms: FakeKms) -> None:
    created = client.create_key(description="payroll")
    assert kms.requests[0] == service_pb2.CreateKeyRequest(
        key_spec=resources_pb2.AES_256,
        key_usage=resources_pb2.ENCRYPT_DECRYPT,
        description="payroll",
    )
    described = client.describe_key(created.key_id)
    assert described == created
    assert (described.key_spec, described.key_usage) == ("AES_256", "ENCRYPT_DECRYPT")
    assert (described.origin, described.key_state) == ("GENERATED", "ENABLED")
    assert described.creation_time == CREATED
    assert described.creation_time.tzinfo is not None
    assert described.name == f"tenants/acme/keys/{created.key_id}"
    assert (described.tenant, described.primary_version) == ("acme", 1)


@pytest.mark.parametrize(
    "arguments",
    [
        {"key_spec": "AES_512"},
        {"key_spec": "KEY_SPEC_UNSPECIFIED"},
        {"key_usage": "SIGN_EVERYTHING"},
        {"key_spec": "aes_256"},
    ],
)
def test_an_unknown_enum_name_fails_before_any_call(
    client: HsmClient, kms: FakeKms, arguments: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        client.create_key(**arguments)
    assert kms.requests == []


def test_a_state_these_stubs_do_not_know_is_shown_as_its_number(
    client: HsmClient, kms: FakeKms
) -> None:
    key = client.create_key()
    kms.keys[key.key_id].key_state = 4  # a state a newer daemon may add
    assert client.describe_key(key.key_id).key_state == "4"


def test_iter_keys_follows_every_page(client: HsmClient, kms: FakeKms) -> None:
    created = [client.create_key().key_id for _ in range(5)]
    page, token = client.list_keys(page_size=2)
    assert ([key.key_id for key in page], token) == (created[:2], "2")
    assert [key.key_id for key in client.iter_keys(page_size=2)] == created
    assert [key.key_id for key in client.iter_keys(page_size=2, page_token="3")] == created[3:]


# --- CRC32C -------------------------------------------------------------------------------------


def test_encrypt_sends_the_crc32c_of_the_plaintext(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    result = client.encrypt(key.key_id, b"123456789", {"app": "test"})
    request = kms.requests[-1]
    assert request.plaintext_crc32c == 0xE3069283  # CRC-32C check value; zlib.crc32 differs
    assert (result.key_id, result.key_version) == (key.key_id, 1)
    assert client.decrypt(result.ciphertext_blob, {"app": "test"}).plaintext == b"123456789"
    assert kms.requests[-1].ciphertext_crc32c == crc32c(result.ciphertext_blob)


def test_a_corrupted_ciphertext_is_detected(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    kms.corrupt_response_crc32c = True
    with pytest.raises(ChecksumMismatchError):
        client.encrypt(key.key_id, b"secret")


def test_a_corrupted_plaintext_is_detected(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"secret").ciphertext_blob
    kms.corrupt_response_crc32c = True
    with pytest.raises(ChecksumMismatchError):
        client.decrypt(blob)


def test_an_unverified_request_checksum_is_refused(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"secret").ciphertext_blob
    kms.ignore_request_crc32c = True
    with pytest.raises(ChecksumMismatchError, match="plaintext"):
        client.encrypt(key.key_id, b"secret")
    with pytest.raises(ChecksumMismatchError, match="ciphertext"):
        client.decrypt(blob)


def test_decrypt_results_hide_the_plaintext_from_repr(client: HsmClient) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"do-not-log-me").ciphertext_blob
    assert "do-not-log-me" not in repr(client.decrypt(blob))
    data_key = client.generate_data_key(key.key_id)
    assert repr(data_key.plaintext) not in repr(data_key)


# --- data keys and random -----------------------------------------------------------------------


def test_data_key_size_is_a_spec_or_a_length(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    assert len(client.generate_data_key(key_id).plaintext) == 32
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_AES_256
    assert len(client.generate_data_key(key_id, key_spec="AES_256").plaintext) == 32
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_AES_256
    encrypted = client.generate_data_key_without_plaintext(key_id, number_of_bytes=48)
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_SPEC_UNSPECIFIED
    assert kms.requests[-1].number_of_bytes == 48
    assert len(client.decrypt(encrypted.ciphertext_blob).plaintext) == 48


@pytest.mark.parametrize(
    "arguments",
    [
        {"key_spec": "AES_256", "number_of_bytes": 32},
        {"number_of_bytes": 0},
        {"key_spec": "AES_257"},
        {"key_spec": "DATA_KEY_AES_256"},
    ],
)
def test_bad_data_key_sizes_fail_before_any_call(
    client: HsmClient, kms: FakeKms, arguments: dict[str, object]
) -> None:
    for method in (client.generate_data_key, client.generate_data_key_without_plaintext):
        with pytest.raises(ValueError):
            method("key", **arguments)
    assert kms.requests == []


def test_data_keys_are_bound_to_their_context(client: HsmClient) -> None:
    key_id = client.create_key().key_id
    data_key = client.generate_data_key(key_id, encryption_context={"file": "a"})
    assert client.decrypt(data_key.ciphertext_blob, {"file": "a"}, key_id).plaintext == (
        data_key.plaintext
    )
    with pytest.raises(InvalidArgumentError, match="ciphertext is invalid"):
        client.decrypt(data_key.ciphertext_blob, {"file": "b"})
    with pytest.raises(InvalidArgumentError, match="ciphertext is invalid"):
        client.decrypt(data_key.ciphertext_blob, {"file": "a"}, key_id="another-key")


def test_generate_random(client: HsmClient) -> None:
    assert len(client.generate_random(17)) == 17


# --- errors and timeouts ------------------------------------------------------------------------


def test_a_refusal_becomes_its_error_class(client: HsmClient) -> None:
    with pytest.raises(NotFoundError, match="key nope not found") as raised:
        client.describe_key("nope")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_each_call_has_the_constructors_timeout(endpoint: str, kms: FakeKms) -> None:
    with HsmClient(grpc.insecure_channel(endpoint), timeout=0.2) as client:
        key_id = client.create_key().key_id
        kms.delay = 1.0
        with pytest.raises(DeadlineExceededError):
            client.describe_key(key_id)


def test_close_closes_the_channel(endpoint: str) -> None:
    with HsmClient(grpc.insecure_channel(endpoint)) as client:
        client.generate_random(1)
    with pytest.raises(ValueError, match="closed channel"):
        client.generate_random(1)


def test_admin_client(endpoint: str) -> None:
    with AdminClient(grpc.insecure_channel(endpoint)) as admin:
        tenant = admin.create_tenant("acme")
        assert (tenant.name, tenant.token_label, tenant.token_serial) == (
            "acme",
            "hsmd-acme",
            "0123456789abcdef",
        )
        assert tenant.creation_time == CREATED
        assert admin.list_tenants() == [tenant]
        with pytest.raises(PermissionDeniedError, match="operators only"):
            admin.create_tenant("forbidden")


# --- mutual TLS, and the CLI over it ------------------------------------------------------------


@pytest.fixture
def tls(tmp_path, kms: FakeKms, admin_fake: FakeAdmin) -> Iterator[dict[str, str]]:
    """A fake daemon behind mTLS whose certificate names only hsmd.test; the HSM_* variables."""
    ca = devpki.create_ca("test CA", datetime.now(UTC))
    server = devpki.issue(ca, "hsmd.test", hosts=["hsmd.test"], server=True)
    client = devpki.issue(ca, "app", uris=["spiffe://hsmd.test/tenant/acme/app"])
    client.write(tmp_path / "client.pem", tmp_path / "client-key.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    credentials = grpc.ssl_server_credentials(
        [(server.key_pem(), server.cert_pem())],
        root_certificates=ca.cert_pem(),
        require_client_auth=True,
    )
    grpc_server = _server(kms, admin_fake)
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    yield {
        "HSM_ENDPOINT": f"127.0.0.1:{port}",
        "HSM_CA_CERT": str(tmp_path / "ca.pem"),
        "HSM_CLIENT_CERT": str(tmp_path / "client.pem"),
        "HSM_CLIENT_KEY": str(tmp_path / "client-key.pem"),
        "HSM_SERVER_NAME": "hsmd.test",
    }
    grpc_server.stop(None)


def test_connect_over_mutual_tls(tls: dict[str, str]) -> None:
    pem = {name: Path(path).read_bytes() for name, path in tls.items() if path.endswith(".pem")}
    with HsmClient.connect(
        tls["HSM_ENDPOINT"],
        ca_cert=pem["HSM_CA_CERT"],
        client_cert=pem["HSM_CLIENT_CERT"],
        client_key=pem["HSM_CLIENT_KEY"],
        server_name="hsmd.test",
    ) as client:
        assert len(client.generate_random(8)) == 8


def test_from_env_connects(tls: dict[str, str]) -> None:
    with AdminClient.from_env(tls) as admin:
        assert admin.list_tenants() == []


def test_a_server_name_the_certificate_lacks_fails_the_handshake(tls: dict[str, str]) -> None:
    with HsmClient.from_env({**tls, "HSM_SERVER_NAME": "other.test"}, timeout=5) as client:
        with pytest.raises(UnavailableError):
            client.generate_random(8)


def test_cli_end_to_end(tls: dict[str, str], monkeypatch, capsys, tmp_path) -> None:
    for name, value in tls.items():
        monkeypatch.setenv(name, value)

    def hsm(*argv: str) -> str:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        return out

    key_id = hsm("create-key", "--query", "KeyMetadata.KeyId", "--output", "text").strip()
    (tmp_path / "secret").write_bytes(b"\x00secret\xff")
    encrypted = json.loads(
        hsm("encrypt", "--key-id", key_id, "--plaintext", f"fileb://{tmp_path / 'secret'}")
    )
    assert encrypted["KeyId"] == key_id
    plaintext = hsm(
        "decrypt",
        "--ciphertext-blob",
        encrypted["CiphertextBlob"],
        "--output",
        "text",
        "--query",
        "Plaintext",
    )
    assert base64.b64decode(plaintext) == b"\x00secret\xff"
    listed = json.loads(hsm("list-keys"))
    assert listed == {"Keys": [{"KeyId": key_id, "KeyArn": f"tenants/acme/keys/{key_id}"}]}


def test_cli_reports_a_refusal_with_254(tls: dict[str, str], monkeypatch, capsys) -> None:
    for name, value in tls.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["describe-key", "--key-id", "nope"]) == 254
    assert capsys.readouterr().err == (
        "An error occurred (NotFoundException) when calling the DescribeKey operation: "
        "key nope not found\n"
    )


def test_cli_reports_an_unreachable_daemon_with_255(tls: dict[str, str], capsys) -> None:
    code = cli.main(
        [
            "--endpoint=127.0.0.1:1",
            f"--ca-cert={tls['HSM_CA_CERT']}",
            f"--cert={tls['HSM_CLIENT_CERT']}",
            f"--key={tls['HSM_CLIENT_KEY']}",
            "generate-random",
            "--number-of-bytes",
            "1",
        ]
    )
    assert code == 255
    assert (
        "(ServiceUnavailableException) when calling the GenerateRandom" in capsys.readouterr().err
    )
