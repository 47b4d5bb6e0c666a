"""The gRPC servicers: convert the request, call the operation, convert the answer.

No business logic here; the caller's identity comes from the guard (current_request()).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message

from hsmd import keyspecs
from hsmd.audit.log import AuditLog
from hsmd.domain import (
    ClientRequest,
    EncryptionAlgorithm,
    KeyOrigin,
    KeySpec,
    KeyUsage,
    MacAlgorithm,
    MessageType,
    SigningAlgorithm,
    TenancyMode,
)
from hsmd.errors import InvalidArgument
from hsmd.names import parse_key_id, validate_tenant_name
from hsmd.ops import paging
from hsmd.ops.aliases import AliasOps
from hsmd.ops.backup import BackupOps
from hsmd.ops.crypto import CryptoOps, Sealed
from hsmd.ops.datakeys import DataKeyOps, DataKeyPair
from hsmd.ops.imports import ImportOps
from hsmd.ops.keys import KeyOps
from hsmd.ops.mac import MacOps
from hsmd.ops.policies import PolicyOps
from hsmd.ops.quotas import QuotaOps
from hsmd.ops.reconcile import Reconciler
from hsmd.ops.regions import ReplicaPackage, ReplicationOps
from hsmd.ops.rotation import RotationOps, RotationStatus
from hsmd.ops.signing import SigningOps
from hsmd.ops.states import StateOps
from hsmd.ops.tenants import TenantOps
from hsmd.ops.wrapping import WrappingOps
from hsmd.transport import batch, convert, endorsement
from hsmd.transport.convert import from_proto, required, to_proto, to_proto_list
from hsmd.transport.endorsement import RegionIdentity
from hsmd.transport.guard import current_batch, current_request
from hsmd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    region_pb2,
    region_pb2_grpc,
    resources_pb2,
    service_pb2,
    service_pb2_grpc,
)

_ENCRYPTION = resources_pb2.EncryptionAlgorithm
_SIGNING = resources_pb2.SigningAlgorithm
_MAC = resources_pb2.MacAlgorithm


def _encryption_algorithm(value: int, field: str) -> EncryptionAlgorithm | None:
    return from_proto(EncryptionAlgorithm, _ENCRYPTION, value, field)


def _signing_algorithm(value: int) -> SigningAlgorithm:
    field = "signing_algorithm"
    return required(from_proto(SigningAlgorithm, _SIGNING, value, field), field)


def _mac_algorithm(value: int) -> MacAlgorithm:
    return required(from_proto(MacAlgorithm, _MAC, value, "mac_algorithm"), "mac_algorithm")


def _message_type(value: int) -> MessageType:
    message_type = from_proto(MessageType, resources_pb2.MessageType, value, "message_type")
    return message_type or MessageType.RAW


@dataclass(frozen=True)
class Operations:
    """The operation families the key-management service calls."""

    keys: KeyOps
    crypto: CryptoOps
    datakeys: DataKeyOps
    signing: SigningOps
    mac: MacOps
    states: StateOps
    rotation: RotationOps
    aliases: AliasOps
    policies: PolicyOps
    wrapping: WrappingOps
    imports: ImportOps
    regions: ReplicationOps
    audit: AuditLog | None  # None in a worker process, which forwards ListAuditEvents


class KeyManagementServicer(service_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, ops: Operations, tenancy: TenancyMode) -> None:
        self._tenancy = tenancy
        self._key_metadata = functools.partial(convert.key_metadata, tenancy=tenancy)
        self._keys = ops.keys
        self._crypto = ops.crypto
        self._datakeys = ops.datakeys
        self._signing = ops.signing
        self._mac = ops.mac
        self._states = ops.states
        self._rotation = ops.rotation
        self._aliases = ops.aliases
        self._policies = ops.policies
        self._wrapping = ops.wrapping
        self._regions = ops.regions
        self._imports = ops.imports
        self._audit = ops.audit

    def CreateKey(
        self, request: service_pb2.CreateKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateKeyResponse:
        key = self._keys.create_key(
            current_request(),
            from_proto(KeySpec, resources_pb2.KeySpec, request.key_spec, "key_spec")
            or KeySpec.AES_256,
            from_proto(KeyUsage, resources_pb2.KeyUsage, request.key_usage, "key_usage"),
            request.description,
            convert.key_policy_from(request.policy) if request.HasField("policy") else None,
            request.tags,
            request.exportable,
            from_proto(KeyOrigin, resources_pb2.KeyOrigin, request.origin, "origin")
            or KeyOrigin.GENERATED,
            _client_request(request),
            request.multi_region,
        )
        return service_pb2.CreateKeyResponse(key_metadata=self._key_metadata(key))

    def DescribeKey(
        self, request: service_pb2.DescribeKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.DescribeKeyResponse:
        key = self._keys.describe_key(current_request(), request.key_id)
        return service_pb2.DescribeKeyResponse(key_metadata=self._key_metadata(key))

    def ListKeys(
        self, request: service_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListKeysResponse:
        page = self._keys.list_keys(
            current_request(), request.page_size, request.page_token, request.tag_filter
        )
        return service_pb2.ListKeysResponse(
            keys=[self._key_metadata(key) for key in page.keys],
            next_page_token=page.next_page_token,
        )

    def Encrypt(
        self, request: service_pb2.EncryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.EncryptResponse:
        verified = convert.check_crc32c(
            request.plaintext,
            request.plaintext_crc32c if request.HasField("plaintext_crc32c") else None,
            "plaintext",
        )
        sealed = self._crypto.encrypt(
            current_request(),
            request.key_id,
            request.plaintext,
            request.encryption_context,
            _encryption_algorithm(request.encryption_algorithm, "encryption_algorithm"),
        )
        return service_pb2.EncryptResponse(
            ciphertext_blob=sealed.ciphertext_blob,
            key_id=sealed.key_id,
            key_version=sealed.key_version,
            verified_plaintext_crc32c=verified,
            ciphertext_crc32c=convert.crc32c(sealed.ciphertext_blob),
            encryption_algorithm=to_proto(_ENCRYPTION, sealed.algorithm),
        )

    def Decrypt(
        self, request: service_pb2.DecryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.DecryptResponse:
        verified = convert.check_crc32c(
            request.ciphertext_blob,
            request.ciphertext_crc32c if request.HasField("ciphertext_crc32c") else None,
            "ciphertext_blob",
        )
        opened = self._crypto.decrypt(
            current_request(),
            request.ciphertext_blob,
            request.encryption_context,
            request.key_id,
            _encryption_algorithm(request.encryption_algorithm, "encryption_algorithm"),
        )
        return service_pb2.DecryptResponse(
            plaintext=opened.plaintext,
            key_id=opened.key_id,
            key_version=opened.key_version,
            plaintext_crc32c=convert.crc32c(opened.plaintext),
            verified_ciphertext_crc32c=verified,
            encryption_algorithm=to_proto(_ENCRYPTION, opened.algorithm),
        )

    def GenerateDataKey(
        self, request: service_pb2.GenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GenerateDataKeyResponse:
        data_key = self._datakeys.generate_data_key(
            current_request(),
            request.key_id,
            convert.data_key_size(request.key_spec, request.number_of_bytes),
            request.encryption_context,
        )
        sealed = data_key.sealed
        return service_pb2.GenerateDataKeyResponse(
            plaintext=data_key.plaintext,
            ciphertext_blob=sealed.ciphertext_blob,
            key_id=sealed.key_id,
            key_version=sealed.key_version,
        )

    def GenerateDataKeyWithoutPlaintext(
        self,
        request: service_pb2.GenerateDataKeyWithoutPlaintextRequest,
        context: grpc.ServicerContext,
    ) -> service_pb2.GenerateDataKeyWithoutPlaintextResponse:
        sealed: Sealed = self._datakeys.generate_data_key(
            current_request(),
            request.key_id,
            convert.data_key_size(request.key_spec, request.number_of_bytes),
            request.encryption_context,
        ).sealed
        return service_pb2.GenerateDataKeyWithoutPlaintextResponse(
            ciphertext_blob=sealed.ciphertext_blob,
            key_id=sealed.key_id,
            key_version=sealed.key_version,
        )

    def GenerateRandom(
        self, request: service_pb2.GenerateRandomRequest, context: grpc.ServicerContext
    ) -> service_pb2.GenerateRandomResponse:
        plaintext = self._datakeys.generate_random(current_request(), request.number_of_bytes)
        return service_pb2.GenerateRandomResponse(plaintext=plaintext)

    def ReEncrypt(
        self, request: service_pb2.ReEncryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.ReEncryptResponse:
        resealed = self._crypto.re_encrypt(
            current_request(),
            request.ciphertext_blob,
            request.source_encryption_context,
            request.source_key_id,
            _encryption_algorithm(
                request.source_encryption_algorithm, "source_encryption_algorithm"
            ),
            request.destination_key_id,
            request.destination_encryption_context,
            _encryption_algorithm(
                request.destination_encryption_algorithm, "destination_encryption_algorithm"
            ),
        )
        source, destination = resealed.source, resealed.destination
        return service_pb2.ReEncryptResponse(
            ciphertext_blob=destination.ciphertext_blob,
            source_key_id=source.key_id,
            source_key_version=source.key_version,
            key_id=destination.key_id,
            key_version=destination.key_version,
            source_encryption_algorithm=to_proto(_ENCRYPTION, source.algorithm),
            destination_encryption_algorithm=to_proto(_ENCRYPTION, destination.algorithm),
        )

    def _data_key_pair(
        self,
        request: service_pb2.GenerateDataKeyPairRequest
        | service_pb2.GenerateDataKeyPairWithoutPlaintextRequest,
    ) -> DataKeyPair:
        spec = from_proto(KeySpec, resources_pb2.KeySpec, request.key_pair_spec, "key_pair_spec")
        return self._datakeys.generate_data_key_pair(
            current_request(),
            request.key_id,
            required(spec, "key_pair_spec"),
            request.encryption_context,
        )

    def GenerateDataKeyPair(
        self, request: service_pb2.GenerateDataKeyPairRequest, context: grpc.ServicerContext
    ) -> service_pb2.GenerateDataKeyPairResponse:
        pair = self._data_key_pair(request)
        return service_pb2.GenerateDataKeyPairResponse(
            public_key=pair.public_key,
            private_key_plaintext=pair.private_key,
            private_key_ciphertext_blob=pair.sealed_private_key.ciphertext_blob,
            key_id=pair.sealed_private_key.key_id,
            key_version=pair.sealed_private_key.key_version,
            key_pair_spec=to_proto(resources_pb2.KeySpec, pair.spec),
        )

    def GenerateDataKeyPairWithoutPlaintext(
        self,
        request: service_pb2.GenerateDataKeyPairWithoutPlaintextRequest,
        context: grpc.ServicerContext,
    ) -> service_pb2.GenerateDataKeyPairWithoutPlaintextResponse:
        pair = self._data_key_pair(request)
        return service_pb2.GenerateDataKeyPairWithoutPlaintextResponse(
            public_key=pair.public_key,
            private_key_ciphertext_blob=pair.sealed_private_key.ciphertext_blob,
            key_id=pair.sealed_private_key.key_id,
            key_version=pair.sealed_private_key.key_version,
            key_pair_spec=to_proto(resources_pb2.KeySpec, pair.spec),
        )

    def Sign(
        self, request: service_pb2.SignRequest, context: grpc.ServicerContext
    ) -> service_pb2.SignResponse:
        signed = self._signing.sign(
            current_request(),
            request.key_id,
            request.message,
            _message_type(request.message_type),
            _signing_algorithm(request.signing_algorithm),
        )
        return service_pb2.SignResponse(
            signature=signed.signature,
            key_id=signed.key_id,
            key_version=signed.key_version,
            signing_algorithm=to_proto(_SIGNING, signed.algorithm),
        )

    def Verify(
        self, request: service_pb2.VerifyRequest, context: grpc.ServicerContext
    ) -> service_pb2.VerifyResponse:
        verified = self._signing.verify(
            current_request(),
            request.key_id,
            request.message,
            _message_type(request.message_type),
            _signing_algorithm(request.signing_algorithm),
            request.signature,
        )
        return service_pb2.VerifyResponse(
            signature_valid=verified.valid,
            key_id=verified.key_id,
            key_version=verified.key_version,
            signing_algorithm=to_proto(_SIGNING, verified.algorithm),
        )

    def GetPublicKey(
        self, request: service_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetPublicKeyResponse:
        public = self._signing.get_public_key(current_request(), request.key_id)
        algorithms = keyspecs.algorithms(public.key.spec, public.key.usage)
        return service_pb2.GetPublicKeyResponse(
            public_key=public.der,
            key_id=public.key.key_id,
            key_version=public.key_version,
            key_spec=to_proto(resources_pb2.KeySpec, public.key.spec),
            key_usage=to_proto(resources_pb2.KeyUsage, public.key.usage),
            encryption_algorithms=to_proto_list(_ENCRYPTION, algorithms.encryption),
            signing_algorithms=to_proto_list(_SIGNING, algorithms.signing),
        )

    def GenerateMac(
        self, request: service_pb2.GenerateMacRequest, context: grpc.ServicerContext
    ) -> service_pb2.GenerateMacResponse:
        mac = self._mac.generate_mac(
            current_request(),
            request.key_id,
            request.message,
            _mac_algorithm(request.mac_algorithm),
        )
        return service_pb2.GenerateMacResponse(
            mac=mac.mac,
            key_id=mac.key_id,
            key_version=mac.key_version,
            mac_algorithm=to_proto(_MAC, mac.algorithm),
        )

    def VerifyMac(
        self, request: service_pb2.VerifyMacRequest, context: grpc.ServicerContext
    ) -> service_pb2.VerifyMacResponse:
        verified = self._mac.verify_mac(
            current_request(),
            request.key_id,
            request.message,
            _mac_algorithm(request.mac_algorithm),
            request.mac,
        )
        return service_pb2.VerifyMacResponse(
            mac_valid=verified.valid,
            key_id=verified.key_id,
            key_version=verified.key_version,
            mac_algorithm=to_proto(_MAC, verified.algorithm),
        )

    # Batches: each item runs through its unary method (hsmd/transport/batch.py)

    def BatchEncrypt(
        self, request: service_pb2.BatchEncryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchEncryptResponse:
        return batch.answer(
            current_batch(), request.requests, self.Encrypt, service_pb2.BatchEncryptResponse
        )

    def BatchDecrypt(
        self, request: service_pb2.BatchDecryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchDecryptResponse:
        return batch.answer(
            current_batch(), request.requests, self.Decrypt, service_pb2.BatchDecryptResponse
        )

    def BatchReEncrypt(
        self, request: service_pb2.BatchReEncryptRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchReEncryptResponse:
        return batch.answer(
            current_batch(), request.requests, self.ReEncrypt, service_pb2.BatchReEncryptResponse
        )

    def BatchGenerateDataKey(
        self, request: service_pb2.BatchGenerateDataKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchGenerateDataKeyResponse:
        return batch.answer(
            current_batch(),
            request.requests,
            self.GenerateDataKey,
            service_pb2.BatchGenerateDataKeyResponse,
        )

    def BatchSign(
        self, request: service_pb2.BatchSignRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchSignResponse:
        return batch.answer(
            current_batch(), request.requests, self.Sign, service_pb2.BatchSignResponse
        )

    def BatchVerify(
        self, request: service_pb2.BatchVerifyRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchVerifyResponse:
        return batch.answer(
            current_batch(), request.requests, self.Verify, service_pb2.BatchVerifyResponse
        )

    def BatchGenerateMac(
        self, request: service_pb2.BatchGenerateMacRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchGenerateMacResponse:
        return batch.answer(
            current_batch(),
            request.requests,
            self.GenerateMac,
            service_pb2.BatchGenerateMacResponse,
        )

    def BatchVerifyMac(
        self, request: service_pb2.BatchVerifyMacRequest, context: grpc.ServicerContext
    ) -> service_pb2.BatchVerifyMacResponse:
        return batch.answer(
            current_batch(), request.requests, self.VerifyMac, service_pb2.BatchVerifyMacResponse
        )

    def GetCapabilities(
        self, request: service_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetCapabilitiesResponse:
        capabilities = self._keys.capabilities()
        return service_pb2.GetCapabilitiesResponse(
            key_specs=to_proto_list(resources_pb2.KeySpec, tuple(sorted(capabilities.key_specs))),
            encryption_algorithms=to_proto_list(
                _ENCRYPTION, tuple(sorted(capabilities.encryption))
            ),
            signing_algorithms=to_proto_list(_SIGNING, tuple(sorted(capabilities.signing))),
            mac_algorithms=to_proto_list(_MAC, tuple(sorted(capabilities.mac))),
            notes=capabilities.notes,
            tenancy_mode=to_proto(resources_pb2.TenancyMode, self._tenancy),
        )

    def ListAuditEvents(
        self, request: service_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListAuditEventsResponse:
        """A tenant sees only its own events; `tenant` is for operators (AdminService)."""
        if request.tenant:
            raise InvalidArgument("tenant is for operators; a tenant sees only its own events")
        if self._audit is None:
            raise AssertionError("ListAuditEvents reached a worker process: workers forward it")
        return _audit_page(self._audit, request, current_request().tenant)

    # Wrapping and import

    def WrapKey(
        self, request: service_pb2.WrapKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.WrapKeyResponse:
        result = self._wrapping.wrap(current_request(), request.key_id, request.wrapping_key_id)
        return service_pb2.WrapKeyResponse(
            wrapped_key=result.blob,
            key_id=result.key.key_id,
            key_version=result.key_version,
            wrapping_key_id=result.wrapping_key.key_id,
        )

    def UnwrapKey(
        self, request: service_pb2.UnwrapKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.UnwrapKeyResponse:
        key = self._wrapping.unwrap(
            current_request(),
            request.wrapped_key,
            request.wrapping_key_id,
            request.description,
            convert.key_policy_from(request.policy) if request.HasField("policy") else None,
            request.tags,
            request.exportable,
            _client_request(request),
        )
        return service_pb2.UnwrapKeyResponse(key_metadata=self._key_metadata(key))

    def GetParametersForImport(
        self, request: service_pb2.GetParametersForImportRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetParametersForImportResponse:
        parameters = self._imports.get_parameters(
            current_request(),
            request.key_id,
            convert.wrapping_algorithm(request.wrapping_algorithm),
            from_proto(
                KeySpec, resources_pb2.KeySpec, request.wrapping_key_spec, "wrapping_key_spec"
            ),
        )
        return service_pb2.GetParametersForImportResponse(
            key_id=parameters.key.key_id,
            import_token=parameters.token.encode(),
            public_key=parameters.public_key,
            parameters_valid_to=convert.timestamp(parameters.valid_to),
        )

    def ImportKeyMaterial(
        self, request: service_pb2.ImportKeyMaterialRequest, context: grpc.ServicerContext
    ) -> service_pb2.ImportKeyMaterialResponse:
        valid_to = (
            convert.datetime_from(request.valid_to, "valid_to")
            if request.HasField("valid_to")
            else None
        )
        key = self._imports.import_material(
            current_request(),
            request.key_id,
            request.import_token.decode(errors="replace"),
            request.encrypted_key_material,
            valid_to,
            request.public_key or None,
        )
        return service_pb2.ImportKeyMaterialResponse(key_metadata=self._key_metadata(key))

    def DeleteImportedKeyMaterial(
        self, request: service_pb2.DeleteImportedKeyMaterialRequest, context: grpc.ServicerContext
    ) -> service_pb2.DeleteImportedKeyMaterialResponse:
        key = self._imports.delete_material(current_request(), request.key_id)
        return service_pb2.DeleteImportedKeyMaterialResponse(key_metadata=self._key_metadata(key))

    # Key states

    def EnableKey(
        self, request: service_pb2.EnableKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.EnableKeyResponse:
        key = self._states.enable(current_request(), request.key_id)
        return service_pb2.EnableKeyResponse(key_metadata=self._key_metadata(key))

    def DisableKey(
        self, request: service_pb2.DisableKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.DisableKeyResponse:
        key = self._states.disable(current_request(), request.key_id)
        return service_pb2.DisableKeyResponse(key_metadata=self._key_metadata(key))

    def ScheduleKeyDeletion(
        self, request: service_pb2.ScheduleKeyDeletionRequest, context: grpc.ServicerContext
    ) -> service_pb2.ScheduleKeyDeletionResponse:
        key = self._states.schedule_deletion(
            current_request(), request.key_id, request.pending_window_in_days
        )
        return service_pb2.ScheduleKeyDeletionResponse(key_metadata=self._key_metadata(key))

    def CancelKeyDeletion(
        self, request: service_pb2.CancelKeyDeletionRequest, context: grpc.ServicerContext
    ) -> service_pb2.CancelKeyDeletionResponse:
        key = self._states.cancel_deletion(current_request(), request.key_id)
        return service_pb2.CancelKeyDeletionResponse(key_metadata=self._key_metadata(key))

    # Description, tags, policy

    def UpdateKeyDescription(
        self, request: service_pb2.UpdateKeyDescriptionRequest, context: grpc.ServicerContext
    ) -> service_pb2.UpdateKeyDescriptionResponse:
        key = self._keys.update_description(current_request(), request.key_id, request.description)
        return service_pb2.UpdateKeyDescriptionResponse(key_metadata=self._key_metadata(key))

    def TagKey(
        self, request: service_pb2.TagKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.TagKeyResponse:
        key = self._keys.tag_key(current_request(), request.key_id, request.tags)
        return service_pb2.TagKeyResponse(key_metadata=self._key_metadata(key))

    def UntagKey(
        self, request: service_pb2.UntagKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.UntagKeyResponse:
        key = self._keys.untag_key(current_request(), request.key_id, request.tag_keys)
        return service_pb2.UntagKeyResponse(key_metadata=self._key_metadata(key))

    def GetKeyPolicy(
        self, request: service_pb2.GetKeyPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetKeyPolicyResponse:
        key_policy = self._policies.get(current_request(), request.key_id)
        return service_pb2.GetKeyPolicyResponse(policy=convert.key_policy(key_policy))

    def PutKeyPolicy(
        self, request: service_pb2.PutKeyPolicyRequest, context: grpc.ServicerContext
    ) -> service_pb2.PutKeyPolicyResponse:
        key_policy = self._policies.put(
            current_request(), request.key_id, convert.key_policy_from(request.policy)
        )
        return service_pb2.PutKeyPolicyResponse(policy=convert.key_policy(key_policy))

    # Rotation

    def EnableKeyRotation(
        self, request: service_pb2.EnableKeyRotationRequest, context: grpc.ServicerContext
    ) -> service_pb2.EnableKeyRotationResponse:
        status = self._rotation.enable(
            current_request(), request.key_id, request.rotation_period_in_days
        )
        return service_pb2.EnableKeyRotationResponse(status=_rotation_status(status))

    def DisableKeyRotation(
        self, request: service_pb2.DisableKeyRotationRequest, context: grpc.ServicerContext
    ) -> service_pb2.DisableKeyRotationResponse:
        status = self._rotation.disable(current_request(), request.key_id)
        return service_pb2.DisableKeyRotationResponse(status=_rotation_status(status))

    def GetKeyRotationStatus(
        self, request: service_pb2.GetKeyRotationStatusRequest, context: grpc.ServicerContext
    ) -> service_pb2.GetKeyRotationStatusResponse:
        return _rotation_status(self._rotation.status(current_request(), request.key_id))

    def RotateKeyOnDemand(
        self, request: service_pb2.RotateKeyOnDemandRequest, context: grpc.ServicerContext
    ) -> service_pb2.RotateKeyOnDemandResponse:
        version = self._rotation.rotate_on_demand(current_request(), request.key_id)
        return service_pb2.RotateKeyOnDemandResponse(
            key_id=version.key_id, key_version=version.version
        )

    def ReplicateKey(
        self, request: service_pb2.ReplicateKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.ReplicateKeyResponse:
        replica = self._regions.replicate(
            current_request(),
            request.key_id,
            request.replica_region,
            request.description or None,
            convert.key_policy_from(request.policy) if request.HasField("policy") else None,
            request.tags,
        )
        return service_pb2.ReplicateKeyResponse(replica_key_metadata=self._key_metadata(replica))

    def UpdatePrimaryRegion(
        self, request: service_pb2.UpdatePrimaryRegionRequest, context: grpc.ServicerContext
    ) -> service_pb2.UpdatePrimaryRegionResponse:
        key = self._regions.update_primary_region(
            current_request(), request.key_id, request.primary_region
        )
        return service_pb2.UpdatePrimaryRegionResponse(key_metadata=self._key_metadata(key))

    def ListKeyRotations(
        self, request: service_pb2.ListKeyRotationsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListKeyRotationsResponse:
        page = self._rotation.list_rotations(
            current_request(), request.key_id, request.page_size, request.page_token
        )
        return service_pb2.ListKeyRotationsResponse(
            rotations=[convert.key_rotation(version) for version in page.rotations],
            next_page_token=page.next_page_token,
        )

    # Aliases

    def CreateAlias(
        self, request: service_pb2.CreateAliasRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateAliasResponse:
        alias = self._aliases.create(current_request(), request.alias_name, request.target_key_id)
        return service_pb2.CreateAliasResponse(alias=convert.alias(alias))

    def UpdateAlias(
        self, request: service_pb2.UpdateAliasRequest, context: grpc.ServicerContext
    ) -> service_pb2.UpdateAliasResponse:
        alias = self._aliases.update(current_request(), request.alias_name, request.target_key_id)
        return service_pb2.UpdateAliasResponse(alias=convert.alias(alias))

    def DeleteAlias(
        self, request: service_pb2.DeleteAliasRequest, context: grpc.ServicerContext
    ) -> service_pb2.DeleteAliasResponse:
        self._aliases.delete(current_request(), request.alias_name)
        return service_pb2.DeleteAliasResponse()

    def ListAliases(
        self, request: service_pb2.ListAliasesRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListAliasesResponse:
        page = self._aliases.list(
            current_request(), request.key_id, request.page_size, request.page_token
        )
        return service_pb2.ListAliasesResponse(
            aliases=[convert.alias(alias) for alias in page.aliases],
            next_page_token=page.next_page_token,
        )


def _client_request(request: Message) -> ClientRequest | None:
    return convert.client_request(request, str(current_request().principal))


def _audit_page(
    audit: AuditLog, request: service_pb2.ListAuditEventsRequest, tenant: str | None
) -> service_pb2.ListAuditEventsResponse:
    records, cursor = audit.read(
        paging.decode_token(request.page_token),
        paging.page_size(request.page_size),
        tenant,
        request.key_id or None,
    )
    return service_pb2.ListAuditEventsResponse(
        events=[convert.audit_event(record) for record in records],
        next_page_token=paging.encode_token(cursor),
    )


class RegionServicer(region_pb2_grpc.RegionServiceServicer):
    """What peer regions call (hsmd.ops.regions): the caller is the region its certificate
    names."""

    def __init__(
        self,
        regions: ReplicationOps,
        region: str,
        identity: RegionIdentity,
        tenancy: TenancyMode,
    ) -> None:
        self._regions = regions
        self._region = region
        self._identity = identity
        self._key_metadata = functools.partial(convert.key_metadata, tenancy=tenancy)

    def GetTransportKey(
        self, request: region_pb2.GetTransportKeyRequest, context: grpc.ServicerContext
    ) -> region_pb2.GetTransportKeyResponse:
        public_key = self._regions.transport_key(current_request().principal, request.tenant)
        statement = endorsement.transport_key(request.tenant, public_key)
        signature, chain = self._identity.sign(statement)
        return region_pb2.GetTransportKeyResponse(
            public_key=public_key, signature=signature, certificate_chain=chain
        )

    def GetPrimaryRegion(
        self, request: region_pb2.GetPrimaryRegionRequest, context: grpc.ServicerContext
    ) -> region_pb2.GetPrimaryRegionResponse:
        if not endorsement.NONCE_SIZE <= len(request.nonce):
            raise InvalidArgument(f"nonce must be at least {endorsement.NONCE_SIZE} bytes")
        key_id = parse_key_id(request.key_id)
        primary = self._regions.primary_of(current_request().principal, request.tenant, key_id)
        statement = endorsement.primary(request.tenant, key_id, primary, request.nonce)
        signature, chain = self._identity.sign(statement)
        return region_pb2.GetPrimaryRegionResponse(
            primary_region=primary, signature=signature, certificate_chain=chain
        )

    def PutReplica(
        self, request: region_pb2.PutReplicaRequest, context: grpc.ServicerContext
    ) -> region_pb2.PutReplicaResponse:
        package = ReplicaPackage(
            convert.replica_key_from(request.key, self._region),
            tuple(convert.replica_version_from(v) for v in request.versions),
            request.new_replica,
        )
        replica = self._regions.receive(current_request().principal, package)
        return region_pb2.PutReplicaResponse(key_metadata=self._key_metadata(replica))

    def PromoteReplica(
        self, request: region_pb2.PromoteReplicaRequest, context: grpc.ServicerContext
    ) -> region_pb2.PromoteReplicaResponse:
        key = convert.replica_key_from(request.key, self._region)
        primary = self._regions.promote(current_request().principal, key)
        return region_pb2.PromoteReplicaResponse(key_metadata=self._key_metadata(primary))

    def ForgetReplica(
        self, request: region_pb2.ForgetReplicaRequest, context: grpc.ServicerContext
    ) -> region_pb2.ForgetReplicaResponse:
        primary = self._regions.forget_replica(
            current_request().principal, request.tenant, parse_key_id(request.key_id)
        )
        return region_pb2.ForgetReplicaResponse(key_metadata=self._key_metadata(primary))


def _rotation_status(status: RotationStatus) -> service_pb2.GetKeyRotationStatusResponse:
    key = status.key
    response = service_pb2.GetKeyRotationStatusResponse(
        key_id=key.key_id,
        key_rotation_enabled=key.rotation_period_days is not None,
        rotation_period_in_days=key.rotation_period_days or 0,
    )
    if key.next_rotation_at is not None:
        response.next_rotation_date.CopyFrom(convert.timestamp(key.next_rotation_at))
    if status.last_on_demand is not None:
        response.on_demand_rotation_start_date.CopyFrom(convert.timestamp(status.last_on_demand))
    return response


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        tenants: TenantOps,
        reconciler: Reconciler,
        audit: AuditLog,
        quotas: QuotaOps,
        backups: BackupOps,
    ) -> None:
        self._tenants = tenants
        self._reconciler = reconciler
        self._audit = audit
        self._key_metadata = functools.partial(convert.key_metadata, tenancy=tenants.mode)
        self._quotas = quotas
        self._backups = backups

    def Backup(
        self, request: admin_pb2.BackupRequest, context: grpc.ServicerContext
    ) -> admin_pb2.BackupResponse:
        report = self._backups.take()
        return admin_pb2.BackupResponse(
            directory=str(report.directory),
            create_time=convert.timestamp(report.created),
            files=report.files,
            bytes=report.bytes,
            audit_sequence=report.audit_sequence,
            tokens=report.tokens,
        )

    def ListAuditEvents(
        self, request: service_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListAuditEventsResponse:
        return _audit_page(self._audit, request, request.tenant or None)

    def VerifyAuditLog(
        self, request: admin_pb2.VerifyAuditLogRequest, context: grpc.ServicerContext
    ) -> admin_pb2.VerifyAuditLogResponse:
        return convert.audit_verification(self._audit.verify())

    def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateTenantResponse:
        created = self._tenants.create_tenant(
            request.name, request.admin_principals, _client_request(request)
        )
        return admin_pb2.CreateTenantResponse(tenant=convert.tenant(created))

    def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListTenantsResponse:
        tenants = []
        for tenant in self._tenants.list_tenants():
            listed = convert.tenant(tenant)
            listed.quota.CopyFrom(convert.tenant_quota(self._quotas.limits(tenant.name)))
            listed.usage.CopyFrom(convert.tenant_usage(self._quotas.usage(tenant.name)))
            tenants.append(listed)
        return admin_pb2.ListTenantsResponse(tenants=tenants)

    def DisableTenant(
        self, request: admin_pb2.DisableTenantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DisableTenantResponse:
        tenant = convert.tenant(self._tenants.disable(request.name))
        return admin_pb2.DisableTenantResponse(tenant=tenant)

    def EnableTenant(
        self, request: admin_pb2.EnableTenantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.EnableTenantResponse:
        tenant = convert.tenant(self._tenants.enable(request.name))
        return admin_pb2.EnableTenantResponse(tenant=tenant)

    def DeleteTenant(
        self, request: admin_pb2.DeleteTenantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DeleteTenantResponse:
        scheduled = self._tenants.schedule_deletion(request.name, request.pending_window_in_days)
        return admin_pb2.DeleteTenantResponse(tenant=convert.tenant(scheduled))

    def CancelTenantDeletion(
        self, request: admin_pb2.CancelTenantDeletionRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CancelTenantDeletionResponse:
        tenant = convert.tenant(self._tenants.cancel_deletion(request.name))
        return admin_pb2.CancelTenantDeletionResponse(tenant=tenant)

    def ListQuarantinedObjects(
        self, request: admin_pb2.ListQuarantinedObjectsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListQuarantinedObjectsResponse:
        page = self._reconciler.quarantined(request.tenant, request.page_size, request.page_token)
        return admin_pb2.ListQuarantinedObjectsResponse(
            objects=[convert.quarantined_object(entry) for entry in page.objects],
            next_page_token=page.next_page_token,
        )

    def DestroyQuarantinedObject(
        self, request: admin_pb2.DestroyQuarantinedObjectRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DestroyQuarantinedObjectResponse:
        self._reconciler.destroy_quarantined(
            validate_tenant_name(request.tenant),
            convert.object_id(request.object_id, empty_allowed=True),
        )
        return admin_pb2.DestroyQuarantinedObjectResponse()

    def AdoptQuarantinedObject(
        self, request: admin_pb2.AdoptQuarantinedObjectRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AdoptQuarantinedObjectResponse:
        key = self._reconciler.adopt(
            validate_tenant_name(request.tenant),
            convert.object_id(request.object_id),
            parse_key_id(request.key_id),
            request.key_version,
        )
        return admin_pb2.AdoptQuarantinedObjectResponse(key_metadata=self._key_metadata(key))

    def SetTenantQuota(
        self, request: admin_pb2.SetTenantQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SetTenantQuotaResponse:
        quota = self._quotas.set(request.tenant, convert.quota_overrides(request.quota))
        return admin_pb2.SetTenantQuotaResponse(tenant_quota=convert.tenant_quota_answer(quota))

    def GetTenantQuota(
        self, request: admin_pb2.GetTenantQuotaRequest, context: grpc.ServicerContext
    ) -> admin_pb2.GetTenantQuotaResponse:
        return convert.tenant_quota_answer(self._quotas.get(request.tenant))
