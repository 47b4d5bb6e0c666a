"""Which kind of principal may call which service: tenants use keys, operators manage tenants,
peer regions replicate multi-region keys."""

from __future__ import annotations

from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import PermissionDenied


def require_kind(principal: Principal, required: PrincipalKind) -> None:
    """Raises PermissionDenied if the principal is not of the kind the service is for."""
    if principal.kind is not required:
        raise PermissionDenied(_ONLY[required])


_ONLY = {
    PrincipalKind.TENANT: "only tenant principals use keys; operators and regions cannot",
    PrincipalKind.OPERATOR: "only operators may call the admin service",
    PrincipalKind.REGION: "only peer regions may call the region service",
}
