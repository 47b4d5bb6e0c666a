"""The lab's report directory: report.md and report.html (one section per control: what was
done, the threshold, the figures, pass or fail), PNG plots, the raw data as JSON Lines, and the
environment (versions, configuration digests, machine)."""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hsmd.lab.controls import Result
from hsmd.lab.deploy import Lab
from hsmd.lab.stats import percentile


def write(
    directory: Path,
    lab: Lab,
    results: list[Result],
    quick: bool,
    started: datetime,
    ended: datetime,
) -> Path:
    """Writes the report into directory (made if missing); returns report.md's path."""
    (directory / "raw").mkdir(parents=True, exist_ok=True)
    (directory / "plots").mkdir(exist_ok=True)
    environment = _environment(lab, quick, started, ended)
    (directory / "environment.json").write_text(json.dumps(environment, indent=2) + "\n")
    plots = {}
    for result in results:
        with (directory / "raw" / f"{result.name}.jsonl").open("w") as raw:
            for row in result.rows:
                raw.write(json.dumps(row) + "\n")
        plot = _plot(directory / "plots", result)
        if plot is not None:
            plots[result.name] = plot.relative_to(directory)
    markdown = _markdown(results, plots, environment)
    (directory / "report.md").write_text(markdown)
    (directory / "report.html").write_text(_html(results, plots, environment))
    return directory / "report.md"


def verdict(result: Result) -> str:
    if result.passed is None:
        return f"SKIPPED ({result.skipped})"
    return "PASS" if result.passed else "FAIL"


def _markdown(results: list[Result], plots: dict[str, Path], environment: dict[str, Any]) -> str:
    lines = [
        "# hsmd isolation lab",
        "",
        f"Run {environment['started']} to {environment['ended']} ({environment['mode']} run),"
        f" hsmd {environment['hsmd']}, on {environment['machine']}.",
        "",
        "| control | result |",
        "|---|---|",
        *(f"| [{r.title}](#{r.name}) | {verdict(r)} |" for r in results),
        "",
    ]
    for result in results:
        lines += [
            f'## <a id="{result.name}"></a>{result.title}',
            "",
            f"**Result: {verdict(result)}.**",
            "",
            f"*What was done.* {result.done}",
            "",
            f"*Threshold.* {result.threshold}.",
            "",
        ]
        if result.figures:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {name} | {value} |" for name, value in result.figures.items()]
            lines.append("")
        if result.name in plots:
            lines += [f"![{result.title}]({plots[result.name]})", ""]
        lines += [f"Raw data: `raw/{result.name}.jsonl`.", ""]
    lines += [
        "## Environment",
        "",
        "```json",
        json.dumps(environment, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _html(results: list[Result], plots: dict[str, Path], environment: dict[str, Any]) -> str:
    """The same report as HTML, one page, no scripts."""
    escape = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>hsmd isolation lab</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:.2em .5em}"
        ".PASS{color:#070}.FAIL{color:#a00}</style></head><body>",
        "<h1>hsmd isolation lab</h1>",
        f"<p>Run {escape(environment['started'])} to {escape(environment['ended'])}"
        f" ({escape(environment['mode'])} run), hsmd {escape(environment['hsmd'])}.</p>",
        "<table><tr><th>control</th><th>result</th></tr>",
    ]
    for result in results:
        outcome = verdict(result)
        parts.append(
            f"<tr><td><a href='#{result.name}'>{escape(result.title)}</a></td>"
            f"<td class='{outcome.split()[0]}'>{escape(outcome)}</td></tr>"
        )
    parts.append("</table>")
    for result in results:
        outcome = verdict(result)
        parts += [
            f"<h2 id='{result.name}'>{escape(result.title)}</h2>",
            f"<p><b class='{outcome.split()[0]}'>Result: {escape(outcome)}.</b></p>",
            f"<p><i>What was done.</i> {escape(result.done)}</p>",
            f"<p><i>Threshold.</i> {escape(result.threshold)}.</p>",
        ]
        if result.figures:
            parts.append("<table>")
            parts += [
                f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
                for k, v in result.figures.items()
            ]
            parts.append("</table>")
        if result.name in plots:
            parts.append(f"<p><img src='{plots[result.name]}' alt='{escape(result.title)}'></p>")
    parts += [
        "<h2>Environment</h2>",
        f"<pre>{escape(json.dumps(environment, indent=2))}</pre></body></html>",
    ]
    return "\n".join(parts)


def _plot(directory: Path, result: Result) -> Path | None:
    """A latency CDF per series (noisy neighbour), or histograms (existence oracle)."""
    if not result.series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 5))
    if result.name == "existence_oracle":
        # Up to the 99th percentile of both arms: the slowest calls would squash the rest.
        top = max(percentile(values, 0.99) for values in result.series.values())
        for label, values in result.series.items():
            axes.hist([v for v in values if v <= top], bins=80, alpha=0.5, label=label)
        axes.set_xlabel("DescribeKey latency (microseconds)")
        axes.set_ylabel("calls")
    else:
        phases = list(dict.fromkeys(label.split(": ", 1)[1] for label in result.series))
        for label, values in result.series.items():
            ordered = sorted(values)
            fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
            kind, phase = label.split(": ", 1)
            colour = f"C{phases.index(phase)}"  # a colour a phase: solid multi, dashed single
            style = "-" if kind == "multi" else "--"
            axes.plot(ordered, fractions, style, color=colour, label=label)
        axes.set_xscale("log")
        axes.set_xlabel("quiet tenant's Encrypt latency (ms, log scale)")
        axes.set_ylabel("fraction of calls")
    axes.set_title(result.title)
    axes.legend(fontsize="small")
    path = directory / f"{result.name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _environment(lab: Lab, quick: bool, started: datetime, ended: datetime) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "hsmd": _version("hsmd"),
        "python": sys.version.split()[0],
        "grpcio": _version("grpcio"),
        "cryptography": _version("cryptography"),
        "softhsm2": _softhsm_version(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()},"
        f" {os.cpu_count()} CPUs",
        "tenants": lab.tenants,
        "deployments": {
            instance.name: {
                "endpoint": instance.endpoint,
                "lab's own": instance.own,
                "config sha256": instance.config_digest or "(not the lab's)",
            }
            for instance in lab.instances()
        },
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _softhsm_version() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        return "unknown"
    found = subprocess.run([util, "--version"], capture_output=True, text=True, timeout=10)  # noqa: S603
    return found.stdout.strip() or "unknown"
