"""Encrypt, Decrypt and ReEncrypt.

AES keys use the self-describing blob of hsmd.ciphertext with the encryption context bound as
AAD; every failure to decrypt one (tampering, truncation, wrong context, another key's or
another tenant's blob) is the one opaque DecryptionFailed. RSA keys of usage ENCRYPT_DECRYPT
use RSAES-OAEP: the ciphertext is the raw OAEP output, takes no context, and names no key, so
Decrypt needs the key id (as in AWS KMS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hsmd import ciphertext, keyspecs
from hsmd.backend.api import CryptoBackend
from hsmd.domain import EncryptionAlgorithm, Key, KeySpec, RequestContext
from hsmd.errors import DecryptionFailed, InvalidArgument, NotFound
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.resolve import resolve_key_id, usable_key

SYMMETRIC = EncryptionAlgorithm.SYMMETRIC_DEFAULT


@dataclass(frozen=True)
class Sealed:
    ciphertext_blob: bytes
    key_id: str
    key_version: int
    algorithm: EncryptionAlgorithm = SYMMETRIC


@dataclass(frozen=True)
class Opened:
    plaintext: bytes
    key_id: str
    key_version: int
    algorithm: EncryptionAlgorithm = SYMMETRIC


@dataclass(frozen=True)
class Resealed:
    source: Opened
    destination: Sealed


class CryptoOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend) -> None:
        self._store = store
        self._backend = backend

    def encrypt(
        self,
        ctx: RequestContext,
        key_id: str,
        plaintext: bytes,
        context: Mapping[str, str],
        algorithm: EncryptionAlgorithm | None = None,
    ) -> Sealed:
        """Raises InvalidArgument for a plaintext out of range or an algorithm that does not fit."""
        if not 1 <= len(plaintext) <= ciphertext.MAX_PLAINTEXT:
            raise InvalidArgument(
                f"plaintext must be 1 to {ciphertext.MAX_PLAINTEXT} bytes, got {len(plaintext)};"
                " encrypt larger data with a data key (envelope encryption)"
            )
        key = usable_key(self._store, ctx, key_id, Operation.ENCRYPT)
        algorithm = algorithm or SYMMETRIC
        keyspecs.check_encryption_algorithm(key, algorithm)
        if algorithm is SYMMETRIC:
            return self.seal(key, plaintext, context)
        _refuse_context(context)
        limit = keyspecs.oaep_max_plaintext(key.spec, algorithm)
        if len(plaintext) > limit:
            raise InvalidArgument(
                f"{algorithm} with {key.spec} takes at most {limit} bytes, got {len(plaintext)}"
            )
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        blob = self._backend.rsa_encrypt(key.tenant, version.object_id, algorithm, plaintext)
        return Sealed(blob, key.key_id, version.version, algorithm)

    def seal(self, key: Key, plaintext: bytes, context: Mapping[str, str]) -> Sealed:
        """Encrypts under the key's primary version; the caller has checked the key is usable."""
        ciphertext.validate_context(context)
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        header = ciphertext.encode_header(key.key_id, version.version)
        aad = ciphertext.aad(key.tenant, header, context)
        iv, sealed = self._backend.encrypt(key.tenant, version.object_id, plaintext, aad)
        return Sealed(ciphertext.assemble(header, iv, sealed), key.key_id, version.version)

    def decrypt(
        self,
        ctx: RequestContext,
        blob: bytes,
        context: Mapping[str, str],
        expected_key_id: str = "",
        algorithm: EncryptionAlgorithm | None = None,
    ) -> Opened:
        """Raises DecryptionFailed for any blob that is not ours for this key and context.

        A blob naming a key the caller's tenant does not have fails the same way, so another
        tenant's ciphertext tells nothing. A key that exists but is not ENABLED is
        FailedPrecondition: its existence is the caller's own knowledge.
        """
        algorithm = algorithm or SYMMETRIC
        if algorithm is not SYMMETRIC:
            return self._decrypt_rsa(ctx, blob, context, expected_key_id, algorithm)
        ciphertext.validate_context(context)
        parsed = ciphertext.parse(blob)
        try:
            expected = expected_key_id and resolve_key_id(self._store, ctx.tenant, expected_key_id)
            if expected and expected != parsed.key_id:
                raise DecryptionFailed()
            if self._store.get_key(ctx.tenant, parsed.key_id).spec is not KeySpec.AES_256:
                raise DecryptionFailed()  # a blob naming a key that never makes blobs
            key = usable_key(self._store, ctx, parsed.key_id, Operation.DECRYPT)
            version = self._store.get_version(ctx.tenant, key.key_id, parsed.version)
        except (NotFound, InvalidArgument):  # e.g. a malformed alias in key_id
            raise DecryptionFailed() from None
        aad = ciphertext.aad(ctx.tenant, parsed.header, context)
        plaintext = self._backend.decrypt(
            ctx.tenant, version.object_id, parsed.iv, parsed.ciphertext_and_tag, aad
        )
        return Opened(plaintext, key.key_id, version.version)

    def _decrypt_rsa(
        self,
        ctx: RequestContext,
        blob: bytes,
        context: Mapping[str, str],
        key_id: str,
        algorithm: EncryptionAlgorithm,
    ) -> Opened:
        if not key_id:
            raise InvalidArgument(f"key_id is required to decrypt with {algorithm}")
        _refuse_context(context)
        key = usable_key(self._store, ctx, key_id, Operation.DECRYPT)
        keyspecs.check_encryption_algorithm(key, algorithm)
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        plaintext = self._backend.rsa_decrypt(key.tenant, version.object_id, algorithm, blob)
        return Opened(plaintext, key.key_id, version.version, algorithm)

    def re_encrypt(
        self,
        ctx: RequestContext,
        blob: bytes,
        source_context: Mapping[str, str],
        source_key_id: str,
        source_algorithm: EncryptionAlgorithm | None,
        destination_key_id: str,
        destination_context: Mapping[str, str],
        destination_algorithm: EncryptionAlgorithm | None,
    ) -> Resealed:
        """Decrypts and encrypts again inside the daemon: the plaintext never leaves it."""
        if not destination_key_id:
            raise InvalidArgument("destination_key_id is required")
        opened = self.decrypt(ctx, blob, source_context, source_key_id, source_algorithm)
        sealed = self.encrypt(
            ctx, destination_key_id, opened.plaintext, destination_context, destination_algorithm
        )
        return Resealed(opened, sealed)


def _refuse_context(context: Mapping[str, str]) -> None:
    if context:
        raise InvalidArgument("RSA encryption takes no encryption context")
