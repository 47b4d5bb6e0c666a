"""Key policies: who may manage a key and who may use it. Pure, like the lifecycle.

A policy names principal-name patterns of the key's own tenant (a name, or a glob with `*` and
`?`); a principal of another tenant never reaches this check, because its key lookup already
answered NOT_FOUND. Administrators manage the key, users use it, and metadata reads are open
to both. A policy must keep at least one administrator, and a principal may not put a policy
that takes away its own right to manage the key (the lock-out guard).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable

from hsmd import limits
from hsmd.domain import KeyPolicy, Principal
from hsmd.errors import (
    REASON_MALFORMED_POLICY,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from hsmd.lifecycle import USE_OPERATIONS, Operation

_PATTERN = re.compile(rf"[A-Za-z0-9._@*?-]{{1,{limits.MAX_PRINCIPAL_PATTERN_CHARS}}}")
MAX_PATTERNS = limits.MAX_POLICY_PATTERNS


class Role(enum.StrEnum):
    ADMINISTRATOR = "administrator"
    USER = "user"


Op = Operation
USER_OPERATIONS = USE_OPERATIONS
READ_OPERATIONS = frozenset({Op.DESCRIBE, Op.GET_ROTATION_STATUS, Op.LIST_ROTATIONS})
# Everything else manages the key.
ADMINISTRATOR_OPERATIONS = frozenset(Operation) - USER_OPERATIONS - READ_OPERATIONS


def default_policy(creator: Principal, tenant_administrators: Iterable[str]) -> KeyPolicy:
    """The creator manages and uses the key; the tenant's administrators manage it too."""
    administrators = dict.fromkeys([creator.name, *tenant_administrators])
    return KeyPolicy(tuple(administrators), (creator.name,))


def roles(policy: KeyPolicy, principal: Principal) -> set[Role]:
    held = set()
    if _matches(principal.name, policy.administrators):
        held.add(Role.ADMINISTRATOR)
    if _matches(principal.name, policy.users):
        held.add(Role.USER)
    return held


def check_permitted(policy: KeyPolicy, principal: Principal, operation: Operation) -> None:
    """Raises PermissionDenied unless the policy gives the principal the operation's role."""
    held = roles(policy, principal)
    if operation in READ_OPERATIONS and held:
        return
    if operation in USER_OPERATIONS and Role.USER in held:
        return
    if operation in ADMINISTRATOR_OPERATIONS and Role.ADMINISTRATOR in held:
        return
    needed = {
        True: "a user",
        False: "an administrator",
    }[operation in USER_OPERATIONS]
    if operation in READ_OPERATIONS:
        needed = "a user or an administrator"
    raise PermissionDenied(
        f"{principal} is not {needed} of this key in its policy, so it may not {operation}"
    )


def validate(policy: KeyPolicy, author: Principal) -> None:
    """Checks a policy someone wants to put.

    Raises:
        InvalidArgument: a pattern is malformed, or there are too many.
        FailedPrecondition: no administrator would be left, or the author would lose the right
            to manage the key (the lock-out guard).
    """
    for pattern in (*policy.administrators, *policy.users):
        if not is_valid_pattern(pattern):
            raise InvalidArgument(
                f"policy pattern {pattern!r} must be 1-{limits.MAX_PRINCIPAL_PATTERN_CHARS}"
                " characters of A-Z a-z 0-9 . _ @ - * ?",
                REASON_MALFORMED_POLICY,
            )
    if len(policy.administrators) + len(policy.users) > MAX_PATTERNS:
        raise InvalidArgument(
            f"a policy holds at most {MAX_PATTERNS} patterns", REASON_MALFORMED_POLICY
        )
    if not policy.administrators:
        raise FailedPrecondition(
            "the policy would leave the key without an administrator", REASON_MALFORMED_POLICY
        )
    if Role.ADMINISTRATOR not in roles(policy, author):
        raise FailedPrecondition(
            f"the policy would lock {author} out of managing the key; include it in administrators",
            REASON_MALFORMED_POLICY,
        )


def is_valid_pattern(pattern: str) -> bool:
    return _PATTERN.fullmatch(pattern) is not None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
