"""Every fault gets its documented status (docs/api.md), not INTERNAL: a full or read-only disk
under the tokens or the database, an out-of-range time, an oversized filter, bytes that are
not a request. Nothing is half-made, and a malformed request logs one line, no traceback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hsmclient import HsmError

from hsmd.v1 import service_pb2 as svc
from hsmd.v1.service_pb2_grpc import KeyManagementServiceStub
from tests.conftest import TENANT_A
from tests.harness import DaemonProcess, LoopFileSystem, TestPki
from tests.stubs import channel

TENANT = "faulty"


@pytest.fixture
def stub(daemon: DaemonProcess) -> Iterator[KeyManagementServiceStub]:
    with channel(daemon, daemon.pki.tenant_client(TENANT_A, "app")) as open_channel:
        yield KeyManagementServiceStub(open_channel)


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details() or ""


def test_bytes_that_are_not_a_request_are_invalid_argument_with_one_warning(
    daemon: DaemonProcess,
) -> None:
    with channel(daemon, daemon.pki.tenant_client(TENANT_A, "app")) as open_channel:
        raw = open_channel.unary_unary("/hsmd.v1.KeyManagementService/Encrypt")
        code, message = _code(lambda: raw(b"\xff\xff\xff\xff garbage", timeout=30))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in message
    log = daemon.log.read_text()
    assert "WARNING hsmd.access" in log and "Exception deserializing" not in log


def test_an_out_of_range_time_is_invalid_argument(stub: KeyManagementServiceStub) -> None:
    key_id = stub.CreateKey(svc.CreateKeyRequest(origin=2)).key_metadata.key_id  # EXTERNAL
    for seconds in (2**62, -(2**62)):
        request = svc.ImportKeyMaterialRequest(
            key_id=key_id,
            import_token=b"t",
            encrypted_key_material=b"m",
            valid_to=Timestamp(seconds=seconds),
        )
        code, message = _code(lambda request=request: stub.ImportKeyMaterial(request))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "valid_to" in message


def test_a_tag_filter_of_a_thousand_pairs_is_invalid_argument(
    stub: KeyManagementServiceStub,
) -> None:
    request = svc.ListKeysRequest(tag_filter={f"k{n}": "v" for n in range(1000)})
    code, message = _code(lambda: stub.ListKeys(request))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "tag_filter" in message


@pytest.fixture
def daemon_on(
    tmp_path: Path, pki: TestPki
) -> Iterator[Callable[[str], tuple[DaemonProcess, LoopFileSystem]]]:
    """Starts a daemon whose token directory ("tokens") or metadata database ("database") is
    on a small file system of its own (the audit log stays on the big one)."""
    started: list[tuple[DaemonProcess, LoopFileSystem]] = []

    def start(part: str) -> tuple[DaemonProcess, LoopFileSystem]:
        daemon = DaemonProcess(tmp_path / "daemon", pki)
        mount_point = daemon.tokens
        if part == "database":
            mount_point = daemon.directory / "db"
            config = daemon.config.read_text()
            daemon.config.write_text(config.replace('"hsmd.db"', '"db/hsmd.db"'))
            daemon.database = mount_point / "hsmd.db"
        volume = LoopFileSystem.mounted(tmp_path / "small.img", mount_point, size="16M")
        started.append((daemon, volume))
        daemon.start()
        daemon.create_tenant(TENANT)
        return daemon, volume

    yield start
    for daemon, volume in started:
        if daemon.process is not None:
            daemon.kill()
        volume.unmount(lazy=True)


def test_a_full_token_disk_is_resource_exhausted_and_a_read_only_one_unavailable(
    daemon_on: Callable[[str], tuple[DaemonProcess, LoopFileSystem]],
) -> None:
    daemon, volume = daemon_on("tokens")
    with daemon.client(TENANT) as client:
        kept = client.create_key().key_id
        filler = volume.mount_point / "filler"
        _fill(filler)
        code, _ = _code_of(lambda: client.create_key())
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        with daemon.admin() as admin:
            code, _ = _code_of(lambda: admin.create_tenant("second"))
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            filler.unlink()
            admin.create_tenant("second")  # room again: served again
        client.create_key()
        volume.read_only()
        try:
            code, _ = _code_of(lambda: client.create_key())
            assert code is grpc.StatusCode.UNAVAILABLE
            assert client.decrypt(client.encrypt(kept, b"x").ciphertext_blob).plaintext == b"x"
        finally:
            volume.read_only(False)
    keys = daemon.query("SELECT state FROM keys")
    assert all(state == "ENABLED" for (state,) in keys)  # nothing half-made


def test_a_database_disk_that_fails_is_unavailable(
    daemon_on: Callable[[str], tuple[DaemonProcess, LoopFileSystem]],
) -> None:
    """(A full database disk is not shown here: SQLite's WAL keeps room of its own; the
    keystore tier shows SQLITE_FULL becoming RESOURCE_EXHAUSTED.)"""
    daemon, volume = daemon_on("database")
    with daemon.client(TENANT) as client:
        client.create_key()
        volume.power_cut()  # every read and write there now fails with EIO
        code, message = _code_of(lambda: client.create_key())
    assert code is grpc.StatusCode.UNAVAILABLE and "internal error" not in message


def _fill(path: Path) -> None:
    """Writes zeros until the file system is full."""
    with path.open("wb") as sink:
        try:
            while True:
                sink.write(b"\0" * (1 << 20))
                sink.flush()
        except OSError:
            pass
        os.fsync(sink.fileno())


def _code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(HsmError) as failed:
        call()
    return failed.value.code, str(failed.value)
