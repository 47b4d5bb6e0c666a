"""The PKCS#11 library, its tokens and their sessions: everything the backend shares between
threads, and how (the model is in hsmd.backend.lanes and docs/concurrency.md).

- The library is initialised with CKF_OS_LOCKING_OK (load_library), or the daemon does not
  start: without it SoftHSM2 runs with its own locks off and two threads inside it can crash
  the process (DESIGN §9).
- Each attached token (a tenant's, or the daemon's own) is a TenantToken: one session that
  holds the login for the token's lifetime, a FAST and a SLOW lane of working sessions, and
  the handle cache. A call leases a session of one lane (TokenTable.lease) and meets no lock
  that another tenant's call holds.
- Object handles belong to the token, not to the session that found them (in PKCS#11 every
  session of the application sees a token object by the same handle while the object exists
  and a session of the token stays open), so one cache per token serves every lane.
  python-pkcs11 ties each object to the session that found it; Lease.object rebinds it to the
  leased session (see bind).
- What must be exclusive is: the slot table while a token is initialised, attached or
  detached (TokenTable's lock, never held during crypto), and per token, a cache miss or a
  destroy (TenantToken.lock), so a search cannot put back a handle that a destroy removes.
- Durability: every token change is made durable (TokenSync, syncfs shared by the callers
  waiting at the same moment) before it is acknowledged; changes are refused up front when the
  token directory's file system cannot take them.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pkcs11 import Attribute, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11._pkcs11 import lib as _Library

from hsmd.backend.lanes import Lane, LaneSizes, SessionLane
from hsmd.backend.softhsm_files import TokenSync, scan_tokens, storage_problem
from hsmd.errors import BackendError, BackendUnavailable, StartupRefused

log = logging.getLogger(__name__)

_CKR_OK = 0
_CKF_OS_LOCKING_OK = 0x2
_LABEL_SIZE = 32

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


@contextmanager
def translate() -> Iterator[None]:
    """Turns library exceptions into hsmd errors; the library's name goes to the log only."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise BackendUnavailable(f"PKCS#11 token unavailable: {type(exc).__name__}") from exc
    except (p11.NoSuchKey, p11.MultipleObjectsReturned) as exc:
        raise BackendError(f"token object lookup failed: {type(exc).__name__}") from exc
    except p11.PKCS11Error as exc:
        raise BackendError(f"PKCS#11 call failed: {type(exc).__name__} {exc}") from exc


class _InitializeArgs(ctypes.Structure):
    """CK_C_INITIALIZE_ARGS: no mutex callbacks, the library's own OS locking."""

    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    )


class _ThreadSafeLibrary(_Library):
    """python-pkcs11's library object, initialised for use by several threads at once.

    python-pkcs11 0.10.1 calls C_Initialize(NULL), which tells the library that the caller
    will not call it from two threads, and then releases the GIL around every call: SoftHSM2
    skips its locking and concurrent key creation and destruction crash the process. Its
    cpdef initialize() is the one place that call is made, so this override makes it instead,
    through ctypes on the same loaded library (dlopen hands back the same instance), with
    CKF_OS_LOCKING_OK. python-pkcs11 never learns it is initialised (its flag is read-only),
    which only means its finalize() does nothing; nothing here calls it.
    """

    def initialize(self) -> None:
        c_initialize = ctypes.CDLL(self.so).C_Initialize
        c_initialize.argtypes = [ctypes.c_void_p]
        c_initialize.restype = ctypes.c_ulong
        args = _InitializeArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
        rv = c_initialize(ctypes.addressof(args))
        if rv != _CKR_OK:
            raise StartupRefused(
                f"the PKCS#11 library {self.so} refused C_Initialize with CKF_OS_LOCKING_OK"
                f" (CKR 0x{rv:x}); hsmd calls the library from several threads and needs its"
                " locking. Use a thread-safe PKCS#11 library (SoftHSM2 is one)."
            )


_libraries: dict[str, Any] = {}
_libraries_lock = threading.Lock()


def load_library(path: Path) -> Any:
    """The library at path, initialised thread-safe: once per process (a second C_Initialize
    is refused by the library), so every backend in the process shares it.

    Raises:
        StartupRefused: the library does not accept CKF_OS_LOCKING_OK.
        BackendError: the library cannot be loaded.
    """
    with _libraries_lock, translate():
        library = _libraries.get(str(path))
        if library is None:
            library = _libraries[str(path)] = _ThreadSafeLibrary(str(path))
        return library


class _Rebound:
    """Mixed in before python-pkcs11's classes so that its `session` wins over Object's."""

    _leased_session: Any

    @property
    def session(self) -> Any:
        return self._leased_session


_rebound_classes: dict[tuple[type, ...], type] = {}


def bind(obj: Any, session: Any) -> Any:
    """The same token object, its operations run on `session` instead of the one that found it.

    python-pkcs11 makes one class per object from its capabilities (SecretKey, EncryptMixin,
    ...), and every operation (encrypt, sign, wrap_key, unwrap_key, ...) starts on
    `self.session` with `self.handle`. The copy keeps the handle and the attributes read so far
    (the cached key type) and answers `session` with the leased one. Reading an attribute still
    goes through the finding session: C_GetAttributeValue holds no session state, and the
    library's locking makes it safe beside an operation running there.
    """
    if obj.session is session:
        return obj
    bases = type(obj).__bases__
    cls = _rebound_classes.get(bases)
    if cls is None:
        cls = _rebound_classes.setdefault(bases, type(type(obj).__name__, (_Rebound, *bases), {}))
    copy: Any = object.__new__(cls)
    copy.__dict__.update(obj.__dict__)
    copy._leased_session = session
    return copy


@dataclass(frozen=True)
class TokenName:
    """A token this backend serves: its key in the token table, its label, its PINs."""

    name: str
    label: str
    user_pin: Callable[[], str]
    so_pin: Callable[[], str]


@dataclass
class TenantToken:
    """One attached token: its login, its lanes and its caches (keyed by CKA_ID and class)."""

    name: str
    login: Any  # the session that logged in; kept open so the login lasts
    lanes: dict[Lane, SessionLane[Any]]
    objects: dict[tuple[bytes, ObjectClass], Any] = field(default_factory=dict)
    public_keys: dict[bytes, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        """Waits for the calls in progress, then closes every session (the login last)."""
        sessions = [s for lane in self.lanes.values() for s in lane.drain()]
        self.objects.clear()
        self.public_keys.clear()
        for session in [*sessions, self.login]:
            try:
                session.close()
            except p11.PKCS11Error:
                log.warning("closing a session of token %s failed", self.name, exc_info=True)


@dataclass(frozen=True)
class Lease:
    """A session of one lane, lent to this thread, and the token's caches."""

    token: TenantToken
    session: Any

    def object(self, object_id: bytes, object_class: ObjectClass) -> Any:
        """The key from the handle cache, bound to this session; searched for only on the
        first use (under the token's lock, so a destroy cannot interleave)."""
        obj = self.token.objects.get((object_id, object_class))
        if obj is None:
            with self.token.lock:
                obj = self.token.objects.get((object_id, object_class))
                if obj is None:
                    obj = self.session.get_key(object_class=object_class, id=object_id)
                    self.remember(object_id, object_class, obj)
        return bind(obj, self.session)

    def remember(self, object_id: bytes, object_class: ObjectClass, obj: Any) -> None:
        """Caches a key made or found on this session."""
        obj.key_type  # noqa: B018 (read once here, so every rebound copy has it)
        self.token.objects[(object_id, object_class)] = obj

    def forget(self, object_id: bytes) -> None:
        """Drops the cached handles of this CKA_ID: another process changed its objects."""
        with self.token.lock:
            self._forget_locked(object_id)

    def _forget_locked(self, object_id: bytes) -> None:
        for key in [k for k in list(self.token.objects) if k[0] == object_id]:
            self.token.objects.pop(key, None)
        self.token.public_keys.pop(object_id, None)

    def destroy(self, object_id: bytes) -> None:
        """Destroys every object with this CKA_ID and forgets it, under the token's lock."""
        with self.token.lock:
            # A snapshot: a generation on another session may add to the cache meanwhile
            # (remember() does not take the lock, which object() holds when it calls it).
            self._forget_locked(object_id)
            for obj in list(self.session.get_objects({Attribute.ID: object_id})):
                obj.destroy()


class TokenTable:
    """The library's tokens as this daemon serves them: found by label, initialised into a
    free slot, attached (logged in, with lanes), leased out per call, detached."""

    def __init__(self, library: Path, sizes: LaneSizes, token_dir: Path | None) -> None:
        """token_dir, when the library is SoftHSM2 with its file store, is where its tokens
        are (see check_storage and make_durable)."""
        self._lib = load_library(library)
        self._sizes = sizes
        self._token_dir = token_dir
        self._durability = TokenSync(token_dir) if token_dir is not None else None
        self._slots = threading.Lock()
        self._tokens: dict[str, TenantToken] = {}
        self._stopping: str | None = None
        self._stopping_except: str | None = None
        self._removed_slots: set[int] = set()  # emptied by remove(), unreadable until restart
        # The readable tokens by label, for attach(): read once, dropped whenever this process
        # changes a token (the library shows no other process's new token anyway), so start-up
        # attaching N tenants reads every slot once, not N times (54 s for 1,000 tenants).
        self._labels: dict[str, list[Any]] | None = None  # guarded by _slots
        # python-pkcs11 has no C_InitToken; the same loaded library provides it directly.
        self._c_init_token = ctypes.CDLL(str(library)).C_InitToken
        self._c_init_token.argtypes = [
            ctypes.c_ulong,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        self._c_init_token.restype = ctypes.c_ulong

    @contextmanager
    def lease(self, name: str, lane: Lane) -> Iterator[Lease]:
        """A session of the token's lane for this thread; library errors are translated.

        Raises:
            BackendUnavailable: the token is not attached, or the daemon is stopping.
        """
        if self._stopping is not None and name != self._stopping_except:
            raise BackendUnavailable(self._stopping)
        token = self.token(name)
        with token.lanes[lane].lease() as session, translate():
            yield Lease(token, session)

    def token(self, name: str) -> TenantToken:
        """Raises BackendUnavailable if the token is not attached."""
        token = self._tokens.get(name)
        if token is None:
            raise BackendUnavailable(f"the token of tenant {name!r} is not attached")
        return token

    def attached(self) -> list[str]:
        return list(self._tokens)

    def ensure(self, name: TokenName) -> str:
        """Initialises the token into a free slot if there is none with its label, sets its
        user PIN if that was not done; returns its serial."""
        with self._slots, translate():
            self._labels = None
            token = self._find_token(name.label)
            if token is None:
                self.check_storage()  # a half-initialised token would take the slot
                token = self._init_free_token(name)
            if not token.flags & TokenFlag.USER_PIN_INITIALIZED:
                with token.open(rw=True, so_pin=name.so_pin()) as so_session:
                    so_session.init_pin(name.user_pin())
            serial = _serial(token)
        self.make_durable()
        return serial

    def attach(self, name: TokenName, serial: str) -> None:
        with self._slots, translate():
            if name.name in self._tokens:
                return
            token = self._labelled(name.label)
            if token is None or _serial(token) != serial:
                raise BackendUnavailable(f"token {name.label!r} serial {serial} is missing")
            login = token.open(rw=True, user_pin=name.user_pin())

            def open_session() -> Any:
                with translate():
                    return token.open(rw=True)  # logged in already: the login is per token

            lanes = {lane: SessionLane(self._sizes.of(lane), open_session) for lane in Lane}
            self._tokens[name.name] = TenantToken(name.name, login, lanes)

    def detach(self, name: str) -> None:
        """Stops serving the token; returns once its calls in progress have finished."""
        with self._slots:
            token = self._tokens.pop(name, None)
        if token is not None:
            token.close()

    def remove(self, name: TokenName, serial: str) -> None:
        """Destroys a token: detached first (C_InitToken needs its sessions closed), then
        C_InitToken with its SO PIN erases every object through the library (and blanks the
        label); with SoftHSM2's file store its directory goes and the removal is made durable.
        Found by serial, so a removal a crash interrupted (label already blank) is finished;
        no error if the token is gone. SoftHSM2 keeps the emptied slot until the library is
        next initialised: it is not scanned again meanwhile.

        Raises:
            BackendError: the token with that serial carries another label, or the library
                refused to erase it.
        """
        self.detach(name.name)
        with self._slots, translate():
            self._labels = None
            found = [(slot, tok) for slot, tok in self.readable_tokens() if _serial(tok) == serial]
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
                self._removed_slots.add(slot.slot_id)
            if self._token_dir is not None:
                for files in scan_tokens(self._token_dir):
                    if files.serial == serial:
                        shutil.rmtree(files.directory)
        self.make_durable()
        log.warning("removed token %r (serial %s)", name.label, serial)

    def readable_tokens(self) -> list[tuple[Any, Any]]:
        """(slot, token) of every slot whose token the library can describe. A damaged token
        (its token.object unreadable) makes C_GetTokenInfo fail: it is left out, so it costs
        its own tenant only."""
        readable = []
        for slot in self._lib.get_slots(token_present=True):
            if slot.slot_id in self._removed_slots:
                continue
            try:
                readable.append((slot, slot.get_token()))
            except p11.PKCS11Error as exc:
                log.error(
                    "slot %s: its token cannot be read (%s)", slot.slot_id, type(exc).__name__
                )
        return readable

    def _find_token(self, label: str) -> Any:
        """The token with the label, read now (its flags are current)."""
        return _only(label, [token for _, token in self.readable_tokens() if token.label == label])

    def _labelled(self, label: str) -> Any:
        """The token with the label, from the labels read since this process last changed a
        token (see _labels)."""
        if self._labels is None:
            self._labels = {}
            for _, token in self.readable_tokens():
                self._labels.setdefault(token.label, []).append(token)
        return _only(label, self._labels.get(label, []))

    def _init_free_token(self, name: TokenName) -> Any:
        label = name.label
        free = [
            slot
            for slot, token in self.readable_tokens()
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

    def check_storage(self) -> None:
        """Raises StorageFull or StorageUnavailable if the token directory's file system
        cannot take a change now."""
        if self._token_dir is not None:
            problem = storage_problem(self._token_dir)
            if problem is not None:
                raise problem

    def make_durable(self) -> None:
        if self._durability is not None:
            self._durability.sync()

    def stop(self, reason: str, *, except_token: str) -> None:
        """Every later or waiting call fails with BackendUnavailable(reason), except those on
        except_token; the calls in progress finish."""
        self._stopping_except = except_token
        self._stopping = reason
        for name, token in list(self._tokens.items()):
            if name != except_token:
                for lane in token.lanes.values():
                    lane.stop(reason)

    def close(self) -> None:
        with self._slots:
            tokens, self._tokens = list(self._tokens.values()), {}
        for token in tokens:
            token.close()
        if self._durability is not None:
            self._durability.close()
            self._durability = None


def _serial(token: Any) -> str:
    serial = token.serial
    return serial.decode() if isinstance(serial, bytes) else str(serial)


def _only(label: str, matches: list[Any]) -> Any:
    if len(matches) > 1:
        raise BackendError(f"{len(matches)} tokens carry the label {label!r}")
    return matches[0] if matches else None
