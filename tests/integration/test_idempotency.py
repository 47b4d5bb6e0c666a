"""Client tokens make creating calls safe to retry: a retry returns what the first call made,
and 40 calls that time out at the client make one key, not 24 (as before)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from hsmd.v1 import admin_pb2, admin_pb2_grpc
from hsmd.v1 import resources_pb2 as res
from hsmd.v1 import service_pb2 as svc
from hsmd.v1.service_pb2_grpc import KeyManagementServiceStub
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess
from tests.stubs import channel


@pytest.fixture
def stub(daemon: DaemonProcess) -> Iterator[KeyManagementServiceStub]:
    with channel(daemon, daemon.pki.tenant_client(TENANT_A, "retrier")) as open_channel:
        yield KeyManagementServiceStub(open_channel)


def _keys_made_by(daemon: DaemonProcess, token: str) -> list[str]:
    rows = daemon.query("SELECT key_id FROM keys WHERE client_token = ?", token)
    return [row[0] for row in rows]


def test_a_retry_with_the_same_token_returns_the_first_key(
    daemon: DaemonProcess, stub: KeyManagementServiceStub
) -> None:
    request = svc.CreateKeyRequest(description="once", client_token=uuid.uuid4().hex)
    first = stub.CreateKey(request).key_metadata
    again = stub.CreateKey(request).key_metadata
    assert again.key_id == first.key_id
    assert _keys_made_by(daemon, request.client_token) == [first.key_id]
    other = stub.CreateKey(svc.CreateKeyRequest(description="once")).key_metadata
    assert other.key_id != first.key_id  # no token: a new key every time


def test_the_same_token_for_another_request_is_refused(
    daemon: DaemonProcess, stub: KeyManagementServiceStub
) -> None:
    token = uuid.uuid4().hex
    stub.CreateKey(svc.CreateKeyRequest(description="first", client_token=token))
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateKey(svc.CreateKeyRequest(description="second", client_token=token))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "different request" in (refused.value.details() or "")
    with channel(daemon, daemon.pki.tenant_client(TENANT_A, "someone-else")) as other:
        with pytest.raises(grpc.RpcError) as refused:
            KeyManagementServiceStub(other).CreateKey(
                svc.CreateKeyRequest(description="first", client_token=token)
            )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(_keys_made_by(daemon, token)) == 1


@pytest.mark.parametrize("token", ["x" * 65, "not a token!", "é"])
def test_a_malformed_token_is_refused(stub: KeyManagementServiceStub, token: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateKey(svc.CreateKeyRequest(client_token=token))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_calls_that_time_out_at_the_client_make_one_key(
    daemon: DaemonProcess, stub: KeyManagementServiceStub
) -> None:
    """RSA-3072 generation takes longer than these deadlines, so the daemon finishes calls
    whose caller has given up; the retries (with the same token) are answered with its key."""
    request = svc.CreateKeyRequest(
        key_spec=res.RSA_3072, key_usage=res.SIGN_VERIFY, client_token=uuid.uuid4().hex
    )
    timed_out = 0
    for _ in range(40):
        try:
            stub.CreateKey(request, timeout=0.02)
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
            timed_out += 1
    assert timed_out > 0
    daemon.wait_for(lambda: _made(stub, request))
    assert len(_keys_made_by(daemon, request.client_token)) == 1


def _made(stub: KeyManagementServiceStub, request: svc.CreateKeyRequest) -> bool:
    try:
        return bool(stub.CreateKey(request, timeout=30).key_metadata.key_id)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.ABORTED:  # the first call is still generating
            return False
        raise


def test_unwrap_key_takes_a_client_token(
    daemon: DaemonProcess, stub: KeyManagementServiceStub
) -> None:
    wrapping = stub.CreateKey(svc.CreateKeyRequest(key_usage=res.WRAP_UNWRAP)).key_metadata
    exportable = stub.CreateKey(svc.CreateKeyRequest(exportable=True)).key_metadata
    blob = stub.WrapKey(
        svc.WrapKeyRequest(key_id=exportable.key_id, wrapping_key_id=wrapping.key_id)
    ).wrapped_key
    request = svc.UnwrapKeyRequest(
        wrapped_key=blob, wrapping_key_id=wrapping.key_id, client_token=uuid.uuid4().hex
    )
    first = stub.UnwrapKey(request).key_metadata
    assert stub.UnwrapKey(request).key_metadata.key_id == first.key_id
    assert _keys_made_by(daemon, request.client_token) == [first.key_id]


def test_create_tenant_takes_a_client_token(daemon: DaemonProcess) -> None:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    request = admin_pb2.CreateTenantRequest(name=name, client_token=uuid.uuid4().hex)
    with channel(daemon, daemon.pki.operator_client()) as open_channel:
        admin = admin_pb2_grpc.AdminServiceStub(open_channel)
        first = admin.CreateTenant(request).tenant
        assert admin.CreateTenant(request).tenant.token_serial == first.token_serial
        with pytest.raises(grpc.RpcError) as refused:
            admin.CreateTenant(admin_pb2.CreateTenantRequest(name=name))
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        other_name = admin_pb2.CreateTenantRequest(
            name=f"{name}-b", client_token=request.client_token
        )
        with pytest.raises(grpc.RpcError) as reused:
            admin.CreateTenant(other_name)
        assert reused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert other_name.name not in [
            t.name for t in admin.ListTenants(admin_pb2.ListTenantsRequest()).tenants
        ]


def test_the_client_library_sends_a_token_and_retries_with_it(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT_A, "library") as client:
        key = client.create_key(description="from the library")
    rows = daemon.query("SELECT client_token FROM keys WHERE key_id = ?", key.key_id)
    assert rows[0][0]  # a token was sent (the unit tier shows the retries reuse it)
