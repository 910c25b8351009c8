"""The fault language: what a test may ask a mock provider to break, parsed and validated.

A fault arrives as JSON (``POST /_mock/<provider>/faults`` or the ``x-mock-fault`` header); unknown keys and
out-of-range values are refused so a typo never silently tests nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from .wire import is_int

ERROR_SHAPES = ("openai", "plain", "html", "detail", "empty")

class FaultError(ValueError):
    """A fault description that cannot be applied (unknown key, wrong type, out of range)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """What to break in the next request(s) of one provider. Every field is optional; they combine.

    ``count`` is how many requests the fault applies to (``None``: until cleared). ``delay_ms`` waits
    before anything is sent (then a ``status`` or ``drop_connection`` still applies). ``status`` answers
    that HTTP status with a body of ``error_shape``; ``retry_after`` / ``retry_after_ms`` /
    ``should_retry`` add the matching headers. ``chunk_delay_ms`` spaces stream chunks;
    ``cut_after_chunks`` closes the connection after that many content chunks (non-streamed: after half
    the body). ``omit_usage`` leaves usage out; ``usage_on_content_chunk`` puts chat-stream usage on the
    finish chunk (the last one that still has ``choices``) instead of a separate ``choices: []`` chunk.
    ``redirect_to`` answers ``redirect_status`` (307 unless set) with that ``Location`` (an abusive provider
    pointing its caller elsewhere, e.g. at a loopback service).
    """

    status: Optional[int] = None
    count: Optional[int] = None
    error_shape: str = "openai"
    message: Optional[str] = None
    code: Optional[str] = None
    retry_after: Optional[float] = None
    retry_after_ms: Optional[int] = None
    should_retry: Optional[bool] = None
    delay_ms: Optional[int] = None
    chunk_delay_ms: Optional[int] = None
    cut_after_chunks: Optional[int] = None
    omit_usage: bool = False
    usage_on_content_chunk: bool = False
    drop_connection: bool = False
    redirect_to: Optional[str] = None
    redirect_status: int = 307

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FAULT_FIELDS = frozenset(f.name for f in fields(Fault))


def _opt_int(obj: Mapping[str, Any], key: str, low: int, high: int) -> Optional[int]:
    value = obj.get(key)
    if value is None:
        return None
    if not is_int(value) or not low <= value <= high:
        raise FaultError(f"{key} must be an integer in [{low}, {high}] or null")
    return int(value)


def _opt_bool(obj: Mapping[str, Any], key: str) -> Optional[bool]:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise FaultError(f"{key} must be a boolean")


def _opt_str(obj: Mapping[str, Any], key: str) -> Optional[str]:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FaultError(f"{key} must be a string")


def parse_fault(obj: Any) -> Fault:
    """Validate a fault description (a JSON object); unknown keys are refused so typos do not pass silently."""
    if not isinstance(obj, dict):
        raise FaultError("a fault must be a JSON object")
    unknown = sorted(set(obj) - _FAULT_FIELDS)
    if unknown:
        raise FaultError(f"unknown fault keys: {', '.join(unknown)}")
    retry_after = obj.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, (int, float))
                                    or retry_after < 0):
        raise FaultError("retry_after must be a non-negative number of seconds")
    shape = obj.get("error_shape", "openai")
    if shape not in ERROR_SHAPES:
        raise FaultError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}")
    day_ms = 86_400_000
    return Fault(
        status=_opt_int(obj, "status", 400, 599),
        count=_opt_int(obj, "count", 1, 1 << 62),
        error_shape=shape,
        message=_opt_str(obj, "message"),
        code=_opt_str(obj, "code"),
        retry_after=retry_after,
        retry_after_ms=_opt_int(obj, "retry_after_ms", 0, day_ms),
        should_retry=_opt_bool(obj, "should_retry"),
        delay_ms=_opt_int(obj, "delay_ms", 0, day_ms),
        chunk_delay_ms=_opt_int(obj, "chunk_delay_ms", 0, day_ms),
        cut_after_chunks=_opt_int(obj, "cut_after_chunks", 0, 1 << 31),
        omit_usage=bool(_opt_bool(obj, "omit_usage")),
        usage_on_content_chunk=bool(_opt_bool(obj, "usage_on_content_chunk")),
        drop_connection=bool(_opt_bool(obj, "drop_connection")),
        redirect_to=_opt_str(obj, "redirect_to"),
        redirect_status=_redirect_status(obj),
    )


def _redirect_status(obj: Mapping[str, Any]) -> int:
    value = obj.get("redirect_status", 307)
    if value not in (301, 302, 303, 307, 308) or isinstance(value, bool):
        raise FaultError("redirect_status must be one of 301, 302, 303, 307, 308")
    return int(value)


def parse_fault_script(obj: Any) -> list[Fault]:
    """One fault object, or a list of them applied in order (each for its ``count`` requests)."""
    items = obj if isinstance(obj, list) else [obj]
    script = [parse_fault(item) for item in items]
    for fault in script[:-1]:
        if fault.count is None:
            raise FaultError("only the last fault of a script may have count null (it never ends)")
    return script


class Armed:
    """A scripted fault and how many more requests it applies to (``None``: until cleared)."""

    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count
