"""The isolation controls: each does one thing to the deployments, measures it, and compares
the figures with a stated threshold (docs/lab.md says how to read each)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsmclient import HsmClient, HsmError, KeyPolicy, TenantQuota
from hsmclient.client import DecryptItem, EncryptItem, GenerateMacItem, SignItem

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
FULL = Effort(oracle_calls=5000, phase_seconds=40.0, quota_seconds=40.0, containment_calls=500)


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
    """(status, message, reason) of a call: OK, or the error it answers; for a batch, its
    one item's."""
    try:
        answer = call()
    except HsmError as exc:
        return exc.code.name, exc.message, exc.reason or ""
    if isinstance(answer, list) and answer and isinstance(answer[0], HsmError):
        return answer[0].code.name, answer[0].message, answer[0].reason or ""
    return "OK", "", ""


def progress(line: str) -> None:
    """A line of progress on standard error, as the run goes."""
    print(f"hsmd lab: {line}", file=sys.stderr, flush=True)


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
        wrapping = mine.create_key(key_usage="WRAP_UNWRAP").key_id
        external = mine.create_key(origin="EXTERNAL").key_id
        alias = f"alias/lab-{uuid.uuid4().hex[:8]}"
        mine.create_alias(alias, aes)
        blob = mine.encrypt(aes, b"lab secret").ciphertext_blob
    keys = _Named(aes, ec, hmac, wrapping, external, alias)
    missing_blob = blob[:1] + uuid.uuid4().bytes + blob[17:]
    with lab.multi.client(other) as theirs:
        own_key = theirs.create_key(exportable=True).key_id
        own_blob = theirs.encrypt(own_key, b"theirs").ciphertext_blob
        cases = _confidentiality_cases(keys, blob, missing_blob, own_key, own_blob)
        for name, foreign, absent, call in cases:
            seen = _outcome(lambda: call(theirs, foreign))  # noqa: B023 (called at once)
            unseen = _outcome(lambda: call(theirs, absent))  # noqa: B023
            same = _masked(seen, foreign) == _masked(unseen, absent)
            result.rows.append(
                {"call": name, "foreign": list(seen), "missing": list(unseen), "same": same}
            )
    mismatches = [row["call"] for row in result.rows if not row["same"]]
    result.figures = {
        "RPCs checked": len({row["call"].split(" (")[0] for row in result.rows}),
        "calls compared (an RPC may be called with a key id and with an alias)": len(result.rows),
        "answers that differ": len(mismatches),
    }
    if mismatches:
        result.figures["differing calls"] = ", ".join(mismatches)
    result.passed = not mismatches
    return result


def _masked(outcome: tuple[str, str, str], name: object) -> tuple[str, str, str]:
    text = name.hex() if isinstance(name, bytes) else str(name)
    return outcome[0], outcome[1].replace(text, "<name>"), outcome[2]


@dataclass(frozen=True)
class _Named:
    """The owner's resources that the other tenant names."""

    aes: str
    ec: str
    hmac: str
    wrapping: str
    external: str
    alias: str


_Case = tuple[str, Any, Any, Callable[[HsmClient, Any], object]]


def _confidentiality_cases(
    keys: _Named, blob: bytes, missing_blob: bytes, own_key: str, own_blob: bytes
) -> list[_Case]:
    """Every RPC that takes a key id, alias or ciphertext, as (name, the owner's resource,
    a missing one, the call). own_key, own_blob: the caller's, where an RPC needs one of its
    own beside the other's (ReEncrypt to the other's key, WrapKey under it)."""
    missing = str(uuid.uuid4())
    ec_sig, mac = b"y" * 64, b"y" * 32
    keyed: list[tuple[str, str, Callable[[HsmClient, Any], object]]] = [
        ("DescribeKey", keys.aes, lambda c, k: c.describe_key(k)),
        ("Encrypt", keys.aes, lambda c, k: c.encrypt(k, b"x")),
        ("GenerateDataKey", keys.aes, lambda c, k: c.generate_data_key(k)),
        (
            "GenerateDataKeyWithoutPlaintext",
            keys.aes,
            lambda c, k: c.generate_data_key_without_plaintext(k),
        ),
        ("GenerateDataKeyPair", keys.aes, lambda c, k: c.generate_data_key_pair(k, "EC_P256")),
        (
            "GenerateDataKeyPairWithoutPlaintext",
            keys.aes,
            lambda c, k: c.generate_data_key_pair_without_plaintext(k, "EC_P256"),
        ),
        ("ReEncrypt", keys.aes, lambda c, k: c.re_encrypt(own_blob, k)),
        ("Sign", keys.ec, lambda c, k: c.sign(k, b"x", "ECDSA_SHA_256")),
        ("Verify", keys.ec, lambda c, k: c.verify(k, b"x", ec_sig, "ECDSA_SHA_256")),
        ("GetPublicKey", keys.ec, lambda c, k: c.get_public_key(k)),
        ("GenerateMac", keys.hmac, lambda c, k: c.generate_mac(k, b"x", "HMAC_SHA_256")),
        ("VerifyMac", keys.hmac, lambda c, k: c.verify_mac(k, b"x", mac, "HMAC_SHA_256")),
        ("EnableKey", keys.aes, lambda c, k: c.enable_key(k)),
        ("DisableKey", keys.aes, lambda c, k: c.disable_key(k)),
        ("ScheduleKeyDeletion", keys.aes, lambda c, k: c.schedule_key_deletion(k, 30)),
        ("CancelKeyDeletion", keys.aes, lambda c, k: c.cancel_key_deletion(k)),
        ("UpdateKeyDescription", keys.aes, lambda c, k: c.update_key_description(k, "x")),
        ("TagKey", keys.aes, lambda c, k: c.tag_key(k, {"x": "y"})),
        ("UntagKey", keys.aes, lambda c, k: c.untag_key(k, ["x"])),
        ("GetKeyPolicy", keys.aes, lambda c, k: c.get_key_policy(k)),
        ("PutKeyPolicy", keys.aes, lambda c, k: c.put_key_policy(k, KeyPolicy(("lab",)))),
        ("GetKeyRotationStatus", keys.aes, lambda c, k: c.get_key_rotation_status(k)),
        ("EnableKeyRotation", keys.aes, lambda c, k: c.enable_key_rotation(k)),
        ("DisableKeyRotation", keys.aes, lambda c, k: c.disable_key_rotation(k)),
        ("RotateKeyOnDemand", keys.aes, lambda c, k: c.rotate_key_on_demand(k)),
        ("ListKeyRotations", keys.aes, lambda c, k: c.list_key_rotations(k)),
        ("ListAliases", keys.aes, lambda c, k: c.list_aliases(k)),
        (
            "CreateAlias",
            keys.aes,
            lambda c, k: c.create_alias(f"alias/lab-{uuid.uuid4().hex[:8]}", k),
        ),
        ("WrapKey", keys.wrapping, lambda c, k: c.wrap_key(own_key, k)),
        ("UnwrapKey", keys.wrapping, lambda c, k: c.unwrap_key(b"w" * 40, k)),
        (
            "GetParametersForImport",
            keys.external,
            lambda c, k: c.get_parameters_for_import(k, "RSAES_OAEP_SHA_1"),
        ),
        ("ImportKeyMaterial", keys.external, lambda c, k: c.import_key_material(k, b"t", b"m")),
        (
            "DeleteImportedKeyMaterial",
            keys.external,
            lambda c, k: c.delete_imported_key_material(k),
        ),
        ("ListAuditEvents", keys.aes, lambda c, k: c.list_audit_events(key_id=k)),
        ("BatchEncrypt", keys.aes, lambda c, k: c.batch_encrypt([EncryptItem(k, b"x")])),
        ("BatchSign", keys.ec, lambda c, k: c.batch_sign([SignItem(k, b"x", "ECDSA_SHA_256")])),
        (
            "BatchGenerateMac",
            keys.hmac,
            lambda c, k: c.batch_generate_mac([GenerateMacItem(k, b"x", "HMAC_SHA_256")]),
        ),
    ]
    cases: list[_Case] = [(name, key, missing, call) for name, key, call in keyed]
    cases += [
        ("DescribeKey (alias)", keys.alias, "alias/lab-missing", lambda c, a: c.describe_key(a)),
        ("Encrypt (alias)", keys.alias, "alias/lab-missing", lambda c, a: c.encrypt(a, b"x")),
        ("UpdateAlias", keys.alias, "alias/lab-missing", lambda c, a: c.update_alias(a, own_key)),
        ("DeleteAlias", keys.alias, "alias/lab-missing", lambda c, a: c.delete_alias(a)),
        ("Decrypt", blob, missing_blob, lambda c, b: c.decrypt(b)),
        ("BatchDecrypt", blob, missing_blob, lambda c, b: c.batch_decrypt([DecryptItem(b)])),
    ]
    return cases


# --- existence oracle -----------------------------------------------------------------------

FOREIGN_ARM, MISSING_ARM = "another tenant's key", "a missing key"


def existence_oracle(lab: Lab, effort: Effort) -> Result:
    owner, other = lab.tenants[0], lab.tenants[1]
    result = Result(
        "existence_oracle",
        "The time of an answer does not tell whether another tenant's key exists",
        f"{other} called DescribeKey {effort.oracle_calls} times naming {owner}'s key and"
        f" {effort.oracle_calls} times naming a missing one (a new random id each time), in"
        " pairs whose order was drawn at random, on the multi-tenant instance; the two samples"
        " of latencies were compared with a two-sided Mann-Whitney U test.",
        "p-value of at least 0.01 (no difference a test of this size can find)",
    )
    with lab.multi.client(owner) as mine:
        foreign = mine.create_key().key_id
    times: dict[str, list[float]] = {FOREIGN_ARM: [], MISSING_ARM: []}
    draw = random.Random(20261207)  # noqa: S311 (an order, not a secret)
    with lab.multi.client(other, retries=False) as theirs:
        for _ in range(effort.oracle_calls):
            pair = [(FOREIGN_ARM, foreign), (MISSING_ARM, str(uuid.uuid4()))]
            draw.shuffle(pair)
            for arm, key_id in pair:
                started = time.perf_counter()
                _outcome(lambda: theirs.describe_key(key_id))  # noqa: B023
                times[arm].append((time.perf_counter() - started) * 1e6)
    test = mann_whitney(times[FOREIGN_ARM], times[MISSING_ARM])
    result.figures = {
        "calls per arm": effort.oracle_calls,
        f"median, {FOREIGN_ARM} (us)": round(percentile(times[FOREIGN_ARM], 0.5), 1),
        f"median, {MISSING_ARM} (us)": round(percentile(times[MISSING_ARM], 0.5), 1),
        "Mann-Whitney U": round(test.u, 1),
        "z": round(test.z, 3),
        "p-value": round(test.p_value, 4),
    }
    result.passed = test.p_value >= 0.01
    result.series = times
    result.rows = [{"arm": arm, "microseconds": v} for arm, values in times.items() for v in values]
    return result


# --- floods ---------------------------------------------------------------------------------

_QUIET_PLAINTEXT = b"q" * 1024
_FLOOD_PLAINTEXT = b"f" * 4096


@dataclass
class _Tally:
    """What a flood's calls were answered: counts by status, under a lock."""

    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str) -> None:
        with self.lock:
            self.counts[status] = self.counts.get(status, 0) + 1

    def describe(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())) or "none"


# A flood's one call, made again and again by each of its threads; `client` is the noisy
# tenant's (a new one each call for the connection flood), `key_id` a key it made first.
_Call = Callable[[HsmClient, str], object]


@dataclass(frozen=True)
class Flood:
    call: _Call
    threads: int
    new_connection_each_call: bool = False


FLOODS: dict[str, Flood] = {
    "RSA-4096 key generation": Flood(lambda c, k: c.create_key("RSA_4096", "SIGN_VERIFY"), 2),
    "4 KB encryption at full rate": Flood(lambda c, k: c.encrypt(k, _FLOOD_PLAINTEXT), 6),
    "audit-heavy calls": Flood(lambda c, k: c.list_audit_events(page_size=1000), 3),
    "connection flood": Flood(lambda c, k: c.generate_random(1), 4, new_connection_each_call=True),
}


class _Flooding:
    """A flood's threads while the block runs: started on entry, stopped and joined on exit
    (whatever happens in the block); `tally` counts their calls' answers."""

    def __init__(self, flood: Flood, instance: Instance, tenant: str) -> None:
        self._flood, self._instance, self._tenant = flood, instance, tenant
        self._stop = threading.Event()
        self.tally = _Tally()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(flood.threads)
        ]

    def __enter__(self) -> _Flooding:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)

    def _run(self) -> None:
        try:
            with self._instance.client(self._tenant, retries=False) as client:
                key_id = client.create_key().key_id
                while not self._stop.is_set():
                    if self._flood.new_connection_each_call:
                        with self._instance.client(self._tenant, retries=False) as fresh:
                            self.tally.add(_outcome(lambda: self._flood.call(fresh, key_id))[0])
                    else:
                        self.tally.add(_outcome(lambda: self._flood.call(client, key_id))[0])
        except HsmError as exc:  # the thread could not begin: counted, not silent
            self.tally.add(f"thread failed ({exc.code.name})")


# --- noisy neighbour ------------------------------------------------------------------------


def _quiet_latencies(instance: Instance, tenant: str, seconds: float) -> tuple[list[float], int]:
    """The quiet tenant's 1 KB Encrypt latencies (ms), one call after another for `seconds`,
    and how many were not answered OK (one attempt each: nothing is retried)."""
    latencies, failed = [], 0
    with instance.client(tenant, retries=False) as client:
        key_id = client.create_key().key_id
        client.encrypt(key_id, _QUIET_PLAINTEXT)  # the connection and the key warm
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status = _outcome(lambda: client.encrypt(key_id, _QUIET_PLAINTEXT))[0]
            latencies.append((time.perf_counter() - started) * 1000)
            failed += status != "OK"
    return latencies, failed


def noisy_neighbour(lab: Lab, effort: Effort) -> Result:
    quiet, noisy = lab.tenants[0], lab.tenants[1]
    result = Result(
        "noisy_neighbour",
        "A quiet tenant's latency while another tenant floods",
        f"{quiet} made 1 KB Encrypt calls one after another for {effort.phase_seconds:g} s"
        f" alone, then while {noisy} flooded with each of: "
        + ", ".join(f"{name} ({flood.threads} threads)" for name, flood in FLOODS.items())
        + ". On the multi-tenant instance both tenants share it; on single-tenant instances"
        f" {quiet}'s instance and {noisy}'s share only the machine. Each phase ran on the"
        " multi-tenant instance, then on the single-tenant ones; the flood's own calls are"
        " counted (the lab's instances lift the tenants' rate quotas, so a flood is held by"
        " the fair-share scheduler alone).",
        "for each flood, the multi-tenant p99 grows by no more than max(3, twice the"
        " single-tenant growth): sharing an instance costs at most twice what sharing the"
        " machine costs",
    )
    deployments = {
        "multi": (lab.multi, lab.multi),
        "single": (lab.single[quiet], lab.single[noisy]),
    }
    for phase in ("alone", *FLOODS):
        for kind, (quiet_at, noisy_at) in deployments.items():
            progress(f"    noisy neighbour: {phase}, {kind}-tenant")
            if phase == "alone":
                latencies, failed = _quiet_latencies(quiet_at, quiet, effort.phase_seconds)
            else:
                with _Flooding(FLOODS[phase], noisy_at, noisy) as flooding:
                    time.sleep(min(1.0, effort.phase_seconds / 4))  # the flood under way
                    latencies, failed = _quiet_latencies(quiet_at, quiet, effort.phase_seconds)
                result.figures[f"{kind} {phase}: the flood's calls"] = flooding.tally.describe()
            _latency_figures(result, f"{kind} {phase}", latencies, failed)
            result.series[f"{kind}: {phase}"] = latencies
            result.rows += [{"deployment": kind, "phase": phase, "ms": v} for v in latencies]
    verdicts = []
    for flood in FLOODS:
        growth = {
            kind: result.figures[f"{kind} {flood} p99 (ms)"]
            / max(1e-9, result.figures[f"{kind} alone p99 (ms)"])
            for kind in deployments
        }
        result.figures[f"p99 growth under {flood}: multi / single"] = (
            f"{growth['multi']:.2f}x / {growth['single']:.2f}x"
        )
        verdicts.append(growth["multi"] <= max(3.0, 2 * growth["single"]))
    result.passed = all(verdicts)
    return result


def _latency_figures(result: Result, label: str, latencies: list[float], failed: int) -> None:
    result.figures[f"{label}: calls, not answered OK"] = f"{len(latencies)}, {failed}"
    for name, fraction in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)):
        # Below 1,000 calls, p99.9 is the slowest call.
        shown = name if name != "p99.9" or len(latencies) >= 1000 else "p99.9 (the maximum)"
        result.figures[f"{label} {shown} (ms)"] = round(percentile(latencies, fraction), 2)
        if shown != name:
            result.figures[f"{label} {name} (ms)"] = result.figures[f"{label} {shown} (ms)"]


# --- quotas ---------------------------------------------------------------------------------

_QUOTA = 20.0  # the flooding tenant's symmetric requests per second during the control


def quotas(lab: Lab, effort: Effort) -> Result:
    quiet, noisy = lab.tenants[0], lab.tenants[1]
    result = Result(
        "quotas",
        "A flooding tenant is held to its quota, and the quiet tenant's rate is not",
        f"On the multi-tenant instance an operator set {noisy}'s symmetric quota to"
        f" {_QUOTA:g} requests a second; {noisy} then called Encrypt from 4 threads as fast as"
        f" it could (one attempt a call, so each refusal is seen) for about"
        f" {effort.quota_seconds:g} s, while {quiet} called Encrypt one call after another;"
        f" {quiet}'s rate was also measured alone. {noisy}'s quotas were restored after.",
        f"{noisy}'s answered rate at most 1.2x its quota plus one second's burst; {quiet}'s rate"
        " under the flood at least half its rate alone",
    )
    if lab.multi.operator is None:
        result.skipped = "no operator certificate for the multi-tenant instance is given"
        return result
    alone = _rate(lab.multi, quiet, effort.quota_seconds)
    flood = Flood(lambda c, k: c.encrypt(k, b"x"), 4)
    with lab.multi.admin() as admin:
        before = admin.get_tenant_quota(noisy).overrides
        admin.set_tenant_quota(noisy, TenantQuota(symmetric_requests_per_second=_QUOTA))
        try:
            started = time.monotonic()
            with _Flooding(flood, lab.multi, noisy) as flooding:
                during = _rate(lab.multi, quiet, effort.quota_seconds)
            elapsed = time.monotonic() - started
        finally:
            admin.set_tenant_quota(noisy, before)  # the overrides it had, the rest defaults
    answered = flooding.tally.counts.get("OK", 0)
    answered_rate = answered / elapsed
    result.figures = {
        f"{noisy}'s quota (requests/s)": _QUOTA,
        f"{noisy}'s flood": flooding.tally.describe(),
        f"{noisy}'s answered rate (requests/s)": round(answered_rate, 1),
        f"{quiet}'s rate alone (requests/s)": round(alone, 1),
        f"{quiet}'s rate under the flood (requests/s)": round(during, 1),
    }
    limit = _QUOTA * 1.2 + _QUOTA / elapsed
    result.passed = answered > 0 and answered_rate <= limit and during >= 0.5 * alone
    result.rows = [dict(result.figures)]
    return result


def _rate(instance: Instance, tenant: str, seconds: float) -> float:
    """Calls a second the tenant makes one after another for `seconds`."""
    with instance.client(tenant, retries=False) as client:
        key_id = client.create_key().key_id
        calls = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            _outcome(lambda: client.encrypt(key_id, b"x"))
            calls += 1
        return calls / (time.monotonic() - started)


# --- at rest --------------------------------------------------------------------------------


def at_rest(lab: Lab, effort: Effort) -> Result:
    result = Result(
        "at_rest",
        "Each tenant's token objects are separate, sensitive, and sealed by its own PIN",
        "With the multi-tenant instance's token directory, a separate process opened each"
        " tenant's token without logging in and listed what it could see, then logged in with"
        " the tenant's own PIN and listed every object's attributes, then tried to log in with"
        " every other tenant's PIN.",
        "one token per tenant; without a login no key is visible; every secret and private key"
        " private and sensitive, so its value cannot be read (a key made exportable is"
        " extractable, as a wrapped key only); no tenant's PIN opens another's token",
    )
    instance = lab.multi
    if instance.master_secret is None or instance.directory is None:
        result.skipped = "white-box: needs the lab's own deployment"
        return result
    pins = PinDeriver(instance.master_secret)
    conf = str(instance.directory / "tokens" / "hsmd-softhsm2.conf")
    request = {
        "library": instance.library,
        "tokens": {tenant: pins.user_pin(tenant) for tenant in lab.tenants},
    }
    probed = subprocess.run(
        [sys.executable, "-m", "hsmd.backend.token_probe"],
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
    found = json.loads(probed.stdout)
    result.rows = found["objects"]
    secret = [row for row in result.rows if row["secret"]]
    exposed = [row for row in secret if not row["sensitive"] or not row["private"]]
    result.figures = {
        "tokens": len(found["serials"]),
        "distinct token serials": len(set(found["serials"].values())),
        "objects checked": len(result.rows),
        "keys visible without a login": found["visible_without_login"],
        "secret and private keys": len(secret),
        "of them not private or not sensitive": len(exposed),
        "of them extractable, wrapped only (made exportable)": sum(
            bool(row["extractable"]) for row in secret
        ),
        "logins with another tenant's PIN that succeeded": found["cross_logins"],
    }
    result.passed = (
        len(set(found["serials"].values())) == len(lab.tenants)
        and found["visible_without_login"] == 0
        and not exposed
        and found["cross_logins"] == 0
    )
    return result


# --- failure containment --------------------------------------------------------------------


def failure_containment(lab: Lab, effort: Effort) -> Result:
    """Last of CONTROLS: it damages the multi-tenant instance's tokens for good."""
    damaged, served = lab.tenants[0], lab.tenants[1]
    result = Result(
        "failure_containment",
        "Damaged objects of one tenant leave the other tenants served",
        f"On the multi-tenant instance, {served} made a key and {damaged} a key and a"
        f" ciphertext; then every key object file of {damaged}'s token was overwritten with"
        f" zeros (as a disk fault would leave them); then {served} made"
        f" {effort.containment_calls} Encrypt calls with the key it made before, and {damaged}"
        " tried to decrypt its ciphertext.",
        f"the damage is seen ({damaged}'s Decrypt is not answered OK), and every call of"
        f" {served} is",
    )
    instance = lab.multi
    if instance.directory is None:
        result.skipped = "white-box: needs the lab's own deployment"
        return result
    with instance.client(served) as client:
        kept = client.create_key().key_id
    with instance.client(damaged) as client:
        blob = client.encrypt(client.create_key().key_id, b"x").ciphertext_blob
    token_dirs = [
        token.directory
        for token in scan_tokens(instance.directory / "tokens")
        if token.label == f"hsmd/{damaged}"
    ]
    for directory in token_dirs:
        for path in directory.glob("*.object"):
            if path.name != "token.object":
                path.write_bytes(b"\0" * path.stat().st_size)
    tally = _Tally()
    with instance.client(served, retries=False) as client:
        for _ in range(effort.containment_calls):
            tally.add(_outcome(lambda: client.encrypt(kept, b"x"))[0])
    with instance.client(damaged, retries=False) as client:
        damaged_status = _outcome(lambda: client.decrypt(blob))[0]
    result.figures = {
        f"{damaged}'s token directories damaged": len(token_dirs),
        f"{damaged}'s Decrypt after the damage": damaged_status,
        f"{served}'s calls": tally.describe(),
    }
    result.rows = [{"tenant": served, "status": k, "calls": v} for k, v in tally.counts.items()]
    result.passed = damaged_status != "OK" and tally.counts.get("OK", 0) == effort.containment_calls
    return result


CONTROLS: list[Callable[[Lab, Effort], Result]] = [
    confidentiality,
    existence_oracle,
    noisy_neighbour,
    quotas,
    at_rest,
    failure_containment,  # last: it damages the multi-tenant instance's tokens
]
