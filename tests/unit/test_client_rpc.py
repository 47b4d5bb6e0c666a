"""hsmclient against an in-process gRPC server with a fake KeyManagementService.

The fake keeps blobs in a dict instead of encrypting; it exists to show what the client sends
and how it treats what comes back: CRC32C checks, enum names, paging, errors, timeouts, and the
mutual-TLS channel that the CLI opens.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import google_crc32c
import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from hsmclient import (
    AdminClient,
    Alias,
    AlreadyExistsError,
    AuditEvent,
    AuditVerification,
    ChecksumMismatchError,
    DeadlineExceededError,
    FailedPreconditionError,
    HsmClient,
    ImportParameters,
    InvalidArgumentError,
    KeyPolicy,
    KeyRotation,
    NotFoundError,
    PermissionDeniedError,
    PublicKey,
    ResourceExhaustedError,
    TimeReversal,
    UnavailableError,
    WrappedKey,
    cli,
    keyimport,
)
from hsmclient.aio import AsyncAdminClient, AsyncHsmClient
from hsmclient.client import SAFE_TO_REPEAT

from hsmd import devpki
from hsmd.v1 import admin_pb2, admin_pb2_grpc, resources_pb2, service_pb2, service_pb2_grpc
from tests.unit.test_client_keyimport import MATERIAL, rsa_key, spki, unwrap_import

CREATED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
# The fake daemon's clock: every time it stamps after creating a key.
NOW = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)


def page(items: Sequence, request) -> tuple[list, str]:
    """As the daemon pages: at most page_size items (0: 100); the token is the next index."""
    start = int(request.page_token or 0)
    end = start + (request.page_size or 100)
    return list(items[start:end]), str(end) if end < len(items) else ""


def audit_event(sequence: int, **fields) -> resources_pb2.AuditEvent:
    event = resources_pb2.AuditEvent(
        sequence=sequence,
        request_id=f"req-{sequence}",
        tenant="acme",
        principal="tenant/acme/app",
        operation="Encrypt",
        key_id="key-1",
        key_version=2,
        encryption_context_keys=["app", "file"],
        outcome="OK",
        peer="ipv4:127.0.0.1:5000",
        previous_hash=f"{sequence - 1:064x}",
        hash=f"{sequence:064x}",
    )
    event.time.FromDatetime(NOW + timedelta(seconds=sequence))
    event.MergeFrom(resources_pb2.AuditEvent(**fields))
    return event


def crc32c(data: bytes) -> int:
    return google_crc32c.value(data)


# What the fake's keys of each usage accept, as the daemon lists them in KeyMetadata.
ALGORITHMS = {
    resources_pb2.ENCRYPT_DECRYPT: {"encryption_algorithms": [resources_pb2.SYMMETRIC_DEFAULT]},
    resources_pb2.SIGN_VERIFY: {"signing_algorithms": [resources_pb2.ECDSA_SHA_256]},
    resources_pb2.GENERATE_VERIFY_MAC: {"mac_algorithms": [resources_pb2.HMAC_SHA_256]},
    resources_pb2.WRAP_UNWRAP: {},
}


# As the daemon: without a usage, a key gets its spec's only one, else ENCRYPT_DECRYPT.
DEFAULT_USAGE = {
    resources_pb2.EC_P256: resources_pb2.SIGN_VERIFY,
    resources_pb2.ED25519: resources_pb2.SIGN_VERIFY,
    resources_pb2.HMAC_256: resources_pb2.GENERATE_VERIFY_MAC,
}


def changes_key(response_type, change: Callable) -> Callable:
    """A FakeKms RPC that applies change(key, request, context) to the key the request names
    and answers its metadata."""

    def rpc(self: "FakeKms", request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        change(key, request, context)
        return response_type(key_metadata=key)

    return rpc


def set_state(state: int) -> Callable:
    return lambda key, request, context: setattr(key, "key_state", state)


def schedule_deletion(key, request, context) -> None:
    key.key_state = resources_pb2.PENDING_DELETION
    key.deletion_date.FromDatetime(NOW + timedelta(days=request.pending_window_in_days or 30))


def cancel_deletion(key, request, context) -> None:
    if key.key_state != resources_pb2.PENDING_DELETION:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not pending deletion")
    key.key_state = resources_pb2.DISABLED
    key.ClearField("deletion_date")


def untag(key, request, context) -> None:
    for tag_key in request.tag_keys:
        key.tags.pop(tag_key, None)


def delete_material(key, request, context) -> None:
    key.key_state = resources_pb2.PENDING_IMPORT
    key.ClearField("valid_to")


def timestamp(time: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(time)
    return stamp


def der_public_key(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _throttled(delay: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED with a RetryInfo of `delay` seconds, as the daemon answers a rate."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromTimedelta(timedelta(seconds=delay))
    status = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow down"
    )
    status.details.add().Pack(retry)
    return rpc_status.to_status(status)


class FakeKms(service_pb2_grpc.KeyManagementServiceServicer):
    """A KeyManagementService that keeps everything in memory, with knobs to misbehave."""

    def __init__(self) -> None:
        self.keys: dict[str, resources_pb2.KeyMetadata] = {}
        self.signing_keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        # The symmetric material of every key: the HMAC or AES key.
        self.secret_keys: dict[str, bytes] = {}
        # Import token: the key it is for, its wrapping algorithm (AWS name), the RSA key.
        self.imports: dict[bytes, tuple[str, str, object]] = {}
        self.blobs: dict[bytes, tuple[str, bytes, dict[str, str]]] = {}
        self.requests: list[object] = []
        self.policies: dict[str, resources_pb2.KeyPolicy] = {}
        self.rotation: dict[str, service_pb2.GetKeyRotationStatusResponse] = {}
        self.rotations: dict[str, list[resources_pb2.KeyRotation]] = {}
        self.aliases: dict[str, resources_pb2.Alias] = {}
        self.events = [audit_event(n, key_id=f"key-{n % 2}") for n in range(1, 6)]
        self.corrupt_response_crc32c = False
        self.ignore_request_crc32c = False
        self.delay = 0.0
        self.failures: list[grpc.StatusCode] = []  # CreateKey answers these first
        # Encrypt and EnableKeyRotation answer these first: a status and a retry delay or None.
        self.failing: dict[str, list[tuple[grpc.StatusCode, float | None]]] = {}

    def _key(self, key_id: str, context: grpc.ServicerContext) -> resources_pb2.KeyMetadata:
        """The key of an id or, as the daemon resolves them, of an alias/NAME."""
        if key_id in self.aliases:
            key_id = self.aliases[key_id].target_key_id
        if key_id not in self.keys:
            context.abort(grpc.StatusCode.NOT_FOUND, f"key {key_id} not found")
        return self.keys[key_id]

    def _response_crc32c(self, data: bytes) -> int:
        return crc32c(data) ^ (1 if self.corrupt_response_crc32c else 0)

    def _checked(self, request, field: str, data: bytes, context) -> bool:
        """As the daemon: refuse a wrong checksum; say whether one was checked."""
        if self.ignore_request_crc32c or not request.HasField(field):
            return False
        if getattr(request, field) != crc32c(data):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field} does not match")
        return True

    def _seal(self, key_id: str, plaintext: bytes, context: dict[str, str]) -> bytes:
        blob = os.urandom(16)
        self.blobs[blob] = (key_id, plaintext, dict(context))
        return blob

    def _new_key(self, request, key_spec: int, key_usage: int, origin: int):
        """A key as CreateKey and UnwrapKey make it, from the fields their requests share, with
        fresh material (UnwrapKey and ImportKeyMaterial replace it)."""
        key_id = str(uuid.uuid4())
        usage = key_usage or DEFAULT_USAGE.get(key_spec, resources_pb2.ENCRYPT_DECRYPT)
        external = origin == resources_pb2.EXTERNAL
        key = resources_pb2.KeyMetadata(
            key_id=key_id,
            tenant="acme",
            name=f"tenants/acme/keys/{key_id}",
            description=request.description,
            key_spec=key_spec,
            key_usage=usage,
            origin=origin,
            key_state=resources_pb2.PENDING_IMPORT if external else resources_pb2.ENABLED,
            primary_version=1,
            tags=request.tags,
            exportable=request.exportable,
            **ALGORITHMS[usage],
        )
        key.creation_time.FromDatetime(CREATED)
        self.keys[key_id] = key
        self.policies[key_id] = (
            request.policy
            if request.HasField("policy")
            else resources_pb2.KeyPolicy(administrators=["admin", "app"], users=["app"])
        )
        self.rotation[key_id] = service_pb2.GetKeyRotationStatusResponse(key_id=key_id)
        self.rotations[key_id] = []
        self.signing_keys[key_id] = ec.generate_private_key(ec.SECP256R1())
        self.secret_keys[key_id] = os.urandom(32)
        return key

    def CreateKey(self, request, context):
        self.requests.append(request)
        if self.failures:
            context.abort(self.failures.pop(0), "not now")
        origin = request.origin or resources_pb2.GENERATED
        key = self._new_key(request, request.key_spec, request.key_usage, origin)
        return service_pb2.CreateKeyResponse(key_metadata=key)

    def DescribeKey(self, request, context):
        self.requests.append(request)
        time.sleep(self.delay)
        return service_pb2.DescribeKeyResponse(key_metadata=self._key(request.key_id, context))

    def ListKeys(self, request, context):
        self.requests.append(request)
        wanted = request.tag_filter.items()
        keys = [key for key in self.keys.values() if wanted <= key.tags.items()]
        keys, token = page(keys, request)
        return service_pb2.ListKeysResponse(keys=keys, next_page_token=token)

    def _fail_first(self, name: str, context: grpc.ServicerContext) -> None:
        queued = self.failing.get(name)
        if queued:
            code, delay = queued.pop(0)
            if delay is not None:
                context.abort_with_status(_throttled(delay))
            context.abort(code, "not now")

    def Encrypt(self, request, context):
        self.requests.append(request)
        self._fail_first("Encrypt", context)
        key = self._key(request.key_id, context)
        verified = self._checked(request, "plaintext_crc32c", request.plaintext, context)
        blob = self._seal(key.key_id, request.plaintext, request.encryption_context)
        return service_pb2.EncryptResponse(
            ciphertext_blob=blob,
            key_id=key.key_id,
            key_version=key.primary_version,
            verified_plaintext_crc32c=verified,
            ciphertext_crc32c=self._response_crc32c(blob),
            encryption_algorithm=request.encryption_algorithm,
        )

    def _open(self, blob: bytes, encryption_context, key_id: str, context) -> tuple[str, bytes]:
        """As the daemon: one opaque error for an unknown blob, context or key."""
        owner, plaintext, bound = self.blobs.get(blob, ("", b"", {}))
        if not owner or bound != dict(encryption_context) or key_id not in ("", owner):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ciphertext is invalid")
        return owner, plaintext

    def Decrypt(self, request, context):
        self.requests.append(request)
        verified = self._checked(request, "ciphertext_crc32c", request.ciphertext_blob, context)
        key_id, plaintext = self._open(
            request.ciphertext_blob, request.encryption_context, request.key_id, context
        )
        return service_pb2.DecryptResponse(
            plaintext=plaintext,
            key_id=key_id,
            key_version=1,
            plaintext_crc32c=self._response_crc32c(plaintext),
            verified_ciphertext_crc32c=verified,
            encryption_algorithm=request.encryption_algorithm or resources_pb2.SYMMETRIC_DEFAULT,
        )

    def ReEncrypt(self, request, context):
        self.requests.append(request)
        source, plaintext = self._open(
            request.ciphertext_blob,
            request.source_encryption_context,
            request.source_key_id,
            context,
        )
        destination = self._key(request.destination_key_id, context)
        blob = self._seal(destination.key_id, plaintext, request.destination_encryption_context)
        return service_pb2.ReEncryptResponse(
            ciphertext_blob=blob,
            source_key_id=source,
            source_key_version=1,
            key_id=destination.key_id,
            key_version=2,
            source_encryption_algorithm=resources_pb2.SYMMETRIC_DEFAULT,
            destination_encryption_algorithm=resources_pb2.SYMMETRIC_DEFAULT,
        )

    def _data_key(self, request, context) -> tuple[bytes, bytes, resources_pb2.KeyMetadata]:
        key = self._key(request.key_id, context)
        plaintext = os.urandom(request.number_of_bytes or 32)
        return plaintext, self._seal(key.key_id, plaintext, request.encryption_context), key

    def GenerateDataKey(self, request, context):
        self.requests.append(request)
        plaintext, blob, key = self._data_key(request, context)
        return service_pb2.GenerateDataKeyResponse(
            plaintext=plaintext, ciphertext_blob=blob, key_id=key.key_id, key_version=1
        )

    def GenerateDataKeyWithoutPlaintext(self, request, context):
        self.requests.append(request)
        _, blob, key = self._data_key(request, context)
        return service_pb2.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=blob, key_id=key.key_id, key_version=1
        )

    def _key_pair(self, request, context) -> dict[str, object]:
        """The fields both GenerateDataKeyPair responses share; any spec gets a P-256 pair."""
        key = self._key(request.key_id, context)
        private_key = ec.generate_private_key(ec.SECP256R1())
        pkcs8 = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "public_key": der_public_key(private_key),
            "private_key_ciphertext_blob": self._seal(
                key.key_id, pkcs8, request.encryption_context
            ),
            "key_id": key.key_id,
            "key_version": 1,
            "key_pair_spec": request.key_pair_spec,
            "pkcs8": pkcs8,
        }

    def GenerateDataKeyPair(self, request, context):
        self.requests.append(request)
        fields = self._key_pair(request, context)
        return service_pb2.GenerateDataKeyPairResponse(
            private_key_plaintext=fields.pop("pkcs8"), **fields
        )

    def GenerateDataKeyPairWithoutPlaintext(self, request, context):
        self.requests.append(request)
        fields = self._key_pair(request, context)
        del fields["pkcs8"]
        return service_pb2.GenerateDataKeyPairWithoutPlaintextResponse(**fields)

    def _signing_key(self, request, context) -> ec.EllipticCurvePrivateKey:
        if request.signing_algorithm != resources_pb2.ECDSA_SHA_256:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the fake signs ECDSA_SHA_256 only")
        self._key(request.key_id, context)
        return self.signing_keys[request.key_id]

    @staticmethod
    def _ecdsa(request) -> ec.ECDSA:
        if request.message_type == resources_pb2.DIGEST:
            return ec.ECDSA(utils.Prehashed(hashes.SHA256()))
        return ec.ECDSA(hashes.SHA256())

    @staticmethod
    def _echo(request, algorithm: str) -> dict[str, object]:
        """The fields that the Sign, Verify and MAC responses take from the request."""
        return {"key_id": request.key_id, "key_version": 1, algorithm: getattr(request, algorithm)}

    def Sign(self, request, context):
        self.requests.append(request)
        private_key = self._signing_key(request, context)
        return service_pb2.SignResponse(
            signature=private_key.sign(request.message, self._ecdsa(request)),
            **self._echo(request, "signing_algorithm"),
        )

    def Verify(self, request, context):
        self.requests.append(request)
        public_key = self._signing_key(request, context).public_key()
        try:
            public_key.verify(request.signature, request.message, self._ecdsa(request))
            valid = True
        except InvalidSignature:
            valid = False
        return service_pb2.VerifyResponse(
            signature_valid=valid, **self._echo(request, "signing_algorithm")
        )

    def GetPublicKey(self, request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        return service_pb2.GetPublicKeyResponse(
            public_key=der_public_key(self.signing_keys[key.key_id]),
            key_id=key.key_id,
            key_version=1,
            key_spec=key.key_spec,
            key_usage=key.key_usage,
            encryption_algorithms=key.encryption_algorithms,
            signing_algorithms=key.signing_algorithms,
        )

    def _mac(self, request, context) -> bytes:
        self._key(request.key_id, context)
        return hmac.digest(self.secret_keys[request.key_id], request.message, hashlib.sha256)

    def GenerateMac(self, request, context):
        self.requests.append(request)
        return service_pb2.GenerateMacResponse(
            mac=self._mac(request, context), **self._echo(request, "mac_algorithm")
        )

    def VerifyMac(self, request, context):
        self.requests.append(request)
        valid = hmac.compare_digest(self._mac(request, context), request.mac)
        return service_pb2.VerifyMacResponse(
            mac_valid=valid, **self._echo(request, "mac_algorithm")
        )

    def GetCapabilities(self, request, context):
        self.requests.append(request)
        return service_pb2.GetCapabilitiesResponse(
            key_specs=[resources_pb2.AES_256, resources_pb2.EC_P256, resources_pb2.HMAC_256],
            encryption_algorithms=[resources_pb2.SYMMETRIC_DEFAULT],
            signing_algorithms=[resources_pb2.ECDSA_SHA_256, 99],  # 99: one newer than us
            mac_algorithms=[resources_pb2.HMAC_SHA_256],
            notes=["RSAES_OAEP_SHA_256: the token lacks CKM_RSA_PKCS_OAEP with SHA-256"],
        )

    def GenerateRandom(self, request, context):
        self.requests.append(request)
        return service_pb2.GenerateRandomResponse(plaintext=os.urandom(request.number_of_bytes))

    # --- lifecycle: each changes the key and answers its metadata, as the daemon does ---------

    EnableKey = changes_key(service_pb2.EnableKeyResponse, set_state(resources_pb2.ENABLED))
    DisableKey = changes_key(service_pb2.DisableKeyResponse, set_state(resources_pb2.DISABLED))
    ScheduleKeyDeletion = changes_key(service_pb2.ScheduleKeyDeletionResponse, schedule_deletion)
    CancelKeyDeletion = changes_key(service_pb2.CancelKeyDeletionResponse, cancel_deletion)
    UpdateKeyDescription = changes_key(
        service_pb2.UpdateKeyDescriptionResponse,
        lambda key, request, _: setattr(key, "description", request.description),
    )
    TagKey = changes_key(
        service_pb2.TagKeyResponse, lambda key, request, _: key.tags.update(request.tags)
    )
    UntagKey = changes_key(service_pb2.UntagKeyResponse, untag)

    def GetKeyPolicy(self, request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        return service_pb2.GetKeyPolicyResponse(policy=self.policies[key.key_id])

    def PutKeyPolicy(self, request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        if not request.policy.administrators:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a key needs an administrator")
        self.policies[key.key_id] = request.policy
        return service_pb2.PutKeyPolicyResponse(policy=request.policy)

    # --- rotation -------------------------------------------------------------------------------

    def _status(self, request, context) -> service_pb2.GetKeyRotationStatusResponse:
        self.requests.append(request)
        return self.rotation[self._key(request.key_id, context).key_id]

    def EnableKeyRotation(self, request, context):
        self.requests.append(request)
        self._fail_first("EnableKeyRotation", context)
        status = self._status(request, context)
        status.key_rotation_enabled = True
        status.rotation_period_in_days = request.rotation_period_in_days or 365
        status.next_rotation_date.FromDatetime(NOW + timedelta(days=status.rotation_period_in_days))
        return service_pb2.EnableKeyRotationResponse(status=status)

    def DisableKeyRotation(self, request, context):
        status = self._status(request, context)
        status.key_rotation_enabled = False
        status.rotation_period_in_days = 0
        status.ClearField("next_rotation_date")
        return service_pb2.DisableKeyRotationResponse(status=status)

    def GetKeyRotationStatus(self, request, context):
        return self._status(request, context)

    def RotateKeyOnDemand(self, request, context):
        status = self._status(request, context)
        status.on_demand_rotation_start_date.FromDatetime(NOW)
        key = self.keys[status.key_id]
        key.primary_version += 1
        rotation = resources_pb2.KeyRotation(
            key_id=key.key_id,
            key_version=key.primary_version,
            rotation_type=resources_pb2.ON_DEMAND,
        )
        rotation.rotation_date.FromDatetime(NOW)
        self.rotations[key.key_id].append(rotation)
        return service_pb2.RotateKeyOnDemandResponse(
            key_id=key.key_id, key_version=key.primary_version
        )

    def ListKeyRotations(self, request, context):
        self.requests.append(request)
        rotations = self.rotations[self._key(request.key_id, context).key_id]
        rotations, token = page(rotations, request)
        return service_pb2.ListKeyRotationsResponse(rotations=rotations, next_page_token=token)

    # --- aliases --------------------------------------------------------------------------------

    def _point(self, request, context, alias: resources_pb2.Alias) -> resources_pb2.Alias:
        self.requests.append(request)
        alias.target_key_id = self._key(request.target_key_id, context).key_id
        alias.last_updated_time.FromDatetime(NOW)
        self.aliases[alias.alias_name] = alias
        return alias

    def CreateAlias(self, request, context):
        if request.alias_name in self.aliases:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{request.alias_name} exists")
        alias = resources_pb2.Alias(alias_name=request.alias_name)
        alias.creation_time.FromDatetime(CREATED)
        return service_pb2.CreateAliasResponse(alias=self._point(request, context, alias))

    def UpdateAlias(self, request, context):
        alias = self.aliases.get(request.alias_name)
        if alias is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.alias_name} not found")
        return service_pb2.UpdateAliasResponse(alias=self._point(request, context, alias))

    def DeleteAlias(self, request, context):
        self.requests.append(request)
        if self.aliases.pop(request.alias_name, None) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.alias_name} not found")
        return service_pb2.DeleteAliasResponse()

    def ListAliases(self, request, context):
        self.requests.append(request)
        key_id = request.key_id and self._key(request.key_id, context).key_id
        aliases = [a for a in self.aliases.values() if key_id in ("", a.target_key_id)]
        aliases, token = page(aliases, request)
        return service_pb2.ListAliasesResponse(aliases=aliases, next_page_token=token)

    def ListAuditEvents(self, request, context):
        self.requests.append(request)
        return list_audit_events(self.events, request)

    # --- wrapping and import --------------------------------------------------------------------

    def _material(self, key: resources_pb2.KeyMetadata) -> bytes:
        """A key's material as the daemon wraps it: PKCS#8 for a private key, else raw."""
        if key.key_usage != resources_pb2.SIGN_VERIFY:
            return self.secret_keys[key.key_id]
        return self.signing_keys[key.key_id].private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def _set_material(self, key: resources_pb2.KeyMetadata, material: bytes) -> None:
        if key.key_usage == resources_pb2.SIGN_VERIFY:
            self.signing_keys[key.key_id] = serialization.load_der_private_key(material, None)
        else:
            self.secret_keys[key.key_id] = material

    def WrapKey(self, request, context):
        """As docs/formats.md: magic, key spec, key usage, mechanism 1 (RFC 5649), wrapped key."""
        self.requests.append(request)
        key = self._key(request.key_id, context)
        wrapping = self._key(request.wrapping_key_id, context)
        if not key.exportable:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the key is not exportable")
        header = b"hwk1" + bytes([key.key_spec, key.key_usage, 1])
        wrapped = aes_key_wrap_with_padding(self.secret_keys[wrapping.key_id], self._material(key))
        return service_pb2.WrapKeyResponse(
            wrapped_key=header + wrapped,
            key_id=key.key_id,
            key_version=key.primary_version,
            wrapping_key_id=wrapping.key_id,
        )

    def UnwrapKey(self, request, context):
        self.requests.append(request)
        wrapping = self._key(request.wrapping_key_id, context)
        blob = request.wrapped_key
        try:
            assert blob[:4] == b"hwk1"
            material = aes_key_unwrap_with_padding(self.secret_keys[wrapping.key_id], blob[7:])
        except (AssertionError, InvalidUnwrap):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the wrapped key is invalid")
        key = self._new_key(request, blob[4], blob[5], resources_pb2.UNWRAPPED)
        self._set_material(key, material)
        return service_pb2.UnwrapKeyResponse(key_metadata=key)

    def GetParametersForImport(self, request, context):
        self.requests.append(request)
        key = self._key(request.key_id, context)
        spec = resources_pb2.KeySpec.Name(request.wrapping_key_spec or resources_pb2.RSA_2048)
        wrapping_key = rsa_key(int(spec.removeprefix("RSA_")))
        algorithm = resources_pb2.WrappingAlgorithm.Name(request.wrapping_algorithm)
        token = os.urandom(16)
        self.imports[token] = (key.key_id, algorithm.removeprefix("WRAP_"), wrapping_key)
        response = service_pb2.GetParametersForImportResponse(
            key_id=key.key_id, import_token=token, public_key=spki(wrapping_key)
        )
        response.parameters_valid_to.FromDatetime(NOW + timedelta(hours=24))
        return response

    def ImportKeyMaterial(self, request, context):
        """Unwraps as the daemon does, so that only correctly wrapped material gets in."""
        self.requests.append(request)
        key = self._key(request.key_id, context)
        owner, algorithm, wrapping_key = self.imports.get(request.import_token, ("", "", None))
        if owner != key.key_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the import token is not this key's")
        try:
            material = unwrap_import(wrapping_key, algorithm, request.encrypted_key_material)
        except (ValueError, InvalidUnwrap):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the key material does not unwrap")
        if key.key_usage == resources_pb2.SIGN_VERIFY:
            private_key = serialization.load_der_private_key(material, None)
            if der_public_key(private_key) != request.public_key:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the public key does not match")
        self._set_material(key, material)
        key.key_state = resources_pb2.ENABLED
        key.ClearField("valid_to")
        if request.HasField("valid_to"):
            key.valid_to.CopyFrom(request.valid_to)
        return service_pb2.ImportKeyMaterialResponse(key_metadata=key)

    DeleteImportedKeyMaterial = changes_key(
        service_pb2.DeleteImportedKeyMaterialResponse, delete_material
    )


def list_audit_events(events, request) -> service_pb2.ListAuditEventsResponse:
    """As either service answers ListAuditEvents; the tenant filter is the AdminService's."""
    events = [
        event
        for event in events
        if request.key_id in ("", event.key_id) and request.tenant in ("", event.tenant)
    ]
    events, token = page(events, request)
    return service_pb2.ListAuditEventsResponse(events=events, next_page_token=token)


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self) -> None:
        self.tenants: list[admin_pb2.Tenant] = []
        self.requests: list[object] = []
        # Tenants acme, beta, acme, ...; keys key-1, key-2, key-0, key-1, key-2.
        self.events = [
            audit_event(n, tenant=("beta", "acme")[n % 2], key_id=f"key-{n % 3}")
            for n in range(1, 6)
        ]
        self.verification = admin_pb2.VerifyAuditLogResponse(valid=True, events_checked=5)

    def CreateTenant(self, request, context):
        self.requests.append(request)
        if request.name == "forbidden":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "operators only")
        tenant = admin_pb2.Tenant(
            name=request.name,
            token_label=f"hsmd-{request.name}",
            admin_principals=request.admin_principals or ["admin"],
        )
        tenant.token_serial = "0123456789abcdef"
        tenant.creation_time.FromDatetime(CREATED)
        self.tenants.append(tenant)
        return admin_pb2.CreateTenantResponse(tenant=tenant)

    def ListTenants(self, request, context):
        return admin_pb2.ListTenantsResponse(tenants=self.tenants)

    def ListAuditEvents(self, request, context):
        self.requests.append(request)
        return list_audit_events(self.events, request)

    def VerifyAuditLog(self, request, context):
        self.requests.append(request)
        return self.verification


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


@pytest.fixture
def admin_fake() -> FakeAdmin:
    return FakeAdmin()


def _server(kms: FakeKms, admin: FakeAdmin) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_KeyManagementServiceServicer_to_server(kms, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin, server)
    return server


@pytest.fixture
def endpoint(kms: FakeKms, admin_fake: FakeAdmin) -> Iterator[str]:
    server = _server(kms, admin_fake)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(endpoint: str) -> Iterator[HsmClient]:
    with HsmClient(grpc.insecure_channel(endpoint), timeout=5) as client:
        yield client


# --- client tokens and retries ------------------------------------------------------------------


def without_token(request):
    """A creating request as sent, less the client token it must carry."""
    assert request.client_token
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("client_token")
    return copy


@pytest.fixture
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hsmclient.client.RETRY_DELAYS", (0.001,) * 3)


@pytest.mark.usefixtures("no_pauses")
@pytest.mark.parametrize(
    "status",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    ],
)
def test_create_key_retries_with_the_same_client_token(
    client: HsmClient, kms: FakeKms, status: grpc.StatusCode
) -> None:
    kms.failures = [status, status]
    key = client.create_key()
    tokens = [request.client_token for request in kms.requests]
    assert len(tokens) == 3 and len(set(tokens)) == 1 and tokens[0]
    assert key.key_id in kms.keys


@pytest.mark.usefixtures("no_pauses")
def test_a_retried_call_gives_up_after_its_last_attempt(client: HsmClient, kms: FakeKms) -> None:
    kms.failures = [grpc.StatusCode.UNAVAILABLE] * 10
    with pytest.raises(UnavailableError):
        client.create_key()
    assert len(kms.requests) == 4  # the first attempt and three retries


@pytest.mark.usefixtures("no_pauses")
def test_a_refusal_is_not_retried(client: HsmClient, kms: FakeKms) -> None:
    kms.failures = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(InvalidArgumentError):
        client.create_key()
    assert len(kms.requests) == 1


@pytest.mark.usefixtures("no_pauses")
def test_a_call_safe_to_repeat_is_retried_while_the_daemon_is_unavailable(
    client: HsmClient, kms: FakeKms
) -> None:
    key_id = client.create_key().key_id
    kms.failing["Encrypt"] = [(grpc.StatusCode.UNAVAILABLE, None)] * 2
    client.encrypt(key_id, b"x")
    assert sum(isinstance(r, service_pb2.EncryptRequest) for r in kms.requests) == 3


@pytest.mark.usefixtures("no_pauses")
def test_a_throttled_call_waits_the_delay_the_daemon_names(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    kms.failing["Encrypt"] = [(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.2)]
    started = time.monotonic()
    client.encrypt(key_id, b"x")
    assert time.monotonic() - started >= 0.2  # not the 1 ms the pauses are set to here


@pytest.mark.usefixtures("no_pauses")
@pytest.mark.parametrize("delay", [None, 60.0])
def test_a_limit_or_a_long_delay_is_the_callers_to_wait_for(
    client: HsmClient, kms: FakeKms, delay: float | None
) -> None:
    key_id = client.create_key().key_id
    kms.requests.clear()
    if delay is None:  # a resource limit: no retry delay at all
        kms.failing["Encrypt"] = [(grpc.StatusCode.RESOURCE_EXHAUSTED, None)]
    else:
        kms.failing["Encrypt"] = [(grpc.StatusCode.RESOURCE_EXHAUSTED, delay)]
    with pytest.raises(ResourceExhaustedError):
        client.encrypt(key_id, b"x")
    assert len(kms.requests) == 1


@pytest.mark.usefixtures("no_pauses")
def test_a_call_that_changes_something_is_not_retried(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    kms.requests.clear()
    kms.failing["EnableKeyRotation"] = [(grpc.StatusCode.UNAVAILABLE, None)]
    with pytest.raises(UnavailableError):
        client.enable_key_rotation(key_id)
    assert len(kms.requests) == 1


def test_every_call_named_safe_to_repeat_is_an_rpc_that_changes_nothing() -> None:
    services = (
        service_pb2.DESCRIPTOR.services_by_name["KeyManagementService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    )
    rpcs = {method.name for service in services for method in service.methods}
    assert SAFE_TO_REPEAT <= rpcs
    assert not SAFE_TO_REPEAT & {"CreateKey", "ScheduleKeyDeletion", "DisableKey", "TagKey"}


def test_each_call_gets_its_own_token_unless_one_is_given(client: HsmClient, kms: FakeKms) -> None:
    client.create_key()
    client.create_key()
    client.create_key(client_token="mine")
    tokens = [request.client_token for request in kms.requests]
    assert tokens[0] != tokens[1] and tokens[2] == "mine"


# --- key metadata and enums ---------------------------------------------------------------------


def test_create_and_describe_key_return_python_values(client: HsmClient, kms: FakeKms) -> None:
    created = client.create_key(description="payroll")
    assert without_token(kms.requests[0]) == service_pb2.CreateKeyRequest(
        key_spec=resources_pb2.AES_256, description="payroll", origin=resources_pb2.GENERATED
    )  # no usage: the daemon picks it from the spec
    described = client.describe_key(created.key_id)
    assert described == created
    assert (described.key_spec, described.key_usage) == ("AES_256", "ENCRYPT_DECRYPT")
    assert (described.origin, described.key_state) == ("GENERATED", "ENABLED")
    assert (described.exportable, described.valid_to) == (False, None)
    assert described.creation_time == CREATED
    assert described.creation_time.tzinfo is not None
    assert described.name == f"tenants/acme/keys/{created.key_id}"
    assert (described.tenant, described.primary_version) == ("acme", 1)
    assert described.encryption_algorithms == ("SYMMETRIC_DEFAULT",)
    assert (described.signing_algorithms, described.mac_algorithms) == ((), ())


@pytest.mark.parametrize(
    ("key_spec", "key_usage", "lists"),
    [
        ("EC_P256", "SIGN_VERIFY", ((), ("ECDSA_SHA_256",), ())),
        ("HMAC_256", "GENERATE_VERIFY_MAC", ((), (), ("HMAC_SHA_256",))),
        ("RSA_2048", "ENCRYPT_DECRYPT", (("SYMMETRIC_DEFAULT",), (), ())),
        ("ED25519", "SIGN_VERIFY", ((), ("ECDSA_SHA_256",), ())),
    ],
)
def test_create_key_takes_the_new_specs_and_usages(
    client: HsmClient, kms: FakeKms, key_spec: str, key_usage: str, lists: tuple
) -> None:
    key = client.create_key(key_spec, key_usage)
    assert kms.requests[-1].key_spec == resources_pb2.KeySpec.Value(key_spec)
    assert kms.requests[-1].key_usage == resources_pb2.KeyUsage.Value(key_usage)
    assert (key.key_spec, key.key_usage) == (key_spec, key_usage)
    assert (key.encryption_algorithms, key.signing_algorithms, key.mac_algorithms) == lists


def test_create_key_without_a_usage_leaves_it_to_the_daemon(
    client: HsmClient, kms: FakeKms
) -> None:
    key = client.create_key("HMAC_256")
    assert kms.requests[-1].key_usage == resources_pb2.KEY_USAGE_UNSPECIFIED
    assert key.key_usage == "GENERATE_VERIFY_MAC"


@pytest.mark.parametrize(
    "arguments",
    [
        {"key_spec": "AES_512"},
        {"key_spec": "KEY_SPEC_UNSPECIFIED"},
        {"key_usage": "SIGN_EVERYTHING"},
        {"key_spec": "aes_256"},
    ],
)
def test_an_unknown_enum_name_fails_before_any_call(
    client: HsmClient, kms: FakeKms, arguments: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        client.create_key(**arguments)
    assert kms.requests == []


def test_a_state_these_stubs_do_not_know_is_shown_as_its_number(
    client: HsmClient, kms: FakeKms
) -> None:
    key = client.create_key()
    kms.keys[key.key_id].key_state = 99  # a state a newer daemon may add
    assert client.describe_key(key.key_id).key_state == "99"


def test_iter_keys_follows_every_page(client: HsmClient, kms: FakeKms) -> None:
    created = [client.create_key().key_id for _ in range(5)]
    page, token = client.list_keys(page_size=2)
    assert ([key.key_id for key in page], token) == (created[:2], "2")
    assert [key.key_id for key in client.iter_keys(page_size=2)] == created
    assert [key.key_id for key in client.iter_keys(page_size=2, page_token="3")] == created[3:]


# --- CRC32C -------------------------------------------------------------------------------------


def test_encrypt_sends_the_crc32c_of_the_plaintext(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    result = client.encrypt(key.key_id, b"123456789", {"app": "test"})
    request = kms.requests[-1]
    assert request.plaintext_crc32c == 0xE3069283  # CRC-32C check value; zlib.crc32 differs
    assert (result.key_id, result.key_version) == (key.key_id, 1)
    assert client.decrypt(result.ciphertext_blob, {"app": "test"}).plaintext == b"123456789"
    assert kms.requests[-1].ciphertext_crc32c == crc32c(result.ciphertext_blob)


def test_a_corrupted_ciphertext_is_detected(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    kms.corrupt_response_crc32c = True
    with pytest.raises(ChecksumMismatchError):
        client.encrypt(key.key_id, b"secret")


def test_a_corrupted_plaintext_is_detected(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"secret").ciphertext_blob
    kms.corrupt_response_crc32c = True
    with pytest.raises(ChecksumMismatchError):
        client.decrypt(blob)


def test_an_unverified_request_checksum_is_refused(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"secret").ciphertext_blob
    kms.ignore_request_crc32c = True
    with pytest.raises(ChecksumMismatchError, match="plaintext"):
        client.encrypt(key.key_id, b"secret")
    with pytest.raises(ChecksumMismatchError, match="ciphertext"):
        client.decrypt(blob)


def test_decrypt_results_hide_the_plaintext_from_repr(client: HsmClient) -> None:
    key = client.create_key()
    blob = client.encrypt(key.key_id, b"do-not-log-me").ciphertext_blob
    assert "do-not-log-me" not in repr(client.decrypt(blob))
    data_key = client.generate_data_key(key.key_id)
    assert repr(data_key.plaintext) not in repr(data_key)


# --- data keys and random -----------------------------------------------------------------------


def test_data_key_size_is_a_spec_or_a_length(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    assert len(client.generate_data_key(key_id).plaintext) == 32
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_AES_256
    assert len(client.generate_data_key(key_id, key_spec="AES_256").plaintext) == 32
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_AES_256
    encrypted = client.generate_data_key_without_plaintext(key_id, number_of_bytes=48)
    assert kms.requests[-1].key_spec == resources_pb2.DATA_KEY_SPEC_UNSPECIFIED
    assert kms.requests[-1].number_of_bytes == 48
    assert len(client.decrypt(encrypted.ciphertext_blob).plaintext) == 48


@pytest.mark.parametrize(
    "arguments",
    [
        {"key_spec": "AES_256", "number_of_bytes": 32},
        {"number_of_bytes": 0},
        {"key_spec": "AES_257"},
        {"key_spec": "DATA_KEY_AES_256"},
    ],
)
def test_bad_data_key_sizes_fail_before_any_call(
    client: HsmClient, kms: FakeKms, arguments: dict[str, object]
) -> None:
    for method in (client.generate_data_key, client.generate_data_key_without_plaintext):
        with pytest.raises(ValueError):
            method("key", **arguments)
    assert kms.requests == []


def test_data_keys_are_bound_to_their_context(client: HsmClient) -> None:
    key_id = client.create_key().key_id
    data_key = client.generate_data_key(key_id, encryption_context={"file": "a"})
    assert client.decrypt(data_key.ciphertext_blob, {"file": "a"}, key_id).plaintext == (
        data_key.plaintext
    )
    with pytest.raises(InvalidArgumentError, match="ciphertext is invalid"):
        client.decrypt(data_key.ciphertext_blob, {"file": "b"})
    with pytest.raises(InvalidArgumentError, match="ciphertext is invalid"):
        client.decrypt(data_key.ciphertext_blob, {"file": "a"}, key_id="another-key")


def test_generate_random(client: HsmClient) -> None:
    assert len(client.generate_random(17)) == 17


# --- encryption algorithms and ReEncrypt -------------------------------------------------------


def test_encrypt_and_decrypt_pass_the_encryption_algorithm(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    result = client.encrypt(key_id, b"x")
    assert kms.requests[-1].encryption_algorithm == resources_pb2.SYMMETRIC_DEFAULT
    assert result.encryption_algorithm == "SYMMETRIC_DEFAULT"
    decrypted = client.decrypt(result.ciphertext_blob)
    assert kms.requests[-1].encryption_algorithm == resources_pb2.ENCRYPTION_ALGORITHM_UNSPECIFIED
    assert decrypted.encryption_algorithm == "SYMMETRIC_DEFAULT"
    oaep = client.encrypt(key_id, b"x", encryption_algorithm="RSAES_OAEP_SHA_256")
    assert kms.requests[-1].encryption_algorithm == resources_pb2.RSAES_OAEP_SHA_256
    assert oaep.encryption_algorithm == "RSAES_OAEP_SHA_256"
    client.decrypt(oaep.ciphertext_blob, key_id=key_id, encryption_algorithm="RSAES_OAEP_SHA_1")
    assert kms.requests[-1].encryption_algorithm == resources_pb2.RSAES_OAEP_SHA_1


def test_re_encrypt_moves_a_blob_to_another_key_and_context(
    client: HsmClient, kms: FakeKms
) -> None:
    source, destination = client.create_key().key_id, client.create_key().key_id
    blob = client.encrypt(source, b"moved", {"from": "a"}).ciphertext_blob
    result = client.re_encrypt(
        blob,
        destination,
        source_encryption_context={"from": "a"},
        destination_encryption_context={"to": "b"},
        source_encryption_algorithm="SYMMETRIC_DEFAULT",
        destination_encryption_algorithm="SYMMETRIC_DEFAULT",
    )
    assert kms.requests[-1] == service_pb2.ReEncryptRequest(
        ciphertext_blob=blob,
        source_encryption_context={"from": "a"},
        source_encryption_algorithm=resources_pb2.SYMMETRIC_DEFAULT,
        destination_key_id=destination,
        destination_encryption_context={"to": "b"},
        destination_encryption_algorithm=resources_pb2.SYMMETRIC_DEFAULT,
    )
    assert (result.source_key_id, result.source_key_version) == (source, 1)
    assert (result.key_id, result.key_version) == (destination, 2)
    assert result.source_encryption_algorithm == "SYMMETRIC_DEFAULT"
    assert result.destination_encryption_algorithm == "SYMMETRIC_DEFAULT"
    assert client.decrypt(result.ciphertext_blob, {"to": "b"}, destination).plaintext == b"moved"


def test_re_encrypt_leaves_unset_options_unset(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    blob = client.encrypt(key_id, b"x").ciphertext_blob
    client.re_encrypt(blob, key_id)
    assert kms.requests[-1] == service_pb2.ReEncryptRequest(
        ciphertext_blob=blob, destination_key_id=key_id
    )


# --- data key pairs -----------------------------------------------------------------------------


def test_generate_data_key_pair(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    pair = client.generate_data_key_pair(key_id, "EC_P256", {"owner": "app"})
    assert kms.requests[-1] == service_pb2.GenerateDataKeyPairRequest(
        key_id=key_id, key_pair_spec=resources_pb2.EC_P256, encryption_context={"owner": "app"}
    )
    assert (pair.key_id, pair.key_version, pair.key_pair_spec) == (key_id, 1, "EC_P256")
    private_key = serialization.load_der_private_key(pair.private_key_plaintext, None)
    assert der_public_key(private_key) == pair.public_key
    decrypted = client.decrypt(pair.private_key_ciphertext_blob, {"owner": "app"})
    assert decrypted.plaintext == pair.private_key_plaintext


def test_a_data_key_pair_hides_its_private_key_from_repr(client: HsmClient) -> None:
    pair = client.generate_data_key_pair(client.create_key().key_id, "EC_P256")
    assert "private_key_plaintext" not in repr(pair)
    assert repr(pair.private_key_plaintext) not in repr(pair)
    assert repr(pair.public_key) in repr(pair)


def test_generate_data_key_pair_without_plaintext(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    pair = client.generate_data_key_pair_without_plaintext(key_id, "RSA_2048")
    assert kms.requests[-1].key_pair_spec == resources_pb2.RSA_2048
    assert not hasattr(pair, "private_key_plaintext")
    pkcs8 = client.decrypt(pair.private_key_ciphertext_blob).plaintext
    assert der_public_key(serialization.load_der_private_key(pkcs8, None)) == pair.public_key
    assert pair.key_pair_spec == "RSA_2048"


# --- signatures and public keys -----------------------------------------------------------------


@pytest.fixture
def signing_key(client: HsmClient) -> str:
    return client.create_key("EC_P256", "SIGN_VERIFY").key_id


def test_sign_and_verify(client: HsmClient, kms: FakeKms, signing_key: str) -> None:
    signed = client.sign(signing_key, b"message", "ECDSA_SHA_256")
    assert kms.requests[-1] == service_pb2.SignRequest(
        key_id=signing_key,
        message=b"message",
        message_type=resources_pb2.RAW,
        signing_algorithm=resources_pb2.ECDSA_SHA_256,
    )
    assert (signed.key_id, signed.key_version, signed.signing_algorithm) == (
        signing_key,
        1,
        "ECDSA_SHA_256",
    )
    verified = client.verify(signing_key, b"message", signed.signature, "ECDSA_SHA_256")
    assert kms.requests[-1].signature == signed.signature
    assert verified.signature_valid is True
    assert (verified.key_id, verified.signing_algorithm) == (signing_key, "ECDSA_SHA_256")


def test_a_bad_signature_is_an_answer_not_an_error(client: HsmClient, signing_key: str) -> None:
    signature = client.sign(signing_key, b"message", "ECDSA_SHA_256").signature
    result = client.verify(signing_key, b"another message", signature, "ECDSA_SHA_256")
    assert result.signature_valid is False
    assert (result.key_id, result.key_version) == (signing_key, 1)


def test_a_digest_is_signed_as_a_digest(client: HsmClient, kms: FakeKms, signing_key: str) -> None:
    digest = hashlib.sha256(b"message").digest()
    signature = client.sign(signing_key, digest, "ECDSA_SHA_256", message_type="DIGEST").signature
    assert kms.requests[-1].message_type == resources_pb2.DIGEST
    assert client.verify(signing_key, b"message", signature, "ECDSA_SHA_256").signature_valid
    result = client.verify(signing_key, digest, signature, "ECDSA_SHA_256", "DIGEST")
    assert result.signature_valid


def test_get_public_key_and_its_pem(client: HsmClient, kms: FakeKms, signing_key: str) -> None:
    key = client.get_public_key(signing_key)
    assert kms.requests[-1] == service_pb2.GetPublicKeyRequest(key_id=signing_key)
    assert key.public_key == der_public_key(kms.signing_keys[signing_key])
    assert (key.key_spec, key.key_usage, key.key_version) == ("EC_P256", "SIGN_VERIFY", 1)
    assert (key.encryption_algorithms, key.signing_algorithms) == ((), ("ECDSA_SHA_256",))
    pem = key.pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith(b"-----END PUBLIC KEY-----\n")
    public_key = serialization.load_pem_public_key(pem)
    assert public_key == kms.signing_keys[signing_key].public_key()
    signature = client.sign(signing_key, b"m", "ECDSA_SHA_256").signature
    public_key.verify(signature, b"m", ec.ECDSA(hashes.SHA256()))


def test_pem_of_a_key_that_is_not_der_fails() -> None:
    key = PublicKey(b"not DER", "k", 1, "EC_P256", "SIGN_VERIFY", (), ())
    with pytest.raises(ValueError):
        key.pem()


# --- MACs and capabilities ----------------------------------------------------------------------


def test_generate_and_verify_mac(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key("HMAC_256", "GENERATE_VERIFY_MAC").key_id
    result = client.generate_mac(key_id, b"message", "HMAC_SHA_256")
    assert kms.requests[-1] == service_pb2.GenerateMacRequest(
        key_id=key_id, message=b"message", mac_algorithm=resources_pb2.HMAC_SHA_256
    )
    assert result.mac == hmac.digest(kms.secret_keys[key_id], b"message", hashlib.sha256)
    assert (result.key_id, result.key_version, result.mac_algorithm) == (
        key_id,
        1,
        "HMAC_SHA_256",
    )
    verified = client.verify_mac(key_id, b"message", result.mac, "HMAC_SHA_256")
    assert kms.requests[-1].mac == result.mac
    assert (verified.mac_valid, verified.mac_algorithm) == (True, "HMAC_SHA_256")
    wrong = client.verify_mac(key_id, b"message", bytes(32), "HMAC_SHA_256")
    assert (wrong.mac_valid, wrong.key_id) == (False, key_id)


def test_get_capabilities(client: HsmClient, kms: FakeKms) -> None:
    capabilities = client.get_capabilities()
    assert kms.requests == [service_pb2.GetCapabilitiesRequest()]
    assert capabilities.key_specs == ("AES_256", "EC_P256", "HMAC_256")
    assert capabilities.encryption_algorithms == ("SYMMETRIC_DEFAULT",)
    assert capabilities.signing_algorithms == ("ECDSA_SHA_256", "99")
    assert capabilities.mac_algorithms == ("HMAC_SHA_256",)
    assert capabilities.notes == (
        "RSAES_OAEP_SHA_256: the token lacks CKM_RSA_PKCS_OAEP with SHA-256",
    )


@pytest.mark.parametrize(
    ("method", "arguments"),
    [
        ("encrypt", ("k", b"x", None, "RSAES_OAEP_SHA_999")),
        ("decrypt", (b"blob", None, "k", "SIGNING")),
        ("re_encrypt", (b"blob", "k", None, None, None, None, "AES_GCM")),
        ("generate_data_key_pair", ("k", "EC_P192")),
        ("generate_data_key_pair_without_plaintext", ("k", "rsa_2048")),
        ("sign", ("k", b"m", "ECDSA_SHA_1")),
        ("sign", ("k", b"m", "ECDSA_SHA_256", "HASHED")),
        ("verify", ("k", b"m", b"s", "ED25519")),
        ("verify", ("k", b"m", b"s", "ECDSA_SHA_256", "MESSAGE_TYPE_UNSPECIFIED")),
        ("generate_mac", ("k", b"m", "HMAC_SHA_1")),
        ("verify_mac", ("k", b"m", b"mac", "HMAC_MD5")),
        # 0 would reach the daemon as "the default"; a bare string would go as its characters.
        ("schedule_key_deletion", ("k", 0)),
        ("schedule_key_deletion", ("k", -7)),
        ("enable_key_rotation", ("k", 0)),
        ("untag_key", ("k", "env")),
        ("put_key_policy", ("k", KeyPolicy("alice"))),
        ("put_key_policy", ("k", KeyPolicy(("alice",), "bob"))),
        ("create_key", ("AES_256", None, "", KeyPolicy("alice"))),
        ("create_key", ("AES_256", None, "", None, None, False, "AWS_CLOUDHSM")),
        ("unwrap_key", (b"blob", "w", "", KeyPolicy("alice"))),
        # The client's names are AWS's; the proto's WRAP_ prefix is the client's business.
        ("get_parameters_for_import", ("k", "WRAP_RSAES_OAEP_SHA_1")),
        ("get_parameters_for_import", ("k", "RSAES_OAEP_SHA_1", "AES_256")),
        ("get_parameters_for_import", ("k", "RSAES_OAEP_SHA_1", "RSA_1024")),
        ("import_key_material", ("k", b"token", b"material", datetime(2030, 1, 1))),
    ],
)
def test_arguments_the_daemon_would_misread_fail_before_any_call(
    client: HsmClient, kms: FakeKms, method: str, arguments: tuple
) -> None:
    with pytest.raises(ValueError, match=r"expected one of|must be"):
        getattr(client, method)(*arguments)
    assert kms.requests == []


# --- errors and timeouts ------------------------------------------------------------------------


def test_a_refusal_becomes_its_error_class(client: HsmClient) -> None:
    with pytest.raises(NotFoundError, match="key nope not found") as raised:
        client.describe_key("nope")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_each_call_has_the_constructors_timeout(endpoint: str, kms: FakeKms) -> None:
    with HsmClient(grpc.insecure_channel(endpoint), timeout=0.2) as client:
        key_id = client.create_key().key_id
        kms.delay = 1.0
        with pytest.raises(DeadlineExceededError):
            client.describe_key(key_id)


def test_close_closes_the_channel(endpoint: str) -> None:
    with HsmClient(grpc.insecure_channel(endpoint)) as client:
        client.generate_random(1)
    with pytest.raises(ValueError, match="closed channel"):
        client.generate_random(1)


def test_admin_client(endpoint: str) -> None:
    with AdminClient(grpc.insecure_channel(endpoint)) as admin:
        tenant = admin.create_tenant("acme")
        assert (tenant.name, tenant.token_label, tenant.token_serial) == (
            "acme",
            "hsmd-acme",
            "0123456789abcdef",
        )
        assert tenant.creation_time == CREATED
        assert tenant.admin_principals == ("admin",)
        assert admin.list_tenants() == [tenant]
        with pytest.raises(PermissionDeniedError, match="operators only"):
            admin.create_tenant("forbidden")


# --- key lifecycle ------------------------------------------------------------------------------


def test_disable_and_enable_key(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    disabled = client.disable_key(key_id)
    assert kms.requests[-1] == service_pb2.DisableKeyRequest(key_id=key_id)
    assert (disabled.key_id, disabled.key_state) == (key_id, "DISABLED")
    enabled = client.enable_key(key_id)
    assert kms.requests[-1] == service_pb2.EnableKeyRequest(key_id=key_id)
    assert enabled.key_state == "ENABLED"


def test_a_key_not_pending_deletion_has_no_deletion_date(client: HsmClient) -> None:
    assert client.create_key().deletion_date is None


def test_schedule_and_cancel_key_deletion(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    scheduled = client.schedule_key_deletion(key_id, pending_window_in_days=7)
    assert kms.requests[-1] == service_pb2.ScheduleKeyDeletionRequest(
        key_id=key_id, pending_window_in_days=7
    )
    assert scheduled.key_state == "PENDING_DELETION"
    assert scheduled.deletion_date == NOW + timedelta(days=7)
    assert scheduled.deletion_date.tzinfo is not None
    assert client.describe_key(key_id).deletion_date == scheduled.deletion_date
    cancelled = client.cancel_key_deletion(key_id)
    assert kms.requests[-1] == service_pb2.CancelKeyDeletionRequest(key_id=key_id)
    assert (cancelled.key_state, cancelled.deletion_date) == ("DISABLED", None)
    with pytest.raises(FailedPreconditionError, match="not pending deletion"):
        client.cancel_key_deletion(key_id)


def test_schedule_key_deletion_leaves_the_window_to_the_daemon(
    client: HsmClient, kms: FakeKms
) -> None:
    key_id = client.create_key().key_id
    scheduled = client.schedule_key_deletion(key_id)
    assert kms.requests[-1].pending_window_in_days == 0
    assert scheduled.deletion_date == NOW + timedelta(days=30)


def test_update_key_description(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key(description="old").key_id
    assert client.update_key_description(key_id, "new").description == "new"
    assert kms.requests[-1] == service_pb2.UpdateKeyDescriptionRequest(
        key_id=key_id, description="new"
    )
    assert client.update_key_description(key_id, "").description == ""


def test_every_key_id_argument_takes_an_alias_as_it_is(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    client.create_alias("alias/payroll", key_id)
    for call in (
        client.describe_key,
        client.disable_key,
        client.enable_key,
        client.get_key_policy,
        client.get_key_rotation_status,
        client.rotate_key_on_demand,
        client.list_key_rotations,
        client.delete_imported_key_material,
    ):
        call("alias/payroll")
        assert kms.requests[-1].key_id == "alias/payroll"
    assert client.schedule_key_deletion("alias/payroll").key_id == key_id


# --- tags and policies --------------------------------------------------------------------------


def test_tags_are_a_read_only_mapping(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key(tags={"env": "prod", "team": "pay"})
    assert kms.requests[-1].tags == {"env": "prod", "team": "pay"}
    assert key.tags == {"env": "prod", "team": "pay"}
    assert key.tags["env"] == "prod"
    with pytest.raises(TypeError):
        key.tags["env"] = "dev"  # type: ignore[index]
    assert client.create_key().tags == {}


def test_tag_and_untag_key(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key(tags={"env": "dev", "team": "pay"}).key_id
    tagged = client.tag_key(key_id, {"env": "prod", "cost": "42"})
    assert kms.requests[-1] == service_pb2.TagKeyRequest(
        key_id=key_id, tags={"env": "prod", "cost": "42"}
    )
    assert tagged.tags == {"env": "prod", "team": "pay", "cost": "42"}
    untagged = client.untag_key(key_id, ["team", "absent"])
    assert kms.requests[-1] == service_pb2.UntagKeyRequest(
        key_id=key_id, tag_keys=["team", "absent"]
    )
    assert untagged.tags == {"env": "prod", "cost": "42"}
    assert client.untag_key(key_id, iter(("env",))).tags == {"cost": "42"}


def test_list_keys_by_tag(client: HsmClient, kms: FakeKms) -> None:
    prod = [client.create_key(tags={"env": "prod", "n": str(n)}).key_id for n in range(3)]
    client.create_key(tags={"env": "dev"})
    keys, token = client.list_keys(tag_filter={"env": "prod"})
    assert kms.requests[-1] == service_pb2.ListKeysRequest(tag_filter={"env": "prod"})
    assert ([key.key_id for key in keys], token) == (prod, "")
    found = client.iter_keys(page_size=2, tag_filter={"env": "prod"})
    assert [key.key_id for key in found] == prod
    assert kms.requests[-1].tag_filter == {"env": "prod"}  # on the last page too
    (only,) = client.iter_keys(tag_filter={"env": "prod", "n": "1"})
    assert only.key_id == prod[1]


def test_create_key_with_a_policy(client: HsmClient, kms: FakeKms) -> None:
    policy = KeyPolicy(("alice", "ops-*"), ("app",))
    key_id = client.create_key(policy=policy).key_id
    assert kms.requests[-1].policy == resources_pb2.KeyPolicy(
        administrators=["alice", "ops-*"], users=["app"]
    )
    assert client.get_key_policy(key_id) == policy
    client.create_key()
    assert not kms.requests[-1].HasField("policy")  # the daemon's default, not an empty one


def test_get_and_put_key_policy(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    assert client.get_key_policy(key_id) == KeyPolicy(("admin", "app"), ("app",))
    assert kms.requests[-1] == service_pb2.GetKeyPolicyRequest(key_id=key_id)
    put = client.put_key_policy(key_id, KeyPolicy(["admin"]))  # type: ignore[arg-type]
    assert kms.requests[-1] == service_pb2.PutKeyPolicyRequest(
        key_id=key_id, policy=resources_pb2.KeyPolicy(administrators=["admin"])
    )
    assert put == KeyPolicy(("admin",), ())
    assert client.get_key_policy(key_id) == put
    with pytest.raises(InvalidArgumentError, match="needs an administrator"):
        client.put_key_policy(key_id, KeyPolicy((), ("app",)))


# --- rotation -----------------------------------------------------------------------------------


def test_key_rotation_status(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    status = client.get_key_rotation_status(key_id)
    assert kms.requests[-1] == service_pb2.GetKeyRotationStatusRequest(key_id=key_id)
    assert (status.key_id, status.key_rotation_enabled, status.rotation_period_in_days) == (
        key_id,
        False,
        0,
    )
    assert (status.next_rotation_date, status.on_demand_rotation_start_date) == (None, None)

    enabled = client.enable_key_rotation(key_id)
    assert kms.requests[-1] == service_pb2.EnableKeyRotationRequest(key_id=key_id)
    assert (enabled.key_rotation_enabled, enabled.rotation_period_in_days) == (True, 365)
    assert enabled.next_rotation_date == NOW + timedelta(days=365)
    assert enabled.on_demand_rotation_start_date is None

    enabled = client.enable_key_rotation(key_id, rotation_period_in_days=90)
    assert kms.requests[-1].rotation_period_in_days == 90
    assert enabled.next_rotation_date == NOW + timedelta(days=90)
    assert client.get_key_rotation_status(key_id) == enabled

    disabled = client.disable_key_rotation(key_id)
    assert kms.requests[-1] == service_pb2.DisableKeyRotationRequest(key_id=key_id)
    assert (disabled.key_rotation_enabled, disabled.next_rotation_date) == (False, None)


def test_rotate_key_on_demand_and_list_rotations(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key().key_id
    results = [client.rotate_key_on_demand(key_id) for _ in range(3)]
    assert kms.requests[-1] == service_pb2.RotateKeyOnDemandRequest(key_id=key_id)
    assert [(r.key_id, r.key_version) for r in results] == [(key_id, v) for v in (2, 3, 4)]
    started = client.get_key_rotation_status(key_id).on_demand_rotation_start_date
    assert started == NOW
    rotations, token = client.list_key_rotations(key_id, page_size=2)
    assert kms.requests[-1] == service_pb2.ListKeyRotationsRequest(key_id=key_id, page_size=2)
    assert token == "2"
    assert rotations[0] == KeyRotation(key_id, 2, NOW, "ON_DEMAND")
    every = list(client.iter_key_rotations(key_id, page_size=2))
    assert [rotation.key_version for rotation in every] == [2, 3, 4]
    assert kms.requests[-1].page_token == "2"


# --- aliases ------------------------------------------------------------------------------------


def test_create_update_and_delete_an_alias(client: HsmClient, kms: FakeKms) -> None:
    first, second = client.create_key().key_id, client.create_key().key_id
    alias = client.create_alias("alias/payroll", first)
    assert kms.requests[-1] == service_pb2.CreateAliasRequest(
        alias_name="alias/payroll", target_key_id=first
    )
    assert alias == Alias("alias/payroll", first, CREATED, NOW)
    with pytest.raises(AlreadyExistsError):
        client.create_alias("alias/payroll", second)
    assert client.describe_key("alias/payroll").key_id == first

    updated = client.update_alias("alias/payroll", second)
    assert kms.requests[-1] == service_pb2.UpdateAliasRequest(
        alias_name="alias/payroll", target_key_id=second
    )
    assert (updated.target_key_id, updated.creation_time) == (second, CREATED)
    assert client.describe_key("alias/payroll").key_id == second

    assert client.delete_alias("alias/payroll") is None
    assert kms.requests[-1] == service_pb2.DeleteAliasRequest(alias_name="alias/payroll")
    with pytest.raises(NotFoundError):
        client.describe_key("alias/payroll")


def test_list_aliases(client: HsmClient, kms: FakeKms) -> None:
    first, second = client.create_key().key_id, client.create_key().key_id
    for n in range(3):
        client.create_alias(f"alias/first-{n}", first)
    client.create_alias("alias/second", second)
    aliases, token = client.list_aliases()
    assert kms.requests[-1] == service_pb2.ListAliasesRequest()
    assert (len(aliases), token) == (4, "")
    mine, token = client.list_aliases(first, page_size=2)
    assert kms.requests[-1] == service_pb2.ListAliasesRequest(key_id=first, page_size=2)
    assert ([alias.alias_name for alias in mine], token) == (
        ["alias/first-0", "alias/first-1"],
        "2",
    )
    names = [alias.alias_name for alias in client.iter_aliases(first, page_size=2)]
    assert names == ["alias/first-0", "alias/first-1", "alias/first-2"]
    assert [alias.target_key_id for alias in client.iter_aliases("alias/second")] == [second]


# --- audit --------------------------------------------------------------------------------------


def test_list_audit_events_gives_every_field(client: HsmClient, kms: FakeKms) -> None:
    events, token = client.list_audit_events(page_size=1)
    assert kms.requests[-1] == service_pb2.ListAuditEventsRequest(page_size=1)
    assert token == "1"
    assert events == [
        AuditEvent(
            sequence=1,
            time=NOW + timedelta(seconds=1),
            request_id="req-1",
            tenant="acme",
            principal="tenant/acme/app",
            operation="Encrypt",
            key_id="key-1",
            key_version=2,
            encryption_context_keys=("app", "file"),
            outcome="OK",
            peer="ipv4:127.0.0.1:5000",
            previous_hash=f"{0:064x}",
            hash=f"{1:064x}",
            regions=(),
        )
    ]


def test_iter_audit_events_of_a_key(client: HsmClient, kms: FakeKms) -> None:
    events = list(client.iter_audit_events(page_size=1, key_id="key-0"))
    assert [event.sequence for event in events] == [2, 4]
    assert kms.requests[-1] == service_pb2.ListAuditEventsRequest(
        page_size=1, page_token="1", key_id="key-0"
    )


@pytest.fixture
def admin(endpoint: str) -> Iterator[AdminClient]:
    with AdminClient(grpc.insecure_channel(endpoint), timeout=5) as admin:
        yield admin


def test_create_tenant_with_admin_principals(admin: AdminClient, admin_fake: FakeAdmin) -> None:
    tenant = admin.create_tenant("acme", admin_principals=["alice", "ops-*"])
    assert without_token(admin_fake.requests[-1]) == admin_pb2.CreateTenantRequest(
        name="acme", admin_principals=["alice", "ops-*"]
    )
    assert tenant.admin_principals == ("alice", "ops-*")
    admin.create_tenant("beta")
    assert without_token(admin_fake.requests[-1]) == admin_pb2.CreateTenantRequest(name="beta")
    with pytest.raises(ValueError, match="must be a list"):
        admin.create_tenant("gamma", admin_principals="alice")


def test_admin_lists_every_tenants_audit_events(admin: AdminClient, admin_fake: FakeAdmin) -> None:
    events, token = admin.list_audit_events()
    assert admin_fake.requests[-1] == service_pb2.ListAuditEventsRequest()
    assert ({event.tenant for event in events}, token) == ({"acme", "beta"}, "")
    beta = list(admin.iter_audit_events(page_size=1, tenant="beta"))
    assert admin_fake.requests[-1] == service_pb2.ListAuditEventsRequest(
        page_size=1, page_token="1", tenant="beta"
    )
    assert [event.sequence for event in beta] == [2, 4]
    events, _ = admin.list_audit_events(key_id="key-1", tenant="acme")
    assert admin_fake.requests[-1] == service_pb2.ListAuditEventsRequest(
        key_id="key-1", tenant="acme"
    )
    assert [event.sequence for event in events] == [1]


def test_verify_audit_log(admin: AdminClient, admin_fake: FakeAdmin) -> None:
    assert admin.verify_audit_log() == AuditVerification(True, 5, 0, "")
    assert admin_fake.requests[-1] == admin_pb2.VerifyAuditLogRequest()
    admin_fake.verification = admin_pb2.VerifyAuditLogResponse(
        valid=False, events_checked=3, first_broken_position=3, problem="previous_hash differs"
    )
    assert admin.verify_audit_log() == AuditVerification(False, 3, 3, "previous_hash differs")


def test_verify_audit_log_reports_checkpoints_and_time_reversals(
    admin: AdminClient, admin_fake: FakeAdmin
) -> None:
    admin_fake.verification = admin_pb2.VerifyAuditLogResponse(
        valid=True,
        events_checked=9,
        checkpoints_verified=2,
        last_checkpoint_position=8,
        last_checkpoint_time=timestamp(NOW),
        last_checkpoint_head=7,
        checkpoint_file_position=8,
        time_reversals=[
            admin_pb2.TimeReversal(
                position=5,
                time=timestamp(NOW),
                previous_position=4,
                previous_time=timestamp(NOW + timedelta(hours=1)),
            )
        ],
        time_reversal_count=1,
        previous_log="audit.jsonl.archived-20240701T120000Z",
        previous_log_position=41,
        previous_log_hash="ab" * 32,
    )
    assert admin.verify_audit_log() == AuditVerification(
        True,
        9,
        0,
        "",
        checkpoints_verified=2,
        last_checkpoint_position=8,
        last_checkpoint_time=NOW,
        last_checkpoint_head=7,
        checkpoint_file_position=8,
        time_reversals=(TimeReversal(5, NOW, 4, NOW + timedelta(hours=1)),),
        time_reversal_count=1,
        previous_log="audit.jsonl.archived-20240701T120000Z",
        previous_log_position=41,
        previous_log_hash="ab" * 32,
    )


# --- wrapping and import -----------------------------------------------------------------------


def test_create_key_for_import_or_export(client: HsmClient, kms: FakeKms) -> None:
    key = client.create_key("HMAC_256", description="byok", origin="EXTERNAL")
    assert without_token(kms.requests[-1]) == service_pb2.CreateKeyRequest(
        key_spec=resources_pb2.HMAC_256, description="byok", origin=resources_pb2.EXTERNAL
    )
    assert (key.origin, key.key_state, key.exportable) == ("EXTERNAL", "PENDING_IMPORT", False)
    key = client.create_key(exportable=True)
    assert kms.requests[-1].exportable is True
    assert (key.origin, key.exportable) == ("GENERATED", True)
    assert client.describe_key(key.key_id).exportable is True


@pytest.mark.parametrize("algorithm", keyimport.WRAPPING_ALGORITHMS)
def test_get_parameters_for_import(client: HsmClient, kms: FakeKms, algorithm: str) -> None:
    key_id = client.create_key(origin="EXTERNAL").key_id
    parameters = client.get_parameters_for_import(key_id, algorithm, "RSA_3072")
    assert kms.requests[-1] == service_pb2.GetParametersForImportRequest(
        key_id=key_id,
        wrapping_algorithm=resources_pb2.WrappingAlgorithm.Value(f"WRAP_{algorithm}"),
        wrapping_key_spec=resources_pb2.RSA_3072,
    )
    (token,) = kms.imports
    assert parameters == ImportParameters(
        key_id, token, spki(rsa_key(3072)), NOW + timedelta(hours=24)
    )
    client.get_parameters_for_import(key_id, algorithm)
    assert kms.requests[-1].wrapping_key_spec == resources_pb2.RSA_2048


def test_import_key_brings_a_known_hmac_key(client: HsmClient, kms: FakeKms) -> None:
    known = bytes(range(100, 132))
    key_id = client.create_key("HMAC_256", origin="EXTERNAL").key_id
    key = client.import_key(key_id, known, "HMAC_256")
    get_parameters, import_material = kms.requests[-2:]
    assert get_parameters == service_pb2.GetParametersForImportRequest(
        key_id=key_id,
        wrapping_algorithm=resources_pb2.WRAP_RSAES_OAEP_SHA_1,
        wrapping_key_spec=resources_pb2.RSA_2048,
    )
    assert len(import_material.encrypted_key_material) == 256  # one RSA-2048 OAEP block
    assert not import_material.HasField("valid_to")
    assert import_material.public_key == b""
    assert (key.key_id, key.key_state, key.valid_to) == (key_id, "ENABLED", None)
    mac = client.generate_mac(key_id, b"message", "HMAC_SHA_256").mac
    assert mac == hmac.digest(known, b"message", hashlib.sha256)


def test_import_key_brings_a_known_ec_private_key_from_a_pem_file(
    client: HsmClient, kms: FakeKms, tmp_path
) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    valid_to = datetime(2030, 1, 31, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    key_id = client.create_key("EC_P256", origin="EXTERNAL").key_id
    key = client.import_key(key_id, tmp_path / "key.pem", "EC_P256", valid_to=valid_to)
    assert kms.requests[-2].wrapping_algorithm == resources_pb2.WRAP_RSA_AES_KEY_WRAP_SHA_1
    assert kms.requests[-1].public_key == der_public_key(private_key)
    assert kms.requests[-1].valid_to == timestamp(datetime(2030, 1, 31, 12, 0, tzinfo=UTC))
    assert key.valid_to == valid_to
    signature = client.sign(key_id, b"message", "ECDSA_SHA_256").signature
    private_key.public_key().verify(signature, b"message", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("algorithm", keyimport.WRAPPING_ALGORITHMS)
def test_import_key_wraps_as_asked(client: HsmClient, kms: FakeKms, algorithm: str) -> None:
    known = os.urandom(32)
    key_id = client.create_key(origin="EXTERNAL").key_id
    client.import_key(key_id, known, "AES_256", wrapping_algorithm=algorithm)
    wrapping_algorithm = resources_pb2.WrappingAlgorithm.Value(f"WRAP_{algorithm}")
    assert kms.requests[-2].wrapping_algorithm == wrapping_algorithm
    assert kms.secret_keys[key_id] == known


def test_import_key_imports_into_the_key_the_parameters_name(
    client: HsmClient, kms: FakeKms
) -> None:
    key_id = client.create_key(origin="EXTERNAL").key_id
    client.create_alias("alias/byok", key_id)
    client.import_key("alias/byok", MATERIAL, "AES_256")
    assert [kms.requests[-2].key_id, kms.requests[-1].key_id] == ["alias/byok", key_id]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((bytes(31), "AES_256"), "holds exactly 32 raw bytes"),
        ((MATERIAL, "ED25519"), "cannot be imported"),
        ((MATERIAL, "AES_256", "RSAES_PKCS1_V1_5"), "expected one of"),
        ((MATERIAL, "AES_256", None, datetime(2030, 1, 1)), "must be an aware datetime"),
    ],
)
def test_import_key_refuses_before_any_call(
    client: HsmClient, kms: FakeKms, arguments: tuple, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        client.import_key("k", *arguments)
    assert kms.requests == []


def test_import_and_delete_key_material(client: HsmClient, kms: FakeKms) -> None:
    key_id = client.create_key(origin="EXTERNAL").key_id
    parameters = client.get_parameters_for_import(key_id, "RSA_AES_KEY_WRAP_SHA_256")
    material = keyimport.wrap_for_import(
        MATERIAL, parameters.public_key, "RSA_AES_KEY_WRAP_SHA_256"
    )
    valid_to = NOW + timedelta(days=365)
    key = client.import_key_material(key_id, parameters.import_token, material, valid_to)
    assert kms.requests[-1] == service_pb2.ImportKeyMaterialRequest(
        key_id=key_id,
        import_token=parameters.import_token,
        encrypted_key_material=material,
        valid_to=timestamp(valid_to),
    )
    assert (key.key_state, key.valid_to) == ("ENABLED", valid_to)
    assert kms.secret_keys[key_id] == MATERIAL
    deleted = client.delete_imported_key_material(key_id)
    assert kms.requests[-1] == service_pb2.DeleteImportedKeyMaterialRequest(key_id=key_id)
    assert (deleted.key_state, deleted.valid_to) == ("PENDING_IMPORT", None)


def test_import_key_material_passes_the_public_key(client: HsmClient, kms: FakeKms) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    material, public_key = keyimport.material_from_key_file(
        private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "EC_P256",
    )
    key_id = client.create_key("EC_P256", origin="EXTERNAL").key_id
    parameters = client.get_parameters_for_import(key_id, "RSA_AES_KEY_WRAP_SHA_1")
    wrapped = keyimport.wrap_for_import(material, parameters.public_key, "RSA_AES_KEY_WRAP_SHA_1")
    client.import_key_material(key_id, parameters.import_token, wrapped, public_key=public_key)
    assert kms.requests[-1].public_key == der_public_key(private_key)
    assert kms.signing_keys[key_id].private_numbers() == private_key.private_numbers()


def test_wrap_key_and_unwrap_key(client: HsmClient, kms: FakeKms) -> None:
    wrapping_key_id = client.create_key("AES_256", "WRAP_UNWRAP").key_id
    original = client.create_key("HMAC_256", exportable=True)
    wrapped = client.wrap_key(original.key_id, wrapping_key_id)
    assert kms.requests[-1] == service_pb2.WrapKeyRequest(
        key_id=original.key_id, wrapping_key_id=wrapping_key_id
    )
    assert wrapped == WrappedKey(wrapped.wrapped_key, original.key_id, 1, wrapping_key_id)
    copy = client.unwrap_key(
        wrapped.wrapped_key,
        wrapping_key_id,
        "copy",
        KeyPolicy(("admin",), ("app",)),
        {"env": "dr"},
        exportable=True,
    )
    assert without_token(kms.requests[-1]) == service_pb2.UnwrapKeyRequest(
        wrapped_key=wrapped.wrapped_key,
        wrapping_key_id=wrapping_key_id,
        description="copy",
        policy=resources_pb2.KeyPolicy(administrators=["admin"], users=["app"]),
        tags={"env": "dr"},
        exportable=True,
    )
    assert copy.key_id != original.key_id
    assert (copy.key_spec, copy.key_usage) == ("HMAC_256", "GENERATE_VERIFY_MAC")
    assert (copy.origin, copy.exportable, copy.description) == ("UNWRAPPED", True, "copy")
    macs = {
        client.generate_mac(k, b"m", "HMAC_SHA_256").mac for k in (original.key_id, copy.key_id)
    }
    assert len(macs) == 1  # one material
    plain = client.unwrap_key(wrapped.wrapped_key, wrapping_key_id)
    assert without_token(kms.requests[-1]) == service_pb2.UnwrapKeyRequest(
        wrapped_key=wrapped.wrapped_key, wrapping_key_id=wrapping_key_id
    )  # no policy: the daemon's default, not an empty one
    assert plain.exportable is False


def test_a_key_that_is_not_exportable_is_not_wrapped(client: HsmClient) -> None:
    wrapping_key_id = client.create_key("AES_256", "WRAP_UNWRAP").key_id
    with pytest.raises(FailedPreconditionError, match="not exportable"):
        client.wrap_key(client.create_key().key_id, wrapping_key_id)
    with pytest.raises(InvalidArgumentError, match="wrapped key is invalid"):
        client.unwrap_key(b"hwk1\x01\x01\x01" + bytes(40), wrapping_key_id)


# --- mutual TLS, and the CLI over it ------------------------------------------------------------


@pytest.fixture
def tls(tmp_path, kms: FakeKms, admin_fake: FakeAdmin) -> Iterator[dict[str, str]]:
    """A fake daemon behind mTLS whose certificate names only hsmd.test; the HSM_* variables."""
    ca = devpki.create_ca("test CA", datetime.now(UTC))
    server = devpki.issue(ca, "hsmd.test", hosts=["hsmd.test"], server=True)
    client = devpki.issue(ca, "app", uris=["spiffe://hsmd.test/tenant/acme/app"])
    client.write(tmp_path / "client.pem", tmp_path / "client-key.pem")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    credentials = grpc.ssl_server_credentials(
        [(server.key_pem(), server.cert_pem())],
        root_certificates=ca.cert_pem(),
        require_client_auth=True,
    )
    grpc_server = _server(kms, admin_fake)
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    yield {
        "HSM_ENDPOINT": f"127.0.0.1:{port}",
        "HSM_CA_CERT": str(tmp_path / "ca.pem"),
        "HSM_CLIENT_CERT": str(tmp_path / "client.pem"),
        "HSM_CLIENT_KEY": str(tmp_path / "client-key.pem"),
        "HSM_SERVER_NAME": "hsmd.test",
    }
    grpc_server.stop(None)


def test_connect_over_mutual_tls(tls: dict[str, str]) -> None:
    pem = {name: Path(path).read_bytes() for name, path in tls.items() if path.endswith(".pem")}
    with HsmClient.connect(
        tls["HSM_ENDPOINT"],
        ca_cert=pem["HSM_CA_CERT"],
        client_cert=pem["HSM_CLIENT_CERT"],
        client_key=pem["HSM_CLIENT_KEY"],
        server_name="hsmd.test",
    ) as client:
        assert len(client.generate_random(8)) == 8


def test_from_env_connects(tls: dict[str, str]) -> None:
    with AdminClient.from_env(tls) as admin:
        assert admin.list_tenants() == []


@pytest.mark.usefixtures("no_pauses")  # UNAVAILABLE is retried
def test_a_server_name_the_certificate_lacks_fails_the_handshake(tls: dict[str, str]) -> None:
    with HsmClient.from_env({**tls, "HSM_SERVER_NAME": "other.test"}, timeout=5) as client:
        with pytest.raises(UnavailableError):
            client.generate_random(8)


@pytest.fixture
def hsm(tls: dict[str, str], monkeypatch, capsys) -> Callable[..., str]:
    """`hsm` against the fake daemon over mTLS: checks that it succeeds, returns its output."""
    for name, value in tls.items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> str:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        return out

    return run


def test_cli_end_to_end(hsm: Callable[..., str], tmp_path) -> None:
    key_id = hsm("create-key", "--query", "KeyMetadata.KeyId", "--output", "text").strip()
    (tmp_path / "secret").write_bytes(b"\x00secret\xff")
    encrypted = json.loads(
        hsm("encrypt", "--key-id", key_id, "--plaintext", f"fileb://{tmp_path / 'secret'}")
    )
    assert encrypted["KeyId"] == key_id
    plaintext = hsm(
        "decrypt",
        "--ciphertext-blob",
        encrypted["CiphertextBlob"],
        "--output",
        "text",
        "--query",
        "Plaintext",
    )
    assert base64.b64decode(plaintext) == b"\x00secret\xff"
    listed = json.loads(hsm("list-keys"))
    assert listed == {"Keys": [{"KeyId": key_id, "KeyArn": f"tenants/acme/keys/{key_id}"}]}


def test_cli_signs_verifies_and_prints_pem_end_to_end(
    hsm: Callable[..., str], kms: FakeKms, capsys
) -> None:
    key_id = json.loads(hsm("create-key", "--key-spec", "EC_P256", "--key-usage", "SIGN_VERIFY"))[
        "KeyMetadata"
    ]["KeyId"]
    message = ["--key-id", key_id, "--message", base64.b64encode(b"hi").decode()]
    algorithm = ["--signing-algorithm", "ECDSA_SHA_256"]
    signature = json.loads(hsm("sign", *message, *algorithm))["Signature"]
    verified = json.loads(hsm("verify", *message, *algorithm, "--signature", signature))
    assert verified["SignatureValid"] is True
    forged = ["--signature", base64.b64encode(b"forged").decode()]
    assert cli.main(["verify", *message, *algorithm, *forged]) == cli.EXIT_SERVICE_ERROR
    assert "(KMSInvalidSignatureException)" in capsys.readouterr().err
    pem = hsm("get-public-key", "--key-id", key_id, "--output", "pem")
    public_key = serialization.load_pem_public_key(pem.encode())
    assert public_key == kms.signing_keys[key_id].public_key()
    public_key.verify(base64.b64decode(signature), b"hi", ec.ECDSA(hashes.SHA256()))


def test_cli_reports_a_refusal_with_254(tls: dict[str, str], monkeypatch, capsys) -> None:
    for name, value in tls.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["describe-key", "--key-id", "nope"]) == 254
    assert capsys.readouterr().err == (
        "An error occurred (NotFoundException) when calling the DescribeKey operation: "
        "key nope not found\n"
    )


@pytest.mark.usefixtures("no_pauses")  # UNAVAILABLE is retried
def test_cli_reports_an_unreachable_daemon_with_255(tls: dict[str, str], capsys) -> None:
    code = cli.main(
        [
            "--endpoint=127.0.0.1:1",
            f"--ca-cert={tls['HSM_CA_CERT']}",
            f"--cert={tls['HSM_CLIENT_CERT']}",
            f"--key={tls['HSM_CLIENT_KEY']}",
            "generate-random",
            "--number-of-bytes",
            "1",
        ]
    )
    assert code == 255
    assert (
        "(ServiceUnavailableException) when calling the GenerateRandom" in capsys.readouterr().err
    )


def test_cli_manages_a_key_end_to_end(hsm: Callable[..., str], kms: FakeKms) -> None:
    tags = ["--tags", "TagKey=env,TagValue=prod", '[{"TagKey": "team", "TagValue": "pay"}]']
    key_id = hsm("create-key", *tags, "--query", "KeyMetadata.KeyId", "--output", "text").strip()
    assert hsm("create-alias", "--alias-name", "alias/pay", "--target-key-id", key_id) == ""
    alias = ["--key-id", "alias/pay"]
    assert hsm("tag-resource", *alias, "--tags", "TagKey=cost,TagValue=1,2") == ""
    assert hsm("untag-resource", *alias, "--tag-keys", "team") == ""
    assert json.loads(hsm("list-resource-tags", *alias))["Tags"] == [
        {"TagKey": "cost", "TagValue": "1,2"},
        {"TagKey": "env", "TagValue": "prod"},
    ]
    listed = json.loads(hsm("list-keys", "--tag-filter", "env=prod"))
    assert [key["KeyId"] for key in listed["Keys"]] == [key_id]
    policy = json.loads(hsm("get-key-policy", *alias))["Policy"]
    assert hsm("put-key-policy", *alias, "--policy", policy, "--policy-name", "default") == ""
    assert kms.requests[-1].policy == resources_pb2.KeyPolicy(
        administrators=["admin", "app"], users=["app"]
    )
    assert json.loads(hsm("rotate-key-on-demand", *alias)) == {"KeyId": key_id, "KeyVersion": 2}
    scheduled = json.loads(hsm("schedule-key-deletion", *alias, "--pending-window-in-days", "7"))
    assert scheduled == {
        "KeyId": key_id,
        "DeletionDate": (NOW + timedelta(days=7)).isoformat(),
        "KeyState": "PendingDeletion",
        "PendingWindowInDays": 7,
    }
    metadata = json.loads(hsm("describe-key", *alias))["KeyMetadata"]
    assert (metadata["KeyState"], metadata["DeletionDate"]) == (
        "PendingDeletion",
        scheduled["DeletionDate"],
    )
    assert json.loads(hsm("cancel-key-deletion", *alias)) == {"KeyId": key_id}
    assert "DeletionDate" not in json.loads(hsm("describe-key", *alias))["KeyMetadata"]


def test_cli_audit_end_to_end(
    hsm: Callable[..., str], tls: dict[str, str], admin_fake: FakeAdmin, capsys
) -> None:
    events = json.loads(hsm("audit", "list", "--key-id", "key-1"))["Events"]
    assert [event["Sequence"] for event in events] == [1, 3, 5]  # the KMS fake's
    assert events[0]["Time"] == (NOW + timedelta(seconds=1)).isoformat()
    beta = json.loads(hsm("audit", "list", "--tenant", "beta"))["Events"]
    assert [(event["Sequence"], event["Tenant"]) for event in beta] == [(2, "beta"), (4, "beta")]
    assert json.loads(hsm("audit", "verify")) == {
        "Valid": True,
        "EventsChecked": 5,
        "FirstBrokenPosition": 0,
        "Problem": "",
        "CheckpointsVerified": 0,
        "LastCheckpointPosition": 0,
        "LastCheckpointHead": 0,
        "CheckpointFilePosition": 0,
        "TimeReversals": [],
        "TimeReversalCount": 0,
    }
    admin_fake.verification = admin_pb2.VerifyAuditLogResponse(
        valid=False, events_checked=2, first_broken_position=2, problem="hash differs"
    )
    assert cli.main(["audit", "verify", "--query", "Problem", "--output", "text"]) == 1
    assert capsys.readouterr() == ("hash differs\n", "")


def test_cli_imports_wraps_and_unwraps_end_to_end(
    hsm: Callable[..., str], kms: FakeKms, tmp_path
) -> None:
    known = os.urandom(32)
    (tmp_path / "hmac.key").write_bytes(known)
    create = ["create-key", "--query", "KeyMetadata.KeyId", "--output", "text"]
    key_id = hsm(*create, "--key-spec", "HMAC_256", "--origin", "EXTERNAL", "--exportable").strip()
    imported = json.loads(
        hsm(
            "import-key",
            "--key-id",
            key_id,
            "--key-file",
            str(tmp_path / "hmac.key"),
            "--valid-to",
            "2030-01-31T12:00:00Z",
        )
    )["KeyMetadata"]
    assert (imported["KeyState"], imported["Origin"], imported["Exportable"]) == (
        "Enabled",
        "EXTERNAL",
        True,
    )
    assert imported["ValidTo"] == "2030-01-31T12:00:00+00:00"
    assert kms.secret_keys[key_id] == known
    wrapping_key_id = hsm(*create, "--key-usage", "WRAP_UNWRAP").strip()
    wrapped = json.loads(hsm("wrap-key", "--key-id", key_id, "--wrapping-key-id", wrapping_key_id))
    assert (wrapped["KeyId"], wrapped["KeyVersion"], wrapped["WrappingKeyId"]) == (
        key_id,
        1,
        wrapping_key_id,
    )
    unwrap = ["unwrap-key", "--wrapped-key", wrapped["WrappedKey"]]
    copy = json.loads(hsm(*unwrap, "--wrapping-key-id", wrapping_key_id, "--description", "dr"))
    assert copy["KeyMetadata"]["Origin"] == "UNWRAPPED"
    assert copy["KeyMetadata"]["Exportable"] is False
    assert kms.secret_keys[copy["KeyMetadata"]["KeyId"]] == known


def test_cli_imports_key_material_as_aws_does(
    hsm: Callable[..., str], kms: FakeKms, tmp_path
) -> None:
    key_id = json.loads(hsm("create-key", "--origin", "EXTERNAL"))["KeyMetadata"]["KeyId"]
    parameters = json.loads(
        hsm(
            "get-parameters-for-import",
            "--key-id",
            key_id,
            "--wrapping-algorithm",
            "RSAES_OAEP_SHA_256",
            "--wrapping-key-spec",
            "RSA_3072",
        )
    )
    assert parameters["KeyId"] == key_id
    assert parameters["ParametersValidTo"] == (NOW + timedelta(hours=24)).isoformat()
    public_key = base64.b64decode(parameters["PublicKey"])
    (tmp_path / "token").write_bytes(base64.b64decode(parameters["ImportToken"]))
    (tmp_path / "material").write_bytes(
        keyimport.wrap_for_import(MATERIAL, public_key, "RSAES_OAEP_SHA_256")
    )
    imported = hsm(
        "import-key-material",
        "--key-id",
        key_id,
        "--import-token",
        f"fileb://{tmp_path / 'token'}",
        "--encrypted-key-material",
        f"fileb://{tmp_path / 'material'}",
        "--expiration-model",
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    assert json.loads(imported) == {"KeyId": key_id}
    assert kms.secret_keys[key_id] == MATERIAL
    deleted = hsm("delete-imported-key-material", "--key-id", key_id)
    assert json.loads(deleted) == {"KeyId": key_id}
    metadata = json.loads(hsm("describe-key", "--key-id", key_id))["KeyMetadata"]
    assert (metadata["KeyState"], metadata["Origin"]) == ("PendingImport", "EXTERNAL")
    assert "ValidTo" not in metadata


def test_cli_import_key_refuses_a_key_file_that_does_not_fit(
    hsm: Callable[..., str], kms: FakeKms, capsys, tmp_path
) -> None:
    create = ["create-key", "--key-spec", "HMAC_256", "--origin", "EXTERNAL"]
    key_id = hsm(*create, "--query", "KeyMetadata.KeyId", "--output", "text").strip()
    (tmp_path / "hmac.key").write_bytes(bytes(32).hex().encode())
    argv = ["import-key", "--key-id", key_id, "--key-file", str(tmp_path / "hmac.key")]
    assert cli.main(argv) == cli.EXIT_USAGE
    assert capsys.readouterr() == (
        "",
        "hsm: error: a HMAC_256 key file holds exactly 32 raw bytes (not hex, base64 or PEM);"
        " this one has 64\n",
    )
    assert [type(request).__name__ for request in kms.requests[-2:]] == [
        "CreateKeyRequest",
        "DescribeKeyRequest",
    ]  # nothing reached GetParametersForImport
    assert kms.keys[key_id].key_state == resources_pb2.PENDING_IMPORT


# --- the asyncio clients --------------------------------------------------------------------------


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def test_the_asyncio_clients_have_every_method_of_the_synchronous_ones() -> None:
    assert _public(AsyncHsmClient) - {"sync"} == _public(HsmClient)
    assert _public(AsyncAdminClient) - {"sync"} == _public(AdminClient)


def test_the_asyncio_client_awaits_calls_concurrently_with_the_same_results(
    endpoint: str, kms: FakeKms
) -> None:
    async def run() -> None:
        async with AsyncHsmClient(HsmClient(grpc.insecure_channel(endpoint), timeout=5)) as aio:
            key = await aio.create_key(description="async")
            sealed = await asyncio.gather(*(aio.encrypt(key.key_id, b"%d" % n) for n in range(20)))
            opened = await asyncio.gather(*(aio.decrypt(s.ciphertext_blob) for s in sealed))
            assert [o.plaintext for o in opened] == [b"%d" % n for n in range(20)]
            assert [k.key_id async for k in aio.iter_keys(page_size=1)] == [key.key_id]
            with pytest.raises(NotFoundError):
                await aio.describe_key("no-such-key")

    asyncio.run(run())
