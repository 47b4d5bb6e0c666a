"""Session lanes without a token: lazy, bounded, one thread per session, stoppable."""

from __future__ import annotations

import itertools
import threading

import pytest

from hsmd.backend.lanes import Lane, LaneSizes, SessionLane
from hsmd.errors import BackendUnavailable

_BOUND = 10.0  # seconds; a generous bound on waiting for another thread, never a timing check


def _counting_lane(size: int) -> SessionLane[int]:
    numbers = itertools.count()
    return SessionLane(size, lambda: next(numbers))


def test_sessions_are_opened_on_first_need_and_reused() -> None:
    lane = _counting_lane(2)
    assert lane.opened == 0
    with lane.lease() as first:
        pass
    with lane.lease() as again:
        assert again == first
    assert lane.opened == 1
    with lane.lease() as one, lane.lease() as two:
        assert one != two
    assert lane.opened == 2


def test_a_session_the_library_called_gone_is_not_lent_again() -> None:
    lane = _counting_lane(1)
    with pytest.raises(BackendUnavailable), lane.lease() as broken:
        raise BackendUnavailable("PKCS#11 token unavailable: SessionHandleInvalid")
    with lane.lease() as fresh:
        assert fresh != broken
    with pytest.raises(ValueError), lane.lease() as kept:
        raise ValueError("a bad request, not a bad session")
    with lane.lease() as again:
        assert again == kept
    assert lane.opened == 1


def test_a_full_lane_makes_the_next_caller_wait_for_a_session() -> None:
    lane = _counting_lane(1)
    got: list[int] = []
    leased = threading.Event()
    with lane.lease() as held:
        waiter = threading.Thread(target=lambda: _lease_into(lane, got, leased))
        waiter.start()
        assert not leased.wait(0.05)  # still waiting while the one session is lent
    assert leased.wait(_BOUND)
    waiter.join(_BOUND)
    assert got == [held]
    assert lane.opened == 1


def _lease_into(lane: SessionLane[int], got: list[int], leased: threading.Event) -> None:
    with lane.lease() as session:
        got.append(session)
        leased.set()


def test_a_failed_open_frees_its_place() -> None:
    attempts = []

    def opener() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("token gone")
        return 7

    lane = SessionLane(1, opener)
    with pytest.raises(RuntimeError), lane.lease():
        pass
    with lane.lease() as session:
        assert session == 7


def test_stop_refuses_waiting_and_later_callers() -> None:
    lane = _counting_lane(1)
    failures: list[BaseException] = []
    started = threading.Event()

    def waiting() -> None:
        started.set()
        try:
            with lane.lease():
                pass
        except BackendUnavailable as exc:
            failures.append(exc)

    with lane.lease():
        waiter = threading.Thread(target=waiting)
        waiter.start()
        assert started.wait(_BOUND)
        lane.stop("the daemon is stopping")
        waiter.join(_BOUND)
    assert [str(f) for f in failures] == ["the daemon is stopping"]
    with pytest.raises(BackendUnavailable), lane.lease():
        pass


def test_drain_waits_for_lent_sessions_and_hands_them_all_over() -> None:
    lane = _counting_lane(2)
    with lane.lease(), lane.lease():
        pass
    release = threading.Event()
    lent = threading.Event()

    def hold() -> None:
        with lane.lease():
            lent.set()
            release.wait(_BOUND)

    holder = threading.Thread(target=hold)
    holder.start()
    assert lent.wait(_BOUND)
    drained: list[list[int]] = []
    drainer = threading.Thread(target=lambda: drained.append(lane.drain()))
    drainer.start()
    assert drained == []  # the lent session is not back yet
    release.set()
    drainer.join(_BOUND)
    holder.join(_BOUND)
    assert sorted(drained[0]) == [0, 1]
    assert lane.opened == 0


def test_lane_sizes() -> None:
    sizes = LaneSizes(fast=3, slow=1)
    assert (sizes.of(Lane.FAST), sizes.of(Lane.SLOW)) == (3, 1)
    with pytest.raises(ValueError, match="at least one"):
        SessionLane(0, lambda: 0)
