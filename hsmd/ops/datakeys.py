"""Data keys for envelope encryption, and random bytes, both from the tenant's token.

A data key is returned in plaintext (for the caller to use, then forget) and encrypted under a
customer key in the ordinary ciphertext blob, so Decrypt recovers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hsmd.backend.api import CryptoBackend
from hsmd.domain import RequestContext
from hsmd.errors import InvalidArgument
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.crypto import CryptoOps, Sealed
from hsmd.ops.resolve import usable_key

AES_256_DATA_KEY_SIZE = 32
MAX_RANDOM_BYTES = 1024


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes
    sealed: Sealed


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
