"""Token PINs, derived from the daemon's master secret so that none is ever stored.

HKDF-SHA256 with a label per PIN role and the tenant's name as context: a PIN is as strong as the
master secret, differs per tenant and role, and rotates when the master secret does (which needs
a PIN change on every token). The daemon's own token (its audit checkpoint key) takes the
context "hsmd:daemon", which no tenant name can be (tenant names have no ':').
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# The HKDF info of the daemon's own token: not a valid tenant name, so no tenant shares its PINs.
DAEMON_PIN_CONTEXT = "hsmd:daemon"


class PinDeriver:
    def __init__(self, master_secret: bytes) -> None:
        self._master_secret = master_secret

    def __repr__(self) -> str:
        return "PinDeriver(<secret>)"

    def user_pin(self, tenant: str) -> str:
        return self._derive(b"hsmd token user pin v1", tenant)

    def so_pin(self, tenant: str) -> str:
        return self._derive(b"hsmd token security officer pin v1", tenant)

    def daemon_user_pin(self) -> str:
        return self._derive(b"hsmd token user pin v1", DAEMON_PIN_CONTEXT)

    def daemon_so_pin(self) -> str:
        return self._derive(b"hsmd token security officer pin v1", DAEMON_PIN_CONTEXT)

    def fingerprint(self) -> str:
        """Names the master secret without revealing it (a backup's manifest records it, so a
        restore can tell whether the secret it is given is the one the tokens need)."""
        return self._derive(b"hsmd master secret fingerprint v1", "")

    def _derive(self, role: bytes, tenant: str) -> str:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=24, salt=role, info=tenant.encode())
        return base64.urlsafe_b64encode(hkdf.derive(self._master_secret)).decode()
