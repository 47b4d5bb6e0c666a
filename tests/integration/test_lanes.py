"""Tenants' token work runs in parallel lanes, through a real daemon (docs/concurrency.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from hsmclient import HsmClient

from tests.harness import DaemonProcess

GENERATIONS_BOUND = 5  # RSA-4096 generations of tenant A at most, whatever happens
CALLS_WANTED = 10  # B's calls that must complete inside one of A's generations


class _Generations:
    """Which of tenant A's key generations is in flight (0: none), for B to look at."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.finished = 0
        self.stop = threading.Event()


def _generate_rsa_4096(client: HsmClient, generations: _Generations) -> None:
    for number in range(1, GENERATIONS_BOUND + 1):
        if generations.stop.is_set():
            break
        generations.in_flight = number
        try:
            client.create_key("RSA_4096", "SIGN_VERIFY")
        finally:
            generations.in_flight = 0
            generations.finished = number


def test_b_encrypts_while_a_generates_rsa_4096_keys(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    """Before lanes one lock held B's Encrypt until A's generation ended (seconds); now B's
    calls start and finish while the same generation of A is still running."""
    daemon = new_daemon()
    daemon.create_tenant("lanes-a")
    daemon.create_tenant("lanes-b")
    generations = _Generations()
    failures: list[BaseException] = []
    inside: dict[int, int] = {}  # A's generation -> B's calls that ran entirely inside it

    def tenant_a() -> None:
        try:
            with daemon.client("lanes-a") as client:
                _generate_rsa_4096(client, generations)
        except BaseException as exc:
            failures.append(exc)

    with daemon.client("lanes-b") as b:
        key_id = b.create_key().key_id
        generator = threading.Thread(target=tenant_a)
        generator.start()
        try:
            while generator.is_alive() and max(inside.values(), default=0) < CALLS_WANTED:
                during = generations.in_flight
                blob = b.encrypt(key_id, b"tenant b's data").ciphertext_blob
                if during and generations.in_flight == during:
                    inside[during] = inside.get(during, 0) + 1
                assert b.decrypt(blob).plaintext == b"tenant b's data"
        finally:
            generations.stop.set()
            generator.join()
    assert failures == []
    assert max(inside.values(), default=0) >= CALLS_WANTED, (inside, generations.finished)


def test_tenants_mix_every_kind_of_work_while_a_tenant_is_created(
    new_daemon: Callable[..., DaemonProcess],
) -> None:
    """Three tenants, two clients each, creating keys (AES, EC, RSA), encrypting, signing with
    RSA and EC, scheduling deletions, while an operator creates a fourth tenant: no error, and
    the fourth tenant serves at once."""
    daemon = new_daemon()
    tenants = ["mix-a", "mix-b", "mix-c"]
    for tenant in tenants:
        daemon.create_tenant(tenant)
    failures: list[BaseException] = []

    def work(tenant: str, principal: str) -> None:
        try:
            with daemon.client(tenant, principal) as client:
                _mixed_rounds(client)
        except BaseException as exc:
            failures.append(exc)

    def create_tenant() -> None:
        try:
            daemon.create_tenant("mix-new")
            with daemon.client("mix-new") as client:
                _mixed_rounds(client, rounds=1)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(tenant, f"app{n}"))
        for tenant in tenants
        for n in (1, 2)
    ]
    threads.append(threading.Thread(target=create_tenant))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert daemon.process is not None and daemon.process.poll() is None


def _mixed_rounds(client: HsmClient, rounds: int = 3) -> None:
    rsa = client.create_key("RSA_2048", "SIGN_VERIFY").key_id
    for step in range(rounds):
        aes = client.create_key().key_id
        ec = client.create_key("EC_P256", "SIGN_VERIFY").key_id
        for n in range(10):
            context = {"step": str(step), "n": str(n)}
            plaintext = bytes([n]) * (1 + 100 * n)
            blob = client.encrypt(aes, plaintext, context).ciphertext_blob
            assert client.decrypt(blob, context).plaintext == plaintext
        for key_id, algorithm in ((rsa, "RSASSA_PSS_SHA_256"), (ec, "ECDSA_SHA_256")):
            message = f"round {step}".encode()
            signature = client.sign(key_id, message, algorithm).signature
            assert client.verify(key_id, message, signature, algorithm).signature_valid
            assert not client.verify(key_id, message + b"!", signature, algorithm).signature_valid
        for key_id in (aes, ec):
            assert client.schedule_key_deletion(key_id).key_state == "PENDING_DELETION"
