"""CryptoBackend over python-pkcs11 and a PKCS#11 library (SoftHSM2 by default).

Concurrency: each call leases a session of its tenant's token in one lane (hsmd.backend.lanes,
hsmd.backend.tokens): SLOW for key generation, RSA private-key operations, unwrapping and token
searches, FAST for the rest. Different tenants never wait for each other here; the lane of each
method below is the one place that choice is made. A key lookup costs a dictionary access in
the token's handle cache instead of a linear C_FindObjects.

Templates are always explicit (python-pkcs11's defaults are not safe for a KMS): every secret
or private key is a private, sensitive, non-extractable, non-modifiable, non-copyable token
object whose capability attributes allow its usage and nothing else; a public key is a
non-modifiable token object that can only verify or encrypt.

Only this module (and the library) sees PKCS#11; its exceptions become hsmd.errors here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

# Public in the extension module, missing from its stubs; a search in batches of one is the
# only way to step over an object the library cannot read.
from pkcs11._pkcs11 import SearchIter  # type: ignore[attr-defined]
from pkcs11.constants import DEFAULT
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from hsmd.backend import encoding, regions, selftest, softhsm_files
from hsmd.backend.api import Capabilities, TokenObjects, UnwrapTarget
from hsmd.backend.lanes import Lane, LaneSizes
from hsmd.backend.mechanisms import (
    GENERATION,
    KEY_TYPES,
    MAC_MECHANISMS,
    oaep_param,
    required_mechanisms,
    signing_call,
)
from hsmd.backend.pins import PinDeriver
from hsmd.backend.tokens import Lease, TokenName, TokenTable, translate
from hsmd.ciphertext import IV_SIZE
from hsmd.domain import (
    EncryptionAlgorithm,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    SigningAlgorithm,
    WrappingAlgorithm,
)
from hsmd.errors import (
    BackendError,
    DecryptionFailed,
    HsmdError,
    StorageFull,
    StorageUnavailable,
    Unimplemented,
    UnwrapFailed,
)
from hsmd.keyspecs import SIGNING, SPECS, WRAPPING_OAEP, Family, SignatureScheme, Spec
from hsmd.names import token_label

log = logging.getLogger(__name__)

_RSA_PUBLIC_EXPONENT = b"\x01\x00\x01"

# Capability attributes a key may have; each usage turns on only its own.
_PRIVATE_CAPABILITIES = (
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.SIGN_RECOVER,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)
_PUBLIC_CAPABILITIES = (
    Attribute.ENCRYPT,
    Attribute.VERIFY,
    Attribute.VERIFY_RECOVER,
    Attribute.WRAP,
    Attribute.DERIVE,
)
_SECRET_CAPABILITIES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)
_USAGE_CAPABILITIES: dict[tuple[bool, KeyUsage], frozenset[Attribute]] = {
    # (asymmetric, usage): the rights of the secret or private key
    (False, KeyUsage.ENCRYPT_DECRYPT): frozenset({Attribute.ENCRYPT, Attribute.DECRYPT}),
    (False, KeyUsage.GENERATE_VERIFY_MAC): frozenset({Attribute.SIGN, Attribute.VERIFY}),
    (False, KeyUsage.WRAP_UNWRAP): frozenset({Attribute.WRAP, Attribute.UNWRAP}),
    (True, KeyUsage.ENCRYPT_DECRYPT): frozenset({Attribute.DECRYPT}),
    (True, KeyUsage.SIGN_VERIFY): frozenset({Attribute.SIGN}),
}
_PUBLIC_USAGE_CAPABILITIES: dict[KeyUsage, frozenset[Attribute]] = {
    KeyUsage.ENCRYPT_DECRYPT: frozenset({Attribute.ENCRYPT}),
    KeyUsage.SIGN_VERIFY: frozenset({Attribute.VERIFY}),
}

# What SoftHSM2 answers when a GCM tag or an OAEP padding does not check (CKR_GENERAL_ERROR in
# 2.6.1) or the input has the wrong size.
_DECRYPTION_FAILED = (
    p11.GeneralError,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.DataLenRange,
    p11.DataInvalid,
)
_SIGNATURE_INVALID = (p11.SignatureInvalid, p11.SignatureLenRange)
# What C_UnwrapKey answers for material that is not what it should be.
_UNWRAP_FAILED = (
    *_DECRYPTION_FAILED,
    p11.WrappedKeyInvalid,
    p11.WrappedKeyLenRange,
    p11.KeySizeRange,
    p11.TemplateInconsistent,
    p11.AttributeValueInvalid,
    p11.DomainParamsInvalid,
)
# What using unwrapped material answers when it is not a key of its spec (a 28-byte AES key
# refuses the fingerprint's mechanism); a device fault is none of these, and stays the backend's.
_MATERIAL_REFUSED = (
    *_UNWRAP_FAILED,
    p11.MechanismInvalid,
    p11.KeyTypeInconsistent,
    p11.MechanismParamInvalid,
)
# How many tokens one health check asks the library to answer (health_problem).
_HEALTH_SAMPLE = 8
# How each family's pairwise consistency test signs (selftest.pairwise_consistent).
_PAIRWISE_SCHEMES = {Family.RSA: "rsa", Family.EC: "ecdsa", Family.EDWARDS: "eddsa"}
_ONE_STEP = frozenset({WrappingAlgorithm.RSAES_OAEP_SHA_1, WrappingAlgorithm.RSAES_OAEP_SHA_256})
_FINGERPRINT_LABEL = b"hsmd key material fingerprint v1"
# unwrap_key sets every capability attribute of its own (to its defaults, or all false with no
# capabilities); our templates then name each right. A private key has no ENCRYPT, VERIFY or
# WRAP attribute at all (SoftHSM2 refuses them), so those are taken out with DEFAULT.
_NO_DEFAULTS = MechanismFlag(0)
_NOT_ON_PRIVATE_KEYS = {
    Attribute.ENCRYPT: DEFAULT,
    Attribute.VERIFY: DEFAULT,
    Attribute.WRAP: DEFAULT,
}


def key_template(
    object_id: bytes,
    rights: frozenset[Attribute],
    capabilities: tuple[Attribute, ...],
    *,
    extractable: bool = False,
    unwrapped: bool = False,
    wrap_with_trusted: bool = False,
) -> dict[Any, Any]:
    """The full template of a secret or private key: nothing is left to library defaults.
    wrap_with_trusted: the key can be wrapped only under a CKA_TRUSTED key (a multi-region
    secret key, hsmd.backend.regions).

    An extractable key can leave the token only wrapped (it stays sensitive), and only by a
    wrapping key whose own template allows WRAP; see docs/security.md. SoftHSM2 2.6.1 refuses
    C_UnwrapKey with both MODIFIABLE and COPYABLE false (it sets attributes one by one after
    creating the object), so an unwrapped key keeps COPYABLE at its default; a copy could not
    loosen SENSITIVE or EXTRACTABLE anyway (PKCS#11 allows them to change one way only).
    """
    template: dict[Any, Any] = {right: right in rights for right in capabilities}
    template.update(
        {
            Attribute.ID: object_id,
            Attribute.LABEL: object_id.hex(),
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: extractable,
            Attribute.WRAP_WITH_TRUSTED: wrap_with_trusted,
            Attribute.MODIFIABLE: False,
        }
    )
    if not unwrapped:
        template[Attribute.COPYABLE] = False
    return template


def session_template(rights: set[Attribute], *, extractable: bool = False) -> dict[Any, Any]:
    """A throwaway session key (never on the token): sensitive, with only the rights named."""
    template: dict[Any, Any] = {right: right in rights for right in _SECRET_CAPABILITIES}
    template.update(
        {Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: extractable}
    )
    return template


def public_template(object_id: bytes, usage: KeyUsage) -> dict[Any, Any]:
    rights = _PUBLIC_USAGE_CAPABILITIES[usage]
    template: dict[Any, Any] = {right: right in rights for right in _PUBLIC_CAPABILITIES}
    template.update(
        {
            Attribute.ID: object_id,
            Attribute.LABEL: object_id.hex(),
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.MODIFIABLE: False,
            Attribute.COPYABLE: False,
        }
    )
    return template


# The daemon's own token, which holds its audit checkpoint key. The name keys the backend's
# token table like a tenant name, but it is not a valid tenant name (':'), and its label is
# not "hsmd/<tenant>", so no tenant can reach it or collide with it.
DAEMON_TOKEN = "hsmd:daemon"  # noqa: S105 (a token name, not a password)
DAEMON_TOKEN_LABEL = "hsmd:daemon"  # noqa: S105 (a label, not a password)
# The CKA_ID of the checkpoint key pair, by spec (which one exists tells the spec).
DAEMON_KEY_IDS = {
    KeySpec.ED25519: b"hsmd audit checkpoint key ED25519 v1",
    KeySpec.EC_P256: b"hsmd audit checkpoint key EC_P256 v1",
}


class DaemonKey:
    """The daemon's checkpoint signing key: implements hsmd.audit.checkpoint.CheckpointSigner
    (structurally: the backend does not import the audit layer)."""

    def __init__(self, backend: Pkcs11Backend, object_id: bytes, spec: KeySpec) -> None:
        self._backend = backend
        self._object_id = object_id
        self._spec = spec

    @property
    def spec(self) -> KeySpec:
        return self._spec

    def sign(self, data: bytes) -> bytes:
        """Ed25519 of data (64 bytes), or DER ECDSA over SHA-256(data) on P-256."""
        if self._spec is KeySpec.ED25519:
            return self._backend.sign(
                DAEMON_TOKEN, self._object_id, self._spec, SigningAlgorithm.ED25519_SHA_512, data
            )
        return self._backend.sign(
            DAEMON_TOKEN,
            self._object_id,
            self._spec,
            SigningAlgorithm.ECDSA_SHA_256,
            hashlib.sha256(data).digest(),
        )

    def public_key(self) -> bytes:
        return self._backend.public_key(DAEMON_TOKEN, self._object_id, self._spec)


class Pkcs11Backend:
    """The CryptoBackend of hsmd.backend.api over a PKCS#11 library."""

    def __init__(
        self,
        library: Path,
        pins: PinDeriver,
        softhsm2_conf: Path | None = None,
        token_dir: Path | None = None,
        lanes: LaneSizes | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        """token_dir, when the library is SoftHSM2 with its file store, is where its tokens
        are: every change there is made durable (softhsm_files.TokenSync) before it is
        acknowledged, and refused up front when that file system is full or read-only.
        lanes: sessions per tenant in each lane (hsmd.backend.lanes).
        read_only: never create, change or destroy a token or a token object (a worker
        process: SoftHSM2 loses updates between two processes that write one token, so
        only the coordinator writes; hsmd/workers.py).

        Raises:
            StartupRefused: the library cannot be initialised for use by several threads.
        """
        if softhsm2_conf is not None:
            # SoftHSM2 reads its configuration once, at C_Initialize.
            os.environ["SOFTHSM2_CONF"] = str(softhsm2_conf)
        self._pins = pins
        self._library = library
        self._read_only = read_only
        self._token_dir = token_dir
        self._tokens = TokenTable(library, lanes or LaneSizes(), token_dir)
        # Every token change holds it shared; a backup's copy of the tokens holds it alone.
        self._changes = _SharedExclusive()
        self._probed = 0  # tokens the health checks have looked at (health_problem)
        self._probing = threading.Lock()
        self._transport_keys = threading.Lock()  # transport_key
        self._capabilities: Capabilities | None = None

    # Tokens

    def ensure_token(self, tenant: str) -> str:
        self._check_writable()
        with self._changes.shared():
            return self._tokens.ensure(self._tenant_token(tenant))

    def master_secret_fingerprint(self) -> str:
        return self._pins.fingerprint()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """While it lasts, no token changes: the changes in progress finish first, new ones
        wait, and what they changed has been made durable (a backup's consistent point)."""
        with self._changes.exclusive():
            self._tokens.make_durable()
            yield

    def copy_tokens(self, target: Path) -> list[str]:
        """Copies every token's directory into target (a new directory); call it within
        frozen(). Returns the tokens' directory names.

        Raises:
            BackendError: the token directory is not known (a SoftHSM2 configuration of the
                operator's that names none).
        """
        if self._token_dir is None:
            raise BackendError("the token directory is not known: it cannot be copied")
        target.mkdir(mode=0o700)
        copied = [entry for entry in sorted(self._token_dir.iterdir()) if entry.is_dir()]
        for source in copied:
            softhsm_files.copy_token(source, target / source.name)
        return [source.name for source in copied]

    def attach_token(self, tenant: str, serial: str) -> None:
        self._tokens.attach(self._tenant_token(tenant), serial)

    def _tenant_token(self, tenant: str) -> TokenName:
        if tenant == DAEMON_TOKEN:  # never a valid tenant name; refused here all the same
            raise BackendError(f"{DAEMON_TOKEN!r} is the daemon's token, not a tenant's")
        pins = self._pins
        return TokenName(
            tenant, token_label(tenant), lambda: pins.user_pin(tenant), lambda: pins.so_pin(tenant)
        )

    def daemon_key(self) -> DaemonKey:
        """The daemon's own signing key (audit checkpoints), in a token of its own labelled
        DAEMON_TOKEN_LABEL, which no tenant label can equal; the token and the key are made on
        first use. Ed25519 if the library has it, else EC P-256. The private key has the
        template of every signing key here: sensitive, non-extractable, sign only.

        Raises:
            BackendUnavailable: no free slot for the token, or the token cannot be opened.
            BackendError: the library refused to make the token or the key.
        """
        pins = self._pins
        name = TokenName(DAEMON_TOKEN, DAEMON_TOKEN_LABEL, pins.daemon_user_pin, pins.daemon_so_pin)
        self._tokens.attach(name, self._tokens.ensure(name))
        for spec, object_id in DAEMON_KEY_IDS.items():
            if self.has_objects(DAEMON_TOKEN, [object_id]):
                return DaemonKey(self, object_id, spec)
        spec = (
            KeySpec.ED25519 if KeySpec.ED25519 in self.capabilities().key_specs else KeySpec.EC_P256
        )
        object_id = DAEMON_KEY_IDS[spec]
        self.generate_key(DAEMON_TOKEN, object_id, spec, KeyUsage.SIGN_VERIFY)
        log.info("created the daemon's %s checkpoint key in token %r", spec, DAEMON_TOKEN_LABEL)
        return DaemonKey(self, object_id, spec)

    def detach_token(self, tenant: str) -> None:
        self._tokens.detach(tenant)

    def attached_tenants(self) -> list[str]:
        """The tenants whose tokens are open here."""
        return [name for name in self._tokens.attached() if name != DAEMON_TOKEN]

    def health_problem(self) -> str | None:
        """Why the backend as a whole cannot serve, or None (hsmd/transport/observe.py): its
        token directory cannot be written (read-only, I/O errors; a full disk is a limit, not
        a failure), or the library answers no attached token. One tenant's damaged token is
        that tenant's failure, logged, and leaves the others served. A worker process, which
        writes no token, answers the same as its coordinator about the directory."""
        try:
            self._tokens.check_storage()
        except StorageUnavailable as exc:
            return str(exc)
        except StorageFull:
            pass
        failed = []
        attached = self._tokens.attached()
        # A few tokens a look, in turn: the check's cost does not grow with the tenants.
        start = self._probed % max(1, len(attached))
        tokens = (attached[start:] + attached[:start])[:_HEALTH_SAMPLE]
        self._probed += len(tokens)
        for name in tokens:
            try:
                with self._tokens.lease(name, Lane.FAST) as lease:
                    lease.session.generate_random(64)
            except HsmdError as exc:
                log.error("health: the token of %s does not answer: %s", name, exc)
                failed.append(name)
        if tokens and len(failed) == len(tokens):
            return f"the PKCS#11 library answers none of the {len(tokens)} tokens"
        return None

    # Capabilities

    def capabilities(self) -> Capabilities:
        """Probed once a token is attached (trying OAEP needs a session), then remembered."""
        return self._capabilities or self._probe_once()

    def _probe_once(self) -> Capabilities:
        with self._probing, translate():
            if self._capabilities is not None:  # another thread probed while this one waited
                return self._capabilities
            attached = self._tokens.attached()
            probed = self._probe(attached[0] if attached else None)
            if attached:
                self._capabilities = probed
                log.info(
                    "backend supports key specs %s; notes: %s",
                    ", ".join(sorted(probed.key_specs)),
                    "; ".join(probed.notes) or "none",
                )
            return probed

    def _probe(self, tenant: str | None) -> Capabilities:
        """Reads the library's mechanism list, and tries what a list cannot promise (in the
        token of tenant, if one is attached)."""
        slots = [slot for slot, _ in self._tokens.readable_tokens()]
        offered = set(slots[0].get_mechanisms()) if slots else set()
        notes = []
        specs = set()
        for spec in KeySpec:
            missing = required_mechanisms(spec) - offered
            if missing:
                names = ", ".join(sorted(str(m) for m in missing))
                notes.append(f"{spec} is not supported: the library lacks {names}")
            else:
                specs.add(spec)
        encryption = {a for s in specs for a in SPECS[s].encryption}
        if Mechanism.RSA_PKCS_OAEP not in offered:
            encryption -= {
                EncryptionAlgorithm.RSAES_OAEP_SHA_1,
                EncryptionAlgorithm.RSAES_OAEP_SHA_256,
            }
        elif tenant is None:
            encryption.discard(EncryptionAlgorithm.RSAES_OAEP_SHA_256)
            notes.append("RSAES_OAEP_SHA_256 is not yet probed: no token is attached")
        elif not self._oaep_works(tenant, EncryptionAlgorithm.RSAES_OAEP_SHA_256):
            encryption.discard(EncryptionAlgorithm.RSAES_OAEP_SHA_256)
            notes.append(
                "RSAES_OAEP_SHA_256 is not supported: the library refuses OAEP with SHA-256"
            )
        return Capabilities(
            key_specs=frozenset(specs),
            encryption=frozenset(encryption),
            signing=frozenset(a for s in specs for a in SPECS[s].signing),
            mac=frozenset(a for s in specs for a in SPECS[s].mac),
            notes=tuple(notes),
        )

    def _oaep_works(self, tenant: str, algorithm: EncryptionAlgorithm) -> bool:
        """Encrypts one byte under a throwaway session public key; the mechanism list says
        RSA_PKCS_OAEP whatever hashes the library accepts for it."""
        numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            public = lease.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KEY_TYPES[Family.RSA],
                    Attribute.TOKEN: False,
                    Attribute.ENCRYPT: True,
                    Attribute.MODULUS: numbers.n.to_bytes(256, "big"),
                    Attribute.PUBLIC_EXPONENT: _RSA_PUBLIC_EXPONENT,
                }
            )
            try:
                public.encrypt(
                    b"x", mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep_param(algorithm)
                )
            except p11.PKCS11Error:
                return False
            finally:
                public.destroy()
        return True

    # Keys

    def generate_key(
        self,
        tenant: str,
        object_id: bytes,
        spec: KeySpec,
        usage: KeyUsage,
        exportable: bool = False,
        replicable: bool = False,
    ) -> None:
        info = SPECS[spec]
        rights = _USAGE_CAPABILITIES[(info.family.asymmetric, usage)]
        with self._changing(tenant) as lease:
            session = lease.session
            if not info.family.asymmetric:
                key = session.generate_key(
                    KEY_TYPES[info.family],
                    info.bits,
                    store=True,
                    mechanism=GENERATION[info.family],
                    template=key_template(
                        object_id,
                        rights,
                        _SECRET_CAPABILITIES,
                        extractable=exportable or replicable,
                        wrap_with_trusted=replicable,
                    ),
                )
                lease.remember(object_id, ObjectClass.SECRET_KEY, key)
                return
            public = public_template(object_id, usage)
            if info.family is Family.RSA:
                public[Attribute.PUBLIC_EXPONENT] = _RSA_PUBLIC_EXPONENT
            else:
                public[Attribute.EC_PARAMS] = encode_named_curve_parameters(info.curve_oid)
            public_key, private_key = session.generate_keypair(
                KEY_TYPES[info.family],
                info.bits if info.family is Family.RSA else None,
                store=True,
                mechanism=GENERATION[info.family],
                public_template=public,
                private_template=key_template(
                    object_id, rights, _PRIVATE_CAPABILITIES, extractable=replicable
                ),
            )
            lease.remember(object_id, ObjectClass.PUBLIC_KEY, public_key)
            lease.remember(object_id, ObjectClass.PRIVATE_KEY, private_key)
            encrypts = usage is KeyUsage.ENCRYPT_DECRYPT
            scheme = _PAIRWISE_SCHEMES[info.family]
            if not selftest.pairwise_consistent(public_key, private_key, encrypts, scheme):
                lease.destroy(object_id)
                raise BackendError(
                    f"the new {spec} key pair failed its pairwise consistency test (the private"
                    " key's result does not check with the public key); it was destroyed"
                )

    def self_test(self) -> None:
        """Runs the known-answer tests (hsmd.backend.selftest) in the daemon's token, which
        daemon_key() attached.

        Raises:
            StartupRefused: one failed; the message names it.
        """
        if os.environ.get(selftest.CORRUPT_VARIABLE):
            log.warning(
                "%s is set: the self-test %r is made to fail (for labs and tests only)",
                selftest.CORRUPT_VARIABLE,
                os.environ[selftest.CORRUPT_VARIABLE],
            )
        with self._tokens.lease(DAEMON_TOKEN, Lane.FAST) as lease:
            passed = selftest.run_known_answers(lease.session)
        log.info("self-tests passed through the token: %s", ", ".join(passed))

    # Wrapping and import

    def wrap(self, tenant: str, wrapping_object_id: bytes, object_id: bytes) -> bytes:
        """C_WrapKey with AES key wrap with padding (RFC 5649) of an extractable secret key."""
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            wrapping = lease.object(wrapping_object_id, ObjectClass.SECRET_KEY)
            key = lease.object(object_id, ObjectClass.SECRET_KEY)
            return bytes(wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD))

    def unwrap(
        self,
        tenant: str,
        wrapping_object_id: bytes,
        wrapped: bytes,
        padded: bool,
        target: UnwrapTarget,
    ) -> str:
        """C_UnwrapKey (RFC 5649, or RFC 3394 if not padded) into a token secret key made with
        our template; returns the material's fingerprint. Raises UnwrapFailed for bad input."""
        mechanism = Mechanism.AES_KEY_WRAP_PAD if padded else Mechanism.AES_KEY_WRAP
        with self._changing(tenant) as lease:
            wrapping = lease.object(wrapping_object_id, ObjectClass.SECRET_KEY)
            return self._unwrap_secret(lease, wrapping, mechanism, None, wrapped, target)

    def create_import_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        """An RSA key pair that can only unwrap, for one import; returns its public SPKI."""
        with self._changing(tenant) as lease:
            public_key = _unwrap_only_rsa_pair(lease, object_id, SPECS[spec].bits)
            modulus = public_key[Attribute.MODULUS]
            exponent = public_key[Attribute.PUBLIC_EXPONENT]
            public_key.destroy()  # only its SPKI is needed, and that is returned
        return encoding.rsa_spki(modulus, exponent)

    def import_material(
        self,
        tenant: str,
        import_object_id: bytes,
        algorithm: WrappingAlgorithm,
        wrapped: bytes,
        target: UnwrapTarget,
    ) -> str:
        """Unwraps customer material inside the token, in one step (RSAES-OAEP) or two
        (RSAES-OAEP to a session AES key, then AES-KWP: SoftHSM2 has no
        CKM_RSA_AES_KEY_WRAP). Returns the material's fingerprint.

        Raises:
            Unimplemented: the backend cannot do this algorithm's OAEP hash.
            UnwrapFailed: the material is not wrapped under this import key as the algorithm
                says (wrong key, truncated, flipped, wrong size).
        """
        oaep = WRAPPING_OAEP[algorithm]
        self._require_encryption(oaep)
        with self._changing(tenant) as lease:
            rsa_key = lease.object(import_object_id, ObjectClass.PRIVATE_KEY)
            if algorithm in _ONE_STEP:
                return self._unwrap_secret(
                    lease, rsa_key, Mechanism.RSA_PKCS_OAEP, oaep_param(oaep), wrapped, target
                )
            size = len(rsa_key[Attribute.MODULUS])
            if len(wrapped) <= size:
                raise UnwrapFailed()
            try:
                ephemeral = rsa_key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KEY_TYPES[Family.AES],
                    wrapped[:size],
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=oaep_param(oaep),
                    store=False,
                    capabilities=_NO_DEFAULTS,
                    template=session_template({Attribute.UNWRAP}),
                )
            except _UNWRAP_FAILED:
                raise UnwrapFailed() from None
            try:
                return self._unwrap_secret_or_private(
                    lease, ephemeral, Mechanism.AES_KEY_WRAP_PAD, wrapped[size:], target
                )
            finally:
                ephemeral.destroy()

    def _unwrap_secret_or_private(
        self,
        lease: Lease,
        unwrapping: Any,
        mechanism: Mechanism,
        data: bytes,
        target: UnwrapTarget,
    ) -> str:
        if SPECS[target.spec].family.asymmetric:
            return self._unwrap_private(lease, unwrapping, mechanism, data, target)
        return self._unwrap_secret(lease, unwrapping, mechanism, None, data, target)

    def _unwrap_secret(
        self,
        lease: Lease,
        unwrapping: Any,
        mechanism: Mechanism,
        param: Any,
        data: bytes,
        target: UnwrapTarget,
    ) -> str:
        """Unwraps twice: once into a session probe key, then into the token object with the
        key's real template.

        The probe measures and fingerprints the material without it leaving the token.
        SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped keys (and would use 16 bytes as an
        AES_256 key), so the size comes from wrapping the probe under a throwaway session AES
        key: AES-KWP output pins it to within 8 bytes. The fingerprint, which lets a re-import
        be checked, is a function of the key made in the token: for AES, the AES-GCM
        encryption of a fixed label under a fixed IV (a key check value; a 25-31 byte key
        fails it, which pins AES_256 to exactly 32 bytes); for HMAC, the HMAC of the label
        (SoftHSM2 refuses keys shorter than the hash, which pins HMAC_256/384/512 exactly and
        HMAC_224 to 28-32 bytes; a longer HMAC key is not a weaker one)."""
        info = SPECS[target.spec]
        is_aes = info.family is Family.AES
        try:
            probe = unwrapping.unwrap_key(
                ObjectClass.SECRET_KEY,
                KEY_TYPES[info.family],
                data,
                mechanism=mechanism,
                mechanism_param=param,
                store=False,
                capabilities=_NO_DEFAULTS,
                # extractable only to be measured, below, inside the token
                template=session_template(
                    {Attribute.ENCRYPT if is_aes else Attribute.SIGN}, extractable=True
                ),
            )
        except _UNWRAP_FAILED:
            raise UnwrapFailed() from None
        try:
            if not self._has_size(lease, probe, info.bits // 8):
                raise UnwrapFailed()
            fingerprint = _fingerprint(probe, target.spec)
        except _MATERIAL_REFUSED:  # a device fault is the backend's (lease translates it)
            raise UnwrapFailed() from None
        finally:
            probe.destroy()
        rights = _USAGE_CAPABILITIES[(False, target.usage)]
        key = unwrapping.unwrap_key(
            ObjectClass.SECRET_KEY,
            KEY_TYPES[info.family],
            data,
            mechanism=mechanism,
            mechanism_param=param,
            store=True,
            capabilities=_NO_DEFAULTS,
            template=key_template(
                target.object_id,
                rights,
                _SECRET_CAPABILITIES,
                extractable=target.exportable or target.replicable,
                unwrapped=True,
                wrap_with_trusted=target.replicable,
            ),
        )
        lease.remember(target.object_id, ObjectClass.SECRET_KEY, key)
        return fingerprint

    @staticmethod
    def _has_size(lease: Lease, probe: Any, size: int) -> bool:
        """Whether the probe key could be `size` bytes: its AES-KWP wrapping is 8 + its size
        rounded up to 8, so the size is known to within 8 bytes."""
        measure = lease.session.generate_key(
            KEY_TYPES[Family.AES],
            256,
            store=False,
            mechanism=GENERATION[Family.AES],
            template=session_template({Attribute.WRAP}),
        )
        try:
            wrapped = len(measure.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP_PAD))
            return wrapped - 16 < size <= wrapped - 8
        finally:
            measure.destroy()

    def _unwrap_private(
        self,
        lease: Lease,
        unwrapping: Any,
        mechanism: Mechanism,
        data: bytes,
        target: UnwrapTarget,
    ) -> str:
        """A PKCS#8 private key into the token, and its public half beside it (from the
        private object for RSA; from the caller's SPKI, checked later, for EC)."""
        info = SPECS[target.spec]
        rights = _USAGE_CAPABILITIES[(True, target.usage)]
        try:
            private = unwrapping.unwrap_key(
                ObjectClass.PRIVATE_KEY,
                KEY_TYPES[info.family],
                data,
                mechanism=mechanism,
                store=True,
                capabilities=_NO_DEFAULTS,
                template={
                    **key_template(
                        target.object_id,
                        rights,
                        _PRIVATE_CAPABILITIES,
                        extractable=target.replicable,
                        unwrapped=True,
                    ),
                    **_NOT_ON_PRIVATE_KEYS,
                },
            )
        except _UNWRAP_FAILED:
            raise UnwrapFailed() from None
        lease.remember(target.object_id, ObjectClass.PRIVATE_KEY, private)
        public = public_template(target.object_id, target.usage)
        public.update(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KEY_TYPES[info.family]}
        )
        try:
            if info.family is Family.RSA:
                if len(private[Attribute.MODULUS]) * 8 != info.bits:
                    raise UnwrapFailed()
                public[Attribute.MODULUS] = private[Attribute.MODULUS]
                public[Attribute.PUBLIC_EXPONENT] = private[Attribute.PUBLIC_EXPONENT]
            else:
                public[Attribute.EC_PARAMS] = encode_named_curve_parameters(info.curve_oid)
                public[Attribute.EC_POINT] = encoding.ec_point(target.spec, target.public_key)
            lease.remember(
                target.object_id, ObjectClass.PUBLIC_KEY, lease.session.create_object(public)
            )
        except (UnwrapFailed, ValueError, *_MATERIAL_REFUSED):
            lease.destroy(target.object_id)
            raise UnwrapFailed() from None
        return ""

    # Multi-region keys (hsmd.backend.regions)

    def transport_key(self, tenant: str) -> bytes:
        # One maker at a time: two first calls would each make a pair with the one CKA_ID.
        with self._transport_keys, self._changing(tenant) as lease:
            try:
                public_key = lease.object(regions.TRANSPORT_ID, ObjectClass.PUBLIC_KEY)
            except p11.NoSuchKey:
                public_key = self._make_transport_key(lease)
            return encoding.rsa_spki(
                public_key[Attribute.MODULUS], public_key[Attribute.PUBLIC_EXPONENT]
            )

    @staticmethod
    def _make_transport_key(lease: Lease) -> Any:
        object_id = regions.TRANSPORT_ID
        lease.destroy(object_id)  # a half-made pair (one object of two) is made anew
        # The public half is kept only to be read: peers wrap under their trusted copy of it.
        public_key = _unwrap_only_rsa_pair(lease, object_id, regions.TRANSPORT_BITS)
        lease.remember(object_id, ObjectClass.PUBLIC_KEY, public_key)
        return public_key

    def trust_peer(self, tenant: str, region: str, public_key: bytes) -> None:
        modulus, exponent = encoding.rsa_numbers(public_key)
        object_id = regions.peer_object_id(region)
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            try:
                trusted = lease.object(object_id, ObjectClass.PUBLIC_KEY)
                if (trusted[Attribute.MODULUS], trusted[Attribute.PUBLIC_EXPONENT]) == (
                    modulus,
                    exponent,
                ) and trusted[Attribute.TRUSTED]:
                    return
            except p11.NoSuchKey:
                pass
        self._check_writable()
        token = self._tenant_token(tenant)
        # The child process writes the token: no other change may interleave (SoftHSM2 loses
        # updates between two processes that write one token).
        with self._changes.exclusive():
            installed = subprocess.run(
                # -I: nothing from the environment or the working directory is imported into
                # the process that is given the SO PIN.
                [sys.executable, "-I", "-m", "hsmd.backend.regions"],
                input=regions.request(
                    str(self._library), token.label, token.so_pin(), object_id, modulus, exponent
                ),
                capture_output=True,
                timeout=120,
                check=False,
            )
            with self._tokens.lease(tenant, Lane.SLOW) as lease:
                lease.forget(object_id)
            self._tokens.make_durable()
        if installed.returncode != 0:
            raise BackendError(
                f"installing region {region}'s trusted key in tenant {tenant}'s token failed:"
                f" {installed.stderr.decode(errors='replace').strip()[-500:]}"
            )
        log.warning(
            "tenant %s: region %s's transport key (SHA-256 %s) is now trusted by its token",
            tenant,
            region,
            hashlib.sha256(public_key).hexdigest()[:16],
        )

    def wrap_for_peer(self, tenant: str, region: str, object_id: bytes, spec: KeySpec) -> bytes:
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            trusted = lease.object(regions.peer_object_id(region), ObjectClass.PUBLIC_KEY)
            oaep = oaep_param(EncryptionAlgorithm.RSAES_OAEP_SHA_1)
            if not SPECS[spec].family.asymmetric:
                key = lease.object(object_id, ObjectClass.SECRET_KEY)
                return bytes(
                    trusted.wrap_key(key, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep)
                )
            private = lease.object(object_id, ObjectClass.PRIVATE_KEY)
            template = session_template({Attribute.WRAP}, extractable=True)
            template[Attribute.WRAP_WITH_TRUSTED] = True
            transfer = lease.session.generate_key(
                KEY_TYPES[Family.AES],
                256,
                store=False,
                mechanism=GENERATION[Family.AES],
                template=template,
            )
            try:
                head = trusted.wrap_key(
                    transfer, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep
                )
                return bytes(head) + bytes(
                    transfer.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
                )
            finally:
                transfer.destroy()

    def check_value(self, tenant: str, object_id: bytes, spec: KeySpec) -> str:
        if SPECS[spec].family.asymmetric:
            return hashlib.sha256(self.public_key(tenant, object_id, spec)).hexdigest()
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            return _fingerprint(lease.object(object_id, ObjectClass.SECRET_KEY), spec)

    def unwrap_from_peer(self, tenant: str, wrapped: bytes, target: UnwrapTarget) -> str:
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            try:
                lease.object(regions.TRANSPORT_ID, ObjectClass.PRIVATE_KEY)
            except p11.NoSuchKey:  # never made here: it was wrapped for another token
                raise UnwrapFailed() from None
        one_step = not SPECS[target.spec].family.asymmetric
        algorithm = (
            WrappingAlgorithm.RSAES_OAEP_SHA_1
            if one_step
            else WrappingAlgorithm.RSA_AES_KEY_WRAP_SHA_1
        )
        return self.import_material(tenant, regions.TRANSPORT_ID, algorithm, wrapped, target)

    def has_objects(self, tenant: str, object_ids: list[bytes]) -> bool:
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            return all(
                any(True for _ in lease.session.get_objects({Attribute.ID: object_id}))
                for object_id in object_ids
            )

    def objects(self, tenant: str) -> TokenObjects:
        """Every object's CKA_ID, one object at a time, so that one the library cannot read
        (a damaged file) is counted and skipped instead of ending the scan."""
        ids = set()
        unreadable = 0
        with (
            self._tokens.lease(tenant, Lane.SLOW) as lease,
            SearchIter(lease.session, {}, 1) as search,
        ):
            for batch in search:
                try:
                    for obj in batch:
                        object_id = bytes(obj[Attribute.ID])
                        lease.remember(object_id, ObjectClass(obj[Attribute.CLASS]), obj)
                        ids.add(object_id)
                except (p11.PKCS11Error, ValueError) as exc:
                    unreadable += 1
                    log.error(
                        "tenant %s: a token object the library cannot read (%s)",
                        tenant,
                        type(exc).__name__,
                    )
        return TokenObjects(frozenset(ids), unreadable)

    def fits(
        self, tenant: str, object_id: bytes, spec: KeySpec, usage: KeyUsage, exportable: bool
    ) -> bool:
        """Whether the objects with this CKA_ID are a key hsmd could have made for this spec
        and usage: a secret key, or a private key and its public key, of the spec's type and
        size, with exactly the usage's rights, sensitive, and extractable only if the key is
        exportable (so adopting an object can never loosen what the key allows)."""
        info = SPECS[spec]
        found: dict[ObjectClass, Any] = {}
        capabilities: tuple[Attribute, ...]
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            for obj in lease.session.get_objects({Attribute.ID: object_id}):
                found[ObjectClass(obj[Attribute.CLASS])] = obj
            if info.family.asymmetric:
                if set(found) != {ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY}:
                    return False
                key, capabilities = found[ObjectClass.PRIVATE_KEY], _PRIVATE_CAPABILITIES
            else:
                if set(found) != {ObjectClass.SECRET_KEY}:
                    return False
                key, capabilities = found[ObjectClass.SECRET_KEY], _SECRET_CAPABILITIES
            rights = _USAGE_CAPABILITIES[(info.family.asymmetric, usage)]
            return (
                all(obj[Attribute.KEY_TYPE] == KEY_TYPES[info.family] for obj in found.values())
                and all(bool(key[right]) == (right in rights) for right in capabilities)
                and bool(key[Attribute.SENSITIVE])
                and (exportable or not key[Attribute.EXTRACTABLE])
                and _has_spec_size(found, info)
            )

    def destroy(self, tenant: str, object_id: bytes) -> None:
        with self._changing(tenant, adds=False) as lease:
            lease.destroy(object_id)

    # Cryptography

    def encrypt(
        self, tenant: str, object_id: bytes, plaintext: bytes, aad: bytes
    ) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(IV_SIZE)
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            key = lease.object(object_id, ObjectClass.SECRET_KEY)
            ciphertext = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad)
            )
        return iv, bytes(ciphertext)

    def decrypt(
        self, tenant: str, object_id: bytes, iv: bytes, ciphertext_and_tag: bytes, aad: bytes
    ) -> bytes:
        if len(iv) != IV_SIZE:  # SoftHSM2 accepts short IVs; we never do.
            raise DecryptionFailed()
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            key = lease.object(object_id, ObjectClass.SECRET_KEY)
            try:
                plaintext = key.decrypt(
                    ciphertext_and_tag,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(iv, aad),
                )
            except _DECRYPTION_FAILED:
                raise DecryptionFailed() from None
        return bytes(plaintext)

    def rsa_encrypt(
        self, tenant: str, object_id: bytes, algorithm: EncryptionAlgorithm, plaintext: bytes
    ) -> bytes:
        self._require_encryption(algorithm)
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            key = lease.object(object_id, ObjectClass.PUBLIC_KEY)
            ciphertext = key.encrypt(
                plaintext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep_param(algorithm)
            )
        return bytes(ciphertext)

    def rsa_decrypt(
        self, tenant: str, object_id: bytes, algorithm: EncryptionAlgorithm, ciphertext: bytes
    ) -> bytes:
        self._require_encryption(algorithm)
        with self._tokens.lease(tenant, Lane.SLOW) as lease:
            key = lease.object(object_id, ObjectClass.PRIVATE_KEY)
            try:
                plaintext = key.decrypt(
                    ciphertext,
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=oaep_param(algorithm),
                )
            except _DECRYPTION_FAILED:
                raise DecryptionFailed() from None
        return bytes(plaintext)

    def _require_encryption(self, algorithm: EncryptionAlgorithm) -> None:
        if algorithm not in self.capabilities().encryption:
            raise Unimplemented(f"this backend does not support {algorithm} (see GetCapabilities)")

    def sign(
        self, tenant: str, object_id: bytes, spec: KeySpec, algorithm: SigningAlgorithm, data: bytes
    ) -> bytes:
        call = signing_call(algorithm, data)
        with self._tokens.lease(tenant, _signing_lane(spec)) as lease:
            key = lease.object(object_id, ObjectClass.PRIVATE_KEY)
            signature = bytes(
                key.sign(call.data, mechanism=call.mechanism, mechanism_param=call.param)
            )
        if SIGNING[algorithm].scheme is SignatureScheme.ECDSA:
            return encoding.ecdsa_raw_to_der(signature)
        return signature

    def verify(
        self,
        tenant: str,
        object_id: bytes,
        spec: KeySpec,
        algorithm: SigningAlgorithm,
        data: bytes,
        signature: bytes,
    ) -> bool:
        if SIGNING[algorithm].scheme is SignatureScheme.ECDSA:
            raw = encoding.ecdsa_der_to_raw(signature, encoding.field_size(spec))
            if raw is None:
                return False
            signature = raw
        call = signing_call(algorithm, data)
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            key = lease.object(object_id, ObjectClass.PUBLIC_KEY)
            # python-pkcs11 answers CKR_SIGNATURE_INVALID with False; other refusals of a
            # malformed signature arrive as exceptions.
            try:
                return bool(
                    key.verify(
                        call.data, signature, mechanism=call.mechanism, mechanism_param=call.param
                    )
                )
            except _SIGNATURE_INVALID:
                return False

    def public_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            cached = lease.token.public_keys.get(object_id)
            if cached is None:
                key = lease.object(object_id, ObjectClass.PUBLIC_KEY)
                if SPECS[spec].family is Family.RSA:
                    cached = encoding.rsa_spki(
                        key[Attribute.MODULUS], key[Attribute.PUBLIC_EXPONENT]
                    )
                else:
                    cached = encoding.ec_spki(spec, key[Attribute.EC_POINT])
                lease.token.public_keys[object_id] = cached
            return cached

    def mac(self, tenant: str, object_id: bytes, algorithm: MacAlgorithm, message: bytes) -> bytes:
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            key = lease.object(object_id, ObjectClass.SECRET_KEY)
            return bytes(key.sign(message, mechanism=MAC_MECHANISMS[algorithm]))

    def generate_random(self, tenant: str, size: int) -> bytes:
        with self._tokens.lease(tenant, Lane.FAST) as lease:
            return bytes(lease.session.generate_random(size * 8))

    def begin_close(self) -> None:
        """From now on every tenant call fails at once with BackendUnavailable instead of
        waiting for a session (shutdown: handlers still queued give up; the calls in progress
        finish). The daemon's own token still signs the audit log's closing checkpoint."""
        self._tokens.stop("the daemon is stopping", except_token=DAEMON_TOKEN)

    def close(self) -> None:
        """Waits for the calls in progress, then closes every session."""
        self.begin_close()
        self._tokens.close()

    # Helpers

    @contextmanager
    def _changing(self, tenant: str, *, adds: bool = True) -> Iterator[Lease]:
        """A SLOW lease for a call that changes the token: refused up front when its file
        system cannot take an addition, and left only once the change is durable. A removal
        (adds False) is not refused up front: it frees space, and finds nothing to remove when
        the addition it rolls back was refused."""
        self._check_writable()
        if adds:
            self._tokens.check_storage()
        with self._changes.shared():
            try:
                with self._tokens.lease(tenant, Lane.SLOW) as lease:
                    yield lease
            except BackendError:
                self._tokens.check_storage()  # a full or read-only disk is the likelier cause
                raise
            self._tokens.make_durable()

    # Removing a tenant's token (tenant deletion)

    def remove_token(self, tenant: str, serial: str) -> None:
        """Destroys the tenant's token (hsmd.backend.tokens.TokenTable.remove).

        Raises:
            BackendError: the token with that serial carries another tenant's label, or the
                library refused to erase it.
        """
        self._check_writable()
        with self._changes.shared():
            self._tokens.remove(self._tenant_token(tenant), serial)

    def _check_writable(self) -> None:
        if self._read_only:
            raise BackendError("this process only reads tokens: the coordinator changes them")


# The largest RSA key a fast session signs with: RSA-2048 takes about 0.7 ms of a core, about
# what a call costs the daemon besides, so keeping it apart gained no isolation and held one
# tenant's RSA-2048 signing to one core (0.2x the raw two-process rate). RSA-3072 takes ~2 ms
# and RSA-4096 ~20 ms; EC and Ed25519 ~80 us.
_FAST_RSA_BITS = 2048


def _unwrap_only_rsa_pair(lease: Lease, object_id: bytes, bits: int) -> Any:
    """A token RSA key pair whose private half can only unwrap (import, and a region's
    transport key) and whose public half can do nothing; returns the public half, the
    private one is cached on the lease's token."""
    public = public_template(object_id, KeyUsage.ENCRYPT_DECRYPT)
    public.update({Attribute.ENCRYPT: False, Attribute.WRAP: False})
    public[Attribute.PUBLIC_EXPONENT] = _RSA_PUBLIC_EXPONENT
    public_key, private_key = lease.session.generate_keypair(
        KEY_TYPES[Family.RSA],
        bits,
        store=True,
        mechanism=GENERATION[Family.RSA],
        public_template=public,
        private_template=key_template(
            object_id, frozenset({Attribute.UNWRAP}), _PRIVATE_CAPABILITIES
        ),
    )
    lease.remember(object_id, ObjectClass.PRIVATE_KEY, private_key)
    return public_key


def _signing_lane(spec: KeySpec) -> Lane:
    info = SPECS[spec]
    return Lane.SLOW if info.family is Family.RSA and info.bits > _FAST_RSA_BITS else Lane.FAST


def _has_spec_size(found: dict[ObjectClass, Any], info: Spec) -> bool:
    """Whether a key's objects have its spec's size or curve. A secret key's CKA_VALUE_LEN is
    0 when SoftHSM2 unwrapped it (see _unwrap_secret), and then cannot be read here."""
    if info.family is Family.RSA:
        return len(found[ObjectClass.PRIVATE_KEY][Attribute.MODULUS]) * 8 == info.bits
    if info.family.asymmetric:
        wanted = encode_named_curve_parameters(info.curve_oid)
        return bytes(found[ObjectClass.PUBLIC_KEY][Attribute.EC_PARAMS]) == wanted
    size = found[ObjectClass.SECRET_KEY][Attribute.VALUE_LEN]
    return size in (0, info.bits // 8)


def _fingerprint(probe: Any, spec: KeySpec) -> str:
    """A function of a secret key computed in the token (see _unwrap_secret): AES-GCM of a
    fixed label for AES keys, the spec's own HMAC of it for HMAC keys (SoftHSM2 refuses a
    key shorter than the hash, so HMAC_224 material cannot use SHA-256)."""
    info = SPECS[spec]
    if info.family is Family.AES:
        value = probe.encrypt(
            _FINGERPRINT_LABEL,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(bytes(IV_SIZE), _FINGERPRINT_LABEL),
        )
    else:
        value = probe.sign(_FINGERPRINT_LABEL, mechanism=MAC_MECHANISMS[info.mac[0]])
    return bytes(value).hex()


class _SharedExclusive:
    """Many holders at once (token changes), or one alone (a backup's copy); one that waits
    to hold it alone keeps new shared holders out, so it does not wait for ever."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()
