"""CryptoBackend over python-pkcs11 and a PKCS#11 library (SoftHSM2 by default).

Concurrency model: one lock serialises every call into the library. python-pkcs11 initialises
the library with C_Initialize(NULL) and releases the GIL around each call, so SoftHSM2 runs with
its own locking off and two threads inside it can crash the process (DESIGN §9). Serialising
costs little here: a token AES-GCM operation takes ~30 µs while a gRPC call costs ~220 µs of the
same GIL. Each tenant has one read-write session, logged in once, that lives as long as the
daemon; object handles stay valid while it is open, so the handle cache below never goes stale
and a key lookup costs a dictionary access instead of a linear C_FindObjects.

Templates are always explicit (python-pkcs11's defaults are not safe for a KMS): every key is a
private, sensitive, non-extractable, non-modifiable, non-copyable token object whose capability
attributes allow its usage and nothing else.

Only this module (and the library) sees PKCS#11; its exceptions become hsmd.errors here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from hsmd.backend.pins import PinDeriver
from hsmd.ciphertext import IV_SIZE
from hsmd.domain import KeySpec, KeyUsage
from hsmd.errors import BackendError, BackendUnavailable, DecryptionFailed
from hsmd.names import token_label

log = logging.getLogger(__name__)

_CKR_OK = 0
_LABEL_SIZE = 32

# Capability attributes a key may have; each usage turns on only its own.
_CAPABILITIES = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.DERIVE,
)
_USAGE_CAPABILITIES: dict[KeyUsage, frozenset[Attribute]] = {
    KeyUsage.ENCRYPT_DECRYPT: frozenset({Attribute.ENCRYPT, Attribute.DECRYPT}),
}
_SPEC_TYPES: dict[KeySpec, tuple[KeyType, int]] = {KeySpec.AES_256: (KeyType.AES, 256)}

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
# What SoftHSM2 answers when a GCM tag does not verify (CKR_GENERAL_ERROR in 2.6.1).
_AUTHENTICATION_FAILED = (
    p11.GeneralError,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
)


def key_template(object_id: bytes, usage: KeyUsage, *, extractable: bool = False) -> dict[Any, Any]:
    """The full attribute template of a secret key: nothing is left to library defaults."""
    allowed = _USAGE_CAPABILITIES[usage]
    template: dict[Any, Any] = {capability: capability in allowed for capability in _CAPABILITIES}
    template.update(
        {
            Attribute.ID: object_id,
            Attribute.LABEL: object_id.hex(),
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: extractable,
            Attribute.MODIFIABLE: False,
            Attribute.COPYABLE: False,
        }
    )
    return template


@dataclass
class _TenantToken:
    session: Any
    keys: dict[bytes, Any] = field(default_factory=dict)


class Pkcs11Backend:
    """The CryptoBackend of hsmd.backend.api over a PKCS#11 library."""

    def __init__(self, library: Path, pins: PinDeriver, softhsm2_conf: Path | None = None) -> None:
        if softhsm2_conf is not None:
            # SoftHSM2 reads its configuration once, at C_Initialize.
            os.environ["SOFTHSM2_CONF"] = str(softhsm2_conf)
        self._pins = pins
        self._lock = threading.Lock()
        self._tokens: dict[str, _TenantToken] = {}
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
        label = token_label(tenant)
        with self._lock, self._translate():
            token = self._find_token(label)
            if token is None:
                token = self._init_free_token(tenant, label)
            if not token.flags & TokenFlag.USER_PIN_INITIALIZED:
                with token.open(rw=True, so_pin=self._pins.so_pin(tenant)) as so_session:
                    so_session.init_pin(self._pins.user_pin(tenant))
            return _serial(token)

    def attach_token(self, tenant: str, serial: str) -> None:
        with self._lock, self._translate():
            if tenant in self._tokens:
                return
            token = self._find_token(token_label(tenant))
            if token is None or _serial(token) != serial:
                raise BackendUnavailable(
                    f"token {token_label(tenant)!r} serial {serial} is missing"
                )
            session = token.open(rw=True, user_pin=self._pins.user_pin(tenant))
            self._tokens[tenant] = _TenantToken(session)

    def _find_token(self, label: str) -> Any:
        matches = [
            slot.get_token()
            for slot in self._lib.get_slots(token_present=True)
            if slot.get_token().label == label
        ]
        if len(matches) > 1:
            raise BackendError(f"{len(matches)} tokens carry the label {label!r}")
        return matches[0] if matches else None

    def _init_free_token(self, tenant: str, label: str) -> Any:
        free = [
            slot
            for slot in self._lib.get_slots(token_present=True)
            if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
        ]
        if not free:
            raise BackendUnavailable("the PKCS#11 library has no free slot for a new token")
        so_pin = self._pins.so_pin(tenant).encode()
        padded_label = label.encode().ljust(_LABEL_SIZE)
        rv = self._c_init_token(free[0].slot_id, so_pin, len(so_pin), padded_label)
        if rv != _CKR_OK:
            raise BackendError(f"C_InitToken for {label!r} failed with CKR 0x{rv:x}")
        token = self._find_token(label)
        if token is None:
            raise BackendError(f"token {label!r} is not visible after C_InitToken")
        log.info("initialised token %r (serial %s)", label, _serial(token))
        return token

    # Keys

    def generate_key(self, tenant: str, object_id: bytes, spec: KeySpec, usage: KeyUsage) -> None:
        key_type, bits = _SPEC_TYPES[spec]
        with self._token(tenant) as token:
            key = token.session.generate_key(
                key_type, bits, store=True, template=key_template(object_id, usage)
            )
            token.keys[object_id] = key

    def has_object(self, tenant: str, object_id: bytes) -> bool:
        with self._token(tenant) as token:
            try:
                key = self._key(token, object_id)
                key[Attribute.KEY_TYPE]
            except p11.PKCS11Error:  # absent, or half-written and unreadable
                token.keys.pop(object_id, None)
                return False
            return True

    def object_ids(self, tenant: str) -> set[bytes]:
        ids = set()
        with self._token(tenant) as token:
            for obj in token.session.get_objects({}):
                try:
                    ids.add(bytes(obj[Attribute.ID]))
                except p11.PKCS11Error:  # a half-written object (SoftHSM2 does not fsync)
                    log.error("tenant %s: a token object without a readable CKA_ID", tenant)
        return ids

    def destroy(self, tenant: str, object_id: bytes) -> None:
        with self._token(tenant) as token:
            token.keys.pop(object_id, None)
            for obj in list(token.session.get_objects({Attribute.ID: object_id})):
                obj.destroy()

    # Cryptography

    def encrypt(
        self, tenant: str, object_id: bytes, plaintext: bytes, aad: bytes
    ) -> tuple[bytes, bytes]:
        iv = secrets.token_bytes(IV_SIZE)
        with self._token(tenant) as token:
            key = self._key(token, object_id)
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
            key = self._key(token, object_id)
            try:
                plaintext = key.decrypt(
                    ciphertext_and_tag,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(iv, aad),
                )
            except _AUTHENTICATION_FAILED:
                raise DecryptionFailed() from None
        return bytes(plaintext)

    def generate_random(self, tenant: str, size: int) -> bytes:
        with self._token(tenant) as token:
            return bytes(token.session.generate_random(size * 8))

    def close(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                try:
                    token.session.close()
                except p11.PKCS11Error:
                    log.warning("closing a token session failed", exc_info=True)
            self._tokens.clear()

    # Helpers

    @contextmanager
    def _token(self, tenant: str) -> Iterator[_TenantToken]:
        with self._lock, self._translate():
            token = self._tokens.get(tenant)
            if token is None:
                raise BackendUnavailable(f"the token of tenant {tenant!r} is not attached")
            yield token

    @staticmethod
    def _key(token: _TenantToken, object_id: bytes) -> Any:
        key = token.keys.get(object_id)
        if key is None:
            key = token.session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
            token.keys[object_id] = key
        return key

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


def _serial(token: Any) -> str:
    serial = token.serial
    return serial.decode() if isinstance(serial, bytes) else str(serial)
