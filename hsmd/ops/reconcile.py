"""Start-up repair carried out (hsmd.repair decides what), and the operator's way out of
quarantine: destroy an object, or adopt it as the object of a key version whose own is lost.

Every action is logged loudly with the tenant, the key or object, and the token directory, so
an operator can find what repair found without reading code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hsmd import repair
from hsmd.backend.api import CryptoBackend
from hsmd.domain import Clock, Key, KeyState, QuarantinedObject, VersionState
from hsmd.errors import FailedPrecondition, NotFound
from hsmd.keystore.store import KeyStore
from hsmd.ops import paging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinePage:
    objects: list[QuarantinedObject]
    next_page_token: str


@dataclass(frozen=True)
class RepairReport:
    rolled_back: int
    destroyed: int
    quarantined: int
    unavailable: int
    unreadable: int


class Reconciler:
    def __init__(self, store: KeyStore, backend: CryptoBackend, clock: Clock) -> None:
        self._store = store
        self._backend = backend
        self._clock = clock

    def reconcile(self, tenant: str, where: str = "its token") -> RepairReport:
        """Repairs one tenant; `where` names its token (directory) in log lines."""
        objects = self._backend.objects(tenant)
        plan = repair.plan(self._store.inventory(tenant), objects.ids)
        for object_id in plan.destroy:
            self._backend.destroy(tenant, object_id)
            log.warning(
                "tenant %s: destroyed object %s of an unfinished creation or destruction (%s)",
                tenant,
                object_id.hex(),
                where,
            )
        for key_id in plan.roll_back_keys:
            self._store.remove_key(tenant, key_id)
            log.warning("tenant %s: rolled back the unfinished creation of key %s", tenant, key_id)
        for version in plan.roll_back_versions:
            self._store.remove_version(tenant, version.key_id, version.version)
            log.warning(
                "tenant %s: rolled back unfinished version %d of key %s",
                tenant,
                version.version,
                version.key_id,
            )
        for key_id in sorted({version.key_id for version in plan.forget_versions}):
            self._store.drop_forgotten_versions(tenant, key_id)
            log.warning(
                "tenant %s: finished deleting the imported material of key %s", tenant, key_id
            )
        self._store.record_quarantine(tenant, plan.quarantine, repair.NO_ROW, self._clock.now())
        for object_id in plan.quarantine:
            log.error(
                "tenant %s: object %s in %s is in quarantine: %s. It is kept; destroy or adopt"
                " it with `hsmd quarantine`",
                tenant,
                object_id.hex(),
                where,
                repair.NO_ROW,
            )
        if objects.unreadable:
            log.error(
                "tenant %s: %d object(s) in %s cannot be read by the PKCS#11 library (damaged"
                " files); keys whose objects they were are UNAVAILABLE",
                tenant,
                objects.unreadable,
                where,
            )
        for key_id in plan.unavailable:
            self._store.set_key_state(tenant, key_id, KeyState.UNAVAILABLE)
            log.error(
                "tenant %s: key %s has lost its token object in %s; it is UNAVAILABLE until the"
                " object is restored or adopted",
                tenant,
                key_id,
                where,
            )
        for key_id in plan.restored:
            self._store.set_key_state(tenant, key_id, KeyState.ENABLED)
            log.warning("tenant %s: key %s has its token object back", tenant, key_id)
        return RepairReport(
            rolled_back=len(plan.roll_back_keys) + len(plan.roll_back_versions),
            destroyed=len(plan.destroy),
            quarantined=len(plan.quarantine),
            unavailable=len(plan.unavailable),
            unreadable=objects.unreadable,
        )

    def quarantined(self, tenant: str, page_size: int, page_token: str) -> QuarantinePage:
        """One page of quarantined objects, of one tenant or ("") of all, oldest first.

        Raises:
            InvalidArgument: page_size is out of range or page_token is not one we issued.
        """
        objects, cursor = self._store.quarantined(
            tenant or None, paging.decode_token(page_token), paging.page_size(page_size)
        )
        return QuarantinePage(objects, paging.encode_token(cursor))

    def destroy_quarantined(self, tenant: str, object_id: bytes) -> None:
        """Raises NotFound unless the object is in the tenant's quarantine."""
        self._quarantined(tenant, object_id)
        self._backend.destroy(tenant, object_id)
        self._store.release_quarantined(tenant, object_id)
        log.warning("tenant %s: destroyed quarantined object %s", tenant, object_id.hex())

    def adopt(self, tenant: str, object_id: bytes, key_id: str, version: int) -> Key:
        """Makes a quarantined object the object of a key version whose own object is lost
        (for example after a damaged row's object id was restored by hand), and gives the key
        back its state if nothing else is missing.

        Raises:
            NotFound: the object is not in quarantine, or the key has no such version.
            FailedPrecondition: the version's own object is present, or the object is not a
                key of the key's spec.
        """
        self._quarantined(tenant, object_id)
        key = self._store.get_key(tenant, key_id)
        lost = self._store.get_version(tenant, key.key_id, version)
        present = self._backend.objects(tenant).ids
        if lost.object_id in present:
            raise FailedPrecondition(
                f"version {version} of key {key.key_id} has its object; nothing to adopt"
            )
        extractable = key.exportable or key.multi_region is not None
        if not self._backend.fits(tenant, object_id, key.spec, key.usage, extractable):
            raise FailedPrecondition(
                f"object {object_id.hex()} is not a {key.spec} key for {key.usage}"
                f"{' (exportable)' if key.exportable else ''} as hsmd makes them"
            )
        self._store.adopt_object(tenant, key.key_id, version, object_id)
        live = [
            v.object_id
            for v in self._store.versions(tenant, key.key_id)
            if v.state is VersionState.ENABLED
        ]
        if key.state is KeyState.UNAVAILABLE and all(oid in present for oid in live):
            self._store.set_key_state(tenant, key.key_id, KeyState.ENABLED)
        log.warning(
            "tenant %s: adopted object %s as version %d of key %s",
            tenant,
            object_id.hex(),
            version,
            key.key_id,
        )
        return self._store.get_key(tenant, key.key_id)

    def _quarantined(self, tenant: str, object_id: bytes) -> None:
        if not self._store.is_quarantined(tenant, object_id):
            raise NotFound(f"object {object_id.hex()} is not in quarantine in tenant {tenant!r}")
