"""One in-process backend on a token directory of the run's own.

SoftHSM2 reads its configuration once per process (at C_Initialize), so the whole backend tier
shares one token directory; each test makes its own tenant when it needs a clean token.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from hsmd.backend.pins import PinDeriver
from hsmd.backend.pkcs11_backend import Pkcs11Backend
from tests.harness import SOFTHSM_LIB


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pkcs11Backend]:
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    instance = Pkcs11Backend(
        SOFTHSM_LIB, PinDeriver(secrets.token_bytes(32)), conf, directory / "tokens"
    )
    yield instance
    instance.close()


@pytest.fixture
def tenant(backend: Pkcs11Backend, request: pytest.FixtureRequest) -> str:
    """A fresh tenant token for this test."""
    name = "t" + secrets.token_hex(6)
    backend.attach_token(name, backend.ensure_token(name))
    return name
