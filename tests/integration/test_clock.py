"""A clock set back cannot shorten a deletion window (issue: a deletion scheduled while the
clock was 30 days behind was carried out as soon as the clock was corrected)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

from tests.harness import DaemonProcess

TENANT = "timely"


def _audited(daemon: DaemonProcess, operation: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in daemon.audit_log.read_text().splitlines()]
    return [event for event in events if event.get("operation") == operation]


def test_a_deletion_scheduled_while_the_clock_is_behind_keeps_its_whole_window(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
        daemon.wait_for_maintenance()  # the daemon has acted at the real time
        acted = daemon.clock_high_water()
        assert acted is not None

        daemon.advance_clock(timedelta(days=-30))
        daemon.wait_for(lambda: _audited(daemon, "ClockMovedBackwards"))
        scheduled = client.schedule_key_deletion(key_id, 7).deletion_date
        assert scheduled is not None and scheduled >= acted + timedelta(days=7)

        daemon.advance_clock(timedelta(days=30))  # the clock is corrected
        daemon.wait_for_maintenance()
        assert client.describe_key(key_id).key_state == "PENDING_DELETION"
        daemon.advance_clock(timedelta(days=6))
        daemon.wait_for_maintenance()
        assert client.describe_key(key_id).key_state == "PENDING_DELETION"
        daemon.advance_clock(timedelta(days=1, hours=1))
        daemon.wait_for(lambda: client.describe_key(key_id).key_state == "DESTROYED")
    daemon.wait_for(lambda: _audited(daemon, "DestroyKey"))  # appended just after the change
    (destroyed,) = _audited(daemon, "DestroyKey")
    assert (destroyed["principal"], destroyed["key_id"]) == ("daemon", key_id)
    assert "earlier than" in daemon.log.read_text()


def test_the_time_the_daemon_acted_at_survives_a_restart_on_a_clock_set_back(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    daemon.create_tenant(TENANT)
    with daemon.client(TENANT) as client:
        key_id = client.create_key().key_id
    daemon.stop()  # stores the time it last acted at
    acted = daemon.clock_high_water()
    assert acted is not None
    daemon.advance_clock(timedelta(days=-30))
    daemon.start()
    with daemon.client(TENANT) as client:
        scheduled = client.schedule_key_deletion(key_id, 7).deletion_date
    assert scheduled is not None and scheduled >= acted + timedelta(days=7)
    daemon.wait_for(lambda: "earlier than" in daemon.log.read_text())
