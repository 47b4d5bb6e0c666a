"""The asyncio client and a profile against a real daemon over mutual TLS: the settings come
from a profile file alone, and concurrent awaited calls, an envelope message and a refusal
behave as the synchronous client's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsmclient import NotFoundError
from hsmclient.aio import AsyncHsmClient
from hsmclient.envelope import decrypt, encrypt

from tests.harness import DaemonProcess, TestPki, serving

TENANT = "async"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("async"), pki, (TENANT,))


def test_the_asyncio_client_works_from_a_profile_alone(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    env = daemon.client_env(TENANT, tmp_path)
    profile = tmp_path / "config.toml"
    profile.write_text(
        f'[profile.tests]\nendpoint = "{daemon.endpoint}"\nca_cert = "{env["HSM_CA_CERT"]}"\n'
        'cert = "cert.pem"\nkey = "key.pem"\n'  # beside the file
    )
    environ = {"HSM_CONFIG_FILE": str(profile), "HSM_PROFILE": "tests"}

    async def run() -> None:
        async with AsyncHsmClient.from_env(environ) as kms:
            key_id = (await kms.create_key()).key_id
            sealed = await asyncio.gather(*(kms.encrypt(key_id, b"%d" % n) for n in range(16)))
            opened = await asyncio.gather(*(kms.decrypt(s.ciphertext_blob) for s in sealed))
            assert [o.plaintext for o in opened] == [b"%d" % n for n in range(16)]
            assert key_id in [key.key_id async for key in kms.iter_keys()]
            message = await asyncio.to_thread(encrypt, kms.sync, key_id, b"x" * 100_000)
            assert decrypt(kms.sync, message).plaintext == b"x" * 100_000
            with pytest.raises(NotFoundError):
                await kms.describe_key("00000000-0000-4000-8000-000000000000")

    asyncio.run(run())
