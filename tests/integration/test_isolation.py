"""Tenant isolation and authentication, through the real daemon over mutual TLS.

Another tenant's key must look exactly like a missing one, and only a certificate from our CA,
in date, naming a tenant principal, may use keys.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import grpc
import pytest
from hsmclient import (
    HsmClient,
    HsmError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

from hsmd import devpki
from hsmd.v1 import service_pb2, service_pb2_grpc
from tests.conftest import TENANT_A, TENANT_B
from tests.harness import TRUST_DOMAIN, DaemonProcess


@pytest.fixture(scope="module")
def alice(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "alice")


@pytest.fixture(scope="module")
def bob(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_B, "bob")


def _error(call: object) -> HsmError:
    assert callable(call)
    with pytest.raises(HsmError) as caught:
        call()
    return caught.value


def test_another_tenants_key_looks_exactly_like_a_missing_one(
    alice: HsmClient, bob: HsmClient
) -> None:
    key_id = alice.create_key(description="alpha's").key_id
    missing = str(uuid.uuid4())
    for use in (
        bob.describe_key,
        lambda k: bob.encrypt(k, b"x"),
        bob.generate_data_key,
        bob.generate_data_key_without_plaintext,
    ):
        foreign, absent = _error(partial(use, key_id)), _error(partial(use, missing))
        assert isinstance(foreign, NotFoundError)
        assert type(foreign) is type(absent)
        assert foreign.message.replace(key_id, "K") == absent.message.replace(missing, "K")


@pytest.mark.parametrize(
    "name_of",
    [
        lambda tenant, key_id: f"tenants/{tenant}/keys/{key_id}",
        lambda tenant, key_id: f"arn:aws:kms:eu-west-1:{tenant}:key/{key_id}",
    ],
    ids=["resource name", "ARN"],
)
def test_keys_named_by_resource_name_or_arn_stay_in_their_tenant(
    alice: HsmClient, bob: HsmClient, name_of
) -> None:
    """Alice's own names for her key reach it; the same names from Bob, and Bob's names for
    it, are answered as for a key that does not exist, byte for byte."""
    key_id = alice.create_key().key_id
    assert alice.describe_key(name_of(TENANT_A, key_id)).key_id == key_id
    missing = str(uuid.uuid4())
    for tenant in (TENANT_A, TENANT_B):
        foreign = _error(partial(bob.describe_key, name_of(tenant, key_id)))
        absent = _error(partial(bob.describe_key, name_of(tenant, missing)))
        assert isinstance(foreign, NotFoundError) and foreign.reason is None
        assert foreign.message.replace(key_id, "K") == absent.message.replace(missing, "K")


def test_another_tenants_ciphertext_fails_like_a_tampered_one(
    alice: HsmClient, bob: HsmClient
) -> None:
    key_id = alice.create_key().key_id
    blob = alice.encrypt(key_id, b"alpha secret").ciphertext_blob
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    foreign = _error(lambda: bob.decrypt(blob))
    broken = _error(lambda: alice.decrypt(tampered))
    assert isinstance(foreign, InvalidArgumentError)
    assert (type(foreign), foreign.message) == (type(broken), broken.message)
    named = _error(lambda: bob.decrypt(blob, key_id=key_id))
    assert (type(named), named.message) == (type(broken), broken.message)


def test_list_keys_never_shows_another_tenants_keys(alice: HsmClient, bob: HsmClient) -> None:
    alice_keys = {alice.create_key().key_id for _ in range(3)}
    bob_key = bob.create_key().key_id
    listed_by_bob = {key.key_id for key in bob.iter_keys()}
    assert bob_key in listed_by_bob
    assert not listed_by_bob & alice_keys
    assert all(key.tenant == TENANT_B for key in bob.iter_keys())


def _raw_stub(daemon: DaemonProcess, cert: bytes | None, key: bytes | None) -> object:
    credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
    channel = grpc.secure_channel(daemon.endpoint, credentials)
    return service_pb2_grpc.KeyManagementServiceStub(channel)


def test_a_connection_without_a_client_certificate_fails(daemon: DaemonProcess) -> None:
    stub = _raw_stub(daemon, None, None)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GenerateRandom(service_pb2.GenerateRandomRequest(number_of_bytes=8), timeout=10)  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_from_another_ca_fails(daemon: DaemonProcess) -> None:
    other_ca = devpki.create_ca("not our CA", datetime.now(UTC))
    cert = daemon.pki.client(
        "mallory", [devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "mallory")], ca=other_ca
    )
    with daemon.connect(cert) as client, pytest.raises(UnavailableError):
        client.generate_random(8)


def test_an_expired_certificate_fails(daemon: DaemonProcess) -> None:
    cert = daemon.pki.client(
        "late",
        [devpki.tenant_uri(TRUST_DOMAIN, TENANT_A, "late")],
        not_after=datetime.now(UTC) - timedelta(hours=1),
    )
    with daemon.connect(cert) as client, pytest.raises(UnavailableError):
        client.generate_random(8)


@pytest.mark.parametrize(
    "uris",
    [
        [],
        ["https://hsmd.test/tenant/alpha/x"],
        [f"spiffe://other.domain/tenant/{TENANT_A}/x"],
        [f"spiffe://{TRUST_DOMAIN}/tenant/{TENANT_A}"],
        [
            f"spiffe://{TRUST_DOMAIN}/tenant/{TENANT_A}/x",
            f"spiffe://{TRUST_DOMAIN}/tenant/{TENANT_B}/y",
        ],
    ],
    ids=["no-uri", "not-spiffe", "other-trust-domain", "no-principal", "two-identities"],
)
def test_a_certificate_without_exactly_one_tenant_identity_is_refused(
    daemon: DaemonProcess, uris: list[str]
) -> None:
    with daemon.connect(daemon.pki.client("nobody", uris)) as client:
        with pytest.raises(UnauthenticatedError):
            client.generate_random(8)


def test_a_tenant_the_daemon_does_not_serve_is_refused(daemon: DaemonProcess) -> None:
    with daemon.client("gamma") as client, pytest.raises(PermissionDeniedError):
        client.generate_random(8)


def test_an_operator_certificate_cannot_use_keys(daemon: DaemonProcess, alice: HsmClient) -> None:
    key_id = alice.create_key().key_id
    with daemon.connect(daemon.pki.operator_client()) as operator:
        with pytest.raises(PermissionDeniedError):
            operator.encrypt(key_id, b"x")


def test_a_tenant_principal_cannot_administer(daemon: DaemonProcess) -> None:
    from hsmclient import AdminClient

    with daemon.connect(daemon.pki.tenant_client(TENANT_A, "alice"), AdminClient) as admin:
        with pytest.raises(PermissionDeniedError):
            admin.create_tenant("sneaky")


def test_a_tenant_created_at_runtime_is_served_at_once(daemon: DaemonProcess) -> None:
    daemon.create_tenant("delta")
    with daemon.client("delta") as client:
        key_id = client.create_key().key_id
        blob = client.encrypt(key_id, b"new tenant").ciphertext_blob
        assert client.decrypt(blob).plaintext == b"new tenant"
    with daemon.admin() as admin:
        assert "delta" in {tenant.name for tenant in admin.list_tenants()}


def test_another_tenants_asymmetric_and_mac_keys_look_missing(
    alice: HsmClient, bob: HsmClient
) -> None:
    signing = alice.create_key(key_spec="EC_P256").key_id
    mac = alice.create_key(key_spec="HMAC_256").key_id
    aes = alice.create_key().key_id
    own = bob.create_key().key_id
    signature = alice.sign(signing, b"m", "ECDSA_SHA_256").signature
    tag = alice.generate_mac(mac, b"m", "HMAC_SHA_256").mac
    blob = alice.encrypt(aes, b"alpha").ciphertext_blob
    missing = str(uuid.uuid4())
    for use in (
        lambda k: bob.sign(k, b"m", "ECDSA_SHA_256"),
        lambda k: bob.verify(k, b"m", signature, "ECDSA_SHA_256"),
        bob.get_public_key,
        lambda k: bob.generate_mac(k, b"m", "HMAC_SHA_256"),
        lambda k: bob.verify_mac(k, b"m", tag, "HMAC_SHA_256"),
        lambda k: bob.generate_data_key_pair(k, "EC_P256"),
        lambda k: bob.generate_data_key_pair_without_plaintext(k, "EC_P256"),
        lambda k: bob.re_encrypt(blob, k),
    ):
        for key_id in (signing, mac, aes):
            foreign, absent = _error(partial(use, key_id)), _error(partial(use, missing))
            assert type(foreign) is type(absent)
            if isinstance(foreign, NotFoundError):
                assert foreign.message.replace(key_id, "K") == absent.message.replace(missing, "K")
    # ReEncrypt can neither read alpha's blob nor write under alpha's key.
    opaque = _error(lambda: bob.decrypt(blob))
    assert isinstance(_error(lambda: bob.re_encrypt(blob, own)), type(opaque))
    own_blob = bob.encrypt(own, b"beta").ciphertext_blob
    assert isinstance(_error(lambda: bob.re_encrypt(own_blob, aes)), NotFoundError)
