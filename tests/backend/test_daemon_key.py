"""The daemon's checkpoint key on a real SoftHSM2 token: its own token, its template, and
checkpoints that verify with its public key alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from hsmd.audit import events
from hsmd.audit.checkpoint import Checkpointing, signature_algorithm, signature_valid
from hsmd.audit.log import AuditLog
from hsmd.audit.verify import CheckpointFileState, verify_files
from hsmd.backend.pkcs11_backend import (
    DAEMON_KEY_IDS,
    DAEMON_TOKEN,
    DAEMON_TOKEN_LABEL,
    Pkcs11Backend,
)
from hsmd.domain import KeySpec
from hsmd.errors import BackendError
from hsmd.names import TOKEN_LABEL_PREFIX


def test_the_daemon_key_lives_in_a_token_of_its_own(backend: Pkcs11Backend, tenant: str) -> None:
    key = backend.daemon_key()
    assert key.spec is KeySpec.ED25519  # SoftHSM2 2.6.1 has EdDSA
    labels = [token.label for _, token in backend._tokens.readable_tokens()]
    assert labels.count(DAEMON_TOKEN_LABEL) == 1
    assert not DAEMON_TOKEN_LABEL.startswith(TOKEN_LABEL_PREFIX)  # no tenant label equals it
    assert f"{TOKEN_LABEL_PREFIX}{tenant}" in labels
    daemon_session = backend._tokens.token(DAEMON_TOKEN).login
    tenant_session = backend._tokens.token(tenant).login
    assert daemon_session.token.serial != tenant_session.token.serial
    object_id = DAEMON_KEY_IDS[KeySpec.ED25519]
    assert not list(tenant_session.get_objects({Attribute.ID: object_id}))
    # The one key pair of the token, and nothing else.
    found = list(daemon_session.get_objects({}))
    assert sorted(int(obj[Attribute.CLASS]) for obj in found) == sorted(
        [int(ObjectClass.PUBLIC_KEY), int(ObjectClass.PRIVATE_KEY)]
    )
    assert all(bytes(obj[Attribute.ID]) == object_id for obj in found)


def test_the_private_key_is_sensitive_non_extractable_and_signs_only(
    backend: Pkcs11Backend,
) -> None:
    backend.daemon_key()
    session = backend._tokens.token(DAEMON_TOKEN).login
    private = session.get_key(
        object_class=ObjectClass.PRIVATE_KEY, id=DAEMON_KEY_IDS[KeySpec.ED25519]
    )
    expected = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    assert {attribute: bool(private[attribute]) for attribute in expected} == expected
    with pytest.raises(p11.AttributeSensitive):
        private[Attribute.VALUE]


def test_the_daemon_key_is_made_once(backend: Pkcs11Backend) -> None:
    first = backend.daemon_key().public_key()
    assert backend.daemon_key().public_key() == first
    key = serialization.load_der_public_key(first)
    assert isinstance(key, ed25519.Ed25519PublicKey)


def test_tenant_calls_cannot_name_the_daemon_token(backend: Pkcs11Backend) -> None:
    with pytest.raises(BackendError):
        backend.ensure_token(DAEMON_TOKEN)
    with pytest.raises(BackendError):
        backend.attach_token(DAEMON_TOKEN, "0")


def test_the_daemon_key_signs_checkpoints_that_verify_offline(
    backend: Pkcs11Backend, tmp_path: Path
) -> None:
    key = backend.daemon_key()
    public_key = key.public_key()
    signature = key.sign(b"data")
    assert signature_valid(public_key, signature_algorithm(public_key), b"data", signature)
    assert not signature_valid(public_key, signature_algorithm(public_key), b"datA", signature)
    log_path = tmp_path / "audit.jsonl"
    files = Checkpointing(
        key, tmp_path / "audit.jsonl.checkpoint", tmp_path / "audit.jsonl.pub.pem", 2, 3600
    )
    with AuditLog(log_path, checkpoints=files) as log:
        for n in range(3):
            log.append(
                events.AuditEvent(
                    time=datetime.now(UTC),
                    request_id=f"r{n}",
                    tenant="t",
                    principal="tenant/t/app",
                    operation="Encrypt",
                    key_id="k",
                    key_version=1,
                    encryption_context_keys=(),
                    outcome="OK",
                    peer="ipv4:127.0.0.1:1",
                )
            )
        assert log.checkpoint() is not None
    result = verify_files(log_path, files.checkpoint_file, files.public_key_file)
    assert result.all_well
    assert result.checkpoints_verified >= 1
    assert result.checkpoint_file is CheckpointFileState.MATCHED
    assert result.last_checkpoint is not None
    assert result.last_checkpoint.statement.signature_algorithm == events.ED25519
