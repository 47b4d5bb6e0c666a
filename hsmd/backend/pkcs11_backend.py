"""CryptoBackend over python-pkcs11 and a PKCS#11 library (SoftHSM2 by default).

Concurrency model: one lock serialises every call into the library. python-pkcs11 initialises
the library with C_Initialize(NULL) and releases the GIL around each call, so SoftHSM2 runs with
its own locking off and two threads inside it can crash the process (DESIGN §9). Serialising
costs little here: a token AES-GCM operation takes ~30 µs while a gRPC call costs ~220 µs of the
same GIL. Each tenant has one read-write session, logged in once, that lives as long as the
daemon; object handles stay valid while it is open, so the handle cache below never goes stale
and a key lookup costs a dictionary access instead of a linear C_FindObjects.

Templates are always explicit (python-pkcs11's defaults are not safe for a KMS): every secret
or private key is a private, sensitive, non-extractable, non-modifiable, non-copyable token
object whose capability attributes allow its usage and nothing else; a public key is a
non-modifiable token object that can only verify or encrypt.

Only this module (and the library) sees PKCS#11; its exceptions become hsmd.errors here.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11

# Public in the extension module, missing from its stubs; a search in batches of one is the
# only way to step over an object the library cannot read.
from pkcs11._pkcs11 import SearchIter  # type: ignore[attr-defined]
from pkcs11.constants import DEFAULT
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from hsmd.backend import encoding
from hsmd.backend.api import Capabilities, TokenObjects, UnwrapTarget
from hsmd.backend.mechanisms import (
    GENERATION,
    KEY_TYPES,
    MAC_MECHANISMS,
    oaep_param,
    required_mechanisms,
    signing_call,
)
from hsmd.backend.pins import PinDeriver
from hsmd.backend.softhsm_files import TokenSync, scan_tokens, storage_problem
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
    BackendUnavailable,
    DecryptionFailed,
    Unimplemented,
    UnwrapFailed,
)
from hsmd.keyspecs import SIGNING, SPECS, WRAPPING_OAEP, Family, SignatureScheme, Spec
from hsmd.names import token_label

log = logging.getLogger(__name__)

_CKR_OK = 0
_LABEL_SIZE = 32
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

# Library errors that mean the token or session is gone, not that the request was bad.
_UNAVAILABLE = (
    p11.SessionClosed,
    p11.SessionHandleInvalid,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.UserNotLoggedIn,
)
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
) -> dict[Any, Any]:
    """The full template of a secret or private key: nothing is left to library defaults.

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


@dataclass(frozen=True)
class _TokenName:
    """A token this backend serves: its key in the token table, its label, its PINs."""

    name: str
    label: str
    user_pin: Callable[[], str]
    so_pin: Callable[[], str]


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


@dataclass
class _TenantToken:
    session: Any
    objects: dict[tuple[bytes, ObjectClass], Any] = field(default_factory=dict)
    public_keys: dict[bytes, bytes] = field(default_factory=dict)


class Pkcs11Backend:
    """The CryptoBackend of hsmd.backend.api over a PKCS#11 library."""

    def __init__(
        self,
        library: Path,
        pins: PinDeriver,
        softhsm2_conf: Path | None = None,
        token_dir: Path | None = None,
    ) -> None:
        """token_dir, when the library is SoftHSM2 with its file store, is where its tokens
        are: every change there is made durable (softhsm_files.TokenSync) before it is
        acknowledged, and refused up front when that file system is full or read-only."""
        if softhsm2_conf is not None:
            # SoftHSM2 reads its configuration once, at C_Initialize.
            os.environ["SOFTHSM2_CONF"] = str(softhsm2_conf)
        self._pins = pins
        self._closing = False
        self._token_dir = token_dir
        self._durability = TokenSync(token_dir) if token_dir is not None else None
        self._lock = threading.Lock()
        self._tokens: dict[str, _TenantToken] = {}
        self._capabilities: Capabilities | None = None
        with self._translate():
            self._lib = pkcs11.lib(str(library))
        # python-pkcs11 has no C_InitToken; the same loaded library provides it directly.
        self._c_init_token = ctypes.CDLL(str(library)).C_InitToken
        self._c_init_token.argtypes = [
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self._c_init_token.restype = ctypes.c_ulong

    # Tokens

    def ensure_token(self, tenant: str) -> str:
        return self._ensure_token(self._tenant_token(tenant))

    def attach_token(self, tenant: str, serial: str) -> None:
        self._attach_token(self._tenant_token(tenant), serial)

    def _tenant_token(self, tenant: str) -> _TokenName:
        if tenant == DAEMON_TOKEN:  # never a valid tenant name; refused here all the same
            raise BackendError(f"{DAEMON_TOKEN!r} is the daemon's token, not a tenant's")
        pins = self._pins
        return _TokenName(
            tenant, token_label(tenant), lambda: pins.user_pin(tenant), lambda: pins.so_pin(tenant)
        )

    def _ensure_token(self, name: _TokenName) -> str:
        with self._lock, self._translate():
            token = self._find_token(name.label)
            if token is None:
                self._check_storage()  # a half-initialised token would take the slot
                token = self._init_free_token(name)
            if not token.flags & TokenFlag.USER_PIN_INITIALIZED:
                with token.open(rw=True, so_pin=name.so_pin()) as so_session:
                    so_session.init_pin(name.user_pin())
            serial = _serial(token)
        self._make_durable()
        return serial

    def _attach_token(self, name: _TokenName, serial: str) -> None:
        with self._lock, self._translate():
            if name.name in self._tokens:
                return
            token = self._find_token(name.label)
            if token is None or _serial(token) != serial:
                raise BackendUnavailable(f"token {name.label!r} serial {serial} is missing")
            session = token.open(rw=True, user_pin=name.user_pin())
            self._tokens[name.name] = _TenantToken(session)

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
        name = _TokenName(
            DAEMON_TOKEN, DAEMON_TOKEN_LABEL, pins.daemon_user_pin, pins.daemon_so_pin
        )
        self._attach_token(name, self._ensure_token(name))
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
        with self._lock:
            token = self._tokens.pop(tenant, None)
            if token is not None:
                with self._translate():
                    token.session.close()

    def _find_token(self, label: str) -> Any:
        matches = [token for _, token in self._readable_tokens() if token.label == label]
        if len(matches) > 1:
            raise BackendError(f"{len(matches)} tokens carry the label {label!r}")
        return matches[0] if matches else None

    def _readable_tokens(self) -> list[tuple[Any, Any]]:
        """(slot, token) of every slot whose token the library can describe. A damaged token
        (its token.object unreadable) makes C_GetTokenInfo fail: it is left out, so it costs
        its own tenant only."""
        readable = []
        for slot in self._lib.get_slots(token_present=True):
            try:
                readable.append((slot, slot.get_token()))
            except p11.PKCS11Error as exc:
                log.error(
                    "slot %s: its token cannot be read (%s)", slot.slot_id, type(exc).__name__
                )
        return readable

    def _init_free_token(self, name: _TokenName) -> Any:
        label = name.label
        free = [
            slot
            for slot, token in self._readable_tokens()
            if not token.flags & TokenFlag.TOKEN_INITIALIZED
        ]
        if not free:
            raise BackendUnavailable("the PKCS#11 library has no free slot for a new token")
        so_pin = name.so_pin().encode()
        padded_label = label.encode().ljust(_LABEL_SIZE)
        rv = self._c_init_token(free[0].slot_id, so_pin, len(so_pin), padded_label)
        if rv != _CKR_OK:
            raise BackendError(f"C_InitToken for {label!r} failed with CKR 0x{rv:x}")
        token = self._find_token(label)
        if token is None:
            raise BackendError(f"token {label!r} is not visible after C_InitToken")
        log.info("initialised token %r (serial %s)", label, _serial(token))
        return token

    # Capabilities

    def capabilities(self) -> Capabilities:
        """Probed once a token is attached (trying OAEP needs a session), then remembered."""
        with self._lock, self._translate():
            if self._capabilities is not None:
                return self._capabilities
            probed = self._probe()
            if self._tokens:
                self._capabilities = probed
                log.info(
                    "backend supports key specs %s; notes: %s",
                    ", ".join(sorted(probed.key_specs)),
                    "; ".join(probed.notes) or "none",
                )
            return probed

    def _probe(self) -> Capabilities:
        """Reads the library's mechanism list, and tries what a list cannot promise."""
        slots = [slot for slot, _ in self._readable_tokens()]
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
        elif not self._tokens:
            encryption.discard(EncryptionAlgorithm.RSAES_OAEP_SHA_256)
            notes.append("RSAES_OAEP_SHA_256 is not yet probed: no token is attached")
        elif not self._oaep_works(EncryptionAlgorithm.RSAES_OAEP_SHA_256):
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

    def _oaep_works(self, algorithm: EncryptionAlgorithm) -> bool:
        """Encrypts one byte under a throwaway session public key; the mechanism list says
        RSA_PKCS_OAEP whatever hashes the library accepts for it."""
        session = next(iter(self._tokens.values())).session
        numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
        public = session.create_object(
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
    ) -> None:
        info = SPECS[spec]
        rights = _USAGE_CAPABILITIES[(info.family.asymmetric, usage)]
        with self._changing(tenant) as token:
            session = token.session
            if not info.family.asymmetric:
                key = session.generate_key(
                    KEY_TYPES[info.family],
                    info.bits,
                    store=True,
                    mechanism=GENERATION[info.family],
                    template=key_template(
                        object_id, rights, _SECRET_CAPABILITIES, extractable=exportable
                    ),
                )
                token.objects[(object_id, ObjectClass.SECRET_KEY)] = key
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
                private_template=key_template(object_id, rights, _PRIVATE_CAPABILITIES),
            )
            token.objects[(object_id, ObjectClass.PUBLIC_KEY)] = public_key
            token.objects[(object_id, ObjectClass.PRIVATE_KEY)] = private_key

    # Wrapping and import

    def wrap(self, tenant: str, wrapping_object_id: bytes, object_id: bytes) -> bytes:
        """C_WrapKey with AES key wrap with padding (RFC 5649) of an extractable secret key."""
        with self._token(tenant) as token:
            wrapping = self._object(token, wrapping_object_id, ObjectClass.SECRET_KEY)
            key = self._object(token, object_id, ObjectClass.SECRET_KEY)
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
        with self._changing(tenant) as token:
            wrapping = self._object(token, wrapping_object_id, ObjectClass.SECRET_KEY)
            return self._unwrap_secret(token, wrapping, mechanism, None, wrapped, target)

    def create_import_key(self, tenant: str, object_id: bytes, spec: KeySpec) -> bytes:
        """An RSA key pair that can only unwrap, for one import; returns its public SPKI."""
        info = SPECS[spec]
        public = public_template(object_id, KeyUsage.ENCRYPT_DECRYPT)
        public[Attribute.PUBLIC_EXPONENT] = _RSA_PUBLIC_EXPONENT
        private = key_template(object_id, frozenset({Attribute.UNWRAP}), _PRIVATE_CAPABILITIES)
        with self._changing(tenant) as token:
            public_key, private_key = token.session.generate_keypair(
                KEY_TYPES[Family.RSA],
                info.bits,
                store=True,
                mechanism=GENERATION[Family.RSA],
                public_template=public,
                private_template=private,
            )
            token.objects[(object_id, ObjectClass.PRIVATE_KEY)] = private_key
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
        with self._changing(tenant) as token:
            rsa_key = self._object(token, import_object_id, ObjectClass.PRIVATE_KEY)
            if algorithm in _ONE_STEP:
                return self._unwrap_secret(
                    token, rsa_key, Mechanism.RSA_PKCS_OAEP, oaep_param(oaep), wrapped, target
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
                    token, ephemeral, Mechanism.AES_KEY_WRAP_PAD, wrapped[size:], target
                )
            finally:
                ephemeral.destroy()

    def _unwrap_secret_or_private(
        self,
        token: _TenantToken,
        unwrapping: Any,
        mechanism: Mechanism,
        data: bytes,
        target: UnwrapTarget,
    ) -> str:
        if SPECS[target.spec].family.asymmetric:
            return self._unwrap_private(token, unwrapping, mechanism, data, target)
        return self._unwrap_secret(token, unwrapping, mechanism, None, data, target)

    def _unwrap_secret(
        self,
        token: _TenantToken,
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
            if not self._has_size(token, probe, info.bits // 8):
                raise UnwrapFailed()
            fingerprint = _fingerprint(probe, target.spec)
        except p11.PKCS11Error:
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
                extractable=target.exportable,
                unwrapped=True,
            ),
        )
        token.objects[(target.object_id, ObjectClass.SECRET_KEY)] = key
        return fingerprint

    @staticmethod
    def _has_size(token: _TenantToken, probe: Any, size: int) -> bool:
        """Whether the probe key could be `size` bytes: its AES-KWP wrapping is 8 + its size
        rounded up to 8, so the size is known to within 8 bytes."""
        measure = token.session.generate_key(
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
        token: _TenantToken,
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
                    **key_template(target.object_id, rights, _PRIVATE_CAPABILITIES, unwrapped=True),
                    **_NOT_ON_PRIVATE_KEYS,
                },
            )
        except _UNWRAP_FAILED:
            raise UnwrapFailed() from None
        token.objects[(target.object_id, ObjectClass.PRIVATE_KEY)] = private
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
            token.objects[(target.object_id, ObjectClass.PUBLIC_KEY)] = token.session.create_object(
                public
            )
        except (UnwrapFailed, ValueError, p11.PKCS11Error):
            private.destroy()
            token.objects.pop((target.object_id, ObjectClass.PRIVATE_KEY), None)
            raise UnwrapFailed() from None
        return ""

    def has_objects(self, tenant: str, object_ids: list[bytes]) -> bool:
        with self._token(tenant) as token:
            return all(
                any(True for _ in token.session.get_objects({Attribute.ID: object_id}))
                for object_id in object_ids
            )

    def objects(self, tenant: str) -> TokenObjects:
        """Every object's CKA_ID, one object at a time, so that one the library cannot read
        (a damaged file) is counted and skipped instead of ending the scan."""
        ids = set()
        unreadable = 0
        with self._token(tenant) as token, SearchIter(token.session, {}, 1) as search:
            for batch in search:
                try:
                    for obj in batch:
                        object_id = bytes(obj[Attribute.ID])
                        token.objects[(object_id, ObjectClass(obj[Attribute.CLASS]))] = obj
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
        with self._token(tenant) as token:
            for obj in token.session.get_objects({Attribute.ID: object_id}):
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
        with self._changing(tenant, adds=False) as token:
            for key in [k for k in token.objects if k[0] == object_id]:
                del token.objects[key]
            token.public_keys.pop(object_id, None)
            for obj in list(token.session.get_objects({Attribute.ID: object_id})):
                obj.destroy()

    # Cryptography

    def encrypt(
        self, tenant: str, object_id: bytes, plaintext: bytes, aad: bytes
    ) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(IV_SIZE)
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.SECRET_KEY)
            ciphertext = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, aad)
            )
        return iv, bytes(ciphertext)

    def decrypt(
        self, tenant: str, object_id: bytes, iv: bytes, ciphertext_and_tag: bytes, aad: bytes
    ) -> bytes:
        if len(iv) != IV_SIZE:  # SoftHSM2 accepts short IVs; we never do.
            raise DecryptionFailed()
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.SECRET_KEY)
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
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.PUBLIC_KEY)
            ciphertext = key.encrypt(
                plaintext, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=oaep_param(algorithm)
            )
        return bytes(ciphertext)

    def rsa_decrypt(
        self, tenant: str, object_id: bytes, algorithm: EncryptionAlgorithm, ciphertext: bytes
    ) -> bytes:
        self._require_encryption(algorithm)
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.PRIVATE_KEY)
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
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.PRIVATE_KEY)
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
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.PUBLIC_KEY)
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
        with self._token(tenant) as token:
            cached = token.public_keys.get(object_id)
            if cached is None:
                key = self._object(token, object_id, ObjectClass.PUBLIC_KEY)
                if SPECS[spec].family is Family.RSA:
                    cached = encoding.rsa_spki(
                        key[Attribute.MODULUS], key[Attribute.PUBLIC_EXPONENT]
                    )
                else:
                    cached = encoding.ec_spki(spec, key[Attribute.EC_POINT])
                token.public_keys[object_id] = cached
            return cached

    def mac(self, tenant: str, object_id: bytes, algorithm: MacAlgorithm, message: bytes) -> bytes:
        with self._token(tenant) as token:
            key = self._object(token, object_id, ObjectClass.SECRET_KEY)
            return bytes(key.sign(message, mechanism=MAC_MECHANISMS[algorithm]))

    def generate_random(self, tenant: str, size: int) -> bytes:
        with self._token(tenant) as token:
            return bytes(token.session.generate_random(size * 8))

    def begin_close(self) -> None:
        """From now on every tenant call fails at once with BackendUnavailable instead of
        waiting for the token (shutdown: handlers still queued give up; the call in progress
        finishes). The daemon's own token still signs the audit log's closing checkpoint."""
        self._closing = True

    def close(self) -> None:
        self._closing = True
        with self._lock:
            for token in self._tokens.values():
                try:
                    token.session.close()
                except p11.PKCS11Error:
                    log.warning("closing a token session failed", exc_info=True)
            self._tokens.clear()
            if self._durability is not None:
                self._durability.close()
                self._durability = None

    # Helpers

    @contextmanager
    def _token(self, tenant: str) -> Iterator[_TenantToken]:
        if self._closing and tenant != DAEMON_TOKEN:
            raise BackendUnavailable("the daemon is stopping")
        with self._lock, self._translate():
            if self._closing and tenant != DAEMON_TOKEN:
                raise BackendUnavailable("the daemon is stopping")
            token = self._tokens.get(tenant)
            if token is None:
                raise BackendUnavailable(f"the token of tenant {tenant!r} is not attached")
            yield token

    @contextmanager
    def _changing(self, tenant: str, *, adds: bool = True) -> Iterator[_TenantToken]:
        """Like _token, for calls that change the token: refused up front when its file system
        cannot take an addition, and left only once the change is durable. A removal (adds
        False) is not refused up front: it frees space, and finds nothing to remove when the
        addition it rolls back was refused."""
        if adds:
            self._check_storage()
        try:
            with self._token(tenant) as token:
                yield token
        except BackendError:
            self._check_storage()  # a full or read-only disk is the likelier cause
            raise
        self._make_durable()

    def _check_storage(self) -> None:
        if self._token_dir is not None:
            problem = storage_problem(self._token_dir)
            if problem is not None:
                raise problem

    def _make_durable(self) -> None:
        if self._durability is not None:
            self._durability.sync()

    @staticmethod
    def _object(token: _TenantToken, object_id: bytes, object_class: ObjectClass) -> Any:
        """The object from the handle cache; a token search only on the first use."""
        obj = token.objects.get((object_id, object_class))
        if obj is None:
            obj = token.session.get_key(object_class=object_class, id=object_id)
            token.objects[(object_id, object_class)] = obj
        return obj

    @staticmethod
    @contextmanager
    def _translate() -> Iterator[None]:
        """Turns library exceptions into hsmd errors; the library's name goes to the log only."""
        try:
            yield
        except _UNAVAILABLE as exc:
            raise BackendUnavailable(f"PKCS#11 token unavailable: {type(exc).__name__}") from exc
        except (p11.NoSuchKey, p11.MultipleObjectsReturned) as exc:
            raise BackendError(f"token object lookup failed: {type(exc).__name__}") from exc
        except p11.PKCS11Error as exc:
            raise BackendError(f"PKCS#11 call failed: {type(exc).__name__} {exc}") from exc

    # Removing a tenant's token (tenant deletion)

    def remove_token(self, tenant: str, serial: str) -> None:
        """Destroys the tenant's token: C_InitToken with its SO PIN erases every object in it
        through the library (which blanks the label), then, with SoftHSM2's file store, the
        token's directory goes and the removal is made durable. Found by serial, so a removal
        a crash interrupted (label already blank) is finished; no error if the token is gone.

        SoftHSM2 keeps the slot until the library is next initialised; reading it fails
        meanwhile (logged once per token scan, as for any unreadable slot).

        Raises:
            BackendError: the token with that serial carries another tenant's label, or the
                library refused to erase it.
        """
        name = self._tenant_token(tenant)
        self.detach_token(tenant)  # C_InitToken needs the token's sessions closed
        with self._lock, self._translate():
            found = [
                (slot, token) for slot, token in self._readable_tokens() if _serial(token) == serial
            ]
            if found:
                slot, token = found[0]
                if token.label.rstrip() not in (name.label, ""):
                    raise BackendError(
                        f"token serial {serial} is {token.label!r}, not {name.label!r}"
                    )
                so_pin = name.so_pin().encode()
                rv = self._c_init_token(slot.slot_id, so_pin, len(so_pin), b"".ljust(_LABEL_SIZE))
                if rv != _CKR_OK:
                    raise BackendError(
                        f"C_InitToken erasing {name.label!r} failed with CKR 0x{rv:x}"
                    )
            if self._token_dir is not None:
                for files in scan_tokens(self._token_dir):
                    if files.serial == serial:
                        shutil.rmtree(files.directory)
        self._make_durable()
        log.warning("removed token %r (serial %s) of tenant %s", name.label, serial, tenant)


def _serial(token: Any) -> str:
    serial = token.serial
    return serial.decode() if isinstance(serial, bytes) else str(serial)


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
