"""Validation and formatting of the names a caller can send: tenants, principals, key ids."""

from __future__ import annotations

import re
import uuid

from hsmd.domain import MULTI_REGION_KEY_PREFIX
from hsmd.errors import REASON_INVALID_ALIAS_NAME, InvalidArgument, NotFound

# A tenant name becomes part of a 32-byte token label ("hsmd/" + name), so it is short.
_TENANT_NAME = re.compile(r"[a-z][a-z0-9-]{0,25}")
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
TOKEN_LABEL_PREFIX = "hsmd/"  # noqa: S105 (a label, not a password)


def is_valid_tenant_name(name: str) -> bool:
    return _TENANT_NAME.fullmatch(name) is not None


def validate_tenant_name(name: str) -> str:
    """Raises InvalidArgument unless name is 1-26 characters of [a-z0-9-] starting with a letter."""
    if not is_valid_tenant_name(name):
        raise InvalidArgument(
            "tenant name must be 1-26 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return name


def is_valid_principal_name(name: str) -> bool:
    return _PRINCIPAL_NAME.fullmatch(name) is not None


def token_label(tenant: str) -> str:
    return TOKEN_LABEL_PREFIX + tenant


def parse_key_id(key_id: str) -> str:
    """Returns the canonical form of a key id: a UUID, or a multi-region key's id.

    Raises:
        InvalidArgument: key_id is empty.
        NotFound: key_id is neither, so no key can have it.
    """
    if not key_id:
        raise InvalidArgument("key_id is required")
    if key_id.startswith(MULTI_REGION_KEY_PREFIX):
        if _MULTI_REGION_KEY_ID.fullmatch(key_id.lower()):
            return key_id.lower()
        raise NotFound(f"key {key_id[:80]!r} not found")
    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise NotFound(f"key {key_id!r} not found") from None


_MULTI_REGION_KEY_ID = re.compile(r"mrk-[0-9a-f]{32}")


def new_multi_region_key_id() -> str:
    return MULTI_REGION_KEY_PREFIX + uuid.uuid4().hex


# The CKA_IDs of a token's region transport objects (hsmd.backend.regions): its own transport
# key pair and the peers' trusted public keys. Their length differs from a key version's
# (hsmd.ops.keys.OBJECT_ID_SIZE), so no version's object can be taken for one.
REGION_OBJECT_PREFIX = b"hsmd region "


ALIAS_PREFIX = "alias/"
_ALIAS_NAME = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")
RESERVED_ALIAS_PREFIX = "alias/hsmd/"


def parse_alias_name(name: str) -> str:
    """Returns the alias name if it is well formed.

    Raises:
        InvalidArgument: not `alias/<name>` with 1-250 characters of [A-Za-z0-9/_-], or in the
            reserved `alias/hsmd/` namespace.
    """
    if not _ALIAS_NAME.fullmatch(name):
        raise InvalidArgument(
            "alias names are alias/<name>, with 1-250 characters of A-Z a-z 0-9 / _ -",
            REASON_INVALID_ALIAS_NAME,
        )
    if name.startswith(RESERVED_ALIAS_PREFIX):
        raise InvalidArgument(
            f"alias names under {RESERVED_ALIAS_PREFIX} are reserved", REASON_INVALID_ALIAS_NAME
        )
    return name


def key_resource_name(tenant: str, key_id: str) -> str:
    return f"tenants/{tenant}/keys/{key_id}"


_KEY_RESOURCE_NAME = re.compile(r"tenants/([^/]*)/keys/(.*)", re.DOTALL)
# arn:PARTITION:kms:REGION:ACCOUNT:key/ID or ...:alias/NAME, as AWS names keys and aliases.
_KMS_ARN = re.compile(r"arn:[^:]*:kms:[^:]*:([^:]*):((?:key/|alias/).*)", re.DOTALL)


def local_key_name(tenant: str, name: str) -> str:
    """A key named as the tenant's own: hsmd's resource name (tenants/T/keys/ID, the Arn of
    its answers) becomes the key id, and an AWS ARN whose account is the tenant
    (arn:aws:kms:REGION:T:key/ID, or ...:alias/NAME) the key id or alias name, so that scripts
    written for AWS KMS and hsm's own output can be passed back. Other names are returned as
    they are.

    Raises:
        NotFound: the name is of another tenant, answered as a key that does not exist.
    """
    if match := _KEY_RESOURCE_NAME.fullmatch(name):
        owner, local = match[1], match[2]
    elif match := _KMS_ARN.fullmatch(name):
        owner, local = match[1], match[2].removeprefix("key/")
    else:
        return name
    if owner != tenant:
        raise NotFound(f"key {name!r} not found")
    return local


_CLIENT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def validate_client_token(token: str) -> str:
    """Raises InvalidArgument unless the token is 1-64 characters of [A-Za-z0-9_-]."""
    if not _CLIENT_TOKEN.fullmatch(token):
        raise InvalidArgument("client_token must be 1-64 characters of A-Z a-z 0-9 _ -")
    return token
