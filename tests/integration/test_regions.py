"""Multi-region keys across real daemons: regions a and b trust each other (b with two worker
processes), region c trusts nobody. Keys made in a are replicated to b with the same id and
material; blobs, signatures and MACs cross regions; rotations reach the replica; the primary
role moves; a replica is deleted; and the material is nowhere outside the two tokens
(docs/regions.md)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hsmclient import HsmClient, HsmError, cli

from hsmd.backend.pins import PinDeriver
from tests.aws_model import operation, problems
from tests.harness import (
    SOFTHSM_LIB,
    TRUST_DOMAIN,
    DaemonProcess,
    TestPki,
    run_hsmd,
    wait_until,
)

TENANT = "globex"
_PROBE = Path(__file__).parents[1] / "material_probe.py"


class Region:
    """A daemon in a region, with its region certificate."""

    def __init__(self, name: str, daemon: DaemonProcess) -> None:
        self.name = name
        self.daemon = daemon

    def client(self) -> HsmClient:
        return self.daemon.client(TENANT)


def _in_region(directory: Path, pki: TestPki, name: str, processes: int = 1) -> Region:
    daemon = DaemonProcess(directory, pki, processes=processes)
    cert, key = pki.client(f"region-{name}", [f"spiffe://{TRUST_DOMAIN}/region/{name}"])
    (directory / "region.pem").write_bytes(cert)
    (directory / "region-key.pem").write_bytes(key)
    with daemon.config.open("a") as config:
        config.write(
            f'\n[region]\nname = "{name}"\nclient_cert = "region.pem"\n'
            'client_key = "region-key.pem"\n'
        )
    daemon.start()
    daemon.create_tenant(TENANT)
    return Region(name, daemon)


def _trust(region: Region, *peers: Region) -> None:
    """An operator approves the peers: [region.peers] in the config, then SIGHUP."""
    daemon = region.daemon
    with daemon.config.open("a") as config:
        config.write(
            "\n[region.peers]\n"
            + "".join(f'{peer.name} = "127.0.0.1:{peer.daemon.port}"\n' for peer in peers)
        )
    before = daemon.log.read_text().count("region peers are now")
    daemon.send(signal.SIGHUP)
    wait_until(
        lambda: daemon.log.read_text().count("region peers are now") > before,
        "the peers reloaded",
    )


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[dict[str, Region]]:
    made: dict[str, Region] = {}
    try:
        for name in ("a", "b", "c"):
            # b runs worker processes, which pass region calls to their coordinator
            processes = 2 if name == "b" else 1
            made[name] = _in_region(tmp_path_factory.mktemp(f"region-{name}"), pki, name, processes)
        _trust(made["a"], made["b"], made["c"])  # a calls c, which does not trust a
        _trust(made["b"], made["a"])
        yield made
    finally:
        for region in made.values():
            if region.daemon.process is not None:
                region.daemon.stop()


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(HsmError) as failed:
        call()  # type: ignore[operator]
    return failed.value.code


def test_an_aes_key_replicates_and_blobs_cross_regions(regions: dict[str, Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    key = a.create_key(description="orders", multi_region=True)
    assert key.key_id.startswith("mrk-") and key.multi_region
    replica = a.replicate_key(key.key_id, "b")
    assert (replica.key_id, replica.description) == (key.key_id, "orders")
    assert replica.multi_region_configuration is not None
    assert replica.multi_region_configuration.multi_region_key_type == "REPLICA"
    primary = a.describe_key(key.key_id).multi_region_configuration
    assert primary is not None and primary.replica_regions == ("b",)
    assert primary.multi_region_key_type == "PRIMARY"

    blob = a.encrypt(key.key_id, b"from a", {"order": "1"}).ciphertext_blob
    assert b.decrypt(blob, {"order": "1"}).plaintext == b"from a"
    back = b.encrypt(key.key_id, b"from b").ciphertext_blob
    assert a.decrypt(back).plaintext == b"from b"

    # A rotation in a reaches b: a blob of the new version decrypts there.
    assert a.rotate_key_on_demand(key.key_id).key_version == 2
    wait_until(lambda: b.describe_key(key.key_id).primary_version == 2, "b has version 2")
    newer = a.encrypt(key.key_id, b"version 2")
    assert newer.key_version == 2
    assert b.decrypt(newer.ciphertext_blob).plaintext == b"version 2"
    assert _code(lambda: b.rotate_key_on_demand(key.key_id)) is grpc.StatusCode.FAILED_PRECONDITION
    assert _code(lambda: a.replicate_key(key.key_id, "b")) is grpc.StatusCode.ALREADY_EXISTS


def test_ec_and_rsa_signatures_and_hmacs_cross_regions(regions: dict[str, Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    signing = a.create_key("EC_P256", "SIGN_VERIFY", multi_region=True)
    b_copy = a.replicate_key(signing.key_id, "b")
    assert b_copy.key_spec == "EC_P256"
    public = a.get_public_key(signing.key_id).public_key
    assert b.get_public_key(signing.key_id).public_key == public
    signature = b.sign(signing.key_id, b"made in b", "ECDSA_SHA_256").signature
    assert a.verify(signing.key_id, b"made in b", signature, "ECDSA_SHA_256").signature_valid
    key = serialization.load_der_public_key(public)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, b"made in b", ec.ECDSA(hashes.SHA256()))  # raises if it does not

    rsa_key = a.create_key("RSA_2048", "SIGN_VERIFY", multi_region=True)
    a.replicate_key(rsa_key.key_id, "b")
    signed = b.sign(rsa_key.key_id, b"rsa in b", "RSASSA_PSS_SHA_256").signature
    assert a.verify(rsa_key.key_id, b"rsa in b", signed, "RSASSA_PSS_SHA_256").signature_valid

    mac_key = a.create_key("HMAC_256", multi_region=True)
    a.replicate_key(mac_key.key_id, "b")
    mac = a.generate_mac(mac_key.key_id, b"message", "HMAC_SHA_256").mac
    assert b.verify_mac(mac_key.key_id, b"message", mac, "HMAC_SHA_256").mac_valid


def test_a_multi_region_key_cannot_be_exported(regions: dict[str, Region]) -> None:
    a = regions["a"].client()
    key = a.create_key(multi_region=True)
    wrapping = a.create_key(key_usage="WRAP_UNWRAP")
    assert _code(lambda: a.wrap_key(key.key_id, wrapping.key_id)) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert _code(lambda: a.create_key(multi_region=True, exportable=True)) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_only_trusted_regions_receive_replicas(regions: dict[str, Region]) -> None:
    a = regions["a"].client()
    key = a.create_key(multi_region=True)
    with pytest.raises(HsmError) as refused:
        a.replicate_key(key.key_id, "c")  # a trusts c; c does not trust a
    assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "region c refused" in str(refused.value)
    with pytest.raises(HsmError) as unknown:
        a.replicate_key(key.key_id, "d")
    assert unknown.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "not a peer" in str(unknown.value)
    assert not regions["c"].daemon.query("SELECT key_id FROM keys")
    plain = a.create_key()
    assert _code(lambda: a.replicate_key(plain.key_id, "b")) is grpc.StatusCode.FAILED_PRECONDITION


def test_the_primary_moves_and_the_new_primary_rotates(regions: dict[str, Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    key = a.create_key(multi_region=True)
    a.replicate_key(key.key_id, "b")
    moved = a.update_primary_region(key.key_id, "b")
    assert moved.multi_region_configuration is not None
    assert moved.multi_region_configuration.multi_region_key_type == "REPLICA"
    described = b.describe_key(key.key_id).multi_region_configuration
    assert described is not None
    assert (described.multi_region_key_type, described.replica_regions) == ("PRIMARY", ("a",))
    assert _code(lambda: a.rotate_key_on_demand(key.key_id)) is grpc.StatusCode.FAILED_PRECONDITION
    assert b.rotate_key_on_demand(key.key_id).key_version == 2
    wait_until(lambda: a.describe_key(key.key_id).primary_version == 2, "a has version 2")
    blob = b.encrypt(key.key_id, b"after the move").ciphertext_blob
    assert a.decrypt(blob).plaintext == b"after the move"


def test_deleting_a_replica_leaves_the_primary(regions: dict[str, Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    key = a.create_key("EC_P384", "SIGN_VERIFY", multi_region=True)
    a.replicate_key(key.key_id, "b")
    assert _code(lambda: a.schedule_key_deletion(key.key_id, 7)) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    b.schedule_key_deletion(key.key_id, 7)
    regions["b"].daemon.advance_clock(timedelta(days=8))
    try:
        wait_until(lambda: b.describe_key(key.key_id).key_state == "DESTROYED", "destroyed in b")
        wait_until(
            lambda: not a.describe_key(key.key_id).multi_region_configuration.replica_regions,  # type: ignore[union-attr]
            "a forgot b's replica",
        )
    finally:
        regions["b"].daemon.advance_clock(timedelta(days=-8))
    signature = a.sign(key.key_id, b"still here", "ECDSA_SHA_384").signature
    assert a.verify(key.key_id, b"still here", signature, "ECDSA_SHA_384").signature_valid
    a.schedule_key_deletion(key.key_id, 7)  # no replica left: the primary may go


def test_each_region_audits_replication_naming_both(regions: dict[str, Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    key = a.create_key(multi_region=True)
    a.replicate_key(key.key_id, "b")
    a.rotate_key_on_demand(key.key_id)  # pushed by the maintenance pass it wakes

    def events(region: Region, operation: str) -> list[dict[str, object]]:
        lines = region.daemon.audit_log.read_text().splitlines()
        found = [json.loads(line) for line in lines if key.key_id in line]
        return [event for event in found if event["operation"] == operation]

    wait_until(lambda: events(regions["a"], "SyncReplica"), "a audits the push of version 2")
    assert [
        (e["principal"], e["regions"], e["key_version"])
        for e in events(regions["a"], "SyncReplica")
    ] == [("daemon", ["a", "b"], 2)]
    replicated = events(regions["a"], "ReplicateKey")
    assert [(e["regions"], e["outcome"], e["key_id"]) for e in replicated] == [
        (["a", "b"], "OK", key.key_id)
    ]
    received = events(regions["b"], "PutReplica")
    assert [(e["principal"], e["regions"], e["tenant"]) for e in received] == [
        ("region/a", ["a", "b"], TENANT)
    ] * 2
    assert b.describe_key(key.key_id).primary_version == 2
    for region in (regions["a"], regions["b"]):
        with region.daemon.admin() as admin:
            assert admin.verify_audit_log().valid


def test_tenants_and_operators_cannot_call_the_region_service(regions: dict[str, Region]) -> None:
    from hsmd.v1 import region_pb2, region_pb2_grpc

    daemon = regions["b"].daemon
    for cert, key in (daemon.pki.tenant_client(TENANT, "app"), daemon.pki.operator_client()):
        credentials = grpc.ssl_channel_credentials(daemon.pki.ca_cert.read_bytes(), key, cert)
        with grpc.secure_channel(daemon.endpoint, credentials) as channel:
            stub = region_pb2_grpc.RegionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetTransportKey(region_pb2.GetTransportKeyRequest(tenant=TENANT), timeout=30)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_the_cli_replicates_as_aws_kms_does(
    regions: dict[str, Region],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hsm` as `aws kms`: create-key --multi-region, replicate-key and update-primary-region
    print what botocore's model says they print."""
    for variable, value in regions["a"].daemon.client_env(TENANT, tmp_path).items():
        if variable.startswith("HSM_"):
            monkeypatch.setenv(variable, value)

    def hsm(*argv: str) -> dict[str, object] | None:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        printed: dict[str, object] | None = json.loads(out) if out else None
        assert problems(printed, operation(argv[0]).output_shape) == []
        return printed

    created = hsm("create-key", "--multi-region")
    assert created is not None
    metadata: dict[str, Any] = created["KeyMetadata"]  # type: ignore[assignment]
    assert metadata["MultiRegion"] is True
    assert metadata["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"
    key_id = metadata["KeyId"]
    replicated = hsm(
        "replicate-key",
        "--key-id",
        key_id,
        "--replica-region",
        "b",
        "--tags",
        "TagKey=t,TagValue=v",
    )
    assert replicated is not None
    replica: dict[str, Any] = replicated["ReplicaKeyMetadata"]  # type: ignore[assignment]
    assert replica["MultiRegionConfiguration"]["PrimaryKey"]["Region"] == "a"
    assert replicated["ReplicaTags"] == [{"TagKey": "t", "TagValue": "v"}]
    assert hsm("update-primary-region", "--key-id", key_id, "--primary-region", "b") is None
    moved = regions["b"].client().describe_key(key_id).multi_region_configuration
    assert moved is not None and moved.multi_region_key_type == "PRIMARY"


def test_the_material_is_nowhere_but_in_the_two_tokens(regions: dict[str, Region]) -> None:
    """White-box, and last in this module (it stops the daemons): recover each multi-region
    AES, HMAC and EC key's material (the EC private scalar) from a's token
    (tests/material_probe.py), and search both regions' state files but the tokens (database,
    its journal, log, audit log) for it."""
    keys = regions["a"].daemon.query(
        "SELECT v.object_id, k.spec FROM key_versions v JOIN keys k USING (tenant, key_id)"
        " WHERE k.multi_region IS NOT NULL AND v.state = 'ENABLED'"
        " AND json_extract(k.multi_region, '$.region') = 'a'"
    )
    keys = [(object_id, spec) for object_id, spec in keys if not spec.startswith("RSA")]
    assert {spec for _, spec in keys} == {"AES_256", "HMAC_256", "EC_P256", "EC_P384"}
    for region in regions.values():
        region.daemon.stop()
    daemon = regions["a"].daemon
    pins = PinDeriver(daemon.master_secret)
    environment = dict(
        os.environ,
        SOFTHSM2_CONF=str(daemon.softhsm_conf),
        HSMD_TEST_PIN=pins.user_pin(TENANT),
        HSMD_TEST_SO_PIN=pins.so_pin(TENANT),
    )
    materials = [
        bytes.fromhex(
            subprocess.run(
                [sys.executable, str(_PROBE), str(SOFTHSM_LIB), f"hsmd/{TENANT}", object_id.hex()],
                env=environment,
                capture_output=True,
                check=True,
                text=True,
            ).stdout
        )
        for object_id, _ in keys
    ]
    assert all(len(material) in (32, 48) for material in materials)
    forms = [
        form
        for material in materials
        for form in (material, material.hex().encode(), base64.b64encode(material))
    ]
    scanned = 0
    for region in regions.values():
        for path in region.daemon.directory.rglob("*"):
            if path.is_file() and region.daemon.tokens not in path.parents:
                content = path.read_bytes()
                scanned += 1
                assert not any(form in content for form in forms), path
    assert scanned >= 9


def test_a_tenant_with_multi_region_keys_does_not_move(
    regions: dict[str, Region], tmp_path: Path
) -> None:
    """After the scan (the daemons are stopped): a tenant bundle would carry a region's copy
    of its keys to an instance that no primary or replica knows of."""
    daemon = regions["a"].daemon
    assert daemon.process is None or daemon.process.poll() is not None
    refused = run_hsmd(
        "tenant", "export", "--config", str(daemon.config), "--tenant", TENANT,
        "--out", str(tmp_path / "bundle"), "--transfer-secret", str(tmp_path / "secret"),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "has multi-region keys" in refused.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "secret").exists()
