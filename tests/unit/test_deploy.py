"""The shipped example configuration is valid (with its files in place)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hsmd import config

EXAMPLE = Path(__file__).parents[2] / "deploy" / "hsmd.example.toml"


def test_the_example_configuration_parses(tmp_path: Path) -> None:
    doc = tomllib.loads(EXAMPLE.read_text())
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
