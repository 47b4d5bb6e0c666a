"""Batch RPCs through a real daemon over mTLS: every batch answers as its unary twin, item by
item and in order; whole-batch limits; quotas counted per item; one audit event per item."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hsmclient import (
    DecryptItem,
    EncryptItem,
    EncryptResult,
    FailedPreconditionError,
    GenerateDataKeyItem,
    GenerateMacItem,
    HsmClient,
    InvalidArgumentError,
    NotFoundError,
    ReEncryptItem,
    ResourceExhaustedError,
    SignItem,
    TenantQuota,
    VerifyItem,
    VerifyMacItem,
)

from hsmd.v1 import service_pb2
from tests.harness import DaemonProcess, TestPki, serving

MINE, OTHER, THROTTLED = "batch-a", "batch-b", "batch-q"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[DaemonProcess]:
    yield from serving(tmp_path_factory.mktemp("batch"), pki, (MINE, OTHER, THROTTLED))


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess) -> Iterator[HsmClient]:
    with daemon.client(MINE) as opened:
        yield opened


def _ok(answers: list[object]) -> list[object]:
    """The answers, once each is a result and no error."""
    for answer in answers:
        assert not isinstance(answer, Exception), answer
    return answers


def test_every_batch_answers_as_its_unary_twin(client: HsmClient) -> None:
    aes = client.create_key().key_id
    other_aes = client.create_key().key_id
    ec = client.create_key("EC_P256", "SIGN_VERIFY").key_id
    hmac = client.create_key("HMAC_256").key_id
    context = {"order": "42"}
    plaintexts = [b"first", b"second", b"third"]

    sealed = _ok(client.batch_encrypt([EncryptItem(aes, p, context) for p in plaintexts]))
    assert [client.decrypt(s.ciphertext_blob, context).plaintext for s in sealed] == plaintexts  # type: ignore[attr-defined]
    blobs = [client.encrypt(aes, p, context).ciphertext_blob for p in plaintexts]
    opened = _ok(client.batch_decrypt([DecryptItem(b, context) for b in blobs]))
    assert [o.plaintext for o in opened] == plaintexts  # type: ignore[attr-defined]

    moved = _ok(client.batch_re_encrypt([ReEncryptItem(b, other_aes, context) for b in blobs]))
    assert [m.key_id for m in moved] == [other_aes] * 3  # type: ignore[attr-defined]
    assert [client.decrypt(m.ciphertext_blob).plaintext for m in moved] == plaintexts  # type: ignore[attr-defined]

    data_keys = _ok(client.batch_generate_data_key([GenerateDataKeyItem(aes)] * 2))
    for data_key in data_keys:
        assert client.decrypt(data_key.ciphertext_blob).plaintext == data_key.plaintext  # type: ignore[attr-defined]
        assert len(data_key.plaintext) == 32  # type: ignore[attr-defined]

    signed = _ok(client.batch_sign([SignItem(ec, p, "ECDSA_SHA_256") for p in plaintexts]))
    for message, signature in zip(plaintexts, signed, strict=True):
        assert client.verify(ec, message, signature.signature, "ECDSA_SHA_256").signature_valid  # type: ignore[attr-defined]
    signature = client.sign(ec, b"first", "ECDSA_SHA_256").signature
    verified = _ok(
        client.batch_verify(
            [
                VerifyItem(ec, b"first", signature, "ECDSA_SHA_256"),
                VerifyItem(ec, b"tampered", signature, "ECDSA_SHA_256"),
            ]
        )
    )
    assert [v.signature_valid for v in verified] == [True, False]  # type: ignore[attr-defined]

    macs = _ok(
        client.batch_generate_mac([GenerateMacItem(hmac, p, "HMAC_SHA_256") for p in plaintexts])
    )
    for message, mac in zip(plaintexts, macs, strict=True):
        assert client.verify_mac(hmac, message, mac.mac, "HMAC_SHA_256").mac_valid  # type: ignore[attr-defined]
    mac = client.generate_mac(hmac, b"first", "HMAC_SHA_256").mac
    checked = _ok(
        client.batch_verify_mac(
            [
                VerifyMacItem(hmac, b"first", mac, "HMAC_SHA_256"),
                VerifyMacItem(hmac, b"other", mac, "HMAC_SHA_256"),
            ]
        )
    )
    assert [c.mac_valid for c in checked] == [True, False]  # type: ignore[attr-defined]


def test_each_item_is_answered_on_its_own_in_order_as_the_unary_call(
    daemon: DaemonProcess, client: HsmClient
) -> None:
    key = client.create_key().key_id
    disabled = client.create_key().key_id
    client.disable_key(disabled)
    missing = str(uuid.uuid4())
    with daemon.client(OTHER) as other:
        foreign = other.create_key().key_id
    blob = client.encrypt(key, b"secret", {"app": "a"}).ciphertext_blob

    answers = client.batch_encrypt(
        [
            EncryptItem(key, b"one"),
            EncryptItem(missing, b"two"),
            EncryptItem(foreign, b"three"),
            EncryptItem(disabled, b"four"),
            EncryptItem(key, b"x" * 4097),
            EncryptItem(key, b"six"),
        ]
    )
    assert isinstance(answers[0], EncryptResult) and isinstance(answers[5], EncryptResult)
    assert isinstance(answers[1], NotFoundError) and isinstance(answers[2], NotFoundError)
    # Another tenant's key is answered exactly as a missing one, and as the unary call does.
    assert answers[2].message == answers[1].message.replace(missing, foreign)
    with pytest.raises(NotFoundError) as unary:
        client.encrypt(foreign, b"three")
    assert unary.value.message == answers[2].message
    assert isinstance(answers[3], FailedPreconditionError)
    assert isinstance(answers[4], InvalidArgumentError) and "4096 bytes" in answers[4].message

    wrong_context = client.batch_decrypt(
        [DecryptItem(blob, {"app": "b"}), DecryptItem(blob, {"app": "a"})]
    )
    assert isinstance(wrong_context[0], InvalidArgumentError)
    with pytest.raises(InvalidArgumentError) as unary_decrypt:
        client.decrypt(blob, {"app": "b"})
    assert wrong_context[0].message == unary_decrypt.value.message
    assert wrong_context[1].plaintext == b"secret"  # type: ignore[union-attr]


def _batch_encrypt(
    client: HsmClient, requests: list[service_pb2.EncryptRequest]
) -> tuple[service_pb2.BatchEncryptResponse | grpc.RpcError, str]:
    """A raw BatchEncrypt (the client refuses what these tests send); the answer or the
    error, and the batch's request id."""
    stub = client._stub  # the client would refuse these batches itself
    try:
        response, call = stub.BatchEncrypt.with_call(
            service_pb2.BatchEncryptRequest(requests=requests)
        )
    except grpc.RpcError as error:
        return error, dict(error.trailing_metadata())["x-request-id"]  # type: ignore[attr-defined]
    return response, dict(call.trailing_metadata())["x-request-id"]


def _events(client: HsmClient, request_id: str) -> list[object]:
    """The tenant's audit events of one batch: its own and its items'. In pages of the
    largest size: a busy test's batches leave many events, and the tenant's audit requests
    have a rate quota."""
    return [
        event
        for event in client.iter_audit_events(page_size=1000)
        if event.request_id == request_id or event.request_id.startswith(request_id + ".")
    ]


def test_a_batch_over_its_limits_is_refused_whole_and_audited_once(client: HsmClient) -> None:
    key = client.create_key().key_id
    item = service_pb2.EncryptRequest(key_id=key, plaintext=b"p")
    big = service_pb2.EncryptRequest(
        key_id=key, plaintext=b"p" * 4096, encryption_context={"pad": "v" * 400}
    )
    for requests, problem in (
        ([], "requests is empty"),
        ([item] * 1001, "more than 1000 entries"),
        ([big] * 1000, "larger than 4194304 bytes"),
    ):
        error, request_id = _batch_encrypt(client, requests)
        assert isinstance(error, grpc.RpcError)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert problem in error.details()  # type: ignore[attr-defined]
        events = _events(client, request_id)
        assert [(e.operation, e.outcome) for e in events] == [  # type: ignore[attr-defined]
            ("BatchEncrypt", "INVALID_ARGUMENT")
        ]
    for count in (0, 1001):
        with pytest.raises(ValueError, match="1 to 1000 items"):
            client.batch_encrypt([EncryptItem(key, b"p")] * count)


def test_each_item_is_audited_once_under_the_batch_request_id_without_plaintext(
    daemon: DaemonProcess, client: HsmClient
) -> None:
    key = client.create_key().key_id
    secret = b"batch-secret-" + uuid.uuid4().hex.encode()
    requests = [
        service_pb2.EncryptRequest(key_id=key, plaintext=secret, encryption_context={"k": "vv"}),
        service_pb2.EncryptRequest(key_id=str(uuid.uuid4()), plaintext=secret),
        service_pb2.EncryptRequest(key_id=key, plaintext=secret),
    ]
    response, request_id = _batch_encrypt(client, requests)
    assert isinstance(response, service_pb2.BatchEncryptResponse)
    events = _events(client, request_id)
    assert [(e.request_id, e.operation, e.outcome) for e in events] == [  # type: ignore[attr-defined]
        (f"{request_id}.0", "Encrypt", "OK"),
        (f"{request_id}.1", "Encrypt", "NOT_FOUND"),
        (f"{request_id}.2", "Encrypt", "OK"),
    ]
    assert events[0].key_id == key and events[0].key_version == 1  # type: ignore[attr-defined]
    assert events[0].encryption_context_keys == ("k",)  # type: ignore[attr-defined]
    log = daemon.audit_log.read_bytes()
    for leaked in (secret, base64.b64encode(secret), b"vv"):
        assert leaked not in log


def test_quotas_count_each_item_and_the_rest_get_retry_info(daemon: DaemonProcess) -> None:
    with daemon.client(THROTTLED) as throttled:
        key = throttled.create_key().key_id
        with daemon.admin() as admin:
            admin.set_tenant_quota(THROTTLED, TenantQuota(symmetric_requests_per_second=2))
        answers = throttled.batch_encrypt([EncryptItem(key, b"p")] * 10)
        # The bucket holds one second's worth: two items pass, the rest wait for refills.
        assert all(isinstance(answer, EncryptResult) for answer in answers[:2])
        refused = [answer for answer in answers if isinstance(answer, ResourceExhaustedError)]
        assert len(refused) >= 6
        for error in refused:
            assert error.retry_after is not None and 0 < error.retry_after <= 1
            assert "2 symmetric requests per second (Encrypt)" in error.message
        # The items used the tenant's rate: a unary Encrypt right after is refused too.
        with pytest.raises(ResourceExhaustedError):
            throttled.encrypt(key, b"p")
        with daemon.admin() as admin:
            admin.set_tenant_quota(THROTTLED, TenantQuota())
        outcomes = [e.outcome for e in throttled.iter_audit_events() if e.operation == "Encrypt"]
        assert outcomes.count("RESOURCE_EXHAUSTED") >= len(refused)


def test_the_cli_round_trips_json_lines(
    daemon: DaemonProcess, client: HsmClient, tmp_path: Path
) -> None:
    key = client.create_key().key_id
    env = daemon.client_env(MINE, tmp_path)

    def hsm(*args: str, stdin: str) -> list[dict[str, object]]:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "hsm"), "batch", *args],
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    plaintexts = [b"alpha", b"beta"]
    items = [
        {"KeyId": key, "Plaintext": base64.b64encode(p).decode(), "EncryptionContext": {"a": "1"}}
        for p in plaintexts
    ]
    items.append({"KeyId": str(uuid.uuid4()), "Plaintext": "cA=="})
    input_file = tmp_path / "items.jsonl"
    input_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    sealed = hsm("encrypt", "--input", str(input_file), stdin="")
    assert [set(line) for line in sealed[:2]] == [
        {"CiphertextBlob", "KeyId", "EncryptionAlgorithm", "KeyVersion"}
    ] * 2
    assert sealed[2]["error"]["code"] == "NOT_FOUND"  # type: ignore[index]
    lines = "".join(
        json.dumps({"CiphertextBlob": line["CiphertextBlob"], "EncryptionContext": {"a": "1"}})
        + "\n"
        for line in sealed[:2]
    )
    opened = hsm("decrypt", stdin=lines)
    assert [base64.b64decode(str(line["Plaintext"])) for line in opened] == plaintexts


def test_a_full_batch_of_1000_items_is_answered_item_by_item(client: HsmClient) -> None:
    key = client.create_key().key_id
    answers = _ok(client.batch_encrypt([EncryptItem(key, b"x" * 1024)] * 1000))
    assert len({a.ciphertext_blob for a in answers}) == 1000  # type: ignore[attr-defined]


BUSY = "batch-busy"


def test_a_batch_the_scheduler_turns_away_is_refused_whole_with_a_retry_delay(
    daemon: DaemonProcess,
) -> None:
    """While the tenant already has as many calls running or waiting as it may (RSA key
    generations from 20 threads), a batch whose first chunk finds no place is refused as a
    whole: RESOURCE_EXHAUSTED with a RetryInfo, and one audit event, not one per item."""
    daemon.create_tenant(BUSY)
    with daemon.client(BUSY) as client:
        key = client.create_key().key_id
        stop = threading.Event()

        def flood(index: int) -> None:
            with daemon.client(BUSY, f"flood{index}") as flooder:
                while not stop.is_set():
                    try:
                        flooder.create_key("RSA_2048", "SIGN_VERIFY")
                    except ResourceExhaustedError:
                        pass

        flooders = [threading.Thread(target=flood, args=(i,)) for i in range(20)]
        for thread in flooders:
            thread.start()
        try:
            item = service_pb2.EncryptRequest(key_id=key, plaintext=b"p")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                answer, request_id = _batch_encrypt(client, [item] * 100)
                if isinstance(answer, grpc.RpcError):
                    break
        finally:
            stop.set()
            for thread in flooders:
                thread.join()
        assert isinstance(answer, grpc.RpcError), "no batch was turned away within 2 minutes"
        assert answer.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "grpc-status-details-bin" in dict(answer.trailing_metadata())  # type: ignore[attr-defined]
        events = _events(client, request_id)
        assert [(e.operation, e.outcome) for e in events] == [  # type: ignore[attr-defined]
            ("BatchEncrypt", "RESOURCE_EXHAUSTED")
        ]
