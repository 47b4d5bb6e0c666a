"""The isolation lab's look into the tokens (its at-rest control, hsmd/lab/controls.py), in
the backend, which alone touches PKCS#11, and in a process of its own (SoftHSM2 reads its
configuration, named by SOFTHSM2_CONF, once, and the lab's process must not hold a second one):
reads a JSON request {"library": PKCS#11 library, "tokens": {tenant: user PIN}} on stdin,
writes what it found on stdout. Run as `python -m hsmd.backend.token_probe`."""

from __future__ import annotations

import json
import sys
from typing import Any

import pkcs11
from pkcs11 import Attribute, ObjectClass

_SECRET = {ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY}


def _flag(obj: Any, attribute: Attribute) -> bool | None:
    try:
        return bool(obj[attribute])
    except pkcs11.PKCS11Error:
        return None


def main() -> int:
    request = json.load(sys.stdin)
    library = pkcs11.lib(request["library"])
    tokens = {t: library.get_token(token_label=f"hsmd/{t}") for t in request["tokens"]}
    visible_without_login = 0
    for token in tokens.values():
        with token.open() as public:  # no login: only public objects would show
            visible_without_login += sum(
                obj[Attribute.CLASS] in _SECRET for obj in public.get_objects()
            )
    objects = []
    for tenant, token in tokens.items():
        with token.open(user_pin=request["tokens"][tenant]) as session:
            for obj in session.get_objects():
                kind = obj[Attribute.CLASS]
                objects.append(
                    {
                        "tenant": tenant,
                        "class": ObjectClass(kind).name,
                        "secret": kind in _SECRET,
                        "private": _flag(obj, Attribute.PRIVATE),
                        "sensitive": _flag(obj, Attribute.SENSITIVE),
                        "extractable": _flag(obj, Attribute.EXTRACTABLE),
                    }
                )
    cross = 0
    for tenant, token in tokens.items():
        for other, pin in request["tokens"].items():
            if other == tenant:
                continue
            try:
                with token.open(user_pin=pin):
                    cross += 1
            except pkcs11.PKCS11Error:
                pass
    serials = {tenant: token.serial.decode() for tenant, token in tokens.items()}
    json.dump(
        {
            "serials": serials,
            "objects": objects,
            "visible_without_login": visible_without_login,
            "cross_logins": cross,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
