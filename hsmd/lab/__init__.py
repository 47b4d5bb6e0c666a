"""The isolation lab (`hsmd lab isolation`): one command that compares a multi-tenant hsmd
with dedicated single-tenant ones and writes a report a compliance reviewer can read
(docs/lab.md).

It stands up its own deployments on 127.0.0.1, or targets existing ones (--targets FILE); runs
the controls of hsmd.lab.controls, each against a stated threshold; and writes report.md,
report.html, plots, raw data and the environment into the report directory.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hsmd.lab import controls, report
from hsmd.lab.deploy import Lab, local_lab, targeted_lab

TENANTS = ["alpha", "beta"]


def run(out: Path, *, quick: bool, targets: Path | None) -> int:
    """Runs every control and writes the report; returns 0 if none failed, 1 otherwise."""
    effort = controls.QUICK if quick else controls.FULL
    started = datetime.now(UTC)
    if targets is not None:
        results, lab = _run_controls(targeted_lab(targets), effort)
    else:
        with tempfile.TemporaryDirectory(prefix="hsmd-lab-") as scratch:
            _progress(f"starting the lab's deployments under {scratch}")
            with local_lab(Path(scratch), TENANTS) as lab:
                results, _ = _run_controls(lab, effort)
    written = report.write(out, lab, results, quick, started, datetime.now(UTC))
    _progress(f"report: {written} (and report.html beside it)")
    return 1 if any(result.passed is False for result in results) else 0


def _run_controls(lab: Lab, effort: controls.Effort) -> tuple[list[controls.Result], Lab]:
    results = []
    for number, control in enumerate(controls.CONTROLS, 1):
        _progress(f"[{number}/{len(controls.CONTROLS)}] {control.__name__.replace('_', ' ')} ...")
        result = control(lab, effort)
        _progress(f"[{number}/{len(controls.CONTROLS)}] {report.verdict(result)}")
        results.append(result)
    return results, lab


def _progress(line: str) -> None:
    print(f"hsmd lab: {line}", file=sys.stderr, flush=True)
