"""Settings validation: every error names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsmd import config
from hsmd.errors import ConfigError
from hsmd.quotas import QuotaLimits
from hsmd.scheduler import SchedulerLimits


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        (tmp_path / name).write_text("x")
    secret = tmp_path / "master.secret"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o600)
    return tmp_path


_REGION_FILES = {"region__client_cert": "server.pem", "region__client_key": "server-key.pem"}


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0"},
        "tls": {"ca_cert": "ca.pem", "server_cert": "server.pem", "server_key": "server-key.pem"},
        "pkcs11": {"library": "ca.pem"},
        "storage": {"master_secret_file": "master.secret"},
    }
    for dotted, value in overrides.items():
        table, field = dotted.split("__")
        doc.setdefault(table, {})[field] = value
    return doc


def test_a_minimal_file_gets_defaults(files: Path) -> None:
    settings = config.parse(_doc(), files)
    assert (settings.server.host, settings.server.port, settings.server.workers) == (
        "127.0.0.1",
        0,
        64,
    )
    assert settings.server.processes == 1  # one process unless workers are asked for
    assert settings.storage.database == files / "hsmd.db"
    assert settings.tls.trust_domain == "hsmd.local"
    assert settings.pkcs11.softhsm2_conf is None
    assert (settings.pkcs11.fast_sessions, settings.pkcs11.slow_sessions) == (2, 1)
    assert settings.audit == config.AuditSettings(
        checkpoint_every_events=1000,
        checkpoint_interval_seconds=60.0,
        checkpoint_file=files / "audit.jsonl.checkpoint",
        public_key_file=files / "audit.jsonl.pub.pem",
        group_commit_seconds=0.002,
    )


def test_quotas_and_the_scheduler_have_defaults_and_take_the_files_values(files: Path) -> None:
    settings = config.parse(_doc(), files)
    assert settings.quotas == config.QuotaSettings(QuotaLimits(), 3600.0)
    # Running and waiting calls fill the pool but for the threads kept to refuse at once.
    assert settings.scheduler == SchedulerLimits(3, 2, 62, 59, 10.0, running_per_tenant=2)
    assert 3 + 59 + config.SPARE_WORKERS == settings.server.workers
    changed = config.parse(
        _doc(
            quotas__max_keys=7,
            quotas__asymmetric_requests_per_second=2,
            quotas__audit_period_seconds=60,
            scheduler__capacity=2,
            scheduler__max_wait_seconds=0.5,
        ),
        files,
    )
    assert changed.quotas.defaults.max_keys == 7
    assert changed.quotas.defaults.asymmetric_requests_per_second == 2.0
    assert changed.quotas.audit_period_seconds == 60.0
    assert changed.scheduler == SchedulerLimits(2, 1, 62, 60, 0.5, running_per_tenant=1)


def test_a_dedicated_instance_lets_its_tenant_use_every_slot(files: Path) -> None:
    """A shared instance keeps a slot free for another tenant's next call; a dedicated one
    has no other tenant to keep it for."""
    dedicated = config.parse(_doc(tenancy__mode="single", tenancy__tenant="solo"), files)
    assert dedicated.scheduler.running_per_tenant == dedicated.scheduler.capacity == 3


def test_the_checkpoint_files_follow_the_log_unless_named(files: Path) -> None:
    (files / "elsewhere").mkdir()
    moved = config.parse(_doc(storage__audit_log="elsewhere/trail.jsonl"), files)
    assert moved.audit.checkpoint_file == files / "elsewhere/trail.jsonl.checkpoint"
    assert moved.audit.public_key_file == files / "elsewhere/trail.jsonl.pub.pem"
    named = config.parse(
        _doc(
            audit__checkpoint_file="elsewhere/cp",
            audit__public_key_file="elsewhere/key.pem",
            audit__checkpoint_every_events=5,
            audit__checkpoint_interval_seconds=1,
            audit__group_commit_ms=0,
        ),
        files,
    )
    assert named.audit == config.AuditSettings(
        5, 1.0, files / "elsewhere/cp", files / "elsewhere/key.pem", 0.0
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"server__listen": "nope"}, "server.listen"),
        ({"server__listen": "127.0.0.1:99999"}, "server.listen"),
        ({"server__workers": 0}, "server.workers"),
        ({"server__processes": 0}, "server.processes"),
        ({"server__processes": 65}, "server.processes"),
        ({"pkcs11__fast_sessions": 0}, "pkcs11.fast_sessions"),
        ({"pkcs11__slow_sessions": 65}, "pkcs11.slow_sessions"),
        ({"server__workers": "many"}, "server.workers"),
        ({"server__max_connections": 0}, "server.max_connections"),
        ({"server__handshake_timeout_seconds": 0}, "server.handshake_timeout_seconds"),
        ({"server__idle_timeout_seconds": "forever"}, "server.idle_timeout_seconds"),
        ({"server__max_streams_per_connection": 0}, "server.max_streams_per_connection"),
        ({"server__colour": "blue"}, "colour"),
        ({"tls__ca_cert": "missing.pem"}, "tls.ca_cert"),
        ({"storage__master_secret_file": "nope"}, "storage.master_secret_file"),
        ({"log__level": "LOUD"}, "log.level"),
        ({"bogus__x": 1}, "bogus"),
        ({"audit__checkpoint_every_events": 0}, "audit.checkpoint_every_events"),
        ({"tenancy__mode": "dual"}, "tenancy.mode"),
        ({"tenancy__mode": "single"}, "tenancy.tenant"),
        ({"tenancy__tenant": "acme"}, "tenancy.tenant"),
        ({"tenancy__mode": "single", "tenancy__tenant": ""}, "tenancy.tenant"),
        ({"tenancy__mode": "single", "tenancy__tenant": "a", "tenancy__x": 1}, "x"),
        ({"audit__checkpoint_every_events": 1.5}, "audit.checkpoint_every_events"),
        ({"audit__checkpoint_interval_seconds": 0.01}, "audit.checkpoint_interval_seconds"),
        ({"audit__checkpoint_interval_seconds": "1m"}, "audit.checkpoint_interval_seconds"),
        ({"audit__checkpoint_file": ""}, "audit.checkpoint_file"),
        ({"audit__checkpoint_file": "audit.jsonl"}, "audit.checkpoint_file"),
        ({"audit__public_key_file": "audit.jsonl.checkpoint"}, "audit.public_key_file"),
        ({"audit__every": 3}, "every"),
        ({"quotas__max_keys": -1}, "quotas.max_keys"),
        ({"quotas__symmetric_requests_per_second": 0}, "quotas.symmetric_requests_per_second"),
        ({"quotas__max_tags_per_key": 51}, "quotas.max_tags_per_key"),
        ({"quotas__keys": 1}, "keys"),
        ({"scheduler__capacity": 40, "scheduler__waiting_room": 30}, "scheduler.capacity"),
        ({"scheduler__slow_capacity": 5}, "scheduler.slow_capacity"),
        ({"scheduler__capacity": 4, "scheduler__slow_capacity": 4}, "scheduler.slow_capacity"),
        ({"region__name": "EU"}, "region.name"),
        ({"region__name": "eu"}, "region.client_cert"),
        ({"region__name": "eu", **_REGION_FILES, "region__peers": {"eu": "h:1"}}, "region.peers"),
        ({"region__name": "eu", **_REGION_FILES, "region__peers": {"us": "h"}}, "region.peers.us"),
        ({"region__name": "eu", **_REGION_FILES, "region__peers": "us"}, "region.peers"),
        ({"region__name": "eu", **_REGION_FILES, "region__call_timeout_seconds": 0}, "region.call"),
        ({"region__peers": {"us": "h:1"}}, "peers"),
    ],
)
def test_errors_name_the_field(files: Path, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config.parse(_doc(**overrides), files)


def test_a_master_secret_readable_by_others_is_refused(files: Path) -> None:
    (files / "master.secret").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.parse(_doc(), files)


def test_load_reports_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "hsmd.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)


def test_tenancy_is_multi_unless_a_single_tenant_is_named(files: Path) -> None:
    shared = config.parse(_doc(), files).tenancy
    assert (shared.mode, shared.dedicated_tenant) == ("multi", None)
    dedicated = config.parse(_doc(tenancy__mode="single", tenancy__tenant="acme"), files).tenancy
    assert (dedicated.mode, dedicated.dedicated_tenant) == ("single", "acme")


def test_a_region_names_itself_its_certificate_and_its_peers(files: Path) -> None:
    assert config.parse(_doc(), files).region == config.RegionSettings()  # in no region
    region = config.parse(
        _doc(region__name="eu-west-1", **_REGION_FILES, region__peers={"us-east-1": "h:8443"}),
        files,
    ).region
    assert region == config.RegionSettings(
        "eu-west-1", files / "server.pem", files / "server-key.pem", {"us-east-1": "h:8443"}
    )
