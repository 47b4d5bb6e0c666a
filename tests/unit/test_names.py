"""Key names a caller may send for its own keys: ids, aliases, hsmd's resource names and AWS
ARNs, and how another tenant's name is answered (as a key that does not exist)."""

from __future__ import annotations

import pytest

from hsmd.errors import NotFound
from hsmd.names import key_resource_name, local_key_name

KEY_ID = "0b5e3d4a-1111-4222-8333-944445555666"


@pytest.mark.parametrize(
    ("name", "local"),
    [
        (KEY_ID, KEY_ID),
        ("alias/payroll", "alias/payroll"),
        (key_resource_name("acme", KEY_ID), KEY_ID),
        (f"arn:aws:kms:eu-west-1:acme:key/{KEY_ID}", KEY_ID),
        ("arn:aws:kms:eu-west-1:acme:alias/payroll", "alias/payroll"),
        (f"arn:aws-cn:kms::acme:key/{KEY_ID}", KEY_ID),
        ("not a name", "not a name"),  # left to the id's own checks
    ],
)
def test_the_tenants_own_names_become_ids_or_aliases(name: str, local: str) -> None:
    assert local_key_name("acme", name) == local


@pytest.mark.parametrize(
    "name",
    [
        key_resource_name("other", KEY_ID),
        f"arn:aws:kms:eu-west-1:other:key/{KEY_ID}",
        f"arn:aws:kms:eu-west-1:111122223333:key/{KEY_ID}",  # an AWS account is no tenant
        "arn:aws:kms:eu-west-1:other:alias/payroll",
    ],
)
def test_another_tenants_name_is_a_key_that_does_not_exist(name: str) -> None:
    with pytest.raises(NotFound) as refused:
        local_key_name("acme", name)
    assert str(refused.value) == f"key {name!r} not found"
