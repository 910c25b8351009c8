"""What the mock remembers per provider name: its fault script and what it received and produced.

Plain attributes, touched on every request; the control API reads them as JSON snapshots.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional, Sequence

from .faults import Armed, Fault

DEFAULT_PROVIDER = "default"
DEFAULT_HISTORY = 100


class ProviderState:
    """Faults and counters of one provider name. Plain attributes: touched on every request."""

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.history = history
        self.faults: deque[Armed] = deque()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0
        self.completed = 0
        self.streamed = 0
        self.errors = 0
        self.dropped = 0
        self.cut = 0
        self.disconnects = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.statuses: dict[int, int] = {}
        self.endpoints: dict[str, int] = {}
        self.recent_requests: deque[dict[str, Any]] = deque(maxlen=self.history)
        self.produced: deque[dict[str, Any]] = deque(maxlen=self.history)
        self.last_headers: Optional[dict[str, str]] = None
        self.last_auth: dict[str, Any] = {"present": False, "sha256_prefix": None}

    def set_faults(self, script: Sequence[Fault]) -> None:
        self.faults = deque(Armed(f) for f in script)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self) -> Optional[Fault]:
        """The fault for the request now arriving; counts one use of it."""
        queue = self.faults
        if not queue:
            return None
        armed = queue[0]
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                queue.popleft()
        return armed.fault

    def faults_json(self) -> list[dict[str, Any]]:
        return [{**a.fault.to_json(), "remaining": a.remaining} for a in self.faults]

    def snapshot(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "requests": self.requests,
            "completed": self.completed,
            "streamed": self.streamed,
            "errors": self.errors,
            "dropped": self.dropped,
            "cut": self.cut,
            "disconnects": self.disconnects,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "endpoints": dict(self.endpoints),
            "faults": self.faults_json(),
            "recent_requests": list(self.recent_requests),
            "last_headers": self.last_headers,
            "last_auth": self.last_auth,
            "produced": list(self.produced),
        }


class Call:
    """One API request in flight: where to count it and what it is allowed to break."""

    __slots__ = ("state", "endpoint", "request_id", "reply_id", "fault", "output_override")

    def __init__(self, state: ProviderState, endpoint: str, request_id: Optional[str], reply_id: str,
                 fault: Optional[Fault], output_override: Optional[int]) -> None:
        self.state = state
        self.endpoint = endpoint
        self.request_id = request_id
        self.reply_id = reply_id
        self.fault = fault
        self.output_override = output_override


class Providers:
    """Every provider named so far; a provider exists as soon as a request or a control call names it."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.by_name: dict[str, ProviderState] = {}

    def get(self, name: str) -> ProviderState:
        state = self.by_name.get(name)
        if state is None:
            state = self.by_name[name] = ProviderState(name, self.history)
        return state

    def snapshot(self) -> dict[str, Any]:
        return {name: s.snapshot() for name, s in sorted(self.by_name.items())}

    def reset(self) -> None:
        self.by_name.clear()
