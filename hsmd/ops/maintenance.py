"""What the daemon does by itself: rotate keys that are due, destroy keys whose deletion
window has passed, forget imported material past its expiry, destroy tenants whose
deletion window has passed, and bring multi-region replicas that are behind up to date. Run at
start-up (to catch up on anything that came due while the daemon was down) and then
periodically.

Each pass also keeps the clock honest (hsmd.clock.GuardedClock): it stores the latest time the
daemon has acted at, and while the system clock reads earlier than that it logs and audits the
fact once and holds back the destructive work (deletions, expiries), so no clock error shortens
a deletion window. Every action it takes is audited, as principal "daemon".
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime

from hsmd.audit.events import AuditEvent
from hsmd.audit.log import AuditLog
from hsmd.clock import GuardedClock
from hsmd.keystore.store import KeyStore
from hsmd.ops.imports import ImportOps
from hsmd.ops.regions import ReplicationOps
from hsmd.ops.rotation import RotationOps
from hsmd.ops.states import StateOps
from hsmd.ops.tenants import TenantOps

log = logging.getLogger(__name__)

DAEMON_PRINCIPAL = "daemon"
_STOP_CHECK_SECONDS = 0.5


class Maintenance:
    def __init__(
        self,
        rotation: RotationOps,
        states: StateOps,
        imports: ImportOps,
        tenants: TenantOps,
        clock: GuardedClock,
        store: KeyStore,
        audit: AuditLog,
        regions: ReplicationOps,
    ) -> None:
        self._regions = regions
        self._woken = threading.Event()
        regions.wake_with(self.wake)
        self._rotation = rotation
        self._states = states
        self._imports = imports
        self._tenants = tenants
        self._clock = clock
        self._store = store
        self._audit = audit
        self._clock_reported = False

    def wake(self) -> None:
        """Makes the next pass start now (a rotation whose replicas wait for it)."""
        self._woken.set()

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Waits until the next pass is due: `seconds` from now, or sooner when woken. False
        once stop is set (looked at every half second at most)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._woken.wait(min(remaining, _STOP_CHECK_SECONDS)):
                self._woken.clear()
                return not stop.is_set()
        return False

    def run_once(self) -> None:
        """One pass; a failure is logged and retried on the next pass, never fatal."""
        try:
            self._pass()
        except Exception:
            log.exception("scheduled maintenance failed; it will be retried")

    def _pass(self) -> None:
        behind = self._clock.behind()
        if behind is None:
            self._clock_reported = False
        elif not self._clock_reported:
            self._report_clock(*behind)
        for version in self._rotation.rotate_due():
            self._record("RotateKey", version.tenant, version.key_id, version.version)
        if behind is None:
            for key in self._states.destroy_due():
                self._record("DestroyKey", key.tenant, key.key_id)
            for key in self._imports.expire_due():
                self._record("ExpireKeyMaterial", key.tenant, key.key_id)
            for tenant in self._tenants.destroy_due():
                self._record("DestroyTenant", tenant.name, "")
        for done in self._regions.sync_due():
            key = done.key
            self._record(done.operation, key.tenant, key.key_id, key.primary_version, done.regions)
        self.record_clock()

    def record_clock(self) -> None:
        """Stores the high-water mark, so a restart on a clock set back still knows it."""
        mark = self._clock.high_water
        if mark is not None:
            self._store.record_clock(mark, self._clock.system.now())

    def _report_clock(self, reading: datetime, mark: datetime) -> None:
        log.error(
            "the system clock reads %s, earlier than %s when this daemon last acted: deletions"
            " and expiries wait until the clock has passed that time again, and new deletion"
            " windows are counted from it; check the clock (NTP)",
            reading.isoformat(),
            mark.isoformat(),
        )
        self._record("ClockMovedBackwards", "", "")
        self._clock_reported = True

    def _record(
        self,
        operation: str,
        tenant: str,
        key_id: str,
        key_version: int = 0,
        regions: tuple[str, ...] = (),
    ) -> None:
        self._audit.append(
            AuditEvent(
                time=self._clock.now(),
                request_id=uuid.uuid4().hex,
                tenant=tenant,
                principal=DAEMON_PRINCIPAL,
                operation=operation,
                key_id=key_id,
                key_version=key_version,
                encryption_context_keys=(),
                outcome="OK",
                peer="",
                regions=regions,
            )
        )
        log.info("maintenance: %s %s %s", operation, tenant, key_id)
