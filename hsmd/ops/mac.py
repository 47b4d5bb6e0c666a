"""GenerateMac and VerifyMac with HMAC keys; verification compares in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from hsmd import keyspecs
from hsmd.backend.api import CryptoBackend
from hsmd.domain import MacAlgorithm, RequestContext
from hsmd.keystore.store import KeyStore
from hsmd.lifecycle import Operation
from hsmd.ops.resolve import usable_key
from hsmd.ops.signing import check_message


@dataclass(frozen=True)
class Mac:
    mac: bytes
    key_id: str
    key_version: int
    algorithm: MacAlgorithm


@dataclass(frozen=True)
class MacVerified:
    valid: bool
    key_id: str
    key_version: int
    algorithm: MacAlgorithm


class MacOps:
    def __init__(self, store: KeyStore, backend: CryptoBackend) -> None:
        self._store = store
        self._backend = backend

    def generate_mac(
        self, ctx: RequestContext, key_id: str, message: bytes, algorithm: MacAlgorithm
    ) -> Mac:
        return self._compute(ctx, key_id, message, algorithm, Operation.GENERATE_MAC)

    def verify_mac(
        self, ctx: RequestContext, key_id: str, message: bytes, algorithm: MacAlgorithm, mac: bytes
    ) -> MacVerified:
        """Valid only for the full-length tag: truncated MACs are invalid, as in AWS KMS."""
        expected = self._compute(ctx, key_id, message, algorithm, Operation.VERIFY_MAC)
        valid = hmac.compare_digest(expected.mac, mac)
        return MacVerified(valid, expected.key_id, expected.key_version, algorithm)

    def _compute(
        self,
        ctx: RequestContext,
        key_id: str,
        message: bytes,
        algorithm: MacAlgorithm,
        operation: Operation,
    ) -> Mac:
        check_message(message)
        key = usable_key(self._store, ctx, key_id, operation)
        keyspecs.check_mac_algorithm(key, algorithm)
        version = self._store.get_version(key.tenant, key.key_id, key.primary_version)
        tag = self._backend.mac(key.tenant, version.object_id, algorithm, message)
        return Mac(tag, key.key_id, version.version, algorithm)
