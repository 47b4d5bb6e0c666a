"""Fakes shared by the unit tests of the client side: the data keys of a KMS kept in memory,
for envelope encryption (hsmclient.envelope) without a daemon. Features are proven against
a real daemon in tests/integration; these prove the format's logic."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hsmclient import DataKey, DecryptResult, EncryptResult, InvalidArgumentError


@dataclass
class FakeDataKeys:
    """Keys by id, each an AES-256 key here; a blob is key id, nonce and AES-GCM of the
    plaintext with the encryption context bound. `refusing` holds key ids whose Decrypt is
    refused (as a disabled key's would be); `calls` counts every call by name."""

    keys: dict[str, bytes] = field(default_factory=dict)
    refusing: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)

    def key(self, key_id: str) -> str:
        self.keys[key_id] = AESGCM.generate_key(256)
        return key_id

    def generate_data_key(
        self,
        key_id: str,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> DataKey:
        self._count("generate_data_key")
        plaintext = secrets.token_bytes(32)
        blob = self._seal(key_id, plaintext, encryption_context)
        return DataKey(plaintext, blob, key_id, 1)

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        encryption_context: Mapping[str, str] | None = None,
        encryption_algorithm: str = "SYMMETRIC_DEFAULT",
    ) -> EncryptResult:
        self._count("encrypt")
        blob = self._seal(key_id, plaintext, encryption_context)
        return EncryptResult(blob, key_id, 1, encryption_algorithm)

    def decrypt(
        self,
        ciphertext_blob: bytes,
        encryption_context: Mapping[str, str] | None = None,
        key_id: str | None = None,
        encryption_algorithm: str | None = None,
    ) -> DecryptResult:
        self._count("decrypt")
        try:
            named, nonce, sealed = ciphertext_blob.split(b"|", 2)
            key_id = named.decode()
            if key_id in self.refusing:
                raise ValueError(key_id)
            plaintext = AESGCM(self.keys[key_id]).decrypt(
                nonce, sealed, _context(encryption_context)
            )
        except Exception:  # as hsmd answers any blob it cannot decrypt
            raise InvalidArgumentError("the ciphertext cannot be decrypted") from None
        return DecryptResult(plaintext, key_id, 1, "SYMMETRIC_DEFAULT")

    def _seal(self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
        nonce = secrets.token_bytes(12).replace(b"|", b"-")
        sealed = AESGCM(self.keys[key_id]).encrypt(nonce, plaintext, _context(context))
        return key_id.encode() + b"|" + nonce + b"|" + sealed

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


def _context(context: Mapping[str, str] | None) -> bytes:
    return repr(sorted((context or {}).items())).encode()
