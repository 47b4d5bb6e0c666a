"""Key policies through the real daemon: administrators manage a key, users use it.

A principal of the key's tenant without the right gets PERMISSION_DENIED and changes nothing;
a principal of another tenant still gets NOT_FOUND, even one whose name the policy matches.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from hsmclient import (
    FailedPreconditionError,
    HsmClient,
    HsmError,
    InvalidArgumentError,
    KeyPolicy,
    NotFoundError,
    PermissionDeniedError,
)

from tests.conftest import TENANT_A, TENANT_B
from tests.harness import DaemonProcess

Principal = Callable[..., HsmClient]


@pytest.fixture(scope="module")
def as_(daemon: DaemonProcess) -> Iterator[Principal]:
    """as_(name) is a client of principal `name` of tenant alpha (as_(name, tenant) of another)."""
    clients: dict[tuple[str, str], HsmClient] = {}

    def client(name: str, tenant: str = TENANT_A) -> HsmClient:
        if (tenant, name) not in clients:
            clients[(tenant, name)] = daemon.client(tenant, name)
        return clients[(tenant, name)]

    yield client
    for opened in clients.values():
        opened.close()


def _key(as_: Principal, administrators: tuple[str, ...], users: tuple[str, ...]) -> str:
    """A new AES key made by the first administrator, with this policy."""
    creator = as_(administrators[0])
    return creator.create_key(policy=KeyPolicy(administrators, users)).key_id


def test_the_default_policy_is_the_creator_and_the_tenants_admin_principals(
    as_: Principal,
) -> None:
    key_id = as_("maker").create_key().key_id
    expected = KeyPolicy(administrators=("maker", "admin"), users=("maker",))
    assert as_("maker").get_key_policy(key_id) == expected
    # The tenant's admin principal manages the key, but it is no user of it.
    assert as_("admin").get_key_policy(key_id) == expected
    with pytest.raises(PermissionDeniedError):
        as_("admin").encrypt(key_id, b"not for admins")
    assert as_("admin").disable_key(key_id).key_state == "DISABLED"


def test_a_creator_who_is_a_tenant_admin_is_listed_once(as_: Principal) -> None:
    key_id = as_("admin").create_key().key_id
    assert as_("admin").get_key_policy(key_id) == KeyPolicy(("admin",), ("admin",))


def test_create_tenant_sets_who_administers_new_keys(daemon: DaemonProcess) -> None:
    tenant = "policies"
    with daemon.admin() as admin:
        created = admin.create_tenant(tenant, admin_principals=["sec-*"])
    assert created.admin_principals == ("sec-*",)
    with (
        daemon.client(tenant, "dev") as dev,
        daemon.client(tenant, "sec-team") as security,
        daemon.client(tenant, "admin") as admin_principal,
    ):
        key_id = dev.create_key().key_id
        assert dev.get_key_policy(key_id) == KeyPolicy(("dev", "sec-*"), ("dev",))
        # "admin" is only the default; this tenant named others.
        with pytest.raises(PermissionDeniedError):
            admin_principal.disable_key(key_id)
        assert dev.describe_key(key_id).key_state == "ENABLED"
        assert security.disable_key(key_id).key_state == "DISABLED"


def test_a_user_can_encrypt_but_not_disable_the_key(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    worker = as_("worker")
    blob = worker.encrypt(key_id, b"worker data").ciphertext_blob
    assert worker.decrypt(blob).plaintext == b"worker data"
    assert worker.describe_key(key_id).key_state == "ENABLED"  # reads are open to users
    with pytest.raises(PermissionDeniedError):
        worker.disable_key(key_id)
    assert as_("boss").describe_key(key_id).key_state == "ENABLED"


def test_an_administrator_who_is_no_user_can_disable_but_not_decrypt(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    blob = as_("worker").encrypt(key_id, b"worker data").ciphertext_blob
    boss = as_("boss")
    with pytest.raises(PermissionDeniedError):
        boss.decrypt(blob)
    with pytest.raises(PermissionDeniedError):
        boss.encrypt(key_id, b"x")
    with pytest.raises(PermissionDeniedError):
        boss.generate_data_key(key_id)
    assert boss.disable_key(key_id).key_state == "DISABLED"
    assert boss.enable_key(key_id).key_state == "ENABLED"


@pytest.mark.parametrize(
    "manage",
    [
        pytest.param(lambda c, k: c.disable_key(k), id="DisableKey"),
        pytest.param(lambda c, k: c.schedule_key_deletion(k, 7), id="ScheduleKeyDeletion"),
        pytest.param(lambda c, k: c.update_key_description(k, "changed"), id="Description"),
        pytest.param(lambda c, k: c.tag_key(k, {"owner": "worker"}), id="TagKey"),
        pytest.param(lambda c, k: c.rotate_key_on_demand(k), id="RotateKeyOnDemand"),
        pytest.param(
            lambda c, k: c.put_key_policy(k, KeyPolicy(("worker",), ("worker",))),
            id="PutKeyPolicy-escalate",
        ),
        pytest.param(lambda c, k: c.get_key_policy(k), id="GetKeyPolicy"),
        pytest.param(lambda c, k: c.create_alias(f"alias/w-{uuid.uuid4()}", k), id="CreateAlias"),
    ],
)
def test_a_user_cannot_manage_the_key_and_nothing_changes(
    as_: Principal, manage: Callable[[HsmClient, str], object]
) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    boss = as_("boss")
    before = boss.describe_key(key_id)
    with pytest.raises(PermissionDeniedError):
        manage(as_("worker"), key_id)
    assert boss.describe_key(key_id) == before
    assert boss.get_key_policy(key_id) == KeyPolicy(("boss",), ("worker",))
    assert boss.list_aliases(key_id) == ([], "")
    assert [r.key_version for r in boss.iter_key_rotations(key_id)] == []


def test_a_principal_with_no_role_can_do_nothing_with_the_key(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    stranger = as_("stranger")
    for call in (
        lambda: stranger.describe_key(key_id),
        lambda: stranger.encrypt(key_id, b"x"),
        lambda: stranger.get_key_policy(key_id),
        lambda: stranger.disable_key(key_id),
    ):
        with pytest.raises(PermissionDeniedError):
            call()


def test_a_denied_caller_learns_nothing_about_the_keys_state(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    as_("boss").disable_key(key_id)
    # A user learns that the key is disabled ...
    with pytest.raises(FailedPreconditionError):
        as_("worker").encrypt(key_id, b"x")
    # ... one without the right only that it may not use the key.
    for denied in (
        lambda: as_("stranger").encrypt(key_id, b"x"),
        lambda: as_("boss").encrypt(key_id, b"x"),
        lambda: as_("worker").enable_key(key_id),
    ):
        with pytest.raises(HsmError) as caught:
            denied()
        assert isinstance(caught.value, PermissionDeniedError)
        assert "DISABLED" not in caught.value.message
    assert as_("boss").describe_key(key_id).key_state == "DISABLED"


@pytest.mark.parametrize("other", ["boss", "worker"])
def test_another_tenants_principal_gets_not_found_even_with_a_matching_name(
    as_: Principal, other: str
) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    foreign = as_(other, TENANT_B)
    missing = str(uuid.uuid4())
    for call in (
        lambda k: foreign.get_key_policy(k),
        lambda k: foreign.put_key_policy(k, KeyPolicy((other,), (other,))),
        lambda k: foreign.disable_key(k),
        lambda k: foreign.encrypt(k, b"x"),
    ):
        with pytest.raises(HsmError) as caught:
            call(key_id)
        with pytest.raises(HsmError) as absent:
            call(missing)
        assert isinstance(caught.value, NotFoundError)
        assert caught.value.message.replace(key_id, "K") == absent.value.message.replace(
            missing, "K"
        )
    assert as_("boss").describe_key(key_id).key_state == "ENABLED"
    assert as_("boss").get_key_policy(key_id) == KeyPolicy(("boss",), ("worker",))


def test_glob_patterns_match_principal_names(as_: Principal) -> None:
    key_id = _key(as_, ("ops-lead", "ops-*"), ("svc-*", "node-?"))
    for user in ("svc-orders", "svc-billing.v2", "node-1"):
        assert as_(user).encrypt(key_id, b"x").key_id == key_id
    for outsider in ("other-svc", "svc", "SVC-orders", "node-12", "xsvc-orders"):
        with pytest.raises(PermissionDeniedError):
            as_(outsider).encrypt(key_id, b"x")
    assert as_("ops-oncall").disable_key(key_id).key_state == "DISABLED"
    with pytest.raises(PermissionDeniedError):
        as_("svc-orders").enable_key(key_id)


def test_a_new_policy_takes_effect_at_once(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    as_("worker").encrypt(key_id, b"x")
    new = KeyPolicy(("boss",), ("worker-2",))
    assert as_("boss").put_key_policy(key_id, new) == new
    assert as_("boss").get_key_policy(key_id) == new
    with pytest.raises(PermissionDeniedError):
        as_("worker").encrypt(key_id, b"x")
    assert as_("worker-2").encrypt(key_id, b"x").key_id == key_id


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        pytest.param(KeyPolicy((), ("boss", "worker")), FailedPreconditionError, id="no-admin"),
        pytest.param(KeyPolicy(("worker",), ("boss",)), FailedPreconditionError, id="lock-out"),
        pytest.param(KeyPolicy(("b?",), ("boss",)), FailedPreconditionError, id="lock-out-glob"),
        pytest.param(KeyPolicy(("boss", "a b"), ()), InvalidArgumentError, id="space"),
        pytest.param(KeyPolicy(("boss",), ("tenant/alpha/x",)), InvalidArgumentError, id="slash"),
        pytest.param(KeyPolicy(("boss", "")), InvalidArgumentError, id="empty-pattern"),
        pytest.param(KeyPolicy(("boss", "x" * 129)), InvalidArgumentError, id="too-long"),
        pytest.param(KeyPolicy(("boss",), ("[a-z]*",)), InvalidArgumentError, id="brackets"),
    ],
)
def test_a_refused_policy_leaves_the_old_one(
    as_: Principal, policy: KeyPolicy, error: type[HsmError]
) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    with pytest.raises(error):
        as_("boss").put_key_policy(key_id, policy)
    assert as_("boss").get_key_policy(key_id) == KeyPolicy(("boss",), ("worker",))
    as_("worker").encrypt(key_id, b"still a user")


def test_the_lock_out_guard_allows_a_policy_that_keeps_the_caller_by_glob(
    as_: Principal,
) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    new = KeyPolicy(("bo*", "deputy"), ())
    assert as_("boss").put_key_policy(key_id, new) == new
    assert as_("deputy").get_key_policy(key_id) == new
    with pytest.raises(PermissionDeniedError):
        as_("worker").encrypt(key_id, b"x")


def test_create_key_refuses_a_policy_that_locks_the_creator_out(as_: Principal) -> None:
    boss = as_("lonely-boss")
    before = {key.key_id for key in boss.iter_keys()}
    with pytest.raises(FailedPreconditionError):
        boss.create_key(policy=KeyPolicy(("someone-else",), ("lonely-boss",)))
    with pytest.raises(FailedPreconditionError):
        boss.create_key(policy=KeyPolicy((), ("lonely-boss",)))
    with pytest.raises(InvalidArgumentError):
        boss.create_key(policy=KeyPolicy(("lonely-boss", "no spaces")))
    assert {key.key_id for key in boss.iter_keys()} == before


def test_policies_follow_aliases(as_: Principal) -> None:
    key_id = _key(as_, ("boss",), ("worker",))
    alias = f"alias/pol-{uuid.uuid4().hex[:12]}"
    as_("boss").create_alias(alias, key_id)
    assert as_("worker").encrypt(alias, b"x").key_id == key_id
    with pytest.raises(PermissionDeniedError):
        as_("stranger").encrypt(alias, b"x")
    with pytest.raises(PermissionDeniedError):
        as_("worker").disable_key(alias)
    with pytest.raises(PermissionDeniedError):
        as_("worker").delete_alias(alias)
    assert [a.alias_name for a in as_("boss").iter_aliases(key_id)] == [alias]


def test_re_encrypt_needs_the_user_role_on_both_keys(as_: Principal) -> None:
    mine = _key(as_, ("boss",), ("worker",))
    theirs = _key(as_, ("boss",), ("other-worker",))
    blob = as_("worker").encrypt(mine, b"x").ciphertext_blob
    with pytest.raises(PermissionDeniedError):
        as_("worker").re_encrypt(blob, theirs)
    with pytest.raises(PermissionDeniedError):
        as_("other-worker").re_encrypt(blob, theirs)
    as_("boss").put_key_policy(theirs, KeyPolicy(("boss",), ("other-worker", "worker")))
    moved = as_("worker").re_encrypt(blob, theirs)
    assert (moved.source_key_id, moved.key_id) == (mine, theirs)


def test_repointing_an_alias_needs_the_administrator_role_on_both_keys(as_: Principal) -> None:
    own = _key(as_, ("boss",), ("worker",))
    foreign = _key(as_, ("other-boss",), ("worker",))
    alias = f"alias/pol-{uuid.uuid4().hex[:12]}"
    as_("boss").create_alias(alias, own)
    with pytest.raises(PermissionDeniedError):
        as_("boss").update_alias(alias, foreign)
    with pytest.raises(PermissionDeniedError):
        as_("other-boss").update_alias(alias, foreign)
    assert [a.target_key_id for a in as_("boss").iter_aliases(own)] == [own]
