"""Throughput of hsmd beside the raw token rate, all measured in one run (issue 10).

In order: the raw in-process python-pkcs11 rate of each operation (2 processes, one token);
a gRPC echo server over the same mutual TLS (thread-pool as hsmd, and asyncio) at 1, 8 and 32
calls in flight; hsmd's unary calls and its Batch calls at 1, 8 and 32 in flight (Encrypt and
ECDSA signing also at 16, for the latency target); Encrypt over 10 to 100,000 keys of one
tenant (keys chosen at random); unary calls through a daemon with worker processes (`[server]
processes`, one per core by default) at 8 and 32 in flight; and daemon start, memory and
Encrypt over 1 to 1,000 tenants. Every
hsmd figure is also given as a ratio to the raw rate of the same operation, and unary figures
as a ratio to the echo at the same calls in flight; the issue's targets are checked last.

Writes the table to stdout, and throughput.json and throughput.png to --out. Never fails on
timing. docs/benchmarks.md says what each figure means.
Usage: python -m bench.throughput [--quick] [--seconds S] [--max-keys N] [--max-tenants N]
                                  [--processes N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from hsmclient.channel import secure_channel

from bench import populate
from bench.load import BATCH_PREFIX, BATCH_SIZE, Credentials, Tally, measure, p50_p99_ms
from bench.reference import RAW_OPERATIONS, echo_server, raw_rates
from hsmd.v1 import service_pb2, service_pb2_grpc
from tests.harness import DaemonProcess, TestPki

IN_FLIGHT = (1, 8, 32)
WORKERS_IN_FLIGHT = (8, 32)
LATENCY_IN_FLIGHT = 16
CURVE_IN_FLIGHT = 8
KEY_COUNTS = (10, 1_000, 10_000, 100_000)
TENANT_COUNTS = (1, 100, 1_000)
# Populating keys runs at 40-80 keys/s here: 100,000 keys take 20-40 minutes, 10,000 two to four;
# the default keeps the whole run near 10 minutes (docs/benchmarks.md).
DEFAULT_MAX_KEYS = 10_000
PRINCIPAL = "bench"
START_TIMEOUT = 1800.0  # seconds
NAMES = {
    "encrypt": "Encrypt 1 KB",
    "datakey": "GenerateDataKey AES_256",
    "sign_ecdsa": "Sign ECDSA P-256",
    "sign_rsa": "Sign RSA-2048 PKCS#1",
    "mac": "GenerateMac HMAC-SHA256 1 KB",
}
KEY_SPECS = {
    "encrypt": ("AES_256", None),
    "datakey": ("AES_256", None),
    "sign_ecdsa": ("EC_P256", "SIGN_VERIFY"),
    "sign_rsa": ("RSA_2048", "SIGN_VERIFY"),
    "mac": ("HMAC_256", None),
}
# Quotas out of the way (the bench measures capacity, not the default quotas).
_BENCH_QUOTAS: dict[str, int | float] = {
    **{
        f"{kind}_requests_per_second": 1_000_000
        for kind in ("symmetric", "asymmetric", "key_generation", "management")
    },
    "max_keys": 10_000_000,
    "audit_bytes_per_period": 1 << 40,
}


@dataclass
class Cell:
    """One measurement: items per second (calls for unary, items for batches) and the
    latency of a call, over a window of `seconds`."""

    rate: float
    calls: int
    refused: int
    p50_ms: float | None
    p99_ms: float | None
    # The server's CPU time per item answered (user and system, all its threads): what a call
    # costs the server, which noise from other processes moves far less than a rate.
    server_cpu_ms: float | None = None

    @classmethod
    def of(cls, tally: Tally, seconds: float, server_cpu_seconds: float | None) -> Cell:
        p50 = p99 = None
        if len(tally.times) >= 2:
            p50, p99 = p50_p99_ms(tally.times)
        cpu_ms = None
        if server_cpu_seconds is not None and tally.items:
            cpu_ms = server_cpu_seconds * 1000 / tally.items
        return cls(tally.items / seconds, tally.calls, tally.refused, p50, p99, cpu_ms)


def _bench_daemon(directory: Path, pki: TestPki, processes: int = 1) -> DaemonProcess:
    return DaemonProcess(
        directory,
        pki,
        workers=None,
        movable_clock=False,
        quotas=_BENCH_QUOTAS,
        processes=processes,
    )


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cell(
    action: str, assignments: list[Any], seconds: float, label: str, servers: Sequence[int] = ()
) -> Cell:
    """One cell; with the server's pids, also their CPU time per item (the clients' connecting
    and first calls included: a few handshakes against thousands of calls)."""
    before = sum(_cpu_seconds(pid) for pid in servers)
    tally = measure(action, assignments, seconds)
    used = sum(_cpu_seconds(pid) for pid in servers) - before if servers else None
    cell = Cell.of(tally, seconds, used)
    p99 = f"{cell.p99_ms:.1f} ms" if cell.p99_ms is not None else "-"
    print(f"  {label}: {cell.rate:,.0f}/s, p99 {p99}, refused {cell.refused}", flush=True)
    return cell


def _echo(pki: TestPki, seconds: float) -> dict[str, dict[int, Cell]]:
    cells: dict[str, dict[int, Cell]] = {}
    for server, use_asyncio in (("sync", False), ("asyncio", True)):
        with echo_server(pki, use_asyncio) as echo:
            who = Credentials.for_tenant(pki, echo.endpoint, "echo")
            cells[server] = {
                n: _cell(
                    "echo", [(who, "")] * n, seconds, f"echo {server} {n} in flight", [echo.pid]
                )
                for n in IN_FLIGHT
            }
    return cells


def _keys(daemon: DaemonProcess) -> dict[str, str]:
    with daemon.client("bench", PRINCIPAL) as client:
        return {
            operation: client.create_key(spec, usage).key_id
            for operation, (spec, usage) in KEY_SPECS.items()
        }


def _batches_served(who: Credentials, key_id: str) -> str | None:
    """None if the daemon serves BatchEncrypt, else why not (a daemon without the batch RPCs
    answers UNIMPLEMENTED, or INTERNAL from its guard)."""
    stub = service_pb2_grpc.KeyManagementServiceStub(
        secure_channel(who.endpoint, who.ca_cert, who.cert, who.key)
    )
    request = service_pb2.EncryptRequest(key_id=key_id, plaintext=b"x")
    try:
        stub.BatchEncrypt(service_pb2.BatchEncryptRequest(requests=[request]), timeout=30)
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return None


def _hsmd(daemon: DaemonProcess, pki: TestPki, seconds: float) -> dict[str, Any]:
    who = Credentials.for_tenant(pki, daemon.endpoint, "bench")
    pids = [_pid(daemon)]
    keys = _keys(daemon)
    unary: dict[str, dict[int, Cell]] = {}
    for operation in RAW_OPERATIONS:
        counts = (
            (*IN_FLIGHT, LATENCY_IN_FLIGHT) if operation in ("encrypt", "sign_ecdsa") else IN_FLIGHT
        )
        unary[operation] = {
            n: _cell(
                operation, [(who, keys[operation])] * n, seconds, f"{operation} {n} in flight", pids
            )
            for n in sorted(counts)
        }
    batched: dict[str, dict[int, Cell]] = {}
    not_served = _batches_served(who, keys["encrypt"])
    if not_served is None:
        for operation in RAW_OPERATIONS:
            batched[operation] = {
                n: _cell(
                    BATCH_PREFIX + operation,
                    [(who, keys[operation])] * n,
                    seconds,
                    f"batch {operation} {n} in flight",
                    pids,
                )
                for n in IN_FLIGHT
            }
    else:
        print(f"  batches not measured: {not_served}")
    return {"unary": unary, "batched": batched, "batches_not_served": not_served}


def _with_workers(directory: Path, pki: TestPki, processes: int, seconds: float) -> dict[str, Any]:
    """Unary calls of every operation through a daemon with worker processes, the server's
    CPU summed over the coordinator and its workers. The tenant is made before a restart, so
    the workers open its token (a tenant made later is served by the coordinator)."""
    daemon = _bench_daemon(directory, pki, processes)
    daemon.start()
    try:
        daemon.create_tenant("bench")
        daemon.stop()
        daemon.start()
        who = Credentials.for_tenant(pki, daemon.endpoint, "bench")
        keys = _keys(daemon)
        servers = daemon.pids()
        return {
            operation: {
                n: _cell(
                    operation,
                    [(who, keys[operation])] * n,
                    seconds,
                    f"{operation} {n} in flight, {processes} worker processes",
                    servers,
                )
                for n in WORKERS_IN_FLIGHT
            }
            for operation in RAW_OPERATIONS
        }
    finally:
        if daemon.process is not None:
            daemon.stop()


def _pid(daemon: DaemonProcess) -> int:
    assert daemon.process is not None
    return daemon.process.pid


def _rss_kib(daemon: DaemonProcess) -> int:
    for line in Path(f"/proc/{_pid(daemon)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _start_to_first_call(daemon: DaemonProcess, tenant: str, key_id: str) -> float:
    """Seconds from starting the daemon to its first answered Encrypt (it attaches and checks
    every tenant's token first: over a minute for 1,000 tenants)."""
    began = time.monotonic()
    daemon.start(timeout=START_TIMEOUT)
    with daemon.client(tenant, PRINCIPAL) as client:
        client.encrypt(key_id, b"x")
    return time.monotonic() - began


def _use_each_key(daemon: DaemonProcess, tenant: str, keys: list[str]) -> None:
    """One Encrypt under every key, from CURVE_IN_FLIGHT threads."""

    def use(part: list[str]) -> None:
        with daemon.client(tenant, PRINCIPAL) as client:
            for key_id in part:
                client.encrypt(key_id, b"x")

    with ThreadPoolExecutor(CURVE_IN_FLIGHT) as pool:
        for done in [pool.submit(use, keys[i::CURVE_IN_FLIGHT]) for i in range(CURVE_IN_FLIGHT)]:
            done.result()


def _key_curve(
    daemon: DaemonProcess, pki: TestPki, counts: list[int], seconds: float
) -> list[dict[str, Any]]:
    """Encrypt at CURVE_IN_FLIGHT over every key of a tenant holding `count` keys, for each
    count (keys added while the daemon is stopped; it starts cold each time, and every key
    is used once before the window, so the window sees warm caches as a running daemon's
    calls do; the cold start is `start_seconds`)."""
    daemon.create_tenant("curve")
    daemon.stop()
    keys: list[str] = []
    points = []
    for count in counts:
        made = time.monotonic()
        keys += populate.add_keys(daemon.config, "curve", PRINCIPAL, count - len(keys))
        made = time.monotonic() - made
        start = _start_to_first_call(daemon, "curve", keys[0])
        _use_each_key(daemon, "curve", keys)
        who = Credentials.for_tenant(pki, daemon.endpoint, "curve")
        load = [(who, tuple(keys))] * CURVE_IN_FLIGHT
        cell = _cell("encrypt", load, seconds, f"{count:,} keys", [_pid(daemon)])
        points.append(
            {"keys": count, "populate_seconds": made, "start_seconds": start, **asdict(cell)}
        )
        daemon.stop()
    return points


def _tenant_curve(
    daemon: DaemonProcess, pki: TestPki, counts: list[int], seconds: float
) -> list[dict[str, Any]]:
    """Start time, memory and Encrypt at CURVE_IN_FLIGHT spread over the tenants (one client
    each for up to CURVE_IN_FLIGHT tenants spaced evenly), for each count of tenants."""
    daemon.start(timeout=START_TIMEOUT)  # makes the state, then stops for the populating
    daemon.stop()
    names: list[str] = []
    keys: list[str] = []
    points = []
    for count in counts:
        new = [f"t{index:05d}" for index in range(len(names), count)]
        made = time.monotonic()
        keys += populate.add_tenants(daemon.config, new, PRINCIPAL)
        made = time.monotonic() - made
        names += new
        start = _start_to_first_call(daemon, names[0], keys[0])
        rss_idle = _rss_kib(daemon)
        picked = [index * count // CURVE_IN_FLIGHT for index in range(CURVE_IN_FLIGHT)]
        load = [(Credentials.for_tenant(pki, daemon.endpoint, names[i]), keys[i]) for i in picked]
        cell = _cell("encrypt", load, seconds, f"{count:,} tenants", [_pid(daemon)])
        points.append(
            {
                "tenants": count,
                "populate_seconds": made,
                "start_seconds": start,
                "rss_idle_kib": rss_idle,
                "rss_loaded_kib": _rss_kib(daemon),
                **asdict(cell),
            }
        )
        daemon.stop()
    return points


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.3f}" if base else "-"


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _line(label: str, *columns: object) -> str:
    return f"{label:46}" + "".join(f"{column!s:>10}" for column in columns)


def _cell_columns(cell: Cell, *bases: float | None) -> list[str]:
    """Per second, p50, p99, server CPU per item, then the rate as a ratio to each base."""
    columns = [f"{cell.rate:,.0f}", _ms(cell.p50_ms), _ms(cell.p99_ms), _cpu(cell.server_cpu_ms)]
    return columns + [_ratio(cell.rate, base) for base in bases]


_CELL_HEADER = ("in flight", "per s", "p50 ms", "p99 ms", "CPU ms")


def _cpu(milliseconds: float | None) -> str:
    return "-" if milliseconds is None else f"{milliseconds:.3f}"


def _table(result: dict[str, Any]) -> list[str]:
    raw, echo = result["raw"], result["echo"]
    lines = [_line("raw python-pkcs11, 2 processes, one token", "ops/s")]
    lines += [_line(f"  {NAMES[op]}", f"{rate:,.0f}") for op, rate in raw.items()]
    lines += ["", _line("gRPC echo 1 KB, mutual TLS", *_CELL_HEADER)]
    for server, cells in echo.items():
        lines += [_line(f"  {server} server", n, *_cell_columns(c)) for n, c in cells.items()]
    lines += ["", _line("hsmd unary (calls)", *_CELL_HEADER, "/ raw", "/ echo")]
    for op, cells in result["unary"].items():
        for n, cell in cells.items():
            base = echo["sync"].get(n)
            columns = _cell_columns(cell, raw[op], base.rate if base else None)
            lines.append(_line(f"  {NAMES[op]}", n, *columns))
    processes = result["processes"]
    lines += ["", _line(f"hsmd, {processes} worker processes", *_CELL_HEADER, "/ 1 proc", "/ echo")]
    for op, cells in result["with_workers"].items():
        for n, cell in cells.items():
            base = echo["sync"].get(n)
            columns = _cell_columns(cell, result["unary"][op][n].rate, base.rate if base else None)
            lines.append(_line(f"  {NAMES[op]}", n, *columns))
    lines += ["", _line(f"hsmd batched, {BATCH_SIZE} items a call", *_CELL_HEADER, "/ raw")]
    if result["batches_not_served"]:
        lines.append(f"  not measured: {result['batches_not_served']}")
    for op, cells in result["batched"].items():
        lines += [
            _line(f"  {NAMES[op]}", n, *_cell_columns(cell, raw[op])) for n, cell in cells.items()
        ]
    curve = f"{CURVE_IN_FLIGHT} in flight"
    lines += ["", _line(f"Encrypt over N keys, {curve}", "start s", *_CELL_HEADER[1:], "/ raw")]
    for point in result["key_curve"]:
        cell = Cell(**{name: point[name] for name in Cell.__dataclass_fields__})
        columns = _cell_columns(cell, raw["encrypt"])
        lines.append(_line(f"  {point['keys']:,} keys", f"{point['start_seconds']:.2f}", *columns))
    lines += ["", _line(f"N tenants, Encrypt {curve}", "start s", *_CELL_HEADER[1:], "RSS MiB")]
    for point in result["tenant_curve"]:
        cell = Cell(**{name: point[name] for name in Cell.__dataclass_fields__})
        columns = _cell_columns(cell)
        rss = f"{point['rss_loaded_kib'] / 1024:.1f}"
        lines.append(
            _line(f"  {point['tenants']:,} tenants", f"{point['start_seconds']:.2f}", *columns, rss)
        )
    return lines


def _flat(points: list[dict[str, Any]]) -> tuple[bool, str] | None:
    """Whether rate and p99 stay within 10 % of the first point's, and the figures."""
    if len(points) < 2 or points[0]["p99_ms"] is None:
        return None
    first = points[0]
    worst_rate = min(point["rate"] for point in points) / first["rate"]
    worst_p99 = max(point["p99_ms"] or 0 for point in points) / first["p99_ms"]
    return worst_rate >= 0.9 and worst_p99 <= 1.1, (
        f"lowest rate {worst_rate:.2f}x, highest p99 {worst_p99:.2f}x the first point's"
    )


def _targets(result: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """(target, met, the numbers) for each target of the issue; met None if not measured."""
    raw, unary, batched = result["raw"], result["unary"], result["batched"]
    echo8 = result["echo"]["sync"][8].rate
    targets: list[tuple[str, bool | None, str]] = []
    processes = result["processes"]
    for op in ("encrypt", "datakey", "sign_ecdsa", "mac"):
        rate, with_workers = unary[op][8].rate, result["with_workers"][op][8].rate
        targets.append(
            (
                f"unary {NAMES[op]} at 8 >= 0.9x echo",
                max(rate, with_workers) >= 0.9 * echo8,
                f"{rate:,.0f}/s = {rate / echo8:.2f}x echo {echo8:,.0f}/s;"
                f" {processes} worker processes {with_workers:,.0f}/s = "
                f"{with_workers / echo8:.2f}x",
            )
        )
    for op in ("encrypt", "datakey", "sign_ecdsa", "mac"):
        if op not in batched:
            targets.append((f"batched {NAMES[op]} >= 0.5x raw", None, "not measured"))
            continue
        n, best = max(batched[op].items(), key=lambda item: item[1].rate)
        ratio = best.rate / raw[op]
        targets.append(
            (
                f"batched {NAMES[op]} >= 0.5x raw (p11-kit: ~0.27x)",
                ratio >= 0.5,
                f"{best.rate:,.0f}/s at {n} = {ratio:.2f}x raw {raw[op]:,.0f}/s",
            )
        )
    rsa = [(f"unary at {n}", c.rate) for n, c in unary["sign_rsa"].items()]
    rsa += [(f"batched at {n}", c.rate) for n, c in batched.get("sign_rsa", {}).items()]
    where, best_rsa = max(rsa, key=lambda item: item[1])
    targets.append(
        (
            "RSA-2048 signing >= 0.85x raw",
            best_rsa >= 0.85 * raw["sign_rsa"],
            f"{best_rsa:,.0f}/s ({where}) = {best_rsa / raw['sign_rsa']:.2f}x raw"
            f" {raw['sign_rsa']:,.0f}/s",
        )
    )
    echo_cpu = result["echo"]["sync"][8].server_cpu_ms
    for op in ("encrypt", "datakey", "sign_ecdsa", "mac"):
        cpu = unary[op][8].server_cpu_ms
        if cpu is not None and echo_cpu:
            targets.append(
                (
                    f"server CPU per {NAMES[op]} at 8 within 1.1x echo's (the per-call cost)",
                    cpu <= 1.1 * echo_cpu,
                    f"{cpu:.3f} ms = {cpu / echo_cpu:.1f}x echo's {echo_cpu:.3f} ms",
                )
            )
    for op in ("encrypt", "sign_ecdsa"):
        p99 = unary[op][LATENCY_IN_FLIGHT].p99_ms
        targets.append(
            (
                f"{NAMES[op]} p99 at {LATENCY_IN_FLIGHT} < 10 ms",
                p99 is not None and p99 < 10,
                f"p99 {_ms(p99)} ms",
            )
        )
    for name, points in (("keys", result["key_curve"]), ("tenants", result["tenant_curve"])):
        flat = _flat(points)
        counts = ", ".join(f"{point[name]:,}" for point in points)
        targets.append(
            (
                f"Encrypt flat within 10 % over {counts} {name}",
                flat[0] if flat else None,
                flat[1] if flat else "not measured",
            )
        )
    return targets


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = result["raw"]
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    unary_axis, batch_axis, keys_axis, tenants_axis = axes.flat
    for op, cells in result["unary"].items():
        unary_axis.plot(list(cells), [c.rate for c in cells.values()], marker="o", label=NAMES[op])
    for op, cells in result["with_workers"].items():
        unary_axis.plot(
            list(cells),
            [c.rate for c in cells.values()],
            linestyle="-.",
            marker="^",
            label=f"{NAMES[op]}, {result['processes']} worker processes",
        )
    for server, cells in result["echo"].items():
        unary_axis.plot(
            list(cells),
            [c.rate for c in cells.values()],
            linestyle="--",
            marker="x",
            label=f"gRPC echo, {server}",
        )
    unary_axis.set(
        title="hsmd unary calls/s (dash-dot: worker processes; dashed: echo)",
        xlabel="calls in flight",
        ylabel="calls/s",
        xscale="log",
    )
    for op, cells in result["batched"].items():
        line = batch_axis.plot(
            list(cells), [c.rate / raw[op] for c in cells.values()], marker="o", label=NAMES[op]
        )
        batch_axis.plot(
            list(cells),
            [result["unary"][op][n].rate / raw[op] for n in cells],
            linestyle=":",
            color=line[0].get_color(),
        )
    if not result["batched"]:
        for op, cells in result["unary"].items():
            batch_axis.plot(
                list(cells),
                [c.rate / raw[op] for c in cells.values()],
                linestyle=":",
                marker="o",
                label=f"{NAMES[op]} (unary)",
            )
        batch_axis.text(
            0.5, 0.5, "batches not measured", transform=batch_axis.transAxes, ha="center"
        )
    batch_axis.axhline(0.5, color="grey", linewidth=0.8)
    batch_axis.set(
        title=f"ratio to raw 2-process rate (solid: batches of {BATCH_SIZE}, dotted: unary)",
        xlabel="calls in flight",
        ylabel="x raw",
        xscale="log",
        yscale="log",
    )
    for axis, points, name in (
        (keys_axis, result["key_curve"], "keys"),
        (tenants_axis, result["tenant_curve"], "tenants"),
    ):
        if not points:
            continue
        counts = [point[name] for point in points]
        axis.plot(counts, [point["rate"] for point in points], marker="o", color="tab:blue")
        axis.set(
            title=f"Encrypt at {CURVE_IN_FLIGHT} in flight over N {name}",
            xlabel=name,
            ylabel="calls/s",
            xscale="log",
            ylim=(0, None),
        )
        latency = axis.twinx()
        latency.plot(counts, [point["p99_ms"] for point in points], marker="s", color="tab:red")
        latency.set_ylabel("p99 ms (red)", color="tab:red")
        latency.set_ylim(0, None)
    for axis in (unary_axis, batch_axis):
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Cell):
        return asdict(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="length of each cell (default 5, quick 1)")
    parser.add_argument("--quick", action="store_true", help="short cells, small curves")
    parser.add_argument(
        "--max-keys",
        type=int,
        help=f"largest point of the key curve (default {DEFAULT_MAX_KEYS:,}; quick 1,000;"
        " the full curve, 100,000, takes ~20 minutes to populate)",
    )
    parser.add_argument(
        "--max-tenants",
        type=int,
        help="largest point of the tenant curve (default 1,000; quick 100)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=max(2, os.cpu_count() or 2),
        help="worker processes of the second daemon (default: one per core, at least 2)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results"),
        help="directory for throughput.json and throughput.png",
    )
    args = parser.parse_args()
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    max_keys = args.max_keys or (1_000 if args.quick else DEFAULT_MAX_KEYS)
    max_tenants = args.max_tenants or (100 if args.quick else TENANT_COUNTS[-1])
    key_counts = [n for n in KEY_COUNTS if n <= max_keys]
    tenant_counts = [n for n in TENANT_COUNTS if n <= max_tenants]
    directory = Path(tempfile.mkdtemp(prefix="hsmd-bench-"))
    pki = TestPki(directory / "pki")
    began = time.monotonic()
    print(f"raw python-pkcs11, {seconds:g} s each", flush=True)
    result: dict[str, Any] = {"seconds_per_cell": seconds, "batch_size": BATCH_SIZE}
    result["raw"] = raw_rates(directory, seconds)
    for operation, rate in result["raw"].items():
        print(f"  {operation}: {rate:,.0f}/s", flush=True)
    print("gRPC echo", flush=True)
    result["echo"] = _echo(pki, seconds)
    print("hsmd", flush=True)
    daemon = _bench_daemon(directory / "daemon", pki)
    daemon.start()
    try:
        daemon.create_tenant("bench")
        result.update(_hsmd(daemon, pki, seconds))
        print("key curve", flush=True)
        result["key_curve"] = _key_curve(daemon, pki, key_counts, seconds)
    finally:
        if daemon.process is not None:
            daemon.stop()
    print(f"hsmd with {args.processes} worker processes", flush=True)
    result["processes"] = args.processes
    result["with_workers"] = _with_workers(directory / "workers", pki, args.processes, seconds)
    print("tenant curve", flush=True)
    tenants = _bench_daemon(directory / "tenants", pki)
    try:
        result["tenant_curve"] = _tenant_curve(tenants, pki, tenant_counts, seconds)
    finally:
        if tenants.process is not None:
            tenants.stop()
    result["targets"] = [{"target": t, "met": met, "figures": f} for t, met, f in _targets(result)]
    result["wall_seconds"] = time.monotonic() - began
    print()
    print("\n".join(_table(result)))
    print("\ntargets (issue 10)")
    for target in result["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[target["met"]]
        print(f"  {target['target']:58} {verdict:13} {target['figures']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    try:
        _plot(result, args.out / "throughput.png")
    except ImportError:
        print("no plot: matplotlib is missing (pip install -e '.[bench]')")
    wall = result["wall_seconds"]
    print(f"\nwrote throughput.json and throughput.png to {args.out} ({wall:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
