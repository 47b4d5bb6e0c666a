"""hsmd.clock.GuardedClock: lifecycle time never runs backwards, and says when the clock does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hsmd.clock import GuardedClock

T = datetime(2026, 1, 1, tzinfo=UTC)


class SetClock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def test_it_follows_a_clock_going_forward() -> None:
    system = SetClock(T)
    clock = GuardedClock(system, None)
    assert clock.now() == T
    system.moment = T + timedelta(days=1)
    assert clock.now() == T + timedelta(days=1)
    assert clock.high_water == T + timedelta(days=1)
    assert clock.behind() is None


def test_a_clock_set_back_reads_as_the_high_water_mark_and_is_reported() -> None:
    system = SetClock(T)
    clock = GuardedClock(system, None)
    clock.now()
    system.moment = T - timedelta(days=30)
    assert clock.now() == T  # a deletion window scheduled now starts no earlier than T
    assert clock.behind() == (T - timedelta(days=30), T)
    system.moment = T + timedelta(seconds=5)
    assert clock.behind() is None
    assert clock.now() == T + timedelta(seconds=5)


def test_a_mark_from_the_store_survives_a_restart_on_a_clock_set_back() -> None:
    clock = GuardedClock(SetClock(T - timedelta(hours=2)), T)
    assert clock.now() == T
    assert clock.behind() is not None


def test_small_steps_back_are_not_reported() -> None:
    system = SetClock(T)
    clock = GuardedClock(system, None)
    clock.now()
    system.moment = T - timedelta(milliseconds=300)
    assert clock.behind() is None
    assert clock.now() == T
    assert clock.system is system
