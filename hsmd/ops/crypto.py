"""Encrypt and Decrypt under a symmetric key, with the encryption context bound as AAD.

The blob format and the AAD live in hsmd.ciphertext. Every decryption failure, whatever its
cause (tampering, truncation, wrong context, another key's or another tenant's blob), is the
one opaque DecryptionFailed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hsmd import ciphertext
from hsmd.backend.api import CryptoBackend
from hsmd.domain import Key, RequestContext
from hsmd.errors import DecryptionFailed, InvalidArgument, NotFound
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.names import parse_key_id
from hsmd.ops.resolve import usable_key


@dataclass(frozen=True)
class Sealed:
    ciphertext_blob: bytes
    key_id: str
    key_version: int


@dataclass(frozen=True)
class Opened:
    plaintext: bytes
    key_id: str
    key_version: int


class CryptoOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend) -> None:
        self._store = store
        self._backend = backend

    def encrypt(
        self, ctx: RequestContext, key_id: str, plaintext: bytes, context: Mapping[str, str]
    ) -> Sealed:
        """Raises InvalidArgument unless the plaintext is 1-4,096 bytes."""
        if not 1 <= len(plaintext) <= ciphertext.MAX_PLAINTEXT:
            raise InvalidArgument(
                f"plaintext must be 1 to {ciphertext.MAX_PLAINTEXT} bytes, got {len(plaintext)};"
                " encrypt larger data with a data key (envelope encryption)"
            )
        key = usable_key(self._store, ctx, key_id, Operation.ENCRYPT)
        return self.seal(key, plaintext, context)

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
    ) -> Opened:
        """Raises DecryptionFailed for any blob that is not ours for this key and context.

        A blob naming a key the caller's tenant does not have fails the same way, so another
        tenant's ciphertext tells nothing. A key that exists but is not ENABLED is
        FailedPrecondition: its existence is the caller's own knowledge.
        """
        ciphertext.validate_context(context)
        parsed = ciphertext.parse(blob)
        try:
            if expected_key_id and parse_key_id(expected_key_id) != parsed.key_id:
                raise DecryptionFailed()
            key = usable_key(self._store, ctx, parsed.key_id, Operation.DECRYPT)
            version = self._store.get_version(ctx.tenant, key.key_id, parsed.version)
        except NotFound:
            raise DecryptionFailed() from None
        aad = ciphertext.aad(ctx.tenant, parsed.header, context)
        plaintext = self._backend.decrypt(
            ctx.tenant, version.object_id, parsed.iv, parsed.ciphertext_and_tag, aad
        )
        return Opened(plaintext, key.key_id, version.version)
