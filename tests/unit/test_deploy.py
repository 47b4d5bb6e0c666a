"""The shipped production configurations are valid (with their files in place)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hsmd import config

DEPLOY = Path(__file__).parents[2] / "deploy"


@pytest.mark.parametrize(
    ("name", "tenant"), [("hsmd.multi-tenant.toml", None), ("hsmd.single-tenant.toml", "acme")]
)
def test_the_production_configurations_parse(tmp_path: Path, name: str, tenant: str | None) -> None:
    doc = tomllib.loads((DEPLOY / name).read_text())
    for table, field in [
        ("tls", "ca_cert"),
        ("tls", "server_cert"),
        ("tls", "server_key"),
        ("pkcs11", "library"),
        ("pkcs11", "softhsm2_conf"),
        ("storage", "master_secret_file"),
    ]:
        local = tmp_path / Path(doc[table][field]).name
        local.write_bytes(b"x" * 32)
        local.chmod(0o600)
        doc[table][field] = str(local)
    settings = config.parse(doc, tmp_path)
    assert settings.server.max_concurrent_rpcs == 1000
    assert settings.storage.database == Path("/var/lib/hsmd/hsmd.db")
    assert settings.audit.checkpoint_file == Path("/var/lib/hsmd/audit.jsonl.checkpoint")
    assert settings.audit.checkpoint_every_events == 1000
    assert settings.tenancy.dedicated_tenant == tenant
    assert settings.observability.metrics_port == 9464
