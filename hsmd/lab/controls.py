"""The isolation controls: each does one thing to the deployments, measures it, and compares
the figures with a stated threshold (docs/lab.md says how to read each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsmclient import HsmClient, HsmError, ResourceExhaustedError, TenantQuota

from hsmd.backend.pins import PinDeriver
from hsmd.backend.softhsm_files import scan_tokens
from hsmd.lab.deploy import Instance, Lab
from hsmd.lab.stats import mann_whitney, percentile


@dataclass(frozen=True)
class Effort:
    """How long the controls run: --quick (about two minutes in all) or the full run."""

    oracle_calls: int  # per arm
    phase_seconds: float  # each noisy-neighbour phase
    quota_seconds: float
    containment_calls: int


QUICK = Effort(oracle_calls=600, phase_seconds=2.0, quota_seconds=3.0, containment_calls=50)
FULL = Effort(oracle_calls=4000, phase_seconds=20.0, quota_seconds=20.0, containment_calls=500)


@dataclass
class Result:
    """A control's outcome: what was done, the threshold, the measured figures, and whether
    they meet it (None: skipped, with the reason); `rows` are the raw data, `series` what the
    plots draw."""

    name: str
    title: str
    done: str
    threshold: str
    figures: dict[str, Any] = field(default_factory=dict)
    passed: bool | None = None
    skipped: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)


def _outcome(call: Callable[[], object]) -> tuple[str, str, str]:
    """(status, message, reason) of a call: OK, or the error it answers."""
    try:
        call()
    except HsmError as exc:
        return exc.code.name, exc.message, exc.reason or ""
    return "OK", "", ""


# --- confidentiality ------------------------------------------------------------------------


def confidentiality(lab: Lab, effort: Effort) -> Result:
    owner, other = lab.tenants[0], lab.tenants[1]
    result = Result(
        "confidentiality",
        "Another tenant's resources look exactly like missing ones",
        f"On the multi-tenant instance, {owner} made an AES, an EC and an HMAC key, an alias and"
        f" a ciphertext. {other} then called every RPC that takes a key id, an alias or a"
        f" ciphertext, once naming {owner}'s resource and once a missing one (a random key id, an"
        " alias that does not exist, the ciphertext with a random key id), and the two answers"
        " were compared: status, reason and message, with the name given replaced by a"
        " placeholder.",
        "every answer for another tenant's resource equals the answer for a missing one",
    )
    with lab.multi.client(owner) as mine:
        aes = mine.create_key().key_id
        ec = mine.create_key("EC_P256", "SIGN_VERIFY").key_id
        hmac = mine.create_key("HMAC_256").key_id
        alias = f"alias/lab-{uuid.uuid4().hex[:8]}"
        mine.create_alias(alias, aes)
        blob = mine.encrypt(aes, b"lab secret").ciphertext_blob
    missing_blob = blob[:1] + uuid.uuid4().bytes + blob[17:]
    cases = _confidentiality_cases(aes, ec, hmac, alias, blob, missing_blob)
    with lab.multi.client(other) as theirs:
        for name, foreign, absent, call in cases:
            seen = _outcome(lambda: call(theirs, foreign))  # noqa: B023 (called at once)
            unseen = _outcome(lambda: call(theirs, absent))  # noqa: B023
            same = _masked(seen, foreign) == _masked(unseen, absent)
            result.rows.append(
                {"rpc": name, "foreign": list(seen), "missing": list(unseen), "same": same}
            )
    mismatches = [row["rpc"] for row in result.rows if not row["same"]]
    result.figures = {"RPCs checked": len(result.rows), "answers that differ": len(mismatches)}
    if mismatches:
        result.figures["differing RPCs"] = ", ".join(mismatches)
    result.passed = not mismatches
    return result


def _masked(outcome: tuple[str, str, str], name: object) -> tuple[str, str, str]:
    text = name.hex() if isinstance(name, bytes) else str(name)
    return outcome[0], outcome[1].replace(text, "<name>"), outcome[2]


_Case = tuple[str, Any, Any, Callable[[HsmClient, Any], object]]


def _confidentiality_cases(
    aes: str, ec: str, hmac: str, alias: str, blob: bytes, missing_blob: bytes
) -> list[_Case]:
    missing = str(uuid.uuid4())
    keyed: list[tuple[str, str, Callable[[HsmClient, Any], object]]] = [
        ("DescribeKey", aes, lambda c, k: c.describe_key(k)),
        ("Encrypt", aes, lambda c, k: c.encrypt(k, b"x")),
        ("GenerateDataKey", aes, lambda c, k: c.generate_data_key(k)),
        (
            "GenerateDataKeyWithoutPlaintext",
            aes,
            lambda c, k: c.generate_data_key_without_plaintext(k),
        ),
        ("GenerateDataKeyPair", aes, lambda c, k: c.generate_data_key_pair(k, "EC_P256")),
        ("ReEncrypt", aes, lambda c, k: c.re_encrypt(blob, k)),
        ("Sign", ec, lambda c, k: c.sign(k, b"x", "ECDSA_SHA_256")),
        ("Verify", ec, lambda c, k: c.verify(k, b"x", b"y" * 64, "ECDSA_SHA_256")),
        ("GetPublicKey", ec, lambda c, k: c.get_public_key(k)),
        ("GenerateMac", hmac, lambda c, k: c.generate_mac(k, b"x", "HMAC_SHA_256")),
        ("VerifyMac", hmac, lambda c, k: c.verify_mac(k, b"x", b"y" * 32, "HMAC_SHA_256")),
        ("EnableKey", aes, lambda c, k: c.enable_key(k)),
        ("DisableKey", aes, lambda c, k: c.disable_key(k)),
        ("UpdateKeyDescription", aes, lambda c, k: c.update_key_description(k, "x")),
        ("TagKey", aes, lambda c, k: c.tag_key(k, {"x": "y"})),
        ("UntagKey", aes, lambda c, k: c.untag_key(k, ["x"])),
        ("GetKeyPolicy", aes, lambda c, k: c.get_key_policy(k)),
        ("GetKeyRotationStatus", aes, lambda c, k: c.get_key_rotation_status(k)),
        ("EnableKeyRotation", aes, lambda c, k: c.enable_key_rotation(k)),
        ("RotateKeyOnDemand", aes, lambda c, k: c.rotate_key_on_demand(k)),
        ("ListKeyRotations", aes, lambda c, k: c.list_key_rotations(k)),
        ("ListAliases", aes, lambda c, k: c.list_aliases(k)),
        ("CreateAlias", aes, lambda c, k: c.create_alias(f"alias/lab-{uuid.uuid4().hex[:8]}", k)),
        ("ScheduleKeyDeletion", aes, lambda c, k: c.schedule_key_deletion(k, 30)),
        (
            "GetParametersForImport",
            aes,
            lambda c, k: c.get_parameters_for_import(k, "RSAES_OAEP_SHA_1"),
        ),
        ("ListAuditEvents", aes, lambda c, k: c.list_audit_events(key_id=k)),
    ]
    cases: list[_Case] = [(name, key, missing, call) for name, key, call in keyed]
    cases.append(
        ("DescribeKey (alias)", alias, "alias/lab-missing", lambda c, a: c.describe_key(a))
    )
    cases.append(("Decrypt", blob, missing_blob, lambda c, b: c.decrypt(b)))
    return cases


# --- existence oracle -----------------------------------------------------------------------


def existence_oracle(lab: Lab, effort: Effort) -> Result:
    owner, other = lab.tenants[0], lab.tenants[1]
    result = Result(
        "existence_oracle",
        "The time of an answer does not tell whether another tenant's key exists",
        f"{other} called DescribeKey {effort.oracle_calls} times naming {owner}'s key and"
        f" {effort.oracle_calls} times naming a missing one, interleaved, on the multi-tenant"
        " instance, and the two samples of latencies were compared with a two-sided"
        " Mann-Whitney U test.",
        "p-value of at least 0.01 (no difference a test of this size can find)",
    )
    with lab.multi.client(owner) as mine:
        foreign = mine.create_key().key_id
    times: dict[str, list[float]] = {"another tenant's key": [], "a missing key": []}
    with lab.multi.client(other) as theirs:
        for _ in range(effort.oracle_calls):
            for arm, key_id in (
                ("another tenant's key", foreign),
                ("a missing key", str(uuid.uuid4())),
            ):
                started = time.perf_counter()
                _outcome(lambda: theirs.describe_key(key_id))  # noqa: B023
                times[arm].append((time.perf_counter() - started) * 1e6)
    test = mann_whitney(times["another tenant's key"], times["a missing key"])
    result.figures = {
        "calls per arm": effort.oracle_calls,
        "median, another tenant's key (us)": round(
            percentile(times["another tenant's key"], 0.5), 1
        ),
        "median, a missing key (us)": round(percentile(times["a missing key"], 0.5), 1),
        "Mann-Whitney U": round(test.u, 1),
        "z": round(test.z, 3),
        "p-value": round(test.p_value, 4),
    }
    result.passed = test.p_value >= 0.01
    result.series = times
    result.rows = [
        {"arm": arm, "microseconds": value} for arm, values in times.items() for value in values
    ]
    return result


# --- noisy neighbour ------------------------------------------------------------------------

_QUIET_PLAINTEXT = b"q" * 1024
_FLOOD_PLAINTEXT = b"f" * 4096


def _flood_rsa(instance: Instance, tenant: str, stop: threading.Event) -> None:
    with instance.client(tenant, retries=False) as client:
        while not stop.is_set():
            _outcome(lambda: client.create_key("RSA_4096", "SIGN_VERIFY"))


def _flood_encrypt(instance: Instance, tenant: str, stop: threading.Event) -> None:
    with instance.client(tenant, retries=False) as client:
        key_id = client.create_key().key_id
        while not stop.is_set():
            _outcome(lambda: client.encrypt(key_id, _FLOOD_PLAINTEXT))


def _flood_audit(instance: Instance, tenant: str, stop: threading.Event) -> None:
    with instance.client(tenant, retries=False) as client:
        while not stop.is_set():
            _outcome(lambda: client.list_audit_events(page_size=1000))


def _flood_connections(instance: Instance, tenant: str, stop: threading.Event) -> None:
    while not stop.is_set():
        with instance.client(tenant, retries=False) as client:  # a new TLS handshake each
            _outcome(lambda: client.generate_random(1))


# Each flood: what it does, and how many threads of the noisy tenant do it.
FLOODS: dict[str, tuple[Callable[[Instance, str, threading.Event], None], int]] = {
    "RSA-4096 key generation": (_flood_rsa, 2),
    "4 KB encryption at full rate": (_flood_encrypt, 6),
    "audit-heavy calls": (_flood_audit, 3),
    "connection flood": (_flood_connections, 4),
}


def _quiet_latencies(
    instance: Instance, tenant: str, seconds: float, flood: str | None, noisy: tuple[Instance, str]
) -> tuple[list[float], int]:
    """The quiet tenant's Encrypt latencies (ms) for `seconds`, while `flood` runs (if any),
    and how many of its calls were not answered OK (one attempt each: none is retried)."""
    stop = threading.Event()
    threads = []
    if flood is not None:
        run, count = FLOODS[flood]
        threads = [
            threading.Thread(target=run, args=(*noisy, stop), daemon=True) for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        time.sleep(min(1.0, seconds / 4))  # the flood under way
    latencies, failed = [], 0
    with instance.client(tenant, retries=False) as client:
        key_id = client.create_key().key_id
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = _outcome(lambda: client.encrypt(key_id, _QUIET_PLAINTEXT))[0]
            latencies.append((time.perf_counter() - started) * 1000)
            failed += status != "OK"
    stop.set()
    for thread in threads:
        thread.join(120)
    return latencies, failed


def noisy_neighbour(lab: Lab, effort: Effort) -> Result:
    quiet, noisy = lab.tenants[0], lab.tenants[1]
    result = Result(
        "noisy_neighbour",
        "A quiet tenant's latency while another tenant floods",
        f"{quiet} made 1 KB Encrypt calls one after another for {effort.phase_seconds:g} s"
        f" alone, then while {noisy} flooded with each of: "
        + ", ".join(f"{name} ({count} threads)" for name, (_, count) in FLOODS.items())
        + ". On the multi-tenant instance both tenants share it; on single-tenant instances"
        f" {quiet}'s instance and {noisy}'s share only the machine.",
        "for each flood, the multi-tenant p99 grows by no more than max(3, twice the"
        " single-tenant growth): sharing an instance costs at most twice what sharing the"
        " machine costs",
    )
    verdicts = []
    for kind, quiet_at, noisy_at in (
        ("multi", lab.multi, lab.multi),
        ("single", lab.single[quiet], lab.single[noisy]),
    ):
        for flood in (None, *FLOODS):
            phase = flood or "alone"
            latencies, failed = _quiet_latencies(
                quiet_at, quiet, effort.phase_seconds, flood, (noisy_at, noisy)
            )
            result.figures[f"{kind} {phase}: calls, not answered OK"] = (
                f"{len(latencies)}, {failed}"
            )
            result.series[f"{kind}: {phase}"] = latencies
            result.rows += [
                {"deployment": kind, "phase": phase, "ms": value} for value in latencies
            ]
            for name, fraction in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)):
                result.figures[f"{kind} {phase} {name} (ms)"] = round(
                    percentile(latencies, fraction), 2
                )
    for flood in FLOODS:
        growth = {
            kind: result.figures[f"{kind} {flood} p99 (ms)"]
            / max(1e-9, result.figures[f"{kind} alone p99 (ms)"])
            for kind in ("multi", "single")
        }
        result.figures[f"p99 growth under {flood}: multi / single"] = (
            f"{growth['multi']:.2f}x / {growth['single']:.2f}x"
        )
        verdicts.append(growth["multi"] <= max(3.0, 2 * growth["single"]))
    result.passed = all(verdicts)
    return result


# --- quotas ---------------------------------------------------------------------------------

_QUOTA = 20.0  # the flooding tenant's symmetric requests per second during the control


def quotas(lab: Lab, effort: Effort) -> Result:
    quiet, noisy = lab.tenants[0], lab.tenants[1]
    result = Result(
        "quotas",
        "A flooding tenant is held to its quota, and the quiet tenant's rate is not",
        f"On the multi-tenant instance an operator set {noisy}'s symmetric quota to"
        f" {_QUOTA:g} requests a second; {noisy} then called Encrypt from 4 threads as fast as it"
        f" could for {effort.quota_seconds:g} s, while {quiet} called Encrypt one call after"
        f" another; {quiet}'s rate was also measured alone. The quota was restored after.",
        f"{noisy}'s answered rate at most 1.2x its quota plus one second's burst; {quiet}'s rate"
        " under the flood at least half its rate alone",
    )
    if lab.multi.operator is None:
        result.skipped = "no operator certificate for the multi-tenant instance is given"
        return result
    alone = _rate(lab.multi, quiet, effort.quota_seconds, None)
    with lab.multi.admin() as admin:
        admin.set_tenant_quota(noisy, TenantQuota(symmetric_requests_per_second=_QUOTA))
        try:
            counts = {"answered": 0, "refused": 0}
            lock = threading.Lock()
            stop = threading.Event()

            def flood() -> None:
                with lab.multi.client(noisy, retries=False) as client:  # each refusal seen
                    key_id = client.create_key().key_id
                    while not stop.is_set():
                        try:
                            client.encrypt(key_id, b"x")
                            outcome = "answered"
                        except ResourceExhaustedError:
                            outcome = "refused"
                        with lock:
                            counts[outcome] += 1

            threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
            for thread in threads:
                thread.start()
            during = _rate(lab.multi, quiet, effort.quota_seconds, stop)
            for thread in threads:
                thread.join(60)
        finally:
            admin.set_tenant_quota(noisy, TenantQuota())
    answered_rate = counts["answered"] / effort.quota_seconds
    result.figures = {
        f"{noisy}'s quota (requests/s)": _QUOTA,
        f"{noisy}'s answered rate (requests/s)": round(answered_rate, 1),
        f"{noisy}'s refusals": counts["refused"],
        f"{quiet}'s rate alone (requests/s)": round(alone, 1),
        f"{quiet}'s rate under the flood (requests/s)": round(during, 1),
    }
    limit = _QUOTA * 1.2 + _QUOTA / effort.quota_seconds
    result.passed = answered_rate <= limit and during >= 0.5 * alone
    result.rows = [dict(result.figures)]
    return result


def _rate(instance: Instance, tenant: str, seconds: float, then: threading.Event | None) -> float:
    """Calls a second the tenant makes one after another for `seconds`; sets `then` after."""
    with instance.client(tenant) as client:
        key_id = client.create_key().key_id
        calls = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            _outcome(lambda: client.encrypt(key_id, b"x"))
            calls += 1
    if then is not None:
        then.set()
    return calls / seconds


# --- at rest --------------------------------------------------------------------------------


def at_rest(lab: Lab, effort: Effort) -> Result:
    result = Result(
        "at_rest",
        "Each tenant's token objects are separate, sensitive, and sealed by its own PIN",
        "With the multi-tenant instance's token directory, a separate process opened each"
        " tenant's token with its own PIN and listed every object's attributes, then tried to"
        " log in to it with every other tenant's PIN.",
        "one token per tenant; every secret and private key sensitive and not extractable"
        " unless made exportable; no tenant's PIN opens another's token",
    )
    instance = lab.multi
    if not instance.own or instance.master_secret is None or instance.directory is None:
        result.skipped = "white-box: needs the lab's own deployment"
        return result
    pins = PinDeriver(instance.master_secret)
    conf = str(instance.directory / "tokens" / "hsmd-softhsm2.conf")
    request = {"conf": conf, "tokens": {t: pins.user_pin(t) for t in lab.tenants}}
    probed = subprocess.run(
        [sys.executable, "-m", "hsmd.lab.probe"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SOFTHSM2_CONF": conf},
    )
    if probed.returncode != 0:
        result.figures = {"probe": probed.stderr.strip()[-300:]}
        result.passed = False
        return result
    report = json.loads(probed.stdout)
    result.rows = report["objects"]
    exposed = [
        row for row in result.rows if row["secret"] and (not row["sensitive"] or row["extractable"])
    ]
    result.figures = {
        "tokens": len(report["serials"]),
        "distinct token serials": len(set(report["serials"].values())),
        "objects checked": len(result.rows),
        "secret or private keys readable or extractable": len(exposed),
        "logins with another tenant's PIN that succeeded": report["cross_logins"],
    }
    result.passed = (
        len(set(report["serials"].values())) == len(lab.tenants)
        and not exposed
        and report["cross_logins"] == 0
    )
    return result


# --- failure containment --------------------------------------------------------------------


def failure_containment(lab: Lab, effort: Effort) -> Result:
    damaged, served = lab.tenants[0], lab.tenants[1]
    result = Result(
        "failure_containment",
        "A damaged object of one tenant leaves the other tenants served",
        f"On the multi-tenant instance, every key object file of {damaged}'s token was"
        f" overwritten with zeros (as a disk fault would leave them); then {served} made"
        f" {effort.containment_calls} Encrypt calls and {damaged} tried its damaged key.",
        f"every call of {served} answered",
    )
    instance = lab.multi
    if not instance.own or instance.directory is None:
        result.skipped = "white-box: needs the lab's own deployment"
        return result
    with instance.client(damaged) as client:
        key_id = client.create_key().key_id
        blob = client.encrypt(key_id, b"x").ciphertext_blob
    token_dirs = _token_dirs_of(instance, damaged)
    for directory in token_dirs:
        for path in directory.glob("*.object"):
            if path.name != "token.object":
                path.write_bytes(b"\0" * path.stat().st_size)
    outcomes: dict[str, int] = {}
    with instance.client(served) as client:
        own = client.create_key().key_id
        for _ in range(effort.containment_calls):
            status = _outcome(lambda: client.encrypt(own, b"x"))[0]
            outcomes[status] = outcomes.get(status, 0) + 1
    with instance.client(damaged) as client:
        damaged_status = _outcome(lambda: client.decrypt(blob))[0]
    result.figures = {
        f"{served}'s calls": effort.containment_calls,
        f"{served}'s calls answered OK": outcomes.get("OK", 0),
        f"{damaged}'s damaged key, on Decrypt": damaged_status,
        f"{damaged}'s token directories damaged": len(token_dirs),
    }
    result.rows = [{"tenant": served, "status": k, "calls": v} for k, v in outcomes.items()]
    result.passed = outcomes.get("OK", 0) == effort.containment_calls
    return result


def _token_dirs_of(instance: Instance, tenant: str) -> list[Path]:
    assert instance.directory is not None
    return [
        t.directory
        for t in scan_tokens(instance.directory / "tokens")
        if t.label == f"hsmd/{tenant}"
    ]


CONTROLS: list[Callable[[Lab, Effort], Result]] = [
    confidentiality,
    existence_oracle,
    noisy_neighbour,
    quotas,
    at_rest,
    failure_containment,
]
