"""Envelope encryption (hsmclient.envelope, docs/envelope.md) through a real daemon: messages
under several keys of a tenant, the encryption context bound by hsmd, `hsm encrypt-file` and
`hsm decrypt-file` on files and standard streams, and a 256 MiB stream encrypted and
decrypted in constant memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hsmclient import HsmClient
from hsmclient.envelope import EnvelopeError, decrypt, encrypt

from tests.harness import DaemonProcess, TestPki, serving

TENANT = "envelope"
HSM = str(Path(sys.executable).parent / "hsm")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("envelope"), pki, (TENANT, "envelope-other"))


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> Iterator[HsmClient]:
    with daemon.client(TENANT) as made:
        yield made


def test_a_message_under_two_keys_opens_with_either(client: HsmClient) -> None:
    first, second = client.create_key().key_id, client.create_key().key_id
    message = encrypt(client, [first, second], b"x" * 200_000, {"purpose": "backup"})
    client.disable_key(first)
    try:
        opened = decrypt(client, message, {"purpose": "backup"})
        assert opened.plaintext == b"x" * 200_000
        assert [key.key_id for key in opened.header.encrypted_keys] == [first, second]
        client.disable_key(second)
        with pytest.raises(EnvelopeError, match="DISABLED"):
            decrypt(client, message)
    finally:
        client.enable_key(first)
        client.enable_key(second)


def test_hsmd_binds_the_encryption_context_of_the_data_key(client: HsmClient) -> None:
    """The header's context is what hsmd was given: a message whose context was changed
    cannot get its data key back (the header tag would refuse it too, after)."""
    key_id = client.create_key().key_id
    message = encrypt(client, key_id, b"bound", {"tenant": "a"})
    changed = message.replace(b"tenant\x00\x01a", b"tenant\x00\x01b")
    assert changed != message
    with pytest.raises(EnvelopeError, match="no key of the message could decrypt"):
        decrypt(client, changed)


def test_another_tenant_cannot_open_the_message(daemon: DaemonProcess, client: HsmClient) -> None:
    message = encrypt(client, client.create_key().key_id, b"mine")
    with (
        daemon.client("envelope-other") as other,
        pytest.raises(EnvelopeError, match="no key of the message could decrypt"),
    ):
        decrypt(other, message)


def _hsm(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([HSM, *args], env=env, input=stdin, capture_output=True, timeout=120)


def test_the_cli_encrypts_and_decrypts_files_and_streams(
    daemon: DaemonProcess, client: HsmClient, tmp_path: Path
) -> None:
    env = daemon.client_env(TENANT, tmp_path)
    key_id = client.create_key().key_id
    plain = tmp_path / "plain.bin"
    plain.write_bytes(bytes(range(256)) * 1000)
    sealed, opened = tmp_path / "plain.hsme", tmp_path / "opened.bin"
    done = _hsm(
        env,
        "encrypt-file",
        "--key-id",
        key_id,
        str(plain),
        str(sealed),
        "--encryption-context",
        "purpose=test",
    )
    assert done.returncode == 0, done.stderr
    assert b'"KeyIds"' in done.stdout and not done.stderr  # no progress bar: not a terminal
    done = _hsm(
        env, "decrypt-file", str(sealed), str(opened), "--encryption-context", "purpose=test"
    )
    assert done.returncode == 0, done.stderr
    assert opened.read_bytes() == plain.read_bytes()
    streamed = _hsm(env, "encrypt-file", "--key-id", key_id, "-", "-", stdin=b"via pipes")
    assert streamed.returncode == 0 and streamed.stdout.startswith(b"HSME")
    back = _hsm(env, "decrypt-file", "-", "-", stdin=streamed.stdout)
    assert back.returncode == 0 and back.stdout == b"via pipes"
    cut, out = tmp_path / "cut.hsme", tmp_path / "cut.out"
    cut.write_bytes(sealed.read_bytes()[:-100])
    refused = _hsm(env, "decrypt-file", str(cut), str(out))
    assert refused.returncode == 1 and b"cut short" in refused.stderr
    assert not out.exists() and not list(tmp_path.glob(".cut.out.*"))
    wrong = _hsm(env, "decrypt-file", str(sealed), str(out), "--encryption-context", "purpose=x")
    assert wrong.returncode == 1 and b"does not hold the pairs" in wrong.stderr


_STREAM = """
import hashlib, sys
from hsmclient import HsmClient
from hsmclient.envelope import decrypt_stream, encrypt_stream

SIZE = 256 * 1024 * 1024

class Zeros:
    def __init__(self): self.left = SIZE
    def read(self, n=-1):
        n = min(self.left, 1 << 20 if n < 0 else n); self.left -= n; return bytes(n)

class Digest:
    def __init__(self): self.hash, self.size = hashlib.sha256(), 0
    def write(self, data): self.hash.update(data); self.size += len(data); return len(data)

endpoint, ca, cert, key, key_id, mode, path = sys.argv[1:]
pem = {name: open(name, "rb").read() for name in (ca, cert, key)}
with HsmClient.connect(
    endpoint, ca_cert=pem[ca], client_cert=pem[cert], client_key=pem[key]
) as client:
    if mode == "encrypt":
        with open(path, "wb") as sealed:
            encrypt_stream(client, key_id, Zeros(), sealed)
    else:
        digest = Digest()
        with open(path, "rb") as sealed:
            decrypt_stream(client, sealed, digest)
        assert digest.size == SIZE and digest.hash.digest() == hashlib.sha256(bytes(SIZE)).digest()
# VmHWM, not ru_maxrss: Linux carries the forking process's peak over exec into ru_maxrss.
status = open("/proc/self/status").read()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def test_a_256_mib_stream_is_encrypted_and_decrypted_in_constant_memory(
    daemon: DaemonProcess, client: HsmClient, tmp_path: Path
) -> None:
    env = daemon.client_env(TENANT, tmp_path)
    key_id = client.create_key().key_id
    sealed = tmp_path / "big.hsme"
    for mode in ("encrypt", "decrypt"):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(_STREAM),
                daemon.endpoint,
                env["HSM_CA_CERT"],
                env["HSM_CLIENT_CERT"],
                env["HSM_CLIENT_KEY"],
                key_id,
                mode,
                str(sealed),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        peak_kib = int(done.stdout.split()[-1])
        assert peak_kib < 100 * 1024, f"{mode}: peak RSS {peak_kib} KiB"
    assert sealed.stat().st_size > 256 * 1024 * 1024
    sealed.unlink()
