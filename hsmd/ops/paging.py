"""Page sizes and opaque page tokens, the same for every List call."""

from __future__ import annotations

import base64
import binascii

from hsmd import limits
from hsmd.errors import REASON_INVALID_PAGE_TOKEN, InvalidArgument

DEFAULT_PAGE_SIZE = limits.DEFAULT_PAGE_SIZE
MAX_PAGE_SIZE = limits.MAX_PAGE_SIZE


def page_size(requested: int) -> int:
    """Raises InvalidArgument unless 0 (the default) to MAX_PAGE_SIZE."""
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(cursor: int | None) -> str:
    return base64.urlsafe_b64encode(str(cursor).encode()).decode() if cursor is not None else ""


def decode_token(token: str) -> int:
    """The cursor in a token we issued (0 for none). Raises InvalidArgument for any other."""
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error):
        raise InvalidArgument(
            "page_token is not a token from a previous List call", REASON_INVALID_PAGE_TOKEN
        ) from None
