"""Fair share of the HSM between tenants busy at the same moment, with a bounded wait.

A slot is a share of the daemon's CPU: a call holds one from its rate check through its
durable audit event (hsmd.transport.guard), and the GIL shares the CPU between the calls at
work, so a tenant's CPU share is its part of the slots. At most `capacity` calls run at
once, at most `slow_capacity` of them slow (key generation: seconds of one core each), so
slow work never takes every slot from fast work. When a slot frees, it goes to the waiting
tenant with the fewest calls running (the earliest of its calls first), and while several
tenants are busy (calls running or waiting) none holds more than an equal part of the slots,
even if another needs fewer: a slot left free costs no CPU, a flooding tenant's extra call
would slow every other tenant's calls. A tenant alone may use as many slots as its token has
sessions (`running_per_tenant`; more would only wait for a session inside a slot), which on
a shared instance leaves a slot for any other tenant's next call.

Waiting calls hold a server worker thread each, so waiting is bounded three ways, each
answered RESOURCE_EXHAUSTED at once rather than by a timeout:
- a tenant has at most `calls_per_tenant` calls running or waiting;
- at most `capacity + waiting_room` calls run or wait in all (slots that slow calls cannot
  use count as waiting room); when that is full, the newest waiting call of the tenant with the
  most waiting calls gives its place up (max-min fair, so a flooding tenant cannot keep another
  tenant's calls out);
- no call waits longer than `max_wait` seconds.
The server sizes its thread pool above capacity + waiting_room (hsmd.config), so a thread is
always free to take, and admit or refuse, another tenant's call.

`FairQueue` is the pure rule (time passed in); `Scheduler` blocks threads on it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from hsmd import metrics
from hsmd.errors import ResourceExhausted


class TicketState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    REFUSED = "refused"
    DONE = "done"


@dataclass(eq=False)
class Ticket:
    tenant: str
    slow: bool
    number: int
    arrived: float
    state: TicketState = TicketState.WAITING
    refusal: str = field(default="")


@dataclass(frozen=True)
class SchedulerLimits:
    capacity: int
    slow_capacity: int
    calls_per_tenant: int
    waiting_room: int
    max_wait: float
    # The most slots one tenant holds at once: no more than its token's sessions can serve
    # (a call beyond them would hold a slot while it waits for a session), and one fewer than
    # capacity, so another tenant's call always finds a slot within one call's time.
    running_per_tenant: int | None = None

    @property
    def tenant_share(self) -> int:
        return self.capacity if self.running_per_tenant is None else self.running_per_tenant


class FairQueue:
    """The scheduling rule, not thread-safe: Scheduler holds its lock around every call."""

    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self._numbers = itertools.count()
        self._waiting: list[Ticket] = []
        self._running: dict[str, int] = {}
        self._slow_running = 0
        self._settled: list[Ticket] = []

    def take_settled(self) -> list[Ticket]:
        """The waiting tickets that got a slot or were refused since the last call, whose
        threads must be woken."""
        settled, self._settled = self._settled, []
        return settled

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def waiting(self, tenant: str | None = None) -> int:
        return sum(1 for t in self._waiting if tenant is None or t.tenant == tenant)

    def arrive(self, tenant: str, slow: bool, now: float) -> Ticket:
        """A new call: RUNNING if a slot is free for it, else WAITING (or REFUSED)."""
        ticket = Ticket(tenant, slow, next(self._numbers), now)
        if self.running(tenant) + self.waiting(tenant) >= self.limits.calls_per_tenant:
            self._refuse(
                ticket,
                f"tenant {tenant!r} has {self.limits.calls_per_tenant} calls running or"
                " waiting already",
            )
            return ticket
        self._waiting.append(ticket)
        self._dispatch()
        held = len(self._waiting) + sum(self._running.values())  # each holds a thread
        if held > self.limits.capacity + self.limits.waiting_room:
            self._evict()
            self._dispatch()  # as in give_up
        return ticket

    def release(self, ticket: Ticket) -> None:
        """A RUNNING call finished: its slot goes to the next waiting call."""
        if ticket.state is not TicketState.RUNNING:
            return
        ticket.state = TicketState.DONE
        self._running[ticket.tenant] -= 1
        if not self._running[ticket.tenant]:
            del self._running[ticket.tenant]
        if ticket.slow:
            self._slow_running -= 1
        self._dispatch()

    def give_up(self, ticket: Ticket, now: float) -> None:
        """A WAITING call whose wait is over without a slot is refused."""
        if ticket.state is TicketState.WAITING:
            self._waiting.remove(ticket)
            self._refuse(
                ticket, f"the HSM is busy: no slot within {now - ticket.arrived:.1f} seconds"
            )
            self._dispatch()  # its tenant may no longer be busy: the others' parts grow

    def _refuse(self, ticket: Ticket, why: str) -> None:
        ticket.state = TicketState.REFUSED
        ticket.refusal = why

    def _fair_share(self) -> int:
        """The slots one tenant may hold now: an equal part of capacity between the tenants
        with calls running or waiting (at least one), and no more than tenant_share. A
        tenant alone holds up to tenant_share; once a second tenant has a call running or
        waiting, the first takes no new slot beyond its part."""
        busy = len(self._running.keys() | {t.tenant for t in self._waiting})
        return min(self.limits.tenant_share, max(1, self.limits.capacity // max(1, busy)))

    def _dispatch(self) -> None:
        while sum(self._running.values()) < self.limits.capacity:
            share = self._fair_share()
            candidates = [
                t
                for t in self._waiting
                if (not t.slow or self._slow_running < self.limits.slow_capacity)
                and self.running(t.tenant) < share
            ]
            if not candidates:
                return
            chosen = min(candidates, key=lambda t: (self.running(t.tenant), t.number))
            self._waiting.remove(chosen)
            chosen.state = TicketState.RUNNING
            self._settled.append(chosen)
            self._running[chosen.tenant] = self.running(chosen.tenant) + 1
            if chosen.slow:
                self._slow_running += 1

    def _evict(self) -> None:
        """Over full: the tenant waiting most gives up its newest waiting call."""
        counts: dict[str, int] = {}
        for waiting in self._waiting:
            counts[waiting.tenant] = counts.get(waiting.tenant, 0) + 1
        most = max(counts, key=lambda tenant: (counts[tenant], self.running(tenant)))
        newest = max((t for t in self._waiting if t.tenant == most), key=lambda t: t.number)
        self._waiting.remove(newest)
        self._refuse(newest, "the HSM is busy: its waiting room is full")
        self._settled.append(newest)


class Scheduler:
    """FairQueue for threads: `enter()` waits for a slot and returns the ticket that holds it,
    `leave(ticket)` gives it to the next waiting call.

    A waiting thread sleeps on a lock of its own, released only when its ticket is settled, so
    a freed slot wakes the one thread it goes to, not every waiting thread.
    """

    def __init__(self, limits: SchedulerLimits, monotonic: Callable[[], float]) -> None:
        self._queue = FairQueue(limits)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sleepers: dict[Ticket, threading.Lock] = {}

    def enter(self, tenant: str, slow: bool, patience: float | None = None) -> Ticket:
        """Waits for a slot (at most max_wait, and at most `patience` seconds: what is left
        of the caller's deadline, so no call runs after its client gave up waiting); the
        ticket holds it until leave().

        Raises:
            ResourceExhausted: no slot for this call (see the module docstring), with
                max_wait as the retry delay.
        """
        limits = self._queue.limits
        wait = limits.max_wait if patience is None else max(0.0, min(limits.max_wait, patience))
        with self._lock:
            ticket = self._queue.arrive(tenant, slow, self._monotonic())
            self._wake_settled()  # it may have taken a waiting call's place
            waiting = ticket.state is TicketState.WAITING
            if waiting:
                self._sleepers[ticket] = wakeup = threading.Lock()
                wakeup.acquire()
        if waiting:  # (its state may change as soon as the lock is released)
            metrics.SCHEDULER_WAITING.inc()
            wakeup.acquire(timeout=max(0.0, ticket.arrived + wait - self._monotonic()))
            metrics.SCHEDULER_WAITING.dec()
            with self._lock:
                del self._sleepers[ticket]
                self._queue.give_up(ticket, self._monotonic())  # if its wait is over unsettled
                self._wake_settled()  # a call its giving up let run
        waited = self._monotonic() - ticket.arrived if waiting else 0.0
        metrics.SCHEDULER_WAIT_SECONDS.labels(tenant).observe(waited)
        if ticket.state is TicketState.REFUSED:
            raise ResourceExhausted(ticket.refusal, retry_after=limits.max_wait)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Gives the slot of a ticket enter() returned to the next waiting call."""
        with self._lock:
            self._queue.release(ticket)
            self._wake_settled()

    def _wake_settled(self) -> None:
        """Under the lock: wakes the threads of the tickets just settled."""
        for ticket in self._queue.take_settled():
            sleeper = self._sleepers.get(ticket)
            if sleeper is not None:
                sleeper.release()
