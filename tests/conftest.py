"""Tiers, markers and the shared real parts of the suite.

tests/unit needs nothing; tests/backend needs SoftHSM2; tests/integration runs real daemons.
Without SoftHSM2 the last two are skipped with a reason, except under CI=true, where a missing
SoftHSM2 is a failure: CI must never pass by skipping the tiers that prove the features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SOFTHSM_LIB, DaemonProcess, TestPki

TENANT_A = "alpha"
TENANT_B = "beta"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") == "true" and not SOFTHSM_LIB.exists():
        raise pytest.UsageError(f"CI=true but SoftHSM2 is missing ({SOFTHSM_LIB}); run `make test`")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(
        reason=f"SoftHSM2 is not installed ({SOFTHSM_LIB}); `make test` installs it"
    )
    for item in items:
        tier = Path(item.path).parent.name
        if tier == "backend":
            item.add_marker(pytest.mark.softhsm)
        if tier == "integration":
            item.add_marker(pytest.mark.softhsm)
            item.add_marker(pytest.mark.integration)
        if tier in ("backend", "integration") and not SOFTHSM_LIB.exists():
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_attempt_per_call(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Integration tests see each refusal as the daemon gives it: the client library's retries
    (of UNAVAILABLE, and of RESOURCE_EXHAUSTED with a retry delay) would wait refusals out.
    A test of the retries sets RETRY_DELAYS itself."""
    if Path(request.node.path).parent.name == "integration":
        monkeypatch.setattr("hsmclient.client.RETRY_DELAYS", ())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    """One daemon shared by the integration tests that do not stop it, with two tenants."""
    process = DaemonProcess(tmp_path_factory.mktemp("daemon"), pki)
    process.start()
    process.create_tenant(TENANT_A)
    process.create_tenant(TENANT_B)
    yield process
    process.stop()


@pytest.fixture
def new_daemon(
    tmp_path_factory: pytest.TempPathFactory, pki: TestPki
) -> Iterator[Callable[..., DaemonProcess]]:
    """A factory of daemons of a test's own, for tests that stop, kill or restart them."""
    started: list[DaemonProcess] = []

    def make(**kwargs: Any) -> DaemonProcess:
        process = DaemonProcess(tmp_path_factory.mktemp("daemon"), pki, **kwargs)
        process.start()
        started.append(process)
        return process

    yield make
    for process in started:
        if process.process is not None:
            process.kill()
