"""Many concurrent clients mixing every operation: no error, no crash (DESIGN §9)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from hsmclient import HsmClient

from hsmd.config import SPARE_WORKERS
from tests.harness import DaemonProcess

CLIENTS = 16
OPERATIONS_PER_CLIENT = 200
TENANTS = ("stress-a", "stress-b")


def _mixed_work(client: HsmClient, own_keys: list[str]) -> int:
    done = 0
    for step in range(OPERATIONS_PER_CLIENT):
        if step % 25 == 0:
            own_keys.append(client.create_key().key_id)
        key_id = random.choice(own_keys)
        choice = step % 4
        if choice == 0:
            plaintext = random.randbytes(random.randint(1, 4096))
            blob = client.encrypt(key_id, plaintext, {"step": str(step)}).ciphertext_blob
            assert client.decrypt(blob, {"step": str(step)}).plaintext == plaintext
        elif choice == 1:
            data_key = client.generate_data_key(key_id)
            assert client.decrypt(data_key.ciphertext_blob).plaintext == data_key.plaintext
        elif choice == 2:
            assert client.describe_key(key_id).key_state == "ENABLED"
        else:
            assert len(client.generate_random(64)) == 64
        done += 1
    return done


def test_sixteen_concurrent_clients_mixing_operations(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    # Every client's call finds a slot or a place in the waiting room: the scheduler keeps
    # SPARE_WORKERS threads for refusals (docs/operations.md#scheduler).
    daemon = new_daemon(workers=CLIENTS + SPARE_WORKERS)
    for tenant in TENANTS:
        daemon.create_tenant(tenant)
    failures: list[BaseException] = []
    completed: list[int] = []

    def run(index: int) -> None:
        try:
            with daemon.client(TENANTS[index % 2], f"worker{index}") as client:
                completed.append(_mixed_work(client, []))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sum(completed) == CLIENTS * OPERATIONS_PER_CLIENT
    assert daemon.process is not None and daemon.process.poll() is None
