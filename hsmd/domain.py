"""Plain types every layer shares: identities, request context, keys, tenants, the clock.

Frozen dataclasses and string enums only; nothing here talks to a token, a database or gRPC.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class KeySpec(enum.StrEnum):
    AES_256 = "AES_256"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    EC_P256 = "EC_P256"
    EC_P384 = "EC_P384"
    EC_P521 = "EC_P521"
    EC_SECP256K1 = "EC_SECP256K1"
    HMAC_224 = "HMAC_224"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"
    ED25519 = "ED25519"


class KeyUsage(enum.StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
    WRAP_UNWRAP = "WRAP_UNWRAP"


class WrappingAlgorithm(enum.StrEnum):
    """How imported key material is wrapped under an import RSA key (AWS KMS's names)."""

    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"
    RSA_AES_KEY_WRAP_SHA_1 = "RSA_AES_KEY_WRAP_SHA_1"
    RSA_AES_KEY_WRAP_SHA_256 = "RSA_AES_KEY_WRAP_SHA_256"


class EncryptionAlgorithm(enum.StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    RSAES_OAEP_SHA_1 = "RSAES_OAEP_SHA_1"
    RSAES_OAEP_SHA_256 = "RSAES_OAEP_SHA_256"


class SigningAlgorithm(enum.StrEnum):
    RSASSA_PSS_SHA_256 = "RSASSA_PSS_SHA_256"
    RSASSA_PSS_SHA_384 = "RSASSA_PSS_SHA_384"
    RSASSA_PSS_SHA_512 = "RSASSA_PSS_SHA_512"
    RSASSA_PKCS1_V1_5_SHA_256 = "RSASSA_PKCS1_V1_5_SHA_256"
    RSASSA_PKCS1_V1_5_SHA_384 = "RSASSA_PKCS1_V1_5_SHA_384"
    RSASSA_PKCS1_V1_5_SHA_512 = "RSASSA_PKCS1_V1_5_SHA_512"
    ECDSA_SHA_256 = "ECDSA_SHA_256"
    ECDSA_SHA_384 = "ECDSA_SHA_384"
    ECDSA_SHA_512 = "ECDSA_SHA_512"
    ED25519_SHA_512 = "ED25519_SHA_512"


class MacAlgorithm(enum.StrEnum):
    HMAC_SHA_224 = "HMAC_SHA_224"
    HMAC_SHA_256 = "HMAC_SHA_256"
    HMAC_SHA_384 = "HMAC_SHA_384"
    HMAC_SHA_512 = "HMAC_SHA_512"


class MessageType(enum.StrEnum):
    RAW = "RAW"
    DIGEST = "DIGEST"


class KeyState(enum.StrEnum):
    CREATING = "CREATING"
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    PENDING_DELETION = "PENDING_DELETION"
    PENDING_IMPORT = "PENDING_IMPORT"
    DESTROYED = "DESTROYED"
    UNAVAILABLE = "UNAVAILABLE"


class VersionState(enum.StrEnum):
    CREATING = "CREATING"
    ENABLED = "ENABLED"
    DESTROYED = "DESTROYED"


class RotationType(enum.StrEnum):
    AUTOMATIC = "AUTOMATIC"
    ON_DEMAND = "ON_DEMAND"


class KeyOrigin(enum.StrEnum):
    GENERATED = "GENERATED"
    EXTERNAL = "EXTERNAL"
    UNWRAPPED = "UNWRAPPED"


class TenantState(enum.StrEnum):
    """CREATING -> ACTIVE <-> DISABLED; ACTIVE or DISABLED -> PENDING_DELETION -> (cancel)
    DISABLED, or (window passed) DELETING -> gone. Only ACTIVE tenants are served."""

    CREATING = "CREATING"
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"
    PENDING_DELETION = "PENDING_DELETION"
    DELETING = "DELETING"


class TenancyMode(enum.StrEnum):
    """SHARED: the instance serves many tenants; DEDICATED: exactly one (single-tenant mode)."""

    SHARED = "SHARED"
    DEDICATED = "DEDICATED"


class PrincipalKind(enum.StrEnum):
    TENANT = "tenant"
    OPERATOR = "operator"
    REGION = "region"  # another hsmd instance of the deployment (multi-region keys)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the certificate's SPIFFE URI says: a tenant principal, an operator
    or a peer region."""

    kind: PrincipalKind
    name: str
    tenant: str | None = None

    def __str__(self) -> str:
        if self.kind is PrincipalKind.TENANT:
            return f"tenant/{self.tenant}/{self.name}"
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class RequestContext:
    """What the layers below transport know of one request; passed down, never stored."""

    request_id: str
    principal: Principal

    @property
    def tenant(self) -> str:
        """The caller's tenant. Only tenant principals reach code that asks for it."""
        if self.principal.tenant is None:
            raise AssertionError("an operator request reached a tenant operation")
        return self.principal.tenant


@dataclass(frozen=True)
class Tenant:
    name: str
    token_label: str
    token_serial: str
    state: TenantState
    created_at: datetime
    admin_principals: tuple[str, ...] = ("admin",)
    deletion_at: datetime | None = None  # while PENDING_DELETION or DELETING


@dataclass(frozen=True)
class KeyPolicy:
    """Principal-name patterns (globs) of the key's tenant: who manages, who uses the key."""

    administrators: tuple[str, ...]
    users: tuple[str, ...]


# A multi-region key's id says so, as AWS KMS's do: "mrk-" and 32 hex digits. Every replica
# of the key has the same id, so a blob or a key id moves between regions unchanged.
MULTI_REGION_KEY_PREFIX = "mrk-"

# A region's name, spelled as AWS's are (us-east-1), or any short lowercase name.
_REGION_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")


def is_valid_region_name(name: str) -> bool:
    return _REGION_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Replica:
    """A replica of a multi-region key, as its primary knows it: its region and how many of
    the key's versions it was last seen to hold."""

    region: str
    versions: int


@dataclass(frozen=True)
class MultiRegion:
    """Where a multi-region key lives: this copy's region, the primary's, and the replicas.
    Each region's row says which copy it is; the primary's list is the one kept up to date,
    a replica's is what the primary last told it. moving: this copy was the primary and
    stepped down for primary_region, which may not know yet (UpdatePrimaryRegion unfinished)."""

    region: str
    primary_region: str
    replicas: tuple[Replica, ...] = ()
    moving: bool = False

    @property
    def is_primary(self) -> bool:
        return self.region == self.primary_region

    def replica(self, region: str) -> Replica | None:
        return next((r for r in self.replicas if r.region == region), None)


@dataclass(frozen=True)
class Key:
    """A customer key's metadata; its material is in the tenant's token, one object a version.

    rotation_period_days and next_rotation_at are set while automatic rotation is on;
    deletion_at while the key is PENDING_DELETION.
    """

    tenant: str
    key_id: str
    description: str
    spec: KeySpec
    usage: KeyUsage
    origin: KeyOrigin
    state: KeyState
    created_at: datetime
    primary_version: int
    policy: KeyPolicy = KeyPolicy((), ())
    tags: tuple[tuple[str, str], ...] = ()
    rotation_period_days: int | None = None
    next_rotation_at: datetime | None = None
    deletion_at: datetime | None = None
    exportable: bool = False
    valid_to: datetime | None = None
    material_fingerprint: str = ""
    multi_region: MultiRegion | None = None


@dataclass(frozen=True)
class ImportParameters:
    """An import token's row: which key it is for, its RSA wrapping key, until when."""

    token: str
    tenant: str
    key_id: str
    object_id: bytes
    algorithm: WrappingAlgorithm
    wrapping_spec: KeySpec
    expires_at: datetime


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key; object_id is the CKA_ID of its token object."""

    tenant: str
    key_id: str
    version: int
    object_id: bytes
    created_at: datetime
    state: VersionState = VersionState.ENABLED
    rotation_type: RotationType | None = None


@dataclass(frozen=True)
class ClientRequest:
    """A caller's client token for a creating call, and a digest of everything else the call
    asked for: a retry with the same token returns the first call's resource, a different
    call with the same token is refused."""

    token: str
    fingerprint: str


@dataclass(frozen=True)
class QuarantinedObject:
    """A token object that no row of the database names: kept, reported, never used."""

    tenant: str
    object_id: bytes
    reason: str
    found_at: datetime


@dataclass(frozen=True)
class Alias:
    tenant: str
    name: str
    key_id: str
    created_at: datetime
    updated_at: datetime


class Clock(Protocol):
    """Where time comes from, so windows and periods can be tested without sleeping."""

    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
