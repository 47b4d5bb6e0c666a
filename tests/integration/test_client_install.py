"""The client installs on its own: `pip install` of a clean clone into an empty virtual
environment, with no `make` step and without the daemon's dependencies, gives a typed
`hsmclient` that calls a running daemon (the wheel's build generates the gRPC stubs, setup.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProcess, TestPki, serving

ROOT = Path(__file__).parents[2]
TENANT = "installed"

_CALL = """
import importlib.util, pathlib, sys
import hsmclient
from hsmclient import HsmClient
assert importlib.util.find_spec("pkcs11") is None, "the daemon's dependencies came along"
assert (pathlib.Path(hsmclient.__file__).parent / "py.typed").exists()
endpoint, ca, cert, key = sys.argv[1:]
pem = {name: open(name, "rb").read() for name in (ca, cert, key)}
with HsmClient.connect(endpoint, ca_cert=pem[ca], client_cert=pem[cert], client_key=pem[key]) as c:
    print(len(c.generate_random(16)))
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("install"), pki, (TENANT,))


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def test_a_clean_clone_installs_a_client_that_calls_the_daemon(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    clone, venv = tmp_path / "clone", tmp_path / "venv"
    _run("git", "clone", "--quiet", ROOT, clone)
    assert not (clone / "hsmd" / "v1").exists()  # generated code is not in the repository
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "--quiet", clone)
    env = daemon.client_env(TENANT, tmp_path)
    called = _run(
        venv / "bin" / "python",
        "-c",
        textwrap.dedent(_CALL),
        daemon.endpoint,
        env["HSM_CA_CERT"],
        env["HSM_CLIENT_CERT"],
        env["HSM_CLIENT_KEY"],
    )
    assert called.stdout.strip() == "16"
    hsm = subprocess.run(
        [str(venv / "bin" / "hsm"), "generate-random", "--number-of-bytes", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hsm.returncode == 0 and '"Plaintext"' in hsm.stdout, hsm.stderr
