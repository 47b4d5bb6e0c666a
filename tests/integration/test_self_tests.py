"""Self-tests through the real token (hsmd/backend/selftest.py): every known answer passes at
start; a corrupted one stops start-up with its name; a key pair that fails its pairwise
consistency test is not created, and nothing of it is left in the token or the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from hsmclient import InternalError

from hsmd.backend.selftest import CORRUPT_VARIABLE, KNOWN_ANSWERS, PAIRWISE
from tests.harness import DaemonProcess, TestPki

TENANT = "selftested"


def test_every_known_answer_passes_at_start(daemon: DaemonProcess) -> None:
    names = ", ".join(test.name for test in KNOWN_ANSWERS)
    assert f"self-tests passed through the token: {names}" in daemon.log.read_text()


@pytest.mark.parametrize("name", [test.name for test in KNOWN_ANSWERS])
def test_a_corrupted_known_answer_stops_start_up(
    tmp_path: Path, pki: TestPki, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(CORRUPT_VARIABLE, name)
    code, output = DaemonProcess(tmp_path / "state", pki).start_fails()
    assert code != 0
    assert f"self-test {name} failed: the token's answer differs from the known answer" in output


def test_a_key_pair_that_fails_its_consistency_test_is_not_created(
    tmp_path: Path, pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = DaemonProcess(tmp_path / "state", pki)
    daemon.start()  # makes the daemon's own key pair, which must pass
    daemon.create_tenant(TENANT)
    daemon.stop()
    monkeypatch.setenv(CORRUPT_VARIABLE, PAIRWISE)
    daemon.start()
    try:
        with daemon.client(TENANT) as client:
            for spec, usage in (
                ("EC_P256", "SIGN_VERIFY"),
                ("RSA_2048", "ENCRYPT_DECRYPT"),
                ("ED25519", "SIGN_VERIFY"),
            ):
                with pytest.raises(InternalError):
                    client.create_key(spec, usage)
            assert client.create_key("AES_256").key_spec == "AES_256"  # no pair: no test
            assert [key.key_spec for key in client.iter_keys()] == ["AES_256"]
        assert len(daemon.token_objects(TENANT)) == 1  # the AES key's object alone
        assert "failed its pairwise consistency test" in daemon.log.read_text()
    finally:
        daemon.stop()
