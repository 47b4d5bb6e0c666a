"""Multi-region key material moves token to token, and what SoftHSM2 2.6.1 enforces about it
(docs/security.md, "Multi-region keys": this file is the measurement, rerun with
`.venv/bin/pytest tests/backend/test_region_transfer.py`).

Two tenant tokens of one backend stand for two regions' tokens: the backend cannot tell.
"""

from __future__ import annotations

import secrets
import subprocess
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from hsmd.backend.api import UnwrapTarget
from hsmd.backend.lanes import Lane
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from hsmd.backend.regions import peer_object_id
from hsmd.domain import KeySpec, KeyUsage, SigningAlgorithm
from hsmd.errors import BackendError, UnwrapFailed

OAEP_SHA1 = (Mechanism.SHA_1, MGF.SHA1, None)


def _object_id() -> bytes:
    return secrets.token_bytes(16)


@pytest.fixture
def region_b(backend: Pkcs11Backend) -> str:
    """A second tenant token: region b's."""
    name = "b" + secrets.token_hex(6)
    backend.attach_token(name, backend.ensure_token(name))
    return name


def _sent_to_b(
    backend: Pkcs11Backend, tenant: str, region_b: str, spec: KeySpec, usage: KeyUsage
) -> tuple[bytes, bytes]:
    """A new replicable key of the tenant's (its CKA_ID), wrapped for region b's token."""
    key = _object_id()
    backend.generate_key(tenant, key, spec, usage, replicable=True)
    backend.trust_peer(tenant, "b", backend.transport_key(region_b))
    return key, backend.wrap_for_peer(tenant, "b", key, spec)


def _peer_key(backend: Pkcs11Backend, tenant: str, region: str) -> rsa.RSAPrivateKey:
    """An RSA key of the test's, whose public half the tenant's token trusts for `region`."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    backend.trust_peer(tenant, region, spki)
    return private


def test_an_aes_key_moves_to_the_other_token_and_encrypts_the_same(
    backend: Pkcs11Backend, tenant: str, region_b: str
) -> None:
    key, wrapped = _sent_to_b(backend, tenant, region_b, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    replica = _object_id()
    target = UnwrapTarget(replica, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT, replicable=True)
    backend.unwrap_from_peer(region_b, wrapped, target)
    iv, sealed = backend.encrypt(tenant, key, b"across", b"aad")
    assert backend.decrypt(region_b, replica, iv, sealed, b"aad") == b"across"
    check = backend.check_value(tenant, key, KeySpec.AES_256)
    assert backend.check_value(region_b, replica, KeySpec.AES_256) == check
    other = _object_id()
    backend.generate_key(tenant, other, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    assert backend.check_value(tenant, other, KeySpec.AES_256) != check


def test_an_ec_key_moves_and_signs_for_the_same_public_key(
    backend: Pkcs11Backend, tenant: str, region_b: str
) -> None:
    key, wrapped = _sent_to_b(backend, tenant, region_b, KeySpec.EC_P256, KeyUsage.SIGN_VERIFY)
    public = backend.public_key(tenant, key, KeySpec.EC_P256)
    replica = _object_id()
    backend.unwrap_from_peer(
        region_b,
        wrapped,
        UnwrapTarget(
            replica, KeySpec.EC_P256, KeyUsage.SIGN_VERIFY, public_key=public, replicable=True
        ),
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"signed in b")
    signature = backend.sign(
        region_b, replica, KeySpec.EC_P256, SigningAlgorithm.ECDSA_SHA_256, digest.finalize()
    )
    verifier = serialization.load_der_public_key(public)
    assert isinstance(verifier, ec.EllipticCurvePublicKey)
    verifier.verify(signature, b"signed in b", ec.ECDSA(hashes.SHA256()))


def test_material_wrapped_for_one_token_does_not_unwrap_in_another(
    backend: Pkcs11Backend, tenant: str, region_b: str
) -> None:
    _, wrapped = _sent_to_b(backend, tenant, region_b, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT)
    target = UnwrapTarget(_object_id(), KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT, replicable=True)
    with pytest.raises(UnwrapFailed):
        backend.unwrap_from_peer(tenant, wrapped, target)  # a has no transport key yet
    backend.transport_key(tenant)
    with pytest.raises(UnwrapFailed):
        backend.unwrap_from_peer(tenant, wrapped, target)  # a's own is not b's


def test_a_replicable_secret_key_wraps_under_no_key_but_a_trusted_one(
    backend: Pkcs11Backend, tenant: str
) -> None:
    key, wrapping = _object_id(), _object_id()
    backend.generate_key(tenant, key, KeySpec.AES_256, KeyUsage.ENCRYPT_DECRYPT, replicable=True)
    backend.generate_key(tenant, wrapping, KeySpec.AES_256, KeyUsage.WRAP_UNWRAP)
    with pytest.raises(BackendError, match="KeyNotWrappable"):
        backend.wrap(tenant, wrapping, key)  # an ordinary wrapping key: CKR_KEY_NOT_WRAPPABLE


def test_softhsm2_lets_only_the_so_trust_a_key(backend: Pkcs11Backend, tenant: str) -> None:
    """The user's session cannot set CKA_TRUSTED or clear CKA_WRAP_WITH_TRUSTED; the SO (the
    child process of trust_peer) can make a trusted RSA public key the user's sessions use."""
    key = _object_id()
    backend.generate_key(
        tenant, key, KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, replicable=True
    )
    private = _peer_key(backend, tenant, "probe")
    with backend._tokens.lease(tenant, Lane.SLOW) as lease:
        session = lease.session
        with pytest.raises(p11.AttributeReadOnly):
            session.generate_key(
                KeyType.AES, 256, template={Attribute.TOKEN: False, Attribute.TRUSTED: True}
            )
        modifiable = session.generate_key(
            KeyType.AES,
            256,
            template={
                Attribute.TOKEN: False,
                Attribute.EXTRACTABLE: True,
                Attribute.MODIFIABLE: True,
                Attribute.WRAP_WITH_TRUSTED: True,
            },
        )
        with pytest.raises(p11.AttributeReadOnly):  # even on a key that may change
            modifiable[Attribute.WRAP_WITH_TRUSTED] = False
        secret = lease.object(key, ObjectClass.SECRET_KEY)
        trusted = lease.object(peer_object_id("probe"), ObjectClass.PUBLIC_KEY)
        assert trusted[Attribute.TRUSTED] and not trusted[Attribute.PRIVATE]
        wrapped = trusted.wrap_key(
            secret, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP_SHA1
        )
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    assert len(private.decrypt(bytes(wrapped), oaep)) == 32  # the HMAC key, to the trusted key


def test_softhsm2_wraps_a_trusted_only_private_key_under_nothing(
    backend: Pkcs11Backend, tenant: str
) -> None:
    """Why an EC or RSA multi-region key is not CKA_WRAP_WITH_TRUSTED: RSA-OAEP wraps secret
    keys only, and no AES key can be trusted, so such a key could never be replicated."""
    _peer_key(backend, tenant, "probe")
    key = _object_id()
    with backend._tokens.lease(tenant, Lane.SLOW) as lease:
        session = lease.session
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")}, local=True
        )
        _, ec_private = params.generate_keypair(
            store=False,
            public_template={Attribute.VERIFY: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: True,
                Attribute.WRAP_WITH_TRUSTED: True,
                Attribute.ID: key,
            },
        )
        trusted = lease.object(peer_object_id("probe"), ObjectClass.PUBLIC_KEY)
        with pytest.raises(p11.KeyNotWrappable):
            trusted.wrap_key(
                ec_private, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP_SHA1
            )
        transfer = session.generate_key(
            KeyType.AES,
            256,
            template={Attribute.TOKEN: False, Attribute.EXTRACTABLE: True, Attribute.WRAP: True},
        )
        with pytest.raises(p11.KeyNotWrappable):
            transfer.wrap_key(ec_private, mechanism=Mechanism.AES_KEY_WRAP_PAD)


def test_the_so_login_happens_in_an_isolated_child_given_the_pin_on_stdin(
    backend: Pkcs11Backend, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing from the environment or the working directory is imported into the process
    that holds the SO PIN (python -I), and the PIN is on no command line."""
    real_run = subprocess.run
    calls: list[tuple[list[str], bytes]] = []

    def recording_run(argv: list[str], **options: Any) -> Any:
        calls.append((argv, options.get("input", b"")))
        return real_run(argv, **options)

    monkeypatch.setattr(subprocess, "run", recording_run)
    _peer_key(backend, tenant, "isolated")
    ((argv, stdin),) = calls
    assert argv[1:] == ["-I", "-m", "hsmd.backend.regions"]
    assert b"so_pin" in stdin and not any("pin" in part.lower() for part in argv)
