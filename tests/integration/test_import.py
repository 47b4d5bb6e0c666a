"""Bring your own key through the real daemon: known material in, known answers out, and every
bad token or wrapped material refused with nothing changed."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hsmclient import HsmClient, InvalidArgumentError, UnimplementedError
from hsmclient.keyimport import wrap_for_import

from tests.harness import DaemonProcess
from tests.stubs import open_locally, seal_locally

TENANT = "byok"
CONTEXT = {"purpose": "byok"}


@pytest.fixture
def setup(new_daemon: Callable[..., DaemonProcess]) -> tuple[DaemonProcess, HsmClient]:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    return daemon, daemon.client(TENANT)


def _import(
    client: HsmClient,
    spec: str,
    material: bytes,
    algorithm: str = "RSA_AES_KEY_WRAP_SHA_1",
    **create: object,
) -> str:
    key_id = client.create_key(key_spec=spec, origin="EXTERNAL", **create).key_id  # type: ignore[arg-type]
    assert client.describe_key(key_id).key_state == "PENDING_IMPORT"
    parameters = client.get_parameters_for_import(key_id, algorithm)
    wrapped = wrap_for_import(material, parameters.public_key, algorithm)
    imported = client.import_key_material(key_id, parameters.import_token, wrapped)
    assert (imported.key_state, imported.origin) == ("ENABLED", "EXTERNAL")
    return key_id


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSA_AES_KEY_WRAP_SHA_1"])
def test_an_imported_aes_key_interoperates_with_pyca_both_ways(
    setup: tuple[DaemonProcess, HsmClient], algorithm: str
) -> None:
    _, client = setup
    material = os.urandom(32)
    key_id = _import(client, "AES_256", material, algorithm)
    blob = client.encrypt(key_id, b"from the daemon", CONTEXT).ciphertext_blob
    assert open_locally(TENANT, blob, material, CONTEXT) == b"from the daemon"
    local = seal_locally(TENANT, key_id, material, b"from pyca", CONTEXT)
    assert client.decrypt(local, CONTEXT).plaintext == b"from pyca"


def test_imported_hmac_keys_give_pythons_macs(setup: tuple[DaemonProcess, HsmClient]) -> None:
    _, client = setup
    for spec, algorithm, size, digest in (
        ("HMAC_224", "HMAC_SHA_224", 28, hashlib.sha224),
        ("HMAC_512", "HMAC_SHA_512", 64, hashlib.sha512),
    ):
        material = os.urandom(size)
        key_id = _import(client, spec, material, "RSAES_OAEP_SHA_1")
        mac = client.generate_mac(key_id, b"message", algorithm).mac
        assert mac == hmac.new(material, b"message", digest).digest()


def test_imported_private_keys_sign_under_their_known_public_keys(
    setup: tuple[DaemonProcess, HsmClient],
) -> None:
    _, client = setup
    ec_private = ec.generate_private_key(ec.SECP256R1())
    rsa_private = rsa.generate_private_key(65537, 2048)
    for spec, private, algorithm in (
        ("EC_P256", ec_private, "ECDSA_SHA_256"),
        ("RSA_2048", rsa_private, "RSASSA_PSS_SHA_256"),
    ):
        pkcs8 = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_id = client.create_key(key_spec=spec, key_usage="SIGN_VERIFY", origin="EXTERNAL").key_id
        client.import_key(key_id, pkcs8, spec)
        signature = client.sign(key_id, b"signed by an imported key", algorithm).signature
        public = private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, b"signed by an imported key", ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(
                signature,
                b"signed by an imported key",
                padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                hashes.SHA256(),
            )
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert client.get_public_key(key_id).public_key == spki


def test_bad_tokens_and_material_are_refused_and_change_nothing(
    setup: tuple[DaemonProcess, HsmClient],
) -> None:
    daemon, client = setup
    key_id = client.create_key(origin="EXTERNAL").key_id
    other = client.create_key(origin="EXTERNAL").key_id
    algorithm = "RSA_AES_KEY_WRAP_SHA_1"
    parameters = client.get_parameters_for_import(key_id, algorithm)
    other_parameters = client.get_parameters_for_import(other, algorithm)
    material = os.urandom(32)
    good = wrap_for_import(material, parameters.public_key, algorithm)
    objects_before = len(daemon.token_objects(TENANT))
    flipped = bytearray(good)
    flipped[-3] ^= 1
    attempts = [
        (other_parameters.import_token, good, "another key"),  # a token for another key
        (
            parameters.import_token,
            wrap_for_import(material, other_parameters.public_key, algorithm),
            "unwrap",
        ),
        (parameters.import_token, good[:-8], "unwrap"),
        (parameters.import_token, good[:100], "unwrap"),
        (parameters.import_token, bytes(flipped), "unwrap"),
        (
            parameters.import_token,
            wrap_for_import(os.urandom(16), parameters.public_key, algorithm),
            "unwrap",
        ),
        (b"not-a-token", good, "import_token"),
    ]
    for token, wrapped, why in attempts:
        with pytest.raises(InvalidArgumentError, match=why):
            client.import_key_material(key_id, token, wrapped)
        assert client.describe_key(key_id).key_state == "PENDING_IMPORT"
    assert len(daemon.token_objects(TENANT)) == objects_before
    daemon.advance_clock(timedelta(hours=25))
    with pytest.raises(InvalidArgumentError, match="expired"):
        client.import_key_material(key_id, parameters.import_token, good)
    fresh = client.get_parameters_for_import(key_id, algorithm)
    client.import_key_material(
        key_id, fresh.import_token, wrap_for_import(material, fresh.public_key, algorithm)
    )
    assert client.describe_key(key_id).key_state == "ENABLED"


def test_reimport_takes_only_the_same_material_and_material_expires(
    setup: tuple[DaemonProcess, HsmClient],
) -> None:
    daemon, client = setup
    material = os.urandom(32)
    key_id = _import(client, "AES_256", material)
    blob = client.encrypt(key_id, b"kept", CONTEXT).ciphertext_blob
    assert client.delete_imported_key_material(key_id).key_state == "PENDING_IMPORT"
    parameters = client.get_parameters_for_import(key_id, "RSAES_OAEP_SHA_1")
    with pytest.raises(InvalidArgumentError, match="unwrap"):
        client.import_key_material(
            key_id,
            parameters.import_token,
            wrap_for_import(os.urandom(32), parameters.public_key, "RSAES_OAEP_SHA_1"),
        )
    valid_to = datetime.now(UTC) + timedelta(days=2)
    client.import_key_material(
        key_id,
        parameters.import_token,
        wrap_for_import(material, parameters.public_key, "RSAES_OAEP_SHA_1"),
        valid_to=valid_to,
    )
    assert client.decrypt(blob, CONTEXT).plaintext == b"kept"  # same material, same blobs
    assert client.describe_key(key_id).valid_to is not None
    daemon.advance_clock(timedelta(days=3))
    daemon.wait_for(lambda: client.describe_key(key_id).key_state == "PENDING_IMPORT")
    with pytest.raises(Exception, match="PENDING_IMPORT"):
        client.decrypt(blob, CONTEXT)


def test_import_rules(setup: tuple[DaemonProcess, HsmClient]) -> None:
    _, client = setup
    generated = client.create_key().key_id
    with pytest.raises(Exception, match="GetParametersForImport"):
        client.get_parameters_for_import(generated, "RSAES_OAEP_SHA_1")
    external = client.create_key(origin="EXTERNAL").key_id
    with pytest.raises(UnimplementedError):
        parameters = client.get_parameters_for_import(external, "RSAES_OAEP_SHA_256")
        client.import_key_material(
            external,
            parameters.import_token,
            wrap_for_import(os.urandom(32), parameters.public_key, "RSAES_OAEP_SHA_256"),
        )
    with pytest.raises(Exception, match="RotateKeyOnDemand"):
        client.rotate_key_on_demand(_import(client, "AES_256", os.urandom(32)))
    ec_key = client.create_key(key_spec="EC_P256", origin="EXTERNAL").key_id
    parameters = client.get_parameters_for_import(ec_key, "RSA_AES_KEY_WRAP_SHA_1")
    private = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stranger = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidArgumentError, match=r"public_key|unwrap"):
        client.import_key_material(
            ec_key,
            parameters.import_token,
            wrap_for_import(pkcs8, parameters.public_key, "RSA_AES_KEY_WRAP_SHA_1"),
            public_key=stranger,
        )
    assert client.describe_key(ec_key).key_state == "PENDING_IMPORT"


def test_an_imported_rsa_decryption_key_decrypts_what_its_public_key_encrypts(
    setup: tuple[DaemonProcess, HsmClient],
) -> None:
    _, client = setup
    private = rsa.generate_private_key(65537, 2048)
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_id = client.create_key(
        key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT", origin="EXTERNAL"
    ).key_id
    client.import_key(key_id, pkcs8, "RSA_2048")
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
    blob = private.public_key().encrypt(b"for the imported key", oaep)
    opened = client.decrypt(blob, key_id=key_id, encryption_algorithm="RSAES_OAEP_SHA_1")
    assert opened.plaintext == b"for the imported key"


def test_creation_and_cancellation_rules_for_imported_keys(
    setup: tuple[DaemonProcess, HsmClient],
) -> None:
    _, client = setup
    with pytest.raises(InvalidArgumentError, match="UnwrapKey"):
        client.create_key(origin="UNWRAPPED")
    with pytest.raises(InvalidArgumentError, match="cannot be imported"):
        client.create_key(key_spec="ED25519", origin="EXTERNAL")
    key_id = client.create_key(origin="EXTERNAL").key_id
    client.schedule_key_deletion(key_id, 7)
    assert client.cancel_key_deletion(key_id).key_state == "PENDING_IMPORT"
