"""What the operations need from a token, in domain terms: no PKCS#11 types cross this line.

Every method takes the tenant first, so an operation can only reach its own tenant's token.
Objects are named by their CKA_ID (object_id), which the keystore links to a key version.
"""

from __future__ import annotations

from typing import Protocol

from hsmd.domain import KeySpec, KeyUsage


class CryptoBackend(Protocol):
    def ensure_token(self, tenant: str) -> str:
        """Creates the tenant's token if it has none yet, and returns the token's serial.

        Idempotent, so a tenant creation interrupted at any step can be finished by calling it
        again.
        """
        ...

    def attach_token(self, tenant: str, serial: str) -> None:
        """Opens and logs in to the tenant's token; checks its serial.

        Raises:
            BackendUnavailable: no token with the tenant's label and this serial.
        """
        ...

    def generate_key(self, tenant: str, object_id: bytes, spec: KeySpec, usage: KeyUsage) -> None:
        """Generates a sensitive, non-extractable token key limited to its usage."""
        ...

    def encrypt(
        self, tenant: str, object_id: bytes, plaintext: bytes, aad: bytes
    ) -> tuple[bytes, bytes]:
        """AES-256-GCM; returns (iv, ciphertext || tag); the backend picks the IV."""
        ...

    def decrypt(
        self, tenant: str, object_id: bytes, iv: bytes, ciphertext_and_tag: bytes, aad: bytes
    ) -> bytes:
        """Raises DecryptionFailed for any authentication failure."""
        ...

    def generate_random(self, tenant: str, size: int) -> bytes: ...

    def object_ids(self, tenant: str) -> set[bytes]:
        """Every CKA_ID in the tenant's token (linear in the number of objects: start-up only)."""
        ...

    def has_object(self, tenant: str, object_id: bytes) -> bool: ...

    def destroy(self, tenant: str, object_id: bytes) -> None:
        """Destroys every object with this CKA_ID; no error if there is none."""
        ...

    def close(self) -> None: ...
