"""Reads a token's objects and their security attributes; run as its own process by the harness.

A separate process sees the token as it is on disk (SoftHSM2 reads tokens at C_Initialize), and
keeps the test process free of a second PKCS#11 configuration. The PIN comes in HSMD_TEST_PIN.
Usage: token_probe.py LIBRARY LABEL [OBJECT_ID_HEX ...]  (no ids: every object)
"""

import json
import os
import sys

import pkcs11
from pkcs11 import Attribute

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


def main():
    library, label, *ids = sys.argv[1:]
    token = pkcs11.lib(library).get_token(token_label=label)
    with token.open(user_pin=os.environ["HSMD_TEST_PIN"]) as session:
        wanted = [{Attribute.ID: bytes.fromhex(i)} for i in ids] or [{}]
        found = [describe(obj) for query in wanted for obj in session.get_objects(query)]
    json.dump(found, sys.stdout)


main()
