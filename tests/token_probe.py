"""Reads or changes a stopped daemon's token behind its back; run as its own process.

A separate process sees the token as it is on disk (SoftHSM2 reads tokens at C_Initialize), and
keeps the test process free of a second PKCS#11 configuration. The PIN comes in HSMD_TEST_PIN.
Usage: token_probe.py LIBRARY LABEL list [OBJECT_ID_HEX ...]   (no ids: every object)
       token_probe.py LIBRARY LABEL destroy OBJECT_ID_HEX ...
       token_probe.py LIBRARY LABEL orphan OBJECT_ID_HEX       (a token AES key no row names)
"""

import json
import os
import sys

import pkcs11
from pkcs11 import Attribute
from pkcs11._pkcs11 import SearchIter

BOOLEANS = {
    "token": Attribute.TOKEN,
    "private": Attribute.PRIVATE,
    "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE,
    "never_extractable": Attribute.NEVER_EXTRACTABLE,
    "modifiable": Attribute.MODIFIABLE,
    "copyable": Attribute.COPYABLE,
    "encrypt": Attribute.ENCRYPT,
    "decrypt": Attribute.DECRYPT,
    "sign": Attribute.SIGN,
    "verify": Attribute.VERIFY,
    "wrap": Attribute.WRAP,
    "unwrap": Attribute.UNWRAP,
    "derive": Attribute.DERIVE,
}


def describe(obj):
    facts = {"id": bytes(obj[Attribute.ID]).hex()}
    for name, attribute in BOOLEANS.items():
        try:
            facts[name] = bool(obj[attribute])
        except pkcs11.PKCS11Error as exc:
            facts[name] = type(exc).__name__
    try:
        obj[Attribute.VALUE]
        facts["value"] = "readable"
    except pkcs11.PKCS11Error as exc:
        facts["value"] = type(exc).__name__
    return facts


def readable(session, query):
    """The objects matching query that the library can read (a torn or damaged one, which a
    crash can leave, is stepped over as the daemon does)."""
    found = []
    with SearchIter(session, query, 1) as search:
        for batch in search:
            try:
                found.extend(batch)
            except pkcs11.PKCS11Error:
                continue
    return found


def main():
    library, label, action, *ids = sys.argv[1:]
    token = pkcs11.lib(library).get_token(token_label=label)
    with token.open(rw=True, user_pin=os.environ["HSMD_TEST_PIN"]) as session:
        wanted = [{Attribute.ID: bytes.fromhex(i)} for i in ids] or [{}]
        found = [obj for query in wanted for obj in readable(session, query)]
        if action == "list":
            json.dump([describe(obj) for obj in found], sys.stdout)
        elif action == "destroy":
            for obj in found:
                obj.destroy()
        elif action == "orphan":
            session.generate_key(
                pkcs11.KeyType.AES, 256, store=True, template={Attribute.ID: bytes.fromhex(ids[0])}
            )


main()
