"""The PKCS#11 backend against a real SoftHSM2 token."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import pkcs11
import pytest
from pkcs11 import ObjectClass

from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.domain import KeySpec, KeyUsage
from hsmd.errors import BackendError, BackendUnavailable, DecryptionFailed


def _new_key(backend: Pkcs11Backend, tenant: str) -> bytes:
    object_id = secrets.token_bytes(16)
    backend.generate_key(tenant, object_id, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    return object_id


def test_ensure_token_is_idempotent(backend: Pkcs11Backend, tenant: str) -> None:
    serial = backend.ensure_token(tenant)
    assert backend.ensure_token(tenant) == serial
    backend.attach_token(tenant, serial)


def test_attach_refuses_a_token_with_another_serial(backend: Pkcs11Backend, tenant: str) -> None:
    backend.ensure_token("other" + tenant[1:])
    with pytest.raises(BackendUnavailable):
        backend.attach_token("other" + tenant[1:], "0000000000000000")


def test_aes_gcm_round_trip_and_tamper(backend: Pkcs11Backend, tenant: str) -> None:
    object_id = _new_key(backend, tenant)
    iv, sealed = backend.encrypt(tenant, object_id, b"plaintext", b"aad")
    assert len(iv) == 12 and len(sealed) == len(b"plaintext") + 16
    assert backend.decrypt(tenant, object_id, iv, sealed, b"aad") == b"plaintext"
    for bad_iv, bad_sealed, bad_aad in [
        (iv, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad"),
        (iv, sealed, b"aaX"),
        (bytes(12), sealed, b"aad"),
        (iv[:8], sealed, b"aad"),
        (iv, sealed[:16], b"aad"),
    ]:
        with pytest.raises(DecryptionFailed):
            backend.decrypt(tenant, object_id, bad_iv, bad_sealed, bad_aad)
    # A failed decryption leaves the session usable.
    assert backend.decrypt(tenant, object_id, iv, sealed, b"aad") == b"plaintext"


def test_one_tenants_object_is_not_reachable_from_another(backend: Pkcs11Backend) -> None:
    names = ["iso" + secrets.token_hex(4) for _ in range(2)]
    for name in names:
        backend.attach_token(name, backend.ensure_token(name))
    object_id = _new_key(backend, names[0])
    assert object_id in backend.objects(names[0]).ids
    assert object_id not in backend.objects(names[1]).ids
    with pytest.raises(BackendError):
        backend.encrypt(names[1], object_id, b"x", b"")


def test_destroy_and_objects(backend: Pkcs11Backend, tenant: str) -> None:
    kept, gone = _new_key(backend, tenant), _new_key(backend, tenant)
    assert backend.objects(tenant).ids == {kept, gone}
    backend.destroy(tenant, gone)
    backend.destroy(tenant, gone)
    assert backend.objects(tenant).ids == {kept}
    with pytest.raises(BackendError):
        backend.encrypt(tenant, gone, b"x", b"")


def test_lookups_come_from_the_handle_cache(
    backend: Pkcs11Backend, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first use, using a key never searches the token (C_FindObjects is linear),
    whichever session of the token runs the call."""
    object_ids = [_new_key(backend, tenant) for _ in range(50)]
    searches = []
    search = pkcs11.types.Session.get_key

    def counting(session: Any, *args: Any, **kwargs: Any) -> Any:
        searches.append(kwargs)
        return search(session, *args, **kwargs)

    monkeypatch.setattr(pkcs11.types.Session, "get_key", counting)
    for object_id in object_ids * 3:
        backend.encrypt(tenant, object_id, b"x", b"")
    assert searches == []
    token = backend._tokens.token(tenant)
    token.objects.clear()
    backend.encrypt(tenant, object_ids[0], b"x", b"")  # the cache refills after a miss
    assert len(searches) == 1
    assert (object_ids[0], ObjectClass.SECRET_KEY) in token.objects


def test_random_bytes(backend: Pkcs11Backend, tenant: str) -> None:
    assert len(backend.generate_random(tenant, 1024)) == 1024
    assert backend.generate_random(tenant, 16) != backend.generate_random(tenant, 16)


def test_an_unknown_tenant_is_unavailable(backend: Pkcs11Backend) -> None:
    with pytest.raises(BackendUnavailable):
        backend.generate_random("never-created", 8)


def test_many_threads_creating_using_and_destroying_keys_do_not_crash(
    backend: Pkcs11Backend, tenant: str
) -> None:
    """DESIGN §9: unserialised, two threads creating or destroying keys crash SoftHSM2."""
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                object_id = _new_key(backend, tenant)
                iv, sealed = backend.encrypt(tenant, object_id, b"data", b"")
                assert backend.decrypt(tenant, object_id, iv, sealed, b"") == b"data"
                backend.destroy(tenant, object_id)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert backend.objects(tenant).ids == frozenset()
