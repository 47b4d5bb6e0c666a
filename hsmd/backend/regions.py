"""Moving a multi-region key's material from one region's token to another's, never in the
clear (docs/regions.md, docs/security.md "Multi-region keys").

Each tenant token holds, for replication:
- its transport key pair (TRANSPORT_ID): RSA-3072, the private half unwrap-only, sensitive and
  never extractable; the public half is what peer regions wrap material for this token under;
- each peer region's transport public key (peer_object_id), marked CKA_TRUSTED. PKCS#11 lets
  only the token's security officer set CKA_TRUSTED, so installing one takes an SO login, which
  the daemon's process cannot make beside its user login (login state is per token and
  process): `install_trusted_key` runs in a child process (`python -m hsmd.backend.regions`).

A multi-region AES or HMAC key is made extractable and CKA_WRAP_WITH_TRUSTED: SoftHSM2 2.6.1
refuses to wrap it under any key that is not trusted (measured: CKR_KEY_NOT_WRAPPABLE), and
it is wrapped directly under the peer's trusted key (RSA-OAEP). An EC or RSA private key
cannot be wrapped that way: RSA-OAEP wraps only secret keys, and a trusted AES key could only
be made by the SO as a public object, which SoftHSM2 stores unencrypted. So a private key is
made extractable without CKA_WRAP_WITH_TRUSTED, and wrapped under a session AES key made for
one transfer (itself WRAP_WITH_TRUSTED, so it leaves only under the trusted peer key), which
the peer's transport key unwraps: the layout of import's RSA_AES_KEY_WRAP (docs/formats.md).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass

from hsmd.names import REGION_OBJECT_PREFIX

TRANSPORT_ID = REGION_OBJECT_PREFIX + b"transport v1"
TRANSPORT_BITS = 3072


def peer_object_id(region: str) -> bytes:
    """The CKA_ID of a peer region's trusted transport public key in a tenant token."""
    return REGION_OBJECT_PREFIX + b"peer " + region.encode("ascii")


def install_trusted_key(
    library: str, label: str, so_pin: str, object_id: bytes, modulus: bytes, exponent: bytes
) -> None:
    """Logs in to the token labelled `label` as its security officer and replaces the objects
    with this CKA_ID by a trusted RSA public key that can only wrap. Run in a child process
    (main below): the daemon's own process is logged in as the user."""
    token = pkcs11.lib(library).get_token(token_label=label)
    with token.open(rw=True, so_pin=so_pin) as session:
        for old in list(session.get_objects({Attribute.ID: object_id})):
            old.destroy()
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.RSA,
                Attribute.ID: object_id,
                Attribute.LABEL: object_id.decode("ascii"),
                Attribute.MODULUS: modulus,
                Attribute.PUBLIC_EXPONENT: exponent,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.TRUSTED: True,
                Attribute.WRAP: True,
                Attribute.ENCRYPT: False,
                Attribute.VERIFY: False,
                Attribute.VERIFY_RECOVER: False,
                Attribute.DERIVE: False,
                Attribute.MODIFIABLE: False,
                Attribute.COPYABLE: False,
            }
        )


def request(
    library: str, label: str, so_pin: str, object_id: bytes, modulus: bytes, exponent: bytes
) -> bytes:
    """What the child process reads on its standard input (never its arguments: the PIN)."""
    return json.dumps(
        {
            "library": library,
            "label": label,
            "so_pin": so_pin,
            "object_id": object_id.hex(),
            "modulus": modulus.hex(),
            "exponent": exponent.hex(),
        }
    ).encode()


def main() -> int:
    asked: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    try:
        install_trusted_key(
            asked["library"],
            asked["label"],
            asked["so_pin"],
            bytes.fromhex(asked["object_id"]),
            bytes.fromhex(asked["modulus"]),
            bytes.fromhex(asked["exponent"]),
        )
    except Exception as exc:  # the parent logs it; the PIN is in no exception text
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
