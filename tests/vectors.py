"""Known-answer vectors kept outside the repository, in ../shared beside the clone (as in CI).

The Wycheproof files are pinned copies (see shared/vectors/wycheproof/README.md for their
origin, hashes and per-file counts); a missing file is an error, never a skip, so a run
without the vectors cannot pass by testing nothing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

WYCHEPROOF_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "wycheproof"


@functools.cache
def wycheproof(name: str) -> dict[str, Any]:
    """The parsed vector file `name` (e.g. "hmac_sha256_test.json"); read once per run."""
    path = WYCHEPROOF_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"Wycheproof vector file {path} is missing (expected ../shared)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
