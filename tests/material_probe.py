"""Recovers a stopped daemon's multi-region secret key material, white-box; run as its own process.

It does what the security model says the holder of a token's SO and user PINs can do
(docs/security.md, "Multi-region keys"): as the SO, trust an RSA key this process made; as the
user, wrap the key under it (CKA_WRAP_WITH_TRUSTED allows nothing else); unwrap locally. The
test then searches the daemon's database, log and audit files for the material.
Usage: material_probe.py LIBRARY LABEL OBJECT_ID_HEX  (PINs in HSMD_TEST_PIN, HSMD_TEST_SO_PIN)
"""

import os
import sys

import pkcs11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import MGF, Attribute, Mechanism, ObjectClass

from hsmd.backend.regions import install_trusted_key

PROBE_ID = b"hsmd region peer test-probe"


def main() -> None:
    library, label, object_id = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    numbers = private_key.public_key().public_numbers()
    install_trusted_key(
        library,
        label,
        os.environ["HSMD_TEST_SO_PIN"],
        PROBE_ID,
        numbers.n.to_bytes(384, "big"),
        numbers.e.to_bytes(3, "big"),
    )
    token = pkcs11.lib(library).get_token(token_label=label)
    with token.open(rw=True, user_pin=os.environ["HSMD_TEST_PIN"]) as session:
        trusted = session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=PROBE_ID)
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
        wrapped = trusted.wrap_key(
            key,
            mechanism=Mechanism.RSA_PKCS_OAEP,
            mechanism_param=(Mechanism.SHA_1, MGF.SHA1, None),
        )
        trusted.destroy()
        assert key[Attribute.WRAP_WITH_TRUSTED]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    print(private_key.decrypt(bytes(wrapped), oaep).hex())


if __name__ == "__main__":
    main()
