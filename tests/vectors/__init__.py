"""Known-answer vectors, kept in the repository so a clone anywhere runs the whole suite.

wycheproof/ holds byte-for-byte copies of the Wycheproof files the suite uses (C2SP/wycheproof,
testvectors_v1, Apache-2.0: see wycheproof/LICENSE.wycheproof and wycheproof/README.md for their
origin and hashes). A missing file is an error, never a skip, so a run without the vectors
cannot pass by testing nothing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

WYCHEPROOF_DIR = Path(__file__).resolve().parent / "wycheproof"


@functools.cache
def wycheproof(name: str) -> dict[str, Any]:
    """The parsed vector file `name` (e.g. "hmac_sha256_test.json"); read once per run."""
    path = WYCHEPROOF_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"Wycheproof vector file {path} is missing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
