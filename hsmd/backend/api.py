"""What the operations need from a token, in domain terms: no PKCS#11 types cross this line.

Every method takes the tenant first, so an operation can only reach its own tenant's token.
Objects are named by their CKA_ID (object_id), which the keystore links to a key version; an
asymmetric key is a pair of objects sharing one CKA_ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hsmd.domain import (
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
    WrappingAlgorithm,
)


@dataclass(frozen=True)
class Capabilities:
    """What the backend was found able to do, and notes on what it cannot."""

    key_specs: frozenset[KeySpec]
    encryption: frozenset[EncryptionAlgorithm]
    signing: frozenset[SigningAlgorithm]
    mac: frozenset[MacAlgorithm]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class UnwrapTarget:
    """The token object an unwrap or import makes. public_key (SPKI) is needed for EC
    private keys, whose public point the token cannot derive. replicable: a multi-region
    key's replica, which can leave again only to a trusted peer region (hsmd.backend.regions)."""

    object_id: bytes
    spec: KeySpec
    usage: KeyUsage
    exportable: bool = False
    public_key: bytes | None = None
    replicable: bool = False


@dataclass(frozen=True)
class TokenObjects:
    """What a scan of a token found: the CKA_IDs it could read, and how many objects it
    could not (damaged)."""

    ids: frozenset[bytes]
    unreadable: int = 0


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

    def detach_token(self, tenant: str) -> None:
        """Stops serving the tenant's token (its calls get UNAVAILABLE); no error if detached."""
        ...

    def remove_token(self, tenant: str, serial: str) -> None:
        """Detaches and destroys the tenant's token (serial `serial`) with every object in it;
        no error if it is gone already (so an interrupted removal can be finished)."""
        ...

    def capabilities(self) -> Capabilities:
        """The key specs and algorithms the library supports (probed once, then remembered)."""
        ...

    def generate_key(
        self,
        tenant: str,
        object_id: bytes,
        spec: KeySpec,
        usage: KeyUsage,
        exportable: bool = False,
        replicable: bool = False,
    ) -> None:
        """Generates a sensitive token key (or pair) limited to its usage; non-extractable
        unless exportable (then it can leave only wrapped) or replicable (a multi-region
        key: it can leave only wrapped for a trusted peer region, wrap_for_peer)."""
        ...

    # Multi-region keys (hsmd.backend.regions)

    def transport_key(self, tenant: str) -> bytes:
        """The SPKI of the tenant token's transport key, made on first use: what a peer
        region wraps material for this token under (unwrap_from_peer unwraps it)."""
        ...

    def trust_peer(self, tenant: str, region: str, public_key: bytes) -> None:
        """Makes public_key (an SPKI) the tenant token's trusted key for the peer region,
        replacing another; no-op if it is already."""
        ...

    def wrap_for_peer(self, tenant: str, region: str, object_id: bytes, spec: KeySpec) -> bytes:
        """A replicable key wrapped under the peer region's trusted key (trust_peer), for
        the peer's unwrap_from_peer."""
        ...

    def check_value(self, tenant: str, object_id: bytes, spec: KeySpec) -> str:
        """A value that tells whether two tokens hold the same material for a key version,
        without revealing it: for a secret key a function of it computed in the token (as
        import's fingerprint), for a key pair the SHA-256 of its public key."""
        ...

    def unwrap_from_peer(self, tenant: str, wrapped: bytes, target: UnwrapTarget) -> str:
        """Unwraps what a peer's wrap_for_peer made for this token's transport key into a new
        replicable token key; returns its fingerprint (as import_material).

        Raises:
            UnwrapFailed: the bytes were not wrapped for this token's transport key.
        """
        ...

    def wrap(self, tenant: str, wrapping_object_id: bytes, object_id: bytes) -> bytes:
        """AES key wrap with padding of an extractable secret key."""
        ...

    def unwrap(
        self,
        tenant: str,
        wrapping_object_id: bytes,
        wrapped: bytes,
        padded: bool,
        target: UnwrapTarget,
    ) -> str:
        """Unwraps into a new token key; returns the material's fingerprint.

        Raises:
            UnwrapFailed: the wrapped bytes do not unwrap into a key of the target's spec.
        """
        ...

    def create_import_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        """An unwrap-only RSA key pair for one import; returns its public SPKI."""
        ...

    def import_material(
        self,
        tenant: str,
        import_object_id: bytes,
        algorithm: WrappingAlgorithm,
        wrapped: bytes,
        target: UnwrapTarget,
    ) -> str:
        """Unwraps customer material into a new token key; returns its fingerprint (empty for
        private keys, whose public key is their fingerprint).

        Raises:
            UnwrapFailed: the material does not unwrap under the import key.
            Unimplemented: the backend cannot do the algorithm.
        """
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

    def rsa_encrypt(
        self, tenant: str, object_id: bytes, algorithm: EncryptionAlgorithm, plaintext: bytes
    ) -> bytes:
        """RSAES-OAEP with the key's public half."""
        ...

    def rsa_decrypt(
        self, tenant: str, object_id: bytes, algorithm: EncryptionAlgorithm, ciphertext: bytes
    ) -> bytes:
        """RSAES-OAEP with the key's private half. Raises DecryptionFailed for any bad input."""
        ...

    def sign(
        self, tenant: str, object_id: bytes, spec: KeySpec, algorithm: SigningAlgorithm, data: bytes
    ) -> bytes:
        """Signs a digest (for Ed25519: the message); ECDSA signatures come back as DER."""
        ...

    def verify(
        self,
        tenant: str,
        object_id: bytes,
        spec: KeySpec,
        algorithm: SigningAlgorithm,
        data: bytes,
        signature: bytes,
    ) -> bool:
        """False for any signature that does not verify, including malformed DER."""
        ...

    def public_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        """The DER SubjectPublicKeyInfo of an asymmetric key."""
        ...

    def mac(self, tenant: str, object_id: bytes, algorithm: MacAlgorithm, message: bytes) -> bytes:
        """The full-length HMAC of message."""
        ...

    def generate_random(self, tenant: str, size: int) -> bytes: ...

    def has_objects(self, tenant: str, object_ids: list[bytes]) -> bool:
        """Whether every one of these objects is in the token (a search each: use sparingly)."""
        ...

    def objects(self, tenant: str) -> TokenObjects:
        """Every readable CKA_ID in the tenant's token (one linear pass: start-up only)."""
        ...

    def fits(
        self, tenant: str, object_id: bytes, spec: KeySpec, usage: KeyUsage, exportable: bool
    ) -> bool:
        """Whether the objects with this CKA_ID are a key of this spec, usage and
        exportability, as hsmd makes them (for adoption)."""
        ...

    def destroy(self, tenant: str, object_id: bytes) -> None:
        """Destroys every object with this CKA_ID; no error if there is none."""
        ...

    def close(self) -> None: ...
