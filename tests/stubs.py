"""Raw generated stubs and known-material helpers for integration tests.

Tests that must send what the client library would refuse, or check the daemon's formats
against a third-party implementation (pyca/cryptography) with key material the test knows,
share these instead of each writing its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsmd import ciphertext
from hsmd.v1 import resources_pb2 as res
from hsmd.v1 import service_pb2 as svc
from hsmd.v1.service_pb2_grpc import KeyManagementServiceStub
from tests.harness import DaemonProcess


def channel(daemon: DaemonProcess, cert_and_key: tuple[bytes, bytes]) -> grpc.Channel:
    """An mTLS channel to the daemon with this certificate, without the client library."""
    cert, key = cert_and_key
    credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
    return grpc.secure_channel(daemon.endpoint, credentials)


def import_request(
    stub: KeyManagementServiceStub, key_id: str, material: bytes
) -> svc.ImportKeyMaterialRequest:
    """Fresh import parameters for the key, and `material` wrapped as RSAES_OAEP_SHA_1."""
    parameters = stub.GetParametersForImport(
        svc.GetParametersForImportRequest(
            key_id=key_id, wrapping_algorithm=res.WRAP_RSAES_OAEP_SHA_1
        )
    )
    public_key = serialization.load_der_public_key(parameters.public_key)
    assert isinstance(public_key, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return svc.ImportKeyMaterialRequest(
        key_id=key_id,
        import_token=parameters.import_token,
        encrypted_key_material=public_key.encrypt(material, oaep),
    )


def import_key(
    stub: KeyManagementServiceStub,
    material: bytes,
    spec: res.KeySpec.ValueType = res.AES_256,
    usage: res.KeyUsage.ValueType = res.WRAP_UNWRAP,
    *,
    exportable: bool = False,
) -> res.KeyMetadata:
    """A key of origin EXTERNAL holding `material` (imported with RSAES_OAEP_SHA_1)."""
    created = stub.CreateKey(
        svc.CreateKeyRequest(
            key_spec=spec, key_usage=usage, origin=res.EXTERNAL, exportable=exportable
        )
    ).key_metadata
    assert created.key_state == res.PENDING_IMPORT
    imported = stub.ImportKeyMaterial(import_request(stub, created.key_id, material)).key_metadata
    assert (imported.key_state, imported.origin) == (res.ENABLED, res.EXTERNAL)
    assert imported.exportable == exportable
    return imported


def key_ids(stub: KeyManagementServiceStub) -> set[str]:
    """Every key id ListKeys shows the caller, across pages."""
    ids: set[str] = set()
    token = ""
    while True:
        page = stub.ListKeys(svc.ListKeysRequest(page_size=1000, page_token=token))
        ids |= {key.key_id for key in page.keys}
        token = page.next_page_token
        if not token:
            return ids


def seal_locally(
    tenant: str, key_id: str, material: bytes, plaintext: bytes, context: Mapping[str, str]
) -> bytes:
    """A ciphertext blob of docs/formats.md, made here with the key's known material."""
    header = ciphertext.encode_header(key_id, 1)
    iv = os.urandom(ciphertext.IV_SIZE)
    sealed = AESGCM(material).encrypt(iv, plaintext, ciphertext.aad(tenant, header, context))
    return ciphertext.assemble(header, iv, sealed)


def open_locally(tenant: str, blob: bytes, material: bytes, context: Mapping[str, str]) -> bytes:
    """Decrypts a daemon's blob here with the key's known material."""
    parsed = ciphertext.parse(blob)
    aad = ciphertext.aad(tenant, parsed.header, context)
    return AESGCM(material).decrypt(parsed.iv, parsed.ciphertext_and_tag, aad)
