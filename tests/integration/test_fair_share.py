"""Fair share through a real daemon: a tenant that sends more key generations at once than its
share holds is refused the excess with RESOURCE_EXHAUSTED and a retry delay (never left to time
out), while another tenant's calls at the same moment are all served."""

from __future__ import annotations

import threading
from collections.abc import Callable

from hsmclient import ResourceExhaustedError

from tests.harness import DaemonProcess

FLOODER, NEIGHBOUR = "flooder", "neighbour"
# More than [scheduler] calls_per_tenant (14 with 16 workers): the excess cannot wait.
FLOOD_THREADS = 20
NEIGHBOUR_CALLS = 30


def test_a_flooding_tenant_is_refused_its_excess_while_another_is_served(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    daemon = new_daemon()
    for tenant in (FLOODER, NEIGHBOUR):
        daemon.create_tenant(tenant)
    stop = threading.Event()
    refusals: list[ResourceExhaustedError] = []
    other_failures: list[BaseException] = []

    def flood(index: int) -> None:
        with daemon.client(FLOODER, f"app{index}") as client:
            while not stop.is_set():
                try:
                    client.create_key("RSA_2048", "SIGN_VERIFY")
                except ResourceExhaustedError as refused:
                    refusals.append(refused)
                except BaseException as exc:
                    other_failures.append(exc)
                    return

    flooders = [threading.Thread(target=flood, args=(i,)) for i in range(FLOOD_THREADS)]
    for thread in flooders:
        thread.start()
    try:
        with daemon.client(NEIGHBOUR) as neighbour:
            key_id = neighbour.create_key().key_id
            served = 0
            for _ in range(NEIGHBOUR_CALLS):
                blob = neighbour.encrypt(key_id, b"mine").ciphertext_blob
                assert neighbour.decrypt(blob).plaintext == b"mine"
                served += 1
            flood_was_refused = bool(refusals)
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    assert other_failures == []
    assert served == NEIGHBOUR_CALLS
    assert flood_was_refused, "the flood never went past its share"
    assert all(r.retry_after is not None and r.retry_after > 0 for r in refusals)
