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
