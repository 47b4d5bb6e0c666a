"""Whether a database may use a token directory: what its owner mark says, read from the
files (hsmd.repair.decide_binding judges). Start-up acts on the answer (hsmd.app); `hsmd
doctor` reports it (hsmd.doctor)."""

from __future__ import annotations

import os
from pathlib import Path

from hsmd import repair
from hsmd.backend import softhsm_files
from hsmd.keystore.sqlite_store import SqliteKeyStore


def token_dir_binding(database: Path, database_id: str, token_dir: Path) -> repair.BindingDecision:
    """The decision for the database (its path and id) and the token directory."""
    mark = softhsm_files.read_owner_mark(token_dir)
    database = database.resolve()
    other = None
    if mark is not None and not _same_file(Path(mark.database_path), database):
        binding = SqliteKeyStore.read_binding(Path(mark.database_path))
        if binding is None:
            other = repair.OtherDatabase.MISSING
        elif _same_file(Path(binding[1]), token_dir):
            other = repair.OtherDatabase.CLAIMS_THESE_TOKENS
        else:
            other = repair.OtherDatabase.USES_OTHER_TOKENS
    return repair.decide_binding(mark, database_id, str(database), other)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
