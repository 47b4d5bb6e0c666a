"""What the daemon does by itself: rotate keys that are due, destroy keys whose deletion
window has passed, and forget imported material past its expiry. Run at start-up (to catch up
on anything that came due while the daemon was down) and then periodically."""

from __future__ import annotations

import logging

from hsmd.ops.imports import ImportOps
from hsmd.ops.rotation import RotationOps
from hsmd.ops.states import StateOps

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, rotation: RotationOps, states: StateOps, imports: ImportOps) -> None:
        self._rotation = rotation
        self._states = states
        self._imports = imports

    def run_once(self) -> None:
        """One pass; a failure is logged and retried on the next pass, never fatal."""
        try:
            rotated = self._rotation.rotate_due()
            destroyed = self._states.destroy_due()
            expired = self._imports.expire_due()
        except Exception:
            log.exception("scheduled maintenance failed; it will be retried")
            return
        if rotated or destroyed or expired:
            log.info(
                "maintenance: %d key(s) rotated, %d destroyed, %d with expired material",
                rotated,
                destroyed,
                expired,
            )
