"""Moving a tenant to another instance, offline, keys keeping their ids: `hsmd tenant export`
writes a bundle, `hsmd tenant import` adds it to another instance's state.

A bundle is a directory (docs/formats.md, "Tenant bundle"): a copy of the tenant's token
directory whose PINs were changed to one-time transfer PINs, the tenant's rows as JSON, and a
manifest with the SHA-256 of every file, authenticated by an HMAC under the transfer secret.
The transfer secret is written to a file of its own, to travel apart from the bundle
(docs/security.md, "Moving a tenant"). Import verifies everything before it changes anything.

Import is a recoverable protocol, as tenant creation is: the token is staged and re-PINned in a
directory of the destination's token directory that is not a token (.hsmd-import-SERIAL),
marked pending, renamed into place, then the rows are added in one transaction and the staging
directory removed. An import that stopped half-way is finished by running it again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmd.backend import softhsm_files
from hsmd.backend.pins import PinDeriver
from hsmd.backend.token_transfer import TokenPins
from hsmd.domain import Clock, KeyState, TenantState
from hsmd.errors import HsmdError
from hsmd.keystore.store import KeyStore, TableRows, TenantRecords
from hsmd.names import validate_tenant_name

log = logging.getLogger(__name__)

FORMAT = "hsmd-tenant-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_MAC = "manifest.mac"
METADATA = "tenant.json"
TOKEN = "token"  # noqa: S105 (a directory name)
TRANSFER_SECRET_SIZE = 32
_MAC_INFO = b"hsmd tenant bundle manifest mac v1"
_MAX_MANIFEST_BYTES = 1 << 20
_STAGING_PREFIX = ".hsmd-import-"
_PENDING = "pending"
_SERIAL = re.compile(r"[0-9A-Za-z]{1,32}")
_TOKEN_DIRECTORY = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")

# Changes a token's PINs (token root, label, serial, old, new): hsmd.backend.token_transfer.
Repin = Callable[[Path, str, str, TokenPins, TokenPins], None]


class MoveRefused(HsmdError):
    """The tenant cannot be exported or imported as asked; nothing was changed."""


@dataclass(frozen=True)
class Moved:
    """What an export wrote or an import added."""

    tenant: str
    token_serial: str
    keys: int
    aliases: int


@dataclass(frozen=True)
class _Bundle:
    """A verified bundle: its manifest, its records and where its token copy is."""

    digest: str  # SHA-256 of manifest.json: names this bundle in a pending import
    serial: str
    label: str
    token: Path
    records: TenantRecords


class TenantMove:
    """Export from, or import into, the state of a stopped daemon (the caller holds its lock)."""

    def __init__(
        self,
        store: KeyStore,
        token_root: Path,
        pins: PinDeriver,
        repin: Repin,
        clock: Clock,
        dedicated_tenant: str | None = None,
    ) -> None:
        """dedicated_tenant: the one tenant a single-tenant instance serves (only that one
        may be imported); None when shared."""
        self._dedicated = dedicated_tenant
        self._store = store
        self._token_root = token_root
        self._pins = pins
        self._repin = repin
        self._clock = clock

    def export(self, tenant: str, out: Path, secret_file: Path) -> Moved:
        """Writes the tenant's bundle to out and its transfer secret to secret_file; the
        tenant stays here, untouched.

        Raises:
            MoveRefused: the tenant is not served, has multi-region keys, its token is not in
                the token directory, or out, secret_file or an unfinished out.partial exists.
            NotFound: there is no such tenant.
            FailedPrecondition: the tenant has rows this hsmd cannot move.
        """
        row = self._store.get_tenant(tenant)
        records = self._store.tenant_records(tenant)  # NotFound for a missing tenant
        if row is None or row.state is not TenantState.ACTIVE:
            raise MoveRefused(f"tenant {tenant!r} is not active: finish its creation first")
        regional = [
            k.key_id
            for k in self._store.multi_region_keys()
            if k.tenant == tenant and k.state is not KeyState.DESTROYED
        ]
        if regional:
            # A copy of a region's key elsewhere would be a copy its primary and replicas do
            # not know of, named as this region's.
            raise MoveRefused(
                f"tenant {tenant!r} has multi-region keys ({', '.join(regional[:3])}): a tenant"
                " moves without them (docs/regions.md); delete them, or replicate them to the"
                " destination's region instead"
            )
        token = self._token_of(row.token_serial)
        if token is None:
            raise MoveRefused(
                f"the token of tenant {tenant!r} (serial {row.token_serial}) is not in"
                f" {self._token_root}"
            )
        work = out.with_name(out.name + ".partial")
        for path in (out, secret_file, work):
            if path.exists() or path.is_symlink():
                raise MoveRefused(f"{path} exists already: remove it or choose another path")
        secret = secrets.token_bytes(TRANSFER_SECRET_SIZE)
        try:
            work.mkdir(mode=0o700)
            (work / TOKEN).mkdir(mode=0o700)
            softhsm_files.copy_token(token.directory, work / TOKEN / token.directory.name)
            _write(work / METADATA, _encode_records(records))
            self._repin(
                work / TOKEN,
                token.label,
                token.serial,
                _pins(self._pins, tenant),
                _pins(PinDeriver(secret), tenant),
            )
            manifest = json.dumps(
                {
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "created_at": self._clock.now().isoformat(),
                    "tenant": tenant,
                    "token_serial": token.serial,
                    "token_label": token.label,
                    "token_directory": token.directory.name,
                    "files": [_describe(work, path) for path in _files(work)],
                },
                indent=1,
            ).encode()
            _write(work / MANIFEST, manifest)
            _write(work / MANIFEST_MAC, _mac(secret, manifest).encode() + b"\n")
            softhsm_files.sync_directory(work)
            _write(secret_file, secret.hex().encode() + b"\n")
            work.rename(out)
            softhsm_files.sync_directory(out.parent)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if not out.exists():
                secret_file.unlink(missing_ok=True)
            raise
        moved = _summary(records, token.serial)
        log.info("exported tenant %s (%d keys) to %s", tenant, moved.keys, out)
        return moved

    def import_bundle(self, bundle_dir: Path, secret_file: Path) -> Moved:
        """Adds the bundle's tenant, its token and its rows; the token's PINs become this
        instance's. Finishes an import of the same bundle that stopped half-way.

        Raises:
            MoveRefused: the bundle does not verify with the secret, or a tenant of that name,
                a token with that serial or directory exists here.
            FailedPrecondition: the bundle comes from a newer hsmd (tables or columns unknown
                here).
        """
        secret = _read_secret(secret_file)
        bundle = _verify(bundle_dir, secret)
        tenant = bundle.records.tenant
        if self._dedicated is not None and tenant != self._dedicated:
            raise MoveRefused(
                f"this instance serves tenant {self._dedicated!r} alone (tenancy mode single);"
                f" the bundle holds {tenant!r}"
            )
        staging = self._token_root / f"{_STAGING_PREFIX}{bundle.serial}"
        placed = self._token_root / bundle.token.name
        pending = staging / _PENDING
        ours = pending.is_file() and pending.read_text().strip() == bundle.digest
        resuming = ours and placed.is_dir()
        existing = self._store.get_tenant(tenant)
        if existing is not None:
            if not (resuming and existing.token_serial == bundle.serial):
                raise MoveRefused(f"a tenant named {tenant!r} exists here already")
            shutil.rmtree(staging)  # all but this was done by an import that stopped
            return _summary(bundle.records, bundle.serial)
        if not resuming:
            self._check_free(bundle, placed)
            shutil.rmtree(staging, ignore_errors=True)  # an earlier import's, never a token
            self._stage(bundle, staging, secret)
            _write(pending, bundle.digest.encode() + b"\n")
            softhsm_files.sync_directory(staging)
            (staging / bundle.token.name).rename(placed)
            softhsm_files.sync_directory(self._token_root)
        else:
            log.warning("finishing the interrupted import of tenant %s", tenant)
        try:
            self._store.add_tenant_records(bundle.records)
        except BaseException:
            if not resuming:  # the rows are refused: the token goes too
                placed.rename(staging / bundle.token.name)
                shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
        softhsm_files.sync_directory(self._token_root)
        moved = _summary(bundle.records, bundle.serial)
        log.info("imported tenant %s (%d keys) from %s", tenant, moved.keys, bundle_dir)
        return moved

    def _token_of(self, serial: str) -> softhsm_files.TokenFiles | None:
        tokens = softhsm_files.scan_tokens(self._token_root)
        return next((token for token in tokens if token.serial == serial), None)

    def _check_free(self, bundle: _Bundle, placed: Path) -> None:
        holders = [t.name for t in self._store.list_tenants() if t.token_serial == bundle.serial]
        if holders or self._token_of(bundle.serial) is not None:
            raise MoveRefused(
                f"a token with serial {bundle.serial} exists here already"
                + (f" (tenant {holders[0]!r})" if holders else "")
                + ": two tokens with one serial make SoftHSM2 abort"
            )
        if placed.exists():
            raise MoveRefused(f"{placed} exists already")

    def _stage(self, bundle: _Bundle, staging: Path, secret: bytes) -> None:
        """Copies the bundle's token into staging and gives it this instance's PINs."""
        tenant = bundle.records.tenant
        try:
            staging.mkdir(mode=0o700)
            softhsm_files.copy_token(bundle.token, staging / bundle.token.name)
            self._repin(
                staging,
                bundle.label,
                bundle.serial,
                _pins(PinDeriver(secret), tenant),
                _pins(self._pins, tenant),
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _pins(deriver: PinDeriver, tenant: str) -> TokenPins:
    return TokenPins(deriver.user_pin(tenant), deriver.so_pin(tenant))


def _summary(records: TenantRecords, serial: str) -> Moved:
    keys, aliases = records.tables.get("keys"), records.tables.get("aliases")
    return Moved(
        records.tenant, serial, len(keys.rows) if keys else 0, len(aliases.rows) if aliases else 0
    )


def _mac(secret: bytes, manifest: bytes) -> str:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(secret)
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def _read_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise MoveRefused(f"cannot read the transfer secret {path}: {exc.strerror}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != TRANSFER_SECRET_SIZE:
        raise MoveRefused(
            f"{path} is not a transfer secret ({TRANSFER_SECRET_SIZE * 2} hex digits)"
        )
    return secret


def _files(root: Path) -> list[str]:
    """Every file under root but the manifest and its MAC, as sorted relative POSIX paths.

    Raises:
        MoveRefused: there is a symbolic link or something that is not a file or directory.
    """
    found = []
    for directory, subdirectories, names in os.walk(root):
        for name in subdirectories + names:
            path = Path(directory) / name
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise MoveRefused(f"{path} is not a plain file or directory")
        found += [(Path(directory) / name).relative_to(root).as_posix() for name in names]
    return sorted(set(found) - {MANIFEST, MANIFEST_MAC})


def _describe(root: Path, name: str) -> dict[str, Any]:
    return {"path": name, "size": (root / name).stat().st_size, "sha256": _sha256(root / name)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(root: Path, secret: bytes) -> _Bundle:
    """The bundle, once its manifest's MAC, every file's size and hash, and its records check.

    Raises:
        MoveRefused: any of them does not.
    """
    try:
        if (root / MANIFEST).stat().st_size > _MAX_MANIFEST_BYTES:
            raise MoveRefused(f"{root / MANIFEST} is larger than a manifest can be")
        manifest_bytes = (root / MANIFEST).read_bytes()
        mac = (root / MANIFEST_MAC).read_bytes().strip()
    except OSError as exc:
        raise MoveRefused(f"{root} is not a tenant bundle: {exc.strerror}") from None
    if not hmac.compare_digest(mac, _mac(secret, manifest_bytes).encode()):
        raise MoveRefused(
            f"{root / MANIFEST} does not verify with this transfer secret: the secret is not"
            " the one its export wrote, or the manifest was changed"
        )
    try:
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise MoveRefused(
                f"{root} is format {manifest.get('format')!r} version"
                f" {manifest.get('version')!r}; this hsmd reads {FORMAT!r} version"
                f" {FORMAT_VERSION}"
            )
        listed = {entry["path"]: entry for entry in manifest["files"]}
        serial, label = str(manifest["token_serial"]), str(manifest["token_label"])
        token_directory = str(manifest["token_directory"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MoveRefused(f"{root / MANIFEST} is malformed ({type(exc).__name__})") from None
    if not _SERIAL.fullmatch(serial) or not _TOKEN_DIRECTORY.fullmatch(token_directory):
        raise MoveRefused(f"{root / MANIFEST} names a malformed token serial or directory")
    present = _files(root)
    if sorted(listed) != present:
        differ = sorted(set(listed) ^ set(present))
        raise MoveRefused(f"{root}: files differ from the manifest ({', '.join(differ[:5])})")
    for name, entry in listed.items():
        if (root / name).stat().st_size != entry["size"] or _sha256(root / name) != entry["sha256"]:
            raise MoveRefused(f"{root / name} does not match the manifest")
    token = root / TOKEN / token_directory
    try:
        holds = [path.name for path in (root / TOKEN).iterdir()]
        metadata = (root / METADATA).read_bytes()
    except OSError as exc:
        raise MoveRefused(f"{root} is not a tenant bundle: {exc.strerror}") from None
    if holds != [token_directory] or not token.is_dir():
        raise MoveRefused(f"{root / TOKEN} must hold exactly the token {token_directory}")
    records = _decode_records(metadata, root / METADATA)
    tenants = records.tables["tenants"]
    tenant_row = dict(zip(tenants.columns, tenants.rows[0], strict=True))
    if (
        records.tenant != manifest.get("tenant")
        or tenant_row.get("token_serial") != serial
        or tenant_row.get("token_label") != label
    ):
        raise MoveRefused(f"{root / METADATA} and {root / MANIFEST} name different tenants")
    return _Bundle(hashlib.sha256(manifest_bytes).hexdigest(), serial, label, token, records)


def _encode_records(records: TenantRecords) -> bytes:
    return json.dumps(
        {
            "format": "hsmd-tenant-records",
            "version": FORMAT_VERSION,
            "tenant": records.tenant,
            "schema_version": records.schema_version,
            "tables": {
                table: {
                    "columns": list(rows.columns),
                    "rows": [[_encode_value(value) for value in row] for row in rows.rows],
                }
                for table, rows in records.tables.items()
            },
        },
        indent=1,
    ).encode()


def _encode_value(value: Any) -> Any:
    return {"hex": value.hex()} if isinstance(value, bytes) else value


def _decode_records(data: bytes, path: Path) -> TenantRecords:
    """Raises MoveRefused if the records are malformed or name an invalid tenant."""
    try:
        document = json.loads(data)
        tables = {
            str(table): TableRows(
                tuple(str(column) for column in content["columns"]),
                tuple(_decode_row(row, len(content["columns"])) for row in content["rows"]),
            )
            for table, content in document["tables"].items()
        }
        records = TenantRecords(
            validate_tenant_name(str(document["tenant"])), int(document["schema_version"]), tables
        )
        if len(tables["tenants"].rows) != 1:
            raise ValueError("not one tenant row")
    except (ValueError, KeyError, TypeError, AttributeError, HsmdError) as exc:
        raise MoveRefused(f"{path} is malformed ({exc})") from None
    return records


def _decode_row(row: list[Any], width: int) -> tuple[Any, ...]:
    if len(row) != width:
        raise ValueError("a row does not have one value per column")
    return tuple(_decode_value(value) for value in row)


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"hex"}:
            raise ValueError("a value is neither plain nor {'hex': ...}")
        return bytes.fromhex(value["hex"])
    if value is None or isinstance(value, int | float | str):
        return value
    raise ValueError(f"a value is a {type(value).__name__}")


def _write(path: Path, data: bytes) -> None:
    """A new file, durable when this returns."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
