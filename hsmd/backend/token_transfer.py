"""Changing the PINs of a copy of a tenant's token, so the copy can move to another instance.

SoftHSM2 encrypts a token's private objects under one token key, which token.object keeps
wrapped under a key derived from each PIN (user and security officer). C_SetPIN re-wraps the
token key and leaves the object files as they are. A copy therefore changes hands by changing
its PINs: at the source from the source's PINs to one-time transfer PINs, at the destination
from those to the destination's (both derived by hsmd.backend.pins, from different secrets).

repin_token loads the PKCS#11 library on a directory that holds only the copy: call it once,
in a process that loads no other token directory (the `hsmd tenant export|import` commands).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pkcs11
from pkcs11 import exceptions as p11

from hsmd.backend.softhsm_files import sync_token, write_softhsm2_conf
from hsmd.errors import BackendError


@dataclass(frozen=True)
class TokenPins:
    """A token's user and security officer PINs."""

    user: str
    so: str

    def __repr__(self) -> str:
        return "TokenPins(<secret>)"


def repin_token(
    library: Path, token_root: Path, label: str, serial: str, old: TokenPins, new: TokenPins
) -> None:
    """Changes both PINs of the token labelled label in token_root from old to new, checks the
    new user PIN logs in, and makes the change durable.

    Raises:
        BackendError: the token is not there with that serial, or refuses the old PINs (they
            were derived from another secret).
    """
    conf = write_softhsm2_conf(token_root)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # SoftHSM2 reads it once, at C_Initialize
    try:
        lib = pkcs11.lib(str(library))
        token = lib.get_token(token_label=label)
        found = token.serial.decode() if isinstance(token.serial, bytes) else str(token.serial)
        if found != serial:
            raise BackendError(f"token {label!r} has serial {found}, not {serial}")
        with token.open(rw=True, user_pin=old.user) as session:
            session.set_pin(old.user, new.user)
        with token.open(rw=True, so_pin=old.so) as session:
            session.set_pin(old.so, new.so)
        with token.open(user_pin=new.user):
            pass
    except p11.PinIncorrect:
        raise BackendError(
            f"token {label!r} refuses the PIN derived for it: it was made with another secret"
        ) from None
    except p11.PKCS11Error as exc:
        raise BackendError(
            f"changing the PINs of token {label!r} failed: {type(exc).__name__}"
        ) from exc
    finally:
        conf.unlink(missing_ok=True)
    for directory in token_root.iterdir():
        if directory.is_dir():
            sync_token(directory)
