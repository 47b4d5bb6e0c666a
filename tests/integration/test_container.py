"""The container files (deploy/docker): the compose file runs a shared and a dedicated
instance, each with state of its own, unprivileged and read-only; the image runs as a user of
its own; and the image's entrypoint, run here without Docker, makes a development set-up in the
tenancy asked for and serves it. Building the image needs the network and is not done here;
`docker compose config` runs where the compose plugin is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hsmclient import AdminClient, FailedPreconditionError, HsmClient
from hsmclient.channel import ConnectionSettings

DOCKER = Path(__file__).parents[2] / "deploy" / "docker"
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def test_compose_runs_a_shared_and_a_dedicated_instance() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["shared"]["environment"]["HSMD_TENANCY"] == "multi"
    assert services["dedicated"]["environment"] == {"HSMD_TENANCY": "single", "HSMD_TENANT": "demo"}
    volumes = [service["volumes"][0] for service in services.values()]
    assert all(volume.endswith(":/var/lib/hsmd") for volume in volumes)
    assert len(set(volumes)) == 2  # state of its own each
    for service in services.values():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "\nUSER hsmd\n" in dockerfile and "\nVOLUME /var/lib/hsmd\n" in dockerfile


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("the docker compose plugin is not installed")
    checked = subprocess.run(
        [docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_entrypoint_makes_and_serves_a_dedicated_instance(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HSMD_CONFIG": str(tmp_path / "no-config.toml"),
        "HSMD_STATE": str(state),
        "HSMD_LISTEN": "127.0.0.1:0",
        "HSMD_METRICS_LISTEN": "127.0.0.1:0",
        "HSMD_TENANCY": "single",
        "HSMD_TENANT": "demo",
    }
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["sh", str(DOCKER / "entrypoint.sh")], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        port = _port(log, process)
        pki = state / "pki"

        def settings(cert: Path, key: Path) -> ConnectionSettings:
            return ConnectionSettings(f"localhost:{port}", pki / "ca.pem", cert, key)

        tenant = settings(
            pki / "clients" / "demo--admin.pem", pki / "clients" / "demo--admin-key.pem"
        )
        with HsmClient(tenant.open_channel()) as client:
            assert client.describe_key(client.create_key().key_id).tenancy_mode == "DEDICATED"
        operator = settings(pki / "operator.pem", pki / "operator-key.pem")
        with AdminClient(operator.open_channel()) as admin, pytest.raises(FailedPreconditionError):
            admin.create_tenant("another")  # a dedicated instance serves its one tenant
        assert 'mode = "single"' in (state / "hsmd.toml").read_text()
    finally:
        process.terminate()
        process.wait(30)


def _port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = _LISTENING.search(log.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the entrypoint did not serve:\n{log.read_text()[-3000:]}")
