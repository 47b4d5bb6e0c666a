"""The gRPC servicers: convert the request, call the operation, convert the answer.

No business logic here; the caller's identity comes from the guard (current_request()).
"""

from __future__ import annotations

import grpc

from hsmd.ops.crypto import CryptoOps, Sealed
from hsmd.ops.datakeys import DataKeyOps
from hsmd.ops.keys import KeyOps
from hsmd.ops.tenants import TenantOps
from hsmd.transport import convert
from hsmd.transport.guard import current_request
from hsmd.v1 import admin_pb2, admin_pb2_grpc, service_pb2, service_pb2_grpc


class KeyManagementServicer(service_pb2_grpc.KeyManagementServiceServicer):
    def __init__(self, keys: KeyOps, crypto: CryptoOps, datakeys: DataKeyOps) -> None:
        self._keys = keys
        self._crypto = crypto
        self._datakeys = datakeys

    def CreateKey(
        self, request: service_pb2.CreateKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.CreateKeyResponse:
        key = self._keys.create_key(
            current_request(),
            convert.key_spec(request.key_spec),
            convert.key_usage(request.key_usage),
            request.description,
        )
        return service_pb2.CreateKeyResponse(key_metadata=convert.key_metadata(key))

    def DescribeKey(
        self, request: service_pb2.DescribeKeyRequest, context: grpc.ServicerContext
    ) -> service_pb2.DescribeKeyResponse:
        key = self._keys.describe_key(current_request(), request.key_id)
        return service_pb2.DescribeKeyResponse(key_metadata=convert.key_metadata(key))

    def ListKeys(
        self, request: service_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListKeysResponse:
        page = self._keys.list_keys(current_request(), request.page_size, request.page_token)
        return service_pb2.ListKeysResponse(
            keys=[convert.key_metadata(key) for key in page.keys],
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
            current_request(), request.key_id, request.plaintext, request.encryption_context
        )
        return service_pb2.EncryptResponse(
            ciphertext_blob=sealed.ciphertext_blob,
            key_id=sealed.key_id,
            key_version=sealed.key_version,
            verified_plaintext_crc32c=verified,
            ciphertext_crc32c=convert.crc32c(sealed.ciphertext_blob),
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
            current_request(), request.ciphertext_blob, request.encryption_context, request.key_id
        )
        return service_pb2.DecryptResponse(
            plaintext=opened.plaintext,
            key_id=opened.key_id,
            key_version=opened.key_version,
            plaintext_crc32c=convert.crc32c(opened.plaintext),
            verified_ciphertext_crc32c=verified,
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


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, tenants: TenantOps) -> None:
        self._tenants = tenants

    def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: grpc.ServicerContext
    ) -> admin_pb2.CreateTenantResponse:
        created = self._tenants.create_tenant(request.name)
        return admin_pb2.CreateTenantResponse(tenant=convert.tenant(created))

    def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListTenantsResponse:
        return admin_pb2.ListTenantsResponse(
            tenants=[convert.tenant(t) for t in self._tenants.list_tenants()]
        )
