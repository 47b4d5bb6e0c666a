"""Token PINs, derived from the daemon's master secret so that none is ever stored.

HKDF-SHA256 with a label per PIN role and the tenant's name as context: a PIN is as strong as the
master secret, differs per tenant and role, and rotates when the master secret does (which needs
a PIN change on every token).
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class PinDeriver:
    def __init__(self, master_secret: bytes) -> None:
        self._master_secret = master_secret

    def __repr__(self) -> str:
        return "PinDeriver(<secret>)"

    def user_pin(self, tenant: str) -> str:
        return self._derive(b"hsmd token user pin v1", tenant)

    def so_pin(self, tenant: str) -> str:
        return self._derive(b"hsmd token security officer pin v1", tenant)

    def _derive(self, role: bytes, tenant: str) -> str:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=24, salt=role, info=tenant.encode())
        return base64.urlsafe_b64encode(hkdf.derive(self._master_secret)).decode()
