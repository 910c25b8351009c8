"""Numbers and times in query strings and id headers: ASCII digits within stated bounds, else 400.

``str.isdigit()`` is not the test: it accepts superscripts and other Unicode digits that ``int()`` refuses, and
``int()`` of a 5,000-digit string raises too. Every bound here is one the stores behind the gateway can hold.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Optional

from schemas.errors import ArbstrError
from schemas.common import MAX_EPOCH_MS

_DIGITS = re.compile(r"[0-9]{1,20}")
MAX_SEQUENCE = 2**64 - 2  # a JetStream sequence is a uint64; the one after it must be one too


def _bad(param: str, message: str) -> ArbstrError:
    return ArbstrError(400, message, param=param, code="invalid_value")


def bounded_int(value: str, param: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise _bad(param, f"{param} must be an integer from {low} to {high}")
    return int(value)


def optional_int(value: Optional[str], param: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    return bounded_int(value, param, low, high)


def epoch_ms(value: Optional[str], param: str = "since") -> Optional[int]:
    """Epoch milliseconds or an ISO 8601 time (naive = UTC), between 1970 and the end of year 9999."""
    if value is None or value == "":
        return None
    message = f"{param} must be epoch milliseconds (0 to {MAX_EPOCH_MS}) or an ISO 8601 time from 1970 to 9999"
    if _DIGITS.fullmatch(value):
        ms = int(value)
    else:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            ms = int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000)
        except (ValueError, OverflowError, OSError):
            raise _bad(param, message) from None
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise _bad(param, message)
    return ms


def event_sequence(value: str, param: str) -> int:
    """An SSE id this gateway sent: a stream sequence."""
    if not _DIGITS.fullmatch(value) or int(value) > MAX_SEQUENCE:
        raise _bad(param, f"{param} must be the id of an event this endpoint sent (an integer up to {MAX_SEQUENCE})")
    return int(value)
