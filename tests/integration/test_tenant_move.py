"""Moving a tenant from a shared instance to another one with `hsmd tenant export|import`:
keys keep their ids, aliases and tags, and what the source encrypted decrypts at the
destination; every refusal leaves the destination as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from hsmclient import HsmError
from hsmclient.keyimport import wrap_for_import

from hsmd.backend.pins import PinDeriver
from tests.harness import SOFTHSM_LIB, DaemonProcess, TestPki, run_hsmd

PROBE = Path(__file__).parents[1] / "token_probe.py"

MOVER, STAYER, RESIDENT = "mover", "stayer", "resident"
ALGORITHM = "RSAES_OAEP_SHA_1"


@dataclass
class Made:
    """What the source made for the moving tenant before the move."""

    aes: str
    ec: str
    external: str
    blobs: dict[bytes, bytes]  # plaintext -> ciphertext, from before and after a rotation
    signature: bytes
    import_token: bytes
    wrapping_key: bytes


@dataclass
class Move:
    source: DaemonProcess
    destination: DaemonProcess
    made: Made
    bundle: Path
    secret: Path


def export(daemon: DaemonProcess, tenant: str, out: Path, secret: Path) -> str:
    result = run_hsmd(
        "tenant", "export", "--config", str(daemon.config), "--tenant", tenant,
        "--out", str(out), "--transfer-secret", str(secret),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def import_(daemon: DaemonProcess, bundle: Path, secret: Path) -> tuple[int, str]:
    result = run_hsmd(
        "tenant", "import", "--config", str(daemon.config), "--bundle", str(bundle),
        "--transfer-secret", str(secret),
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def state(daemon: DaemonProcess) -> tuple[dict[str, str], list[str]]:
    """Every file under the token directory with its hash, and the database's content."""
    files = {
        str(path.relative_to(daemon.tokens)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(daemon.tokens.rglob("*"))
        if path.is_file()
    }
    # closing(): a connection's `with` does not close it, and one closed later by the garbage
    # collector deletes its -wal and -shm files under whatever runs then (a copytree did).
    with closing(sqlite3.connect(daemon.database)) as db:
        return files, list(db.iterdump())


@pytest.fixture(scope="module")
def move(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[Move]:
    """A source with two tenants, stopped, the mover's bundle exported, and a destination with
    a tenant of its own, stopped."""
    source = DaemonProcess(tmp_path_factory.mktemp("source"), pki)
    source.start()
    source.create_tenant(MOVER)
    source.create_tenant(STAYER)
    with source.client(MOVER) as client:
        aes = client.create_key(description="moving", tags={"team": "payments"}).key_id
        client.create_alias("alias/moving", aes)
        blobs = {b"before rotation": client.encrypt(aes, b"before rotation").ciphertext_blob}
        client.rotate_key_on_demand(aes)
        blobs[b"after rotation"] = client.encrypt("alias/moving", b"after rotation").ciphertext_blob
        ec = client.create_key(key_spec="EC_P256", key_usage="SIGN_VERIFY").key_id
        signature = client.sign(ec, b"signed at the source", "ECDSA_SHA_256").signature
        external = client.create_key(origin="EXTERNAL").key_id
        parameters = client.get_parameters_for_import(external, ALGORITHM)
    with source.client(STAYER) as client:
        client.create_alias("alias/staying", client.create_key().key_id)
    source.stop()
    made = Made(aes, ec, external, blobs, signature, parameters.import_token, parameters.public_key)
    destination = DaemonProcess(tmp_path_factory.mktemp("destination"), pki)
    destination.start()
    destination.create_tenant(RESIDENT)
    destination.stop()
    work = tmp_path_factory.mktemp("move")
    bundle, secret = work / "bundle", work / "transfer.secret"
    before = state(source)
    export(source, MOVER, bundle, secret)
    assert state(source) == before  # the source's token and rows are untouched
    yield Move(source, destination, made, bundle, secret)
    for daemon in (source, destination):
        if daemon.process is not None:
            daemon.stop()


def test_the_bundle_holds_the_moving_tenant_only_and_its_secret_travels_apart(
    move: Move,
) -> None:
    records = json.loads((move.bundle / "tenant.json").read_text())
    assert records["tenant"] == MOVER
    for content in records["tables"].values():
        owner = content["columns"].index("tenant" if "tenant" in content["columns"] else "name")
        assert {row[owner] for row in content["rows"]} <= {MOVER}
    assert STAYER not in (move.bundle / "tenant.json").read_text()
    assert len(records["tables"]["keys"]["rows"]) == 3
    assert len(records["tables"]["key_versions"]["rows"]) == 3  # two AES, one EC
    assert len(list((move.bundle / "token").iterdir())) == 1
    assert move.secret.stat().st_mode & 0o777 == 0o600
    assert not move.secret.is_relative_to(move.bundle)
    manifest = json.loads((move.bundle / "manifest.json").read_text())
    assert manifest["format"] == "hsmd-tenant-bundle" and manifest["tenant"] == MOVER
    assert {entry["path"] for entry in manifest["files"]} == {
        str(path.relative_to(move.bundle))
        for path in move.bundle.rglob("*")
        if path.is_file() and path.name not in ("manifest.json", "manifest.mac")
    }


def test_the_bundles_token_opens_with_the_transfer_pin_only(move: Move, tmp_path: Path) -> None:
    copy = tmp_path / "token"  # a copy: opening a token may touch its files
    shutil.copytree(move.bundle / "token", copy)
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {copy}\nobjectstore.backend = file\n")
    secret = bytes.fromhex(move.secret.read_text())

    def probe(pin: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, str(PROBE), str(SOFTHSM_LIB), f"hsmd/{MOVER}", "list"],
            env=dict(os.environ, SOFTHSM2_CONF=str(conf), HSMD_TEST_PIN=pin),
            capture_output=True,
            check=False,
        )

    assert probe(PinDeriver(move.source.master_secret).user_pin(MOVER)).returncode != 0
    opened = probe(PinDeriver(secret).user_pin(MOVER))
    assert opened.returncode == 0, opened.stderr
    assert len(json.loads(opened.stdout)) >= 4  # AES x2, EC pair, the import wrapping key


def test_import_is_refused_while_the_destination_runs(move: Move) -> None:
    move.destination.start()
    try:
        code, output = import_(move.destination, move.bundle, move.secret)
    finally:
        move.destination.stop()
    assert code == 1 and "another hsmd process is using" in output


@pytest.mark.parametrize("damage", ["token file", "records", "extra file", "wrong secret"])
def test_a_damaged_bundle_or_a_wrong_secret_is_refused_and_changes_nothing(
    move: Move, tmp_path: Path, damage: str
) -> None:
    bundle, secret = tmp_path / "bundle", move.secret
    shutil.copytree(move.bundle, bundle)
    if damage == "token file":
        victim = next(p for p in bundle.rglob("*.object") if p.name != "token.object")
        data = bytearray(victim.read_bytes())
        data[-1] ^= 1
        victim.write_bytes(bytes(data))
    elif damage == "records":
        path = bundle / "tenant.json"
        path.write_text(path.read_text().replace("payments", "paymentz"))
    elif damage == "extra file":
        (bundle / "token" / "smuggled.object").write_bytes(b"x")
    else:
        secret = tmp_path / "other.secret"
        secret.write_text("ab" * 32 + "\n")
    before = state(move.destination)
    code, output = import_(move.destination, bundle, secret)
    assert code == 1
    expected = {
        "token file": "does not match the manifest",
        "records": "does not match the manifest",
        "extra file": "files differ from the manifest",
        "wrong secret": "does not verify with this transfer secret",
    }[damage]
    assert expected in output
    assert state(move.destination) == before


def test_a_token_with_the_same_serial_at_the_destination_is_refused(move: Move) -> None:
    token = next((move.bundle / "token").iterdir())
    stray = move.destination.tokens / token.name
    shutil.copytree(token, stray)
    try:
        before = state(move.destination)
        code, output = import_(move.destination, move.bundle, move.secret)
        assert code == 1 and "with serial" in output and "exists here already" in output
        assert state(move.destination) == before
    finally:
        shutil.rmtree(stray)


def test_a_dedicated_instance_takes_no_other_tenant(move: Move) -> None:
    config = move.destination.config.read_text()
    move.destination.config.write_text(
        f'{config}\n[tenancy]\nmode = "single"\ntenant = "{RESIDENT}"\n'
    )
    try:
        before = state(move.destination)
        code, output = import_(move.destination, move.bundle, move.secret)
        assert code == 1 and f"serves tenant '{RESIDENT}' alone" in output
        assert state(move.destination) == before
    finally:
        move.destination.config.write_text(config)


def test_a_tenant_of_the_same_name_at_the_destination_is_refused(move: Move) -> None:
    before = state(move.source)
    code, output = import_(move.source, move.bundle, move.secret)
    assert code == 1 and "a tenant named 'mover' exists here already" in output
    assert state(move.source) == before


def test_an_interrupted_import_is_finished_by_running_it_again(move: Move, tmp_path: Path) -> None:
    """The two states a crash can leave: the token staged but not in place (the daemon starts
    and serves its other tenants meanwhile), and the token in place without its rows."""
    shutil.copytree(move.destination.directory, tmp_path / "copy")
    copy = DaemonProcess(tmp_path / "copy", move.destination.pki, existing=True)
    rows_before = {path.name: path.read_bytes() for path in copy.directory.glob("hsmd.db*")}
    code, output = import_(copy, move.bundle, move.secret)
    assert code == 0, output
    placed = copy.tokens / next((move.bundle / "token").iterdir()).name
    serial = json.loads((move.bundle / "manifest.json").read_text())["token_serial"]
    staging = copy.tokens / f".hsmd-import-{serial}"
    digest = hashlib.sha256((move.bundle / "manifest.json").read_bytes()).hexdigest()

    def crash(*, token_in_place: bool) -> None:
        for name, data in rows_before.items():
            (copy.directory / name).write_bytes(data)
        staging.mkdir(exist_ok=True)
        (staging / "pending").write_text(digest + "\n")
        if not token_in_place:
            placed.rename(staging / placed.name)

    crash(token_in_place=False)
    copy.start()  # the staged token is no token to SoftHSM2
    with copy.client(RESIDENT) as client:
        assert len(client.generate_random(8)) == 8
    copy.stop()
    code, output = import_(copy, move.bundle, move.secret)
    assert code == 0, output
    crash(token_in_place=True)
    code, output = import_(copy, move.bundle, move.secret)
    assert code == 0 and "finishing the interrupted import" in output, output
    assert not staging.exists()
    copy.start()
    with copy.client(MOVER) as client:
        assert client.decrypt(move.made.blobs[b"before rotation"]).key_id == move.made.aes
    copy.stop()


def test_the_moved_tenant_is_served_at_the_destination_with_its_keys_and_ciphertexts(
    move: Move,
) -> None:
    code, output = import_(move.destination, move.bundle, move.secret)
    assert code == 0, output
    assert "tenant mover" in output and "3 keys, 1 aliases" in output
    assert not list(move.destination.tokens.glob(".hsmd-import-*"))
    made = move.made
    move.destination.start()
    with move.destination.client(MOVER) as client:
        for plaintext, blob in made.blobs.items():
            decrypted = client.decrypt(blob)
            assert (decrypted.plaintext, decrypted.key_id) == (plaintext, made.aes)
            assert client.decrypt(blob, key_id="alias/moving").plaintext == plaintext
        described = client.describe_key("alias/moving")
        assert (described.key_id, described.description) == (made.aes, "moving")
        assert dict(described.tags) == {"team": "payments"}
        assert len(list(client.iter_key_rotations(made.aes))) == 1
        checked = client.verify(made.ec, b"signed at the source", made.signature, "ECDSA_SHA_256")
        assert checked.signature_valid
        signed = client.sign(made.ec, b"signed here", "ECDSA_SHA_256").signature
        assert client.verify(made.ec, b"signed here", signed, "ECDSA_SHA_256").signature_valid
        wrapped = wrap_for_import(bytes(range(32)), made.wrapping_key, ALGORITHM)
        imported = client.import_key_material(made.external, made.import_token, wrapped)
        assert imported.key_state == "ENABLED"
        assert client.decrypt(client.encrypt(made.external, b"x").ciphertext_blob).plaintext == (
            b"x"
        )
    with move.destination.client(RESIDENT) as client:
        client.create_key()
    with move.destination.admin() as admin:
        assert sorted(t.name for t in admin.list_tenants()) == [MOVER, RESIDENT]
    with move.destination.client(STAYER) as client, pytest.raises(HsmError):
        client.create_key()
    log = move.destination.log.read_text()
    assert "tenant mover ready (rolled back 0, destroyed 0, quarantined 0, unavailable 0" in log
    move.destination.stop()
    # The source keeps the tenant until an operator deletes it there.
    move.source.start()
    with move.source.client(MOVER) as client:
        assert client.decrypt(made.blobs[b"after rotation"]).key_id == made.aes
    move.source.stop()
    # A second import of the same bundle finds the tenant there.
    code, output = import_(move.destination, move.bundle, move.secret)
    assert code == 1 and "exists here already" in output
