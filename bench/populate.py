"""Fills a stopped daemon's state with keys and tenants quickly, through hsmd's own objects.

Creating token keys is slow (each is a file SoftHSM2 writes and the daemon syncs before it
answers), and over gRPC each also pays for a call and an audit event. Here the composition
root (hsmd.app.Daemon) is built on the daemon's config in a process of its own, and several
threads call its KeyOps and TenantOps: the same rows, token objects and syncs as CreateKey and
CreateTenant, without the transport or audit events. Measured on the 2-core machine: ~80 AES
keys/s in-process (4 threads) against ~55/s by 8 concurrent CreateKey calls.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_SPAWN = multiprocessing.get_context("spawn")
THREADS = 8


def _in_process(task: Callable[..., Any], *args: Any) -> Any:
    """task(*args, results) in a process of its own (the PKCS#11 library reads its
    configuration, and hsmd initialises it, once per process); what it put on results."""
    results = _SPAWN.Queue()
    worker = _SPAWN.Process(target=task, args=(*args, results))
    worker.start()
    answer = results.get()
    worker.join()
    if isinstance(answer, BaseException):
        raise answer
    return answer


def _each_in_threads(items: Sequence[Any], make: Callable[[Any], str]) -> list[str]:
    """make(item) for every item, by THREADS threads; the answers in the order of the items."""
    made: list[str] = [""] * len(items)
    cursor = iter(range(len(items)))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            made[index] = make(items[index])

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return made


def _with_daemon(config_path: str, work: Callable[[Any], list[str]], results: Any) -> None:
    from hsmd import config
    from hsmd.app import Daemon

    try:
        daemon = Daemon.build(config.load(Path(config_path)))
        try:
            daemon.start()
            results.put(work(daemon))
        finally:
            daemon.close()
    except Exception as exc:  # handed to the parent, which raises it
        results.put(exc)


def _add_keys(config_path: str, tenant: str, principal: str, count: int, results: Any) -> None:
    from hsmd.domain import KeySpec, Principal, PrincipalKind, RequestContext

    ctx = RequestContext("bench-populate", Principal(PrincipalKind.TENANT, principal, tenant))

    def work(daemon: Any) -> list[str]:
        create = daemon.operations.keys.create_key
        return _each_in_threads(
            range(count), lambda _: create(ctx, KeySpec.AES_256, None, "").key_id
        )

    _with_daemon(config_path, work, results)


def _add_tenants(config_path: str, names: Sequence[str], principal: str, results: Any) -> None:
    from hsmd.domain import KeySpec, Principal, PrincipalKind, RequestContext

    def one(daemon: Any, name: str) -> str:
        daemon.tenants.create_tenant(name)
        ctx = RequestContext("bench-populate", Principal(PrincipalKind.TENANT, principal, name))
        key: str = daemon.operations.keys.create_key(ctx, KeySpec.AES_256, None, "").key_id
        return key

    _with_daemon(
        config_path, lambda daemon: _each_in_threads(names, lambda n: one(daemon, n)), results
    )


def add_keys(config: Path, tenant: str, principal: str, count: int) -> list[str]:
    """The ids of `count` new AES_256 keys of the tenant, usable by the principal (the daemon
    of `config` stopped)."""
    keys: list[str] = _in_process(_add_keys, str(config), tenant, principal, count)
    return keys


def add_tenants(config: Path, names: Sequence[str], principal: str) -> list[str]:
    """Creates the tenants (the daemon of `config` stopped) and one AES_256 key each, usable
    by the principal; the key ids, in the order of the names."""
    keys: list[str] = _in_process(_add_tenants, str(config), list(names), principal)
    return keys
