"""The fair-share scheduler: slots shared equally between busy tenants, all of them to a
tenant alone, bounded waiting (hsmd.scheduler). The rule is tested with times passed in; one
threaded test checks that Scheduler blocks and wakes on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from hsmd.errors import ResourceExhausted
from hsmd.scheduler import FairQueue, Scheduler, SchedulerLimits, TicketState

LIMITS = SchedulerLimits(
    capacity=4, slow_capacity=2, calls_per_tenant=12, waiting_room=8, max_wait=2.0
)


def test_a_tenant_alone_uses_every_slot() -> None:
    queue = FairQueue(LIMITS)
    tickets = [queue.arrive("a", False, 0.0) for _ in range(6)]
    assert [t.state for t in tickets] == [TicketState.RUNNING] * 4 + [TicketState.WAITING] * 2


def test_a_tenant_holds_no_more_slots_than_its_share_so_another_starts_at_once() -> None:
    queue = FairQueue(SchedulerLimits(4, 2, 12, 8, 2.0, running_per_tenant=3))
    flood = [queue.arrive("a", False, 0.0) for _ in range(6)]
    assert [t.state for t in flood] == [TicketState.RUNNING] * 3 + [TicketState.WAITING] * 3
    assert queue.arrive("b", False, 0.1).state is TicketState.RUNNING


def test_a_freed_slot_goes_to_the_busy_tenant_with_the_fewest_calls_running() -> None:
    queue = FairQueue(LIMITS)
    flood = [queue.arrive("a", False, 0.0) for _ in range(8)]  # 4 run, 4 wait
    other = queue.arrive("b", False, 0.1)
    assert other.state is TicketState.WAITING
    queue.release(flood[0])
    assert other.state is TicketState.RUNNING  # before a's earlier waiting calls
    assert flood[4].state is TicketState.WAITING


def test_while_another_tenant_is_busy_a_tenant_holds_no_more_than_an_equal_part() -> None:
    """Slots are shares of the daemon's CPU: a's flood holds half of them while b has a
    call running, though b needs only one, and all of them again once b is done."""
    queue = FairQueue(LIMITS)
    flood = [queue.arrive("a", False, 0.0) for _ in range(8)]  # 4 run, 4 wait
    other = queue.arrive("b", False, 0.1)
    queue.release(flood[0])
    queue.release(flood[1])
    queue.release(flood[2])
    assert (queue.running("a"), queue.running("b")) == (2, 1)
    assert flood[5].state is TicketState.WAITING
    queue.release(other)
    assert queue.running("a") == 4 and flood[6].state is TicketState.RUNNING


def test_busy_tenants_converge_to_equal_shares() -> None:
    queue = FairQueue(LIMITS)
    running = [queue.arrive("a", False, 0.0) for _ in range(4)]
    waiting = [queue.arrive(t, False, 0.0) for t in ("a", "b", "a", "b", "a", "b")]
    for ticket in running:
        queue.release(ticket)
    assert (queue.running("a"), queue.running("b")) == (2, 2)
    assert all(t.state is not TicketState.REFUSED for t in waiting)


def test_slow_calls_never_take_every_slot() -> None:
    queue = FairQueue(LIMITS)
    slow = [queue.arrive("a", True, 0.0) for _ in range(4)]
    assert [t.state for t in slow] == [TicketState.RUNNING] * 2 + [TicketState.WAITING] * 2
    fast = queue.arrive("a", False, 0.0)
    assert fast.state is TicketState.RUNNING  # ahead of the waiting slow calls
    queue.release(slow[0])
    assert slow[2].state is TicketState.RUNNING


def test_a_tenant_has_at_most_calls_per_tenant_running_or_waiting() -> None:
    queue = FairQueue(SchedulerLimits(2, 1, 3, 8, 2.0))
    tickets = [queue.arrive("a", False, 0.0) for _ in range(4)]
    assert tickets[3].state is TicketState.REFUSED
    assert "3 calls running or waiting" in tickets[3].refusal
    assert queue.arrive("b", False, 0.0).state is TicketState.WAITING


def test_a_full_waiting_room_makes_the_flooding_tenant_give_a_place_up() -> None:
    queue = FairQueue(LIMITS)
    flood = [queue.arrive("a", False, 0.0) for _ in range(12)]  # 4 run, 8 wait: full
    assert queue.waiting() == 8
    newcomer = queue.arrive("b", False, 0.0)
    assert newcomer.state is TicketState.WAITING
    assert flood[-1].state is TicketState.REFUSED and "waiting room" in flood[-1].refusal
    assert queue.waiting() == 8
    again = queue.arrive("a", False, 0.0)  # a waits most: its own newest call goes
    assert again.state is TicketState.REFUSED


def test_slots_slow_calls_cannot_use_are_waiting_room() -> None:
    queue = FairQueue(LIMITS)
    slow = [queue.arrive(t, True, 0.0) for t in "ab" * 6]  # 12 = capacity + waiting_room
    assert [t.state for t in slow].count(TicketState.RUNNING) == 2
    assert TicketState.REFUSED not in [t.state for t in slow]
    assert queue.arrive("c", True, 0.0).state is TicketState.WAITING  # a gave one up
    assert slow[-2].state is TicketState.REFUSED


def test_a_call_that_waited_too_long_is_refused_and_leaves_the_queue() -> None:
    queue = FairQueue(LIMITS)
    running = [queue.arrive("a", False, 0.0) for _ in range(4)]
    late = queue.arrive("b", False, 0.0)
    queue.give_up(late, 2.5)
    assert late.state is TicketState.REFUSED and "within 2.5 seconds" in late.refusal
    queue.release(running[0])
    assert queue.waiting() == 0 and queue.running("b") == 0


def test_the_scheduler_wakes_a_waiting_thread_when_a_slot_frees() -> None:
    scheduler = Scheduler(SchedulerLimits(1, 1, 4, 4, 60.0), monotonic=lambda: 0.0)
    entered = threading.Event()
    with _slot(scheduler, "a", False):
        thread = threading.Thread(target=lambda: _enter(scheduler, entered))
        thread.start()
        assert not entered.wait(0.05)  # it waits for the slot
    assert entered.wait(30)
    thread.join(30)


def test_a_waiting_call_that_loses_its_place_is_woken_with_the_refusal() -> None:
    """Each waiting thread sleeps on its own lock: the call evicted from a full waiting room
    must be woken to be refused, or it would sleep until max_wait (60 s, never on this clock)."""
    scheduler = Scheduler(SchedulerLimits(1, 1, 4, 1, 60.0), monotonic=lambda: 0.0)
    refused: list[ResourceExhausted] = []

    def wait_as_a() -> None:
        try:
            with _slot(scheduler, "a", False):
                pass
        except ResourceExhausted as exc:
            refused.append(exc)

    entered = threading.Event()
    with _slot(scheduler, "a", False):
        waiter = threading.Thread(target=wait_as_a)
        waiter.start()
        _until(lambda: scheduler._queue.waiting("a") == 1)  # in the one waiting place
        b = threading.Thread(target=lambda: _enter(scheduler, entered))
        b.start()  # b takes that place: a's waiting call is refused, and woken to say so
        waiter.join(30)
        assert not waiter.is_alive()
        assert refused and "waiting room is full" in str(refused[0])
    assert entered.wait(30)  # and b runs once the slot frees
    b.join(30)


def test_the_scheduler_refuses_with_the_wait_bound_as_retry_delay() -> None:
    now = [0.0]
    scheduler = Scheduler(SchedulerLimits(1, 1, 4, 0, 2.0), monotonic=lambda: now[0])
    with _slot(scheduler, "a", False), pytest.raises(ResourceExhausted) as refused:
        with _slot(scheduler, "b", False):
            pass
    assert refused.value.retry_after == 2.0


def test_a_call_waits_no_longer_than_its_deadline_leaves() -> None:
    """With 0.5 s of its deadline left, a call is refused once that is over, not after the
    scheduler's own bound of 60 s: it never runs after its client gave up."""
    now = [0.0]

    def clock() -> float:
        now[0] += 0.25  # every look at the clock moves it on
        return now[0]

    scheduler = Scheduler(SchedulerLimits(1, 1, 4, 4, 60.0), monotonic=clock)
    with _slot(scheduler, "a", False), pytest.raises(ResourceExhausted, match="no slot within"):
        with _slot(scheduler, "b", False, patience=0.5):
            pass


def _enter(scheduler: Scheduler, entered: threading.Event) -> None:
    with _slot(scheduler, "b", False):
        entered.set()


def _until(condition: Callable[[], bool], bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.001)


@contextmanager
def _slot(
    scheduler: Scheduler, tenant: str, slow: bool, patience: float | None = None
) -> Iterator[None]:
    """The block in a slot, as the request guard holds one: enter, then leave however it ends."""
    ticket = scheduler.enter(tenant, slow, patience)
    try:
        yield
    finally:
        scheduler.leave(ticket)


def test_a_tenant_that_gives_up_its_only_waiting_call_lets_the_others_parts_grow() -> None:
    """a's fast call waits only because c, whose one (slow) call waits too, counts as busy;
    when c's call gives up, a's call runs at once, not when a slot next frees."""
    queue = FairQueue(SchedulerLimits(4, 2, 12, 8, 2.0, running_per_tenant=3))
    slow = [queue.arrive("a", True, 0.0) for _ in range(2)]
    waiting_slow = queue.arrive("c", True, 0.0)  # no slow slot left: c waits, busy
    fast = queue.arrive("a", False, 0.0)  # a holds its part (2 of 4) already
    assert [t.state for t in slow] == [TicketState.RUNNING] * 2
    assert fast.state is TicketState.WAITING
    queue.give_up(waiting_slow, 2.5)
    assert fast.state is TicketState.RUNNING


def test_more_busy_tenants_than_slots_each_still_run_one_call() -> None:
    queue = FairQueue(LIMITS)
    tickets = [queue.arrive(tenant, False, 0.0) for tenant in "abcde"]
    assert [t.state for t in tickets].count(TicketState.RUNNING) == 4
    queue.release(tickets[0])
    assert tickets[4].state is TicketState.RUNNING
