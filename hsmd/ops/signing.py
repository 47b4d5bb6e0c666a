"""Sign, Verify and GetPublicKey with asymmetric keys.

A RAW message (at most 4,096 bytes) is hashed here with the algorithm's hash, so the token only
ever signs a digest; a DIGEST must be exactly as long as that hash. Ed25519 signs the message
itself (pure EdDSA), so it takes RAW only. Verify answers valid or invalid; a malformed
signature is invalid, not an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hsmd import keyspecs, limits
from hsmd.backend.api import CryptoBackend
from hsmd.domain import Key, KeyVersion, MessageType, RequestContext, SigningAlgorithm
from hsmd.errors import InvalidArgument, Unimplemented
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.resolve import usable_key

MAX_MESSAGE = limits.MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class Signed:
    signature: bytes
    key_id: str
    key_version: int
    algorithm: SigningAlgorithm


@dataclass(frozen=True)
class Verified:
    valid: bool
    key_id: str
    key_version: int
    algorithm: SigningAlgorithm


@dataclass(frozen=True)
class PublicKey:
    der: bytes
    key: Key
    key_version: int


def check_message(message: bytes) -> None:
    if not 1 <= len(message) <= MAX_MESSAGE:
        raise InvalidArgument(f"message must be 1 to {MAX_MESSAGE} bytes, got {len(message)}")


class SigningOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend) -> None:
        self._store = store
        self._backend = backend

    def sign(
        self,
        ctx: RequestContext,
        key_id: str,
        message: bytes,
        message_type: MessageType,
        algorithm: SigningAlgorithm,
    ) -> Signed:
        key, version, data = self._prepare(
            ctx, key_id, message, message_type, algorithm, Operation.SIGN
        )
        signature = self._backend.sign(key.tenant, version.object_id, key.spec, algorithm, data)
        return Signed(signature, key.key_id, version.version, algorithm)

    def verify(
        self,
        ctx: RequestContext,
        key_id: str,
        message: bytes,
        message_type: MessageType,
        algorithm: SigningAlgorithm,
        signature: bytes,
    ) -> Verified:
        key, version, data = self._prepare(
            ctx, key_id, message, message_type, algorithm, Operation.VERIFY
        )
        if not signature:
            raise InvalidArgument("signature is required")
        valid = self._backend.verify(
            key.tenant, version.object_id, key.spec, algorithm, data, signature
        )
        return Verified(valid, key.key_id, version.version, algorithm)

    def get_public_key(self, ctx: RequestContext, key_id: str) -> PublicKey:
        key = usable_key(self._store, ctx, key_id, Operation.GET_PUBLIC_KEY)
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        der = self._backend.public_key(key.tenant, version.object_id, key.spec)
        return PublicKey(der, key, version.version)

    def _prepare(
        self,
        ctx: RequestContext,
        key_id: str,
        message: bytes,
        message_type: MessageType,
        algorithm: SigningAlgorithm,
        operation: Operation,
    ) -> tuple[Key, KeyVersion, bytes]:
        """The key, its primary version and what the token signs, after every check."""
        key = usable_key(self._store, ctx, key_id, operation)
        signing = keyspecs.check_signing_algorithm(key, algorithm)
        if algorithm not in self._backend.capabilities().signing:
            raise Unimplemented(f"this backend does not support {algorithm}")
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        return key, version, _data_to_sign(message, message_type, signing)


def _data_to_sign(message: bytes, message_type: MessageType, signing: keyspecs.Signing) -> bytes:
    if signing.scheme is keyspecs.SignatureScheme.EDDSA:
        if message_type is not MessageType.RAW:
            raise InvalidArgument("ED25519_SHA_512 signs RAW messages only")
        check_message(message)
        return message
    if message_type is MessageType.RAW:
        check_message(message)
        return hashlib.new(signing.hash.name, message).digest()
    if len(message) != signing.hash.size:
        raise InvalidArgument(
            f"a {signing.hash.name} DIGEST is {signing.hash.size} bytes, got {len(message)}"
        )
    return message
