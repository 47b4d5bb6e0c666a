"""Aliases (per tenant, accepted wherever a key id is) and descriptions and tags."""

from __future__ import annotations

import pytest
from hsmclient import AlreadyExistsError, HsmClient, InvalidArgumentError, NotFoundError

from tests.conftest import TENANT_A, TENANT_B
from tests.harness import DaemonProcess


@pytest.fixture(scope="module")
def alice(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_A, "aliaser")


@pytest.fixture(scope="module")
def bob(daemon: DaemonProcess) -> HsmClient:
    return daemon.client(TENANT_B, "aliaser")


def test_repointing_an_alias_changes_which_key_new_encryptions_use(alice: HsmClient) -> None:
    first, second = alice.create_key().key_id, alice.create_key().key_id
    alias = alice.create_alias("alias/orders", first)
    assert (alias.alias_name, alias.target_key_id) == ("alias/orders", first)
    assert alice.encrypt("alias/orders", b"one").key_id == first
    assert alice.describe_key("alias/orders").key_id == first
    updated = alice.update_alias("alias/orders", second)
    assert updated.target_key_id == second and updated.last_updated_time >= alias.creation_time
    blob = alice.encrypt("alias/orders", b"two").ciphertext_blob
    assert alice.decrypt(blob).key_id == second
    assert alice.decrypt(blob, key_id="alias/orders").plaintext == b"two"
    listed = {a.alias_name: a.target_key_id for a in alice.iter_aliases(key_id=second)}
    assert listed == {"alias/orders": second}
    alice.delete_alias("alias/orders")
    with pytest.raises(NotFoundError, match="alias"):
        alice.encrypt("alias/orders", b"three")
    assert alice.describe_key(second).key_state == "ENABLED"  # the key is untouched


def test_alias_rules(alice: HsmClient) -> None:
    aes, ec = alice.create_key().key_id, alice.create_key(key_spec="EC_P256").key_id
    alice.create_alias("alias/rules", aes)
    with pytest.raises(AlreadyExistsError):
        alice.create_alias("alias/rules", aes)
    with pytest.raises(InvalidArgumentError, match="same spec and usage"):
        alice.update_alias("alias/rules", ec)
    for bad in ("orders", "alias/", "alias/has space", "alias/hsmd/reserved", "alias/" + "x" * 251):
        with pytest.raises(InvalidArgumentError, match="alias"):
            alice.create_alias(bad, aes)
    with pytest.raises(InvalidArgumentError, match="not an alias"):
        alice.create_alias("alias/chain", "alias/rules")
    with pytest.raises(NotFoundError):
        alice.delete_alias("alias/never-made")


def test_tenants_own_their_alias_names_and_cannot_see_each_others(
    alice: HsmClient, bob: HsmClient
) -> None:
    alice_key, bob_key = alice.create_key().key_id, bob.create_key().key_id
    alice.create_alias("alias/shared-name", alice_key)
    bob.create_alias("alias/shared-name", bob_key)
    assert alice.describe_key("alias/shared-name").key_id == alice_key
    assert bob.describe_key("alias/shared-name").key_id == bob_key
    alice.create_alias("alias/alpha-only", alice_key)
    with pytest.raises(NotFoundError):
        bob.encrypt("alias/alpha-only", b"x")
    with pytest.raises(NotFoundError):
        bob.delete_alias("alias/alpha-only")
    with pytest.raises(NotFoundError):
        bob.create_alias("alias/bob-to-alpha", alice_key)
    assert "alias/alpha-only" not in {a.alias_name for a in bob.iter_aliases()}


def test_description_and_tags(alice: HsmClient) -> None:
    key_id = alice.create_key(description="before", tags={"team": "pay", "env": "dev"}).key_id
    assert alice.update_key_description(key_id, "after").description == "after"
    tagged = alice.tag_key(key_id, {"env": "prod", "owner": "ana"})
    assert dict(tagged.tags) == {"team": "pay", "env": "prod", "owner": "ana"}
    assert dict(alice.untag_key(key_id, ["owner", "absent"]).tags) == {"team": "pay", "env": "prod"}
    other = alice.create_key(tags={"team": "pay", "env": "dev"}).key_id
    found = {key.key_id for key in alice.iter_keys(tag_filter={"team": "pay", "env": "prod"})}
    assert key_id in found and other not in found
    assert {k.key_id for k in alice.iter_keys(tag_filter={"team": "pay"})} >= {key_id, other}
    with pytest.raises(InvalidArgumentError, match="at most 50 tags"):
        alice.tag_key(key_id, {f"t{i}": "v" for i in range(49)})
    with pytest.raises(InvalidArgumentError, match="tag keys"):
        alice.tag_key(key_id, {"": "v"})
    with pytest.raises(InvalidArgumentError, match="description"):
        alice.update_key_description(key_id, "d" * 8193)
