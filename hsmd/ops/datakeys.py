"""Data keys and data key pairs for envelope encryption, and random bytes.

A data key comes from the tenant's token. It is returned in plaintext (for the caller to use,
then forget) and encrypted under a customer key in the ordinary ciphertext blob, so Decrypt
recovers it. A data key pair is generated here with pyca/cryptography: its private half leaves
the daemon anyway (in plaintext, or sealed as PKCS#8 under the customer key), so the token's
protection would buy nothing, and a token would have to make it extractable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hsmd import keyspecs
from hsmd.backend.api import CryptoBackend
from hsmd.domain import KeySpec, RequestContext
from hsmd.errors import InvalidArgument
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.crypto import CryptoOps, Sealed
from hsmd.ops.resolve import usable_key

# The data key sizes a DataKeySpec names (AWS KMS: AES_256, AES_128).
DATA_KEY_SIZES = {"AES_256": 32, "AES_128": 16}
MAX_RANDOM_BYTES = 1024


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes
    sealed: Sealed


@dataclass(frozen=True)
class DataKeyPair:
    spec: KeySpec
    public_key: bytes
    private_key: bytes
    sealed_private_key: Sealed


def check_random_size(size: int, field: str) -> None:
    if not 1 <= size <= MAX_RANDOM_BYTES:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_RANDOM_BYTES}, got {size}")


class DataKeyOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend, crypto: CryptoOps) -> None:
        self._store = store
        self._backend = backend
        self._crypto = crypto

    def generate_data_key(
        self, ctx: RequestContext, key_id: str, size: int, context: Mapping[str, str]
    ) -> DataKey:
        """A fresh data key of `size` bytes (1-1,024), and the same encrypted under key_id."""
        check_random_size(size, "number_of_bytes")
        key = usable_key(self._store, ctx, key_id, Operation.GENERATE_DATA_KEY)
        plaintext = self._backend.generate_random(ctx.tenant, size)
        return DataKey(plaintext, self._crypto.seal(key, plaintext, context))

    def generate_random(self, ctx: RequestContext, size: int) -> bytes:
        check_random_size(size, "number_of_bytes")
        return self._backend.generate_random(ctx.tenant, size)

    def generate_data_key_pair(
        self, ctx: RequestContext, key_id: str, spec: KeySpec, context: Mapping[str, str]
    ) -> DataKeyPair:
        """A fresh key pair: DER SPKI public key, DER PKCS#8 private key, and the latter sealed.

        Raises:
            InvalidArgument: the spec is not one of the data key pair specs.
        """
        if spec not in keyspecs.DATA_KEY_PAIR_SPECS:
            names = ", ".join(keyspecs.DATA_KEY_PAIR_SPECS)
            raise InvalidArgument(f"key_pair_spec must be one of {names}, got {spec}")
        key = usable_key(self._store, ctx, key_id, Operation.GENERATE_DATA_KEY_PAIR)
        private = _generate_private_key(spec)
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        private_der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        sealed = self._crypto.seal(key, private_der, context)
        return DataKeyPair(spec, public_der, private_der, sealed)


def _generate_private_key(spec: KeySpec) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    info = keyspecs.SPECS[spec]
    if info.family is keyspecs.Family.RSA:
        return rsa.generate_private_key(65537, info.bits)
    return ec.generate_private_key(keyspecs.CURVES[spec])
