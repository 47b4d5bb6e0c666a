"""What the token holds for a key made through the daemon, read back by a separate process."""

from __future__ import annotations

from tests.conftest import TENANT_A
from tests.harness import DaemonProcess


def test_a_created_key_is_a_sensitive_non_extractable_token_object(daemon: DaemonProcess) -> None:
    with daemon.client(TENANT_A, "storage") as client:
        key_id = client.create_key().key_id
    (object_id,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)[0]
    (stored,) = daemon.token_objects(TENANT_A, bytes(object_id))
    assert stored["token"] is True
    assert stored["private"] is True
    assert stored["sensitive"] is True
    assert stored["always_sensitive"] is True
    assert stored["extractable"] is False
    assert stored["never_extractable"] is True
    assert stored["modifiable"] is False
    assert stored["copyable"] is False
    assert (stored["encrypt"], stored["decrypt"]) == (True, True)
    assert not any(stored[right] for right in ("sign", "verify", "wrap", "unwrap", "derive"))
    assert stored["value"] == "AttributeSensitive"


def test_pairs_and_hmac_keys_have_templates_limited_to_their_usage(daemon: DaemonProcess) -> None:
    """A private key only signs or decrypts, its public half only verifies or encrypts, an
    HMAC key only signs and verifies; none can be read, wrapped or derived from."""
    with daemon.client(TENANT_A, "storage") as client:
        signing = client.create_key(key_spec="EC_P256").key_id
        decrypting = client.create_key(key_spec="RSA_2048", key_usage="ENCRYPT_DECRYPT").key_id
        mac = client.create_key(key_spec="HMAC_256").key_id
    expected_rights = {
        signing: ({"sign"}, {"verify"}),
        decrypting: ({"decrypt"}, {"encrypt"}),
        mac: ({"sign", "verify"}, None),
    }
    rights = ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive")
    for key_id, (private_rights, public_rights) in expected_rights.items():
        (object_id,) = daemon.query("SELECT object_id FROM key_versions WHERE key_id = ?", key_id)[
            0
        ]
        objects = daemon.token_objects(TENANT_A, bytes(object_id))
        secret = [o for o in objects if o["sensitive"] is True]
        public = [o for o in objects if o["sensitive"] != True]  # noqa: E712 (may be an error name)
        assert len(secret) == 1 and len(public) == (0 if public_rights is None else 1)
        held = {r for r in rights if secret[0].get(r) is True}
        assert held == private_rights, key_id
        assert secret[0]["extractable"] is False and secret[0]["never_extractable"] is True
        assert secret[0]["value"] != "readable"
        assert secret[0]["modifiable"] is False and secret[0]["copyable"] is False
        if public_rights is not None:
            assert {r for r in rights if public[0].get(r) is True} == public_rights
            assert public[0]["token"] is True and public[0]["modifiable"] is False
