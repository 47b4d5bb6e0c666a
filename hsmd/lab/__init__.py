"""The isolation lab (`hsmd lab isolation`): one command that compares a multi-tenant hsmd
with dedicated single-tenant ones and writes a report a compliance reviewer can read
(docs/lab.md).

It stands up its own deployments on 127.0.0.1, or targets existing ones (--targets FILE); runs
the controls of hsmd.lab.controls, each against a stated threshold; and writes report.md,
report.html, plots, raw data and the environment into the report directory.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hsmclient import HsmError

from hsmd.errors import HsmdError
from hsmd.lab import controls, report
from hsmd.lab.deploy import Lab, local_lab, targeted_lab

TENANTS = ["alpha", "beta"]


def run(out: Path, *, quick: bool, targets: Path | None) -> int:
    """Runs every control and writes the report; returns 0 if none failed, 1 otherwise."""
    effort = controls.QUICK if quick else controls.FULL
    started = datetime.now(UTC)
    if targets is not None:
        lab = targeted_lab(targets)
        results = _run_controls(lab, effort)
    else:
        with tempfile.TemporaryDirectory(prefix="hsmd-lab-") as scratch:
            controls.progress(f"starting the lab's deployments under {scratch}")
            with local_lab(Path(scratch), TENANTS) as lab:
                results = _run_controls(lab, effort)
    written = report.write(out, lab, results, quick, started, datetime.now(UTC))
    controls.progress(f"report: {written} (and report.html beside it)")
    return 1 if any(result.passed is False for result in results) else 0


def _run_controls(lab: Lab, effort: controls.Effort) -> list[controls.Result]:
    """Every control, in order; one that breaks down is reported FAIL with its error, and
    the others still run."""
    results = []
    total = len(controls.CONTROLS)
    for number, control in enumerate(controls.CONTROLS, 1):
        controls.progress(f"[{number}/{total}] {control.__name__.replace('_', ' ')} ...")
        try:
            result = control(lab, effort)
        except (HsmError, HsmdError, OSError) as exc:
            result = controls.Result(
                control.__name__,
                control.__name__.replace("_", " "),
                "the control could not finish",
                "it finishes",
                {"error": f"{type(exc).__name__}: {exc}"},
                passed=False,
            )
        controls.progress(f"[{number}/{total}] {report.verdict(result)}")
        results.append(result)
    return results
