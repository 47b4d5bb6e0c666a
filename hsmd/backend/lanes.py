"""Lanes: how many PKCS#11 sessions a tenant's token work may use at once, and for what.

The concurrency model of the backend in one place (measured in docs/concurrency.md):

- The library is initialised thread-safe (tokens.load_library), so calls on different
  sessions run in parallel, each outside the GIL.
- Every tenant token has its own sessions, so tenants never wait for one another here: one
  tenant's RSA-4096 generation (seconds) occupies a session of that tenant only. Sharing the
  cores fairly between busy tenants is the scheduler's job in front of the backend.
- Within a tenant the sessions are split into two lanes. SLOW takes key generation, RSA
  private-key operations with keys over 2048 bits and RSA decryption, unwrapping and token
  searches; FAST takes everything else (AES-GCM, HMAC, EC, Ed25519 and RSA-2048 signatures,
  public-key operations, cached lookups). A lane never lends
  its sessions to the other, so a tenant's own slow work cannot starve its fast work.
- A lane opens its sessions lazily, up to its size, and lends each to one thread at a time (a
  PKCS#11 session runs one operation at a time); a thread that finds every session busy waits
  for one to come back. Nothing here bounds that wait: the scheduler does, before the call.

No PKCS#11 here: a lane holds whatever its opener returns, so it is tested without a token.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from hsmd.errors import BackendUnavailable

Session = TypeVar("Session")


class Lane(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True)
class LaneSizes:
    """Sessions per tenant in each lane ([pkcs11] fast_sessions, slow_sessions). The defaults
    suit two cores: two fast sessions keep one tenant's quick calls overlapping, one slow
    session keeps one tenant's RSA work to one core."""

    fast: int = 2
    slow: int = 1

    def of(self, lane: Lane) -> int:
        return self.fast if lane is Lane.FAST else self.slow


class SessionLane(Generic[Session]):
    """Up to `size` sessions, opened on first need, each lent to one thread at a time."""

    def __init__(self, size: int, open_session: Callable[[], Session]) -> None:
        if size < 1:
            raise ValueError("a lane needs at least one session")
        self._size = size
        self._open_session = open_session
        self._changed = threading.Condition(threading.Lock())
        self._idle: list[Session] = []
        self._opened = 0
        self._refusal: str | None = None

    @contextmanager
    def lease(self) -> Iterator[Session]:
        """A session for this thread alone until the block ends.

        A block that fails with BackendUnavailable (the library said the session or token
        is gone) does not give its session back: the next caller opens a new one, so a broken
        session is not lent out again and again.

        Raises:
            BackendUnavailable: the lane was stopped (before or while waiting).
        """
        session = self._take()
        broken = False
        try:
            yield session
        except BackendUnavailable:
            broken = True
            raise
        finally:
            with self._changed:
                if broken:
                    self._opened -= 1
                else:
                    self._idle.append(session)
                self._changed.notify()

    def _take(self) -> Session:
        with self._changed:
            while True:
                if self._refusal is not None:
                    raise BackendUnavailable(self._refusal)
                if self._idle:
                    return self._idle.pop()
                if self._opened < self._size:
                    self._opened += 1
                    break
                self._changed.wait()
        try:
            return self._open_session()
        except BaseException:
            with self._changed:
                self._opened -= 1
                self._changed.notify()
            raise

    def stop(self, reason: str) -> None:
        """From now on lease() raises BackendUnavailable(reason), waiting threads too; the
        sessions lent out finish their calls."""
        with self._changed:
            self._refusal = reason
            self._changed.notify_all()

    def drain(self) -> list[Session]:
        """Stops the lane, waits until every lent session is back, and hands them all over
        (to be closed): afterwards no thread uses any of them."""
        self.stop("the token is being closed")
        with self._changed:
            while len(self._idle) < self._opened:
                self._changed.wait()
            sessions, self._idle, self._opened = self._idle, [], 0
        return sessions

    @property
    def opened(self) -> int:
        """How many sessions the lane has opened (for tests and metrics)."""
        with self._changed:
            return self._opened
