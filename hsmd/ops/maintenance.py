"""What the daemon does by itself: rotate keys that are due and destroy keys whose deletion
window has passed. Run at start-up (to catch up on anything that came due while the daemon was
down) and then periodically."""

from __future__ import annotations

import logging

from hsmd.ops.rotation import RotationOps
from hsmd.ops.states import StateOps

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, rotation: RotationOps, states: StateOps) -> None:
        self._rotation = rotation
        self._states = states

    def run_once(self) -> None:
        """One pass; a failure is logged and retried on the next pass, never fatal."""
        try:
            rotated = self._rotation.rotate_due()
            destroyed = self._states.destroy_due()
        except Exception:
            log.exception("scheduled maintenance failed; it will be retried")
            return
        if rotated or destroyed:
            log.info("maintenance: %d key(s) rotated, %d destroyed", rotated, destroyed)
