"""asyncio clients: AsyncHsmClient and AsyncAdminClient have every method of HsmClient and
AdminClient, with the same arguments, typed results, errors, deadlines and retries, awaited.

Each call runs the synchronous client's method in a worker thread (asyncio.to_thread), so the
event loop never waits on the network and both clients share one conversion layer and one retry
policy: gRPC's blocking calls release the GIL while they wait. An iter_* method is an async
iterator that fetches each page in a thread. The default executor bounds the calls in flight
(min(32, cores + 4) threads); pass your own with loop.set_default_executor for more.

    async with AsyncHsmClient.from_env() as kms:
        blob = (await kms.encrypt(key_id, b"secret")).ciphertext_blob
        async for key in kms.iter_keys():
            ...
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from hsmclient.client import DEFAULT_TIMEOUT, AdminClient, HsmClient

__all__ = ["AsyncAdminClient", "AsyncHsmClient"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", HsmClient, AdminClient)


class _Async(Generic[_S]):
    """An asyncio face on a synchronous client, which it owns."""

    _sync_class: type[_S]

    def __init__(self, client: _S) -> None:
        self.sync: _S = client  # the synchronous client underneath, for code that wants one

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        ca_cert: bytes,
        client_cert: bytes,
        client_key: bytes,
        server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Self:
        """Connect over mutual TLS (as HsmClient.connect; nothing is sent until a call)."""
        return cls(
            cls._sync_class.connect(
                endpoint,
                ca_cert=ca_cert,
                client_cert=client_cert,
                client_key=client_key,
                server_name=server_name,
                timeout=timeout,
            )
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Self:
        """Connect as the profile and HSM_* variables say (as HsmClient.from_env)."""
        return cls(cls._sync_class.from_env(environ, timeout=timeout))

    async def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _awaited(
    method: Callable[Concatenate[_S, _P], _R],
) -> Callable[Concatenate[_Async[_S], _P], Coroutine[Any, Any, _R]]:
    """The method, run in a worker thread and awaited."""

    async def call(self: _Async[_S], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await asyncio.to_thread(method, self.sync, *args, **kwargs)

    return functools.wraps(method)(call)


def _iterated(
    method: Callable[Concatenate[_S, _P], Iterator[_R]],
) -> Callable[Concatenate[_Async[_S], _P], AsyncIterator[_R]]:
    """The iterating method as an async iterator: each next item (a page fetched, at need)
    in a worker thread."""

    async def iterate(
        self: _Async[_S], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> AsyncIterator[_R]:
        items = method(self.sync, *args, **kwargs)  # lazy: nothing is fetched yet
        while True:
            item = await asyncio.to_thread(next, items, _END)
            if item is _END:
                return
            yield item

    return functools.wraps(method)(iterate)


_END: Any = object()


class AsyncHsmClient(_Async[HsmClient]):
    """HsmClient, awaited (see the module)."""

    _sync_class = HsmClient

    batch_decrypt = _awaited(HsmClient.batch_decrypt)
    batch_encrypt = _awaited(HsmClient.batch_encrypt)
    batch_generate_data_key = _awaited(HsmClient.batch_generate_data_key)
    batch_generate_mac = _awaited(HsmClient.batch_generate_mac)
    batch_re_encrypt = _awaited(HsmClient.batch_re_encrypt)
    batch_sign = _awaited(HsmClient.batch_sign)
    batch_verify = _awaited(HsmClient.batch_verify)
    batch_verify_mac = _awaited(HsmClient.batch_verify_mac)
    cancel_key_deletion = _awaited(HsmClient.cancel_key_deletion)
    create_alias = _awaited(HsmClient.create_alias)
    create_key = _awaited(HsmClient.create_key)
    decrypt = _awaited(HsmClient.decrypt)
    delete_alias = _awaited(HsmClient.delete_alias)
    delete_imported_key_material = _awaited(HsmClient.delete_imported_key_material)
    describe_key = _awaited(HsmClient.describe_key)
    disable_key = _awaited(HsmClient.disable_key)
    disable_key_rotation = _awaited(HsmClient.disable_key_rotation)
    enable_key = _awaited(HsmClient.enable_key)
    enable_key_rotation = _awaited(HsmClient.enable_key_rotation)
    encrypt = _awaited(HsmClient.encrypt)
    generate_data_key = _awaited(HsmClient.generate_data_key)
    generate_data_key_pair = _awaited(HsmClient.generate_data_key_pair)
    generate_data_key_pair_without_plaintext = _awaited(
        HsmClient.generate_data_key_pair_without_plaintext
    )
    generate_data_key_without_plaintext = _awaited(HsmClient.generate_data_key_without_plaintext)
    generate_mac = _awaited(HsmClient.generate_mac)
    generate_random = _awaited(HsmClient.generate_random)
    get_capabilities = _awaited(HsmClient.get_capabilities)
    get_key_policy = _awaited(HsmClient.get_key_policy)
    get_key_rotation_status = _awaited(HsmClient.get_key_rotation_status)
    get_parameters_for_import = _awaited(HsmClient.get_parameters_for_import)
    get_public_key = _awaited(HsmClient.get_public_key)
    import_key = _awaited(HsmClient.import_key)
    import_key_material = _awaited(HsmClient.import_key_material)
    list_aliases = _awaited(HsmClient.list_aliases)
    list_audit_events = _awaited(HsmClient.list_audit_events)
    list_key_rotations = _awaited(HsmClient.list_key_rotations)
    list_keys = _awaited(HsmClient.list_keys)
    put_key_policy = _awaited(HsmClient.put_key_policy)
    re_encrypt = _awaited(HsmClient.re_encrypt)
    rotate_key_on_demand = _awaited(HsmClient.rotate_key_on_demand)
    replicate_key = _awaited(HsmClient.replicate_key)
    update_primary_region = _awaited(HsmClient.update_primary_region)
    schedule_key_deletion = _awaited(HsmClient.schedule_key_deletion)
    sign = _awaited(HsmClient.sign)
    tag_key = _awaited(HsmClient.tag_key)
    untag_key = _awaited(HsmClient.untag_key)
    unwrap_key = _awaited(HsmClient.unwrap_key)
    update_alias = _awaited(HsmClient.update_alias)
    update_key_description = _awaited(HsmClient.update_key_description)
    verify = _awaited(HsmClient.verify)
    verify_mac = _awaited(HsmClient.verify_mac)
    wrap_key = _awaited(HsmClient.wrap_key)
    iter_aliases = _iterated(HsmClient.iter_aliases)
    iter_audit_events = _iterated(HsmClient.iter_audit_events)
    iter_key_rotations = _iterated(HsmClient.iter_key_rotations)
    iter_keys = _iterated(HsmClient.iter_keys)


class AsyncAdminClient(_Async[AdminClient]):
    """AdminClient, awaited (see the module)."""

    _sync_class = AdminClient

    adopt_quarantined_object = _awaited(AdminClient.adopt_quarantined_object)
    cancel_tenant_deletion = _awaited(AdminClient.cancel_tenant_deletion)
    create_tenant = _awaited(AdminClient.create_tenant)
    delete_tenant = _awaited(AdminClient.delete_tenant)
    destroy_quarantined_object = _awaited(AdminClient.destroy_quarantined_object)
    disable_tenant = _awaited(AdminClient.disable_tenant)
    enable_tenant = _awaited(AdminClient.enable_tenant)
    get_tenant_quota = _awaited(AdminClient.get_tenant_quota)
    list_audit_events = _awaited(AdminClient.list_audit_events)
    list_quarantined_objects = _awaited(AdminClient.list_quarantined_objects)
    list_tenants = _awaited(AdminClient.list_tenants)
    set_tenant_quota = _awaited(AdminClient.set_tenant_quota)
    verify_audit_log = _awaited(AdminClient.verify_audit_log)
    backup = _awaited(AdminClient.backup)
    iter_audit_events = _iterated(AdminClient.iter_audit_events)
    iter_quarantined_objects = _iterated(AdminClient.iter_quarantined_objects)
