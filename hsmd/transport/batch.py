"""Batch calls (BatchEncrypt, ...): many requests of one operation in one RPC, each answered
on its own, in order, as the unary call would have answered it (Vault Transit's batch_input).

The guard (guard.py) runs each item through the unary call's own path: the item's bounds,
the tenant's rate quota of the unary operation (so batch items and unary calls share one
quota), the fair-share scheduler, and the unary servicer method with a RequestContext whose
request id is "<batch request id>.<index>". The items of a batch take scheduler slots
CHUNK_ITEMS at a time, so another tenant's call waits behind at most one chunk, never a
whole batch. This module holds what both the guard and the servicers need: which unary
operation each batch RPC runs, what one item's run gave, and the batch response built from
the items' outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from google.rpc import status_pb2

# The unary operation each batch RPC runs its items through.
UNARY_OPERATIONS = {
    f"Batch{operation}": operation
    for operation in (
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "Sign",
        "Verify",
        "GenerateMac",
        "VerifyMac",
    )
}

# Items run per scheduler slot. Measured through the daemon on 2 cores (one 100-item batch
# at a time; docs/api.md#batches): per item, Encrypt 1 KB took 0.27/0.25/0.20/0.21/0.23 ms
# and RSA-2048 Sign 0.97/0.93/0.81/0.80/1.46 ms with chunks of 1/4/16/64/1,000 items. 16 is
# where the gain stops; a chunk then holds a slot about 3 ms (Encrypt) to 13 ms (RSA-2048),
# and the scheduler never gives one tenant every slot.
CHUNK_ITEMS = 16


@dataclass
class ItemOutcome:
    """One item of a batch: its request id, and the unary response or the failure (set by
    the guard as the item runs)."""

    request_id: str
    request: Message
    response: Message | None = None
    failure: Exception | None = None
    error: status_pb2.Status | None = None


class _BatchResponse(Protocol):
    def __init__(self) -> None: ...

    @property
    def results(self) -> Any: ...  # a repeated field of the batch's result messages


_Response = TypeVar("_Response", bound=_BatchResponse)
Unary = Callable[[Any, Any], Message]


class BatchRunner(Protocol):
    """What a servicer's batch method gets from the guard (current_batch())."""

    def run(self, requests: Sequence[Message], unary: Unary) -> list[ItemOutcome]: ...


def answer(
    runner: BatchRunner, requests: Sequence[Message], unary: Unary, response_type: type[_Response]
) -> _Response:
    """The batch response: each request run as its unary call by the runner, then one result
    per item in order, the response or the status."""
    response = response_type()
    for outcome in runner.run(requests, unary):
        if outcome.error is None:
            response.results.add(response=outcome.response)
        else:
            response.results.add(error=outcome.error)
    return response
