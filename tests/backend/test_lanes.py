"""The backend's lanes against a real SoftHSM2: many threads over several tenants creating,
using and destroying keys at once, a tenant created meanwhile, and cross-session handles."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable

from pkcs11 import KeyType, ObjectClass

from hsmd.backend.lanes import Lane
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.domain import KeySpec, KeyUsage, MacAlgorithm, SigningAlgorithm

TENANTS = 3
THREADS_PER_TENANT = 3
ROUNDS = 12


def _new_tenant(backend: Pkcs11Backend) -> str:
    name = "lanes" + secrets.token_hex(5)
    backend.attach_token(name, backend.ensure_token(name))
    return name


def _round(backend: Pkcs11Backend, tenant: str, rsa_id: bytes, step: int) -> None:
    """One round of every kind of work: each result is checked, each new key destroyed."""
    aes, ec, mac = (secrets.token_bytes(16) for _ in range(3))
    backend.generate_key(tenant, aes, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    backend.generate_key(tenant, ec, KeySpec.EC_P256, KeyUsage.SIGN_VERIFY)
    backend.generate_key(tenant, mac, KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC)
    plaintext = secrets.token_bytes(1 + step * 64)
    for _ in range(5):
        iv, sealed = backend.encrypt(tenant, aes, plaintext, tenant.encode())
        assert backend.decrypt(tenant, aes, iv, sealed, tenant.encode()) == plaintext
    digest = hashlib.sha256(plaintext).digest()
    for object_id, spec, algorithm in (
        (ec, KeySpec.EC_P256, SigningAlgorithm.ECDSA_SHA_256),
        (rsa_id, KeySpec.RSA_2048, SigningAlgorithm.RSASSA_PSS_SHA_256),
    ):
        signature = backend.sign(tenant, object_id, spec, algorithm, digest)
        assert backend.verify(tenant, object_id, spec, algorithm, digest, signature)
        assert not backend.verify(tenant, object_id, spec, algorithm, digest[::-1], signature)
    tag = backend.mac(tenant, mac, MacAlgorithm.HMAC_SHA_256, plaintext)
    assert tag == backend.mac(tenant, mac, MacAlgorithm.HMAC_SHA_256, plaintext)
    for object_id in (aes, ec, mac):
        backend.destroy(tenant, object_id)
    assert not backend.has_objects(tenant, [aes])


def _run_all(work: list[Callable[[], None]]) -> list[BaseException]:
    failures: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_threads_over_several_tenants_create_use_and_destroy_keys(
    backend: Pkcs11Backend,
) -> None:
    """DESIGN §9: with the library's locking on, no crash and every result right, while the
    work of three tenants runs in parallel lanes and a fourth tenant is created."""
    tenants = [_new_tenant(backend) for _ in range(TENANTS)]
    rsa_ids = {tenant: secrets.token_bytes(16) for tenant in tenants}
    for tenant, rsa_id in rsa_ids.items():
        backend.generate_key(tenant, rsa_id, KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY)
    created: dict[str, bytes] = {}

    def worker(tenant: str) -> Callable[[], None]:
        def job() -> None:
            for step in range(ROUNDS):
                _round(backend, tenant, rsa_ids[tenant], step)

        return job

    def create_tenant() -> None:
        tenant = _new_tenant(backend)
        rsa_id = _rsa_key(backend, tenant)
        _round(backend, tenant, rsa_id, 0)
        created[tenant] = rsa_id

    failures = _run_all(
        [worker(t) for t in tenants for _ in range(THREADS_PER_TENANT)] + [create_tenant]
    )
    assert failures == []
    assert len(created) == 1
    for tenant, rsa_id in {**rsa_ids, **created}.items():
        assert backend.objects(tenant).ids == {rsa_id}  # every other key was destroyed


def _rsa_key(backend: Pkcs11Backend, tenant: str) -> bytes:
    object_id = secrets.token_bytes(16)
    backend.generate_key(tenant, object_id, KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY)
    return object_id


def test_a_key_made_in_one_lane_is_used_in_the_other_by_its_handle(
    backend: Pkcs11Backend,
) -> None:
    """Keys are made in the SLOW lane and used from the FAST one: one handle, rebound to the
    session that uses it, no search."""
    tenant = _new_tenant(backend)
    object_id = secrets.token_bytes(16)
    backend.generate_key(tenant, object_id, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    iv, sealed = backend.encrypt(tenant, object_id, b"data", b"")
    assert backend.decrypt(tenant, object_id, iv, sealed, b"") == b"data"
    token = backend._tokens.token(tenant)
    assert token.lanes[Lane.SLOW].opened == 1
    assert token.lanes[Lane.FAST].opened == 1
    with (
        backend._tokens.lease(tenant, Lane.FAST) as fast,
        backend._tokens.lease(tenant, Lane.SLOW) as slow,
    ):
        assert fast.session is not slow.session
        in_fast = fast.object(object_id, ObjectClass.SECRET_KEY)
        in_slow = slow.object(object_id, ObjectClass.SECRET_KEY)
        assert (in_fast.session, in_slow.session) == (fast.session, slow.session)
        assert in_fast.handle == in_slow.handle


def test_detach_waits_for_the_calls_in_progress(backend: Pkcs11Backend) -> None:
    """Sessions are closed only once no thread uses them (a call on a closed session fails)."""
    tenant = _new_tenant(backend)
    object_id = secrets.token_bytes(16)
    backend.generate_key(tenant, object_id, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    with backend._tokens.lease(tenant, Lane.FAST) as lease:
        detaching = threading.Thread(target=backend.detach_token, args=(tenant,))
        detaching.start()
        detaching.join(0.05)
        assert detaching.is_alive()  # it waits for this lease
        assert tenant not in backend._tokens.attached()  # no new call gets in meanwhile
        assert lease.object(object_id, ObjectClass.SECRET_KEY).key_type is KeyType.AES
    detaching.join(10.0)
    assert not detaching.is_alive()
