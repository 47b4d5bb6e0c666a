"""Recovers a stopped daemon's multi-region key material, white-box; run as its own process.

It does what the security model says the holder of a token's SO and user PINs can do
(docs/security.md, "Multi-region keys"): as the SO, trust an RSA key this process made; as the
user, wrap a secret key under it (CKA_WRAP_WITH_TRUSTED allows nothing else), or a private
key under a session AES key wrapped under it (as replication does); unwrap locally. Prints the
secret key's bytes, or the EC private key's scalar, in hex. The test then searches the
daemon's database, log and audit files for them.
Usage: material_probe.py LIBRARY LABEL OBJECT_ID_HEX  (PINs in HSMD_TEST_PIN, HSMD_TEST_SO_PIN)
"""

import os
import sys

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass

from hsmd.backend.regions import install_trusted_key

PROBE_ID = b"hsmd region peer test-probe"


def _first_element(der: bytes) -> bytes:
    """The DER element at the start: SoftHSM2 2.6.1 zero-pads a private key's PKCS#8 to a
    multiple of 8 bytes before AES-KWP, so the unwrapped bytes can end in zeros."""
    if der[1] < 0x80:
        return der[: 2 + der[1]]
    size = der[1] & 0x7F
    return der[: 2 + size + int.from_bytes(der[2 : 2 + size], "big")]


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
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    oaep_param = (Mechanism.SHA_1, MGF.SHA1, None)
    token = pkcs11.lib(library).get_token(token_label=label)
    with token.open(rw=True, user_pin=os.environ["HSMD_TEST_PIN"]) as session:
        trusted = session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=PROBE_ID)
        found = {o[Attribute.CLASS]: o for o in session.get_objects({Attribute.ID: object_id})}
        if ObjectClass.SECRET_KEY in found:
            key = found[ObjectClass.SECRET_KEY]
            assert key[Attribute.WRAP_WITH_TRUSTED]
            wrapped = trusted.wrap_key(
                key, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep_param
            )
            print(private_key.decrypt(bytes(wrapped), oaep).hex())
        else:
            transfer = session.generate_key(
                KeyType.AES,
                256,
                template={
                    Attribute.TOKEN: False,
                    Attribute.EXTRACTABLE: True,
                    Attribute.WRAP: True,
                },
            )
            pkcs8 = transfer.wrap_key(
                found[ObjectClass.PRIVATE_KEY], mechanism=Mechanism.AES_KEY_WRAP_PAD
            )
            head = trusted.wrap_key(
                transfer, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep_param
            )
            der = aes_key_unwrap_with_padding(private_key.decrypt(bytes(head), oaep), bytes(pkcs8))
            recovered = serialization.load_der_private_key(_first_element(der), None)
            assert isinstance(recovered, ec.EllipticCurvePrivateKey)
            size = (recovered.curve.key_size + 7) // 8
            print(recovered.private_numbers().private_value.to_bytes(size, "big").hex())
        trusted.destroy()


if __name__ == "__main__":
    main()
