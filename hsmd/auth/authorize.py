"""Which kind of principal may call which service: tenants use keys, operators manage tenants."""

from __future__ import annotations

from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import PermissionDenied


def require_kind(principal: Principal, required: PrincipalKind) -> None:
    """Raises PermissionDenied if the principal is not of the kind the service is for."""
    if principal.kind is not required:
        if required is PrincipalKind.TENANT:
            raise PermissionDenied("operators manage tenants; they cannot use keys")
        raise PermissionDenied("only operators may call the admin service")
