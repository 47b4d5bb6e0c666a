"""Bring your own key, as in AWS KMS: GetParametersForImport, ImportKeyMaterial,
DeleteImportedKeyMaterial, and the expiry of imported material.

GetParametersForImport makes an unwrap-only RSA key pair in the tenant's token and an import
token (random, stored, valid 24 hours) naming it, the key and the wrapping algorithm. The
customer wraps its material under the public key; ImportKeyMaterial unwraps it inside the
token into the key's first version, never seeing it. A key takes only the material it first
took: the fingerprint of the first import (an HMAC of a fixed label under the material, made
in the token; for private keys, the public key) must match on every re-import.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hsmd import keyspecs
from hsmd.backend.api import UnwrapTarget
from hsmd.domain import (
    EncryptionAlgorithm,
    ImportParameters,
    Key,
    KeySpec,
    KeyUsage,
    RequestContext,
    SigningAlgorithm,
    WrappingAlgorithm,
)
from hsmd.errors import (
    REASON_EXPIRED_IMPORT_TOKEN,
    REASON_INVALID_IMPORT_TOKEN,
    InvalidArgument,
    NotFound,
    Unimplemented,
    UnwrapFailed,
)
from hsmd.lifecycle import Operation
from hsmd.ops.keys import KeyMaker, new_object_id
from hsmd.ops.resolve import usable_key

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(hours=24)
WRAPPING_SPECS = (KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096)
# A signature proves an imported private key matches the public key it came with.
_PROOF_ALGORITHM = {
    keyspecs.Family.RSA: SigningAlgorithm.RSASSA_PKCS1_V1_5_SHA_256,
    keyspecs.Family.EC: SigningAlgorithm.ECDSA_SHA_256,
}


@dataclass(frozen=True)
class Parameters:
    key: Key
    token: str
    public_key: bytes
    valid_to: datetime


class ImportOps(KeyMaker):
    def get_parameters(
        self,
        ctx: RequestContext,
        key_id: str,
        algorithm: WrappingAlgorithm,
        wrapping_spec: KeySpec | None,
    ) -> Parameters:
        """Raises InvalidArgument for a wrapping spec other than RSA_2048/3072/4096, or a key
        spec that cannot be imported; ResourceExhausted if the tenant has as many import
        parameters pending as its quota allows (nothing is made then)."""
        wrapping_spec = wrapping_spec or KeySpec.RSA_2048
        if wrapping_spec not in WRAPPING_SPECS:
            raise InvalidArgument("wrapping_key_spec must be RSA_2048, RSA_3072 or RSA_4096")
        key = usable_key(self._store, ctx, key_id, Operation.GET_IMPORT_PARAMETERS)
        oaep = keyspecs.WRAPPING_OAEP[algorithm]
        if oaep not in self._backend.capabilities().encryption:
            raise Unimplemented(f"this backend does not support {algorithm} (see GetCapabilities)")
        object_id = new_object_id()
        parameters = ImportParameters(
            token=secrets.token_urlsafe(32),
            tenant=key.tenant,
            key_id=key.key_id,
            object_id=object_id,
            algorithm=algorithm,
            wrapping_spec=wrapping_spec,
            expires_at=self._clock.now() + TOKEN_LIFETIME,
        )
        # The row first: a crash after it leaves a token whose missing object expires away;
        # an object without a row would be quarantined at the next start.
        self._store.add_import_parameters(parameters, self._limits(key.tenant).max_pending_imports)
        public_key = self._backend.create_import_key(key.tenant, object_id, wrapping_spec)
        return Parameters(key, parameters.token, public_key, parameters.expires_at)

    def import_material(
        self,
        ctx: RequestContext,
        key_id: str,
        token: str,
        material: bytes,
        valid_to: datetime | None,
        public_key: bytes | None,
    ) -> Key:
        """Unwraps the material into the key inside the token and enables it.

        Raises:
            InvalidArgument: the token is expired or for another key, valid_to has passed, or
                the public key does not match the imported private key.
            UnwrapFailed: the material does not unwrap under the token's wrapping key, or
                is not of the key's spec, or differs from the material first imported.
        """
        key = usable_key(self._store, ctx, key_id, Operation.IMPORT_MATERIAL)
        parameters = self._parameters(key, token)
        now = self._clock.now()
        if valid_to is not None and valid_to <= now:
            raise InvalidArgument("valid_to must be in the future")
        version = self._store.add_version(key.tenant, key.key_id, new_object_id(), now, None)
        target = UnwrapTarget(version.object_id, key.spec, key.usage, key.exportable, public_key)
        try:
            fingerprint = self._backend.import_material(
                key.tenant, parameters.object_id, parameters.algorithm, material, target
            )
            if keyspecs.SPECS[key.spec].family.asymmetric:
                fingerprint = self._prove_private_key(key, version.object_id, public_key)
            if key.material_fingerprint and fingerprint != key.material_fingerprint:
                raise UnwrapFailed()  # AWS: a key takes only the material it first took
        except Exception:
            self._backend.destroy(key.tenant, version.object_id)
            self._store.remove_version(key.tenant, key.key_id, version.version)
            raise
        imported = self._store.complete_import(version, fingerprint, valid_to)
        log.info("imported key material into key %s", key.key_id)
        return imported

    def delete_material(self, ctx: RequestContext, key_id: str) -> Key:
        key = usable_key(self._store, ctx, key_id, Operation.DELETE_MATERIAL)
        self._forget(key)
        return self._store.get_key(key.tenant, key.key_id)

    def expire_due(self) -> Iterator[Key]:
        """Forgets material past its valid_to, yielding each key as it is done, and destroys
        expired import keys. One tenant's token trouble does not hold up the others."""
        now = self._clock.now()
        for key in self._store.keys_expired(now):
            log.warning("key material of key %s expired", key.key_id)
            try:
                self._forget(key)
            except Exception:
                log.exception(
                    "key %s of tenant %s: its expired material is forgotten, but its objects are"
                    " not yet destroyed: start-up repair destroys them once the token is back",
                    key.key_id,
                    key.tenant,
                )
            yield key
        for parameters in self._store.expired_import_parameters(now):
            try:
                self._backend.destroy(parameters.tenant, parameters.object_id)
            except Exception:
                log.exception(
                    "tenant %s: the expired import key %s cannot be destroyed yet; retried",
                    parameters.tenant,
                    parameters.object_id.hex(),
                )
                continue
            self._store.remove_import_parameters(parameters.token)

    def _forget(self, key: Key) -> None:
        """Metadata first: a crash before the objects go leaves DESTROYED versions whose
        objects the next start destroys (hsmd.repair), never a key that claims material it
        lost."""
        for version in self._store.forget_material(key.tenant, key.key_id):
            self._backend.destroy(key.tenant, version.object_id)
        self._store.drop_forgotten_versions(key.tenant, key.key_id)

    def _parameters(self, key: Key, token: str) -> ImportParameters:
        try:
            parameters = self._store.get_import_parameters(key.tenant, token)
        except NotFound:
            raise InvalidArgument(
                "import_token is not a token of GetParametersForImport",
                REASON_INVALID_IMPORT_TOKEN,
            ) from None
        if parameters.key_id != key.key_id:
            raise InvalidArgument(
                "import_token was issued for another key", REASON_INVALID_IMPORT_TOKEN
            )
        if parameters.expires_at <= self._clock.now():
            raise InvalidArgument(
                "import_token has expired; call GetParametersForImport again",
                REASON_EXPIRED_IMPORT_TOKEN,
            )
        return parameters

    def _prove_private_key(self, key: Key, object_id: bytes, given: bytes | None) -> str:
        """Signs a fresh challenge with the imported private key and checks it with the public
        key beside it (and that this is the public key the caller gave); returns the public
        key's hash as the material's fingerprint."""
        spki = self._backend.public_key(key.tenant, object_id, key.spec)
        if given is not None and given != spki:
            raise InvalidArgument("public_key does not match the imported private key")
        public = serialization.load_der_public_key(spki)
        challenge = secrets.token_bytes(32)
        if key.usage is KeyUsage.ENCRYPT_DECRYPT:  # a decryption key proves itself decrypting
            assert isinstance(public, rsa.RSAPublicKey)
            oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303
            ciphertext = public.encrypt(challenge, oaep)
            answer = self._backend.rsa_decrypt(
                key.tenant, object_id, EncryptionAlgorithm.RSAES_OAEP_SHA_1, ciphertext
            )
            if answer != challenge:
                raise InvalidArgument("public_key does not match the imported private key")
            return hashlib.sha256(spki).hexdigest()
        algorithm = _PROOF_ALGORITHM[keyspecs.SPECS[key.spec].family]
        digest = hashlib.sha256(challenge).digest()
        signature = self._backend.sign(key.tenant, object_id, key.spec, algorithm, digest)
        try:
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, challenge, ec.ECDSA(hashes.SHA256()))
            else:
                raise InvalidSignature
        except InvalidSignature:
            raise InvalidArgument("public_key does not match the imported private key") from None
        return hashlib.sha256(spki).hexdigest()
