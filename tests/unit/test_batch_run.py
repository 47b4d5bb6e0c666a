"""How a batch stops (hsmd.transport.guard._BatchRun): once its caller is gone, the items left
are not run; a refusal of the first chunk, or a caller gone before it, refuses the batch whole.
Pure logic: a fake call context, no scheduler (admission off), a unary function that counts."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from hsmd.domain import Principal, PrincipalKind
from hsmd.errors import DeadlineExceeded
from hsmd.transport.batch import CHUNK_ITEMS
from hsmd.transport.guard import RequestGuard, _BatchRun

ITEMS = 100


class _Context:
    """A call context whose caller goes away when `gone` is set."""

    def __init__(self) -> None:
        self.gone = False

    def is_active(self) -> bool:
        return not self.gone

    def time_remaining(self) -> float | None:
        return None


def _run(context: _Context, stop_after: int | None) -> tuple[_BatchRun, list[int]]:
    guard = RequestGuard(cast(Any, None), lambda tenant: None, cast(Any, None), cast(Any, None))
    run = _BatchRun(
        guard, "b", Principal(PrincipalKind.TENANT, "app", "t"), "Encrypt", cast(Any, context)
    )
    ran: list[int] = []

    def unary(request: Any, _context: Any) -> Any:
        ran.append(request)
        if stop_after is not None and len(ran) == stop_after:
            context.gone = True
        return request

    run.run(list(range(ITEMS)), unary)
    return run, ran


def test_items_after_the_caller_left_are_not_run_and_fail_with_deadline_exceeded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hsmd.transport.guard.check_request", lambda request: None)
    context = _Context()
    run, ran = _run(context, stop_after=CHUNK_ITEMS + 3)  # gone during the second chunk
    assert ran == list(range(2 * CHUNK_ITEMS))  # that chunk finishes; no further one starts
    outcomes = run.outcomes
    assert [o.response for o in outcomes[: 2 * CHUNK_ITEMS]] == ran
    assert all(isinstance(o.failure, DeadlineExceeded) for o in outcomes[2 * CHUNK_ITEMS :])
    assert len(outcomes) == ITEMS
    deadline_exceeded = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    left = outcomes[2 * CHUNK_ITEMS :]
    assert all(o.error is not None and o.error.code == deadline_exceeded for o in left)


def test_a_caller_gone_before_the_first_chunk_fails_the_batch_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hsmd.transport.guard.check_request", lambda request: None)
    context = _Context()
    context.gone = True
    with pytest.raises(DeadlineExceeded):
        _run(context, stop_after=None)
