"""What every decider returns, and the refusals they share. Pure; see ``decide`` for the deciders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.errors import ArbstrError
from schemas.ledger import EventBody

from .fold import AccountState

Noop = Literal["", "duplicate", "resolved", "tombstoned"]
ExpiryAction = Literal["charge", "release"]

APPROVAL_TIMEOUT = "approval_timeout"


@dataclass(frozen=True)
class Decided:
    """What a command decided: events to journal under ``op_id``, or none and why (``noop``)."""

    op_id: str
    bodies: tuple[EventBody, ...] = ()
    noop: Noop = ""


def require_agent(state: AccountState) -> None:
    if not state.created:
        raise ArbstrError(404, f"unknown agent {state.agent_id}", code="unknown_agent")


def positive(amount_msat: int, param: str) -> None:
    if not isinstance(amount_msat, int) or isinstance(amount_msat, bool) or amount_msat <= 0:
        raise ArbstrError(400, f"{param} must be a positive integer of millisats", code="invalid_amount", param=param)


def insufficient(needed_msat: int, available_msat: int) -> ArbstrError:
    return ArbstrError(402, f"insufficient balance: {needed_msat} msat needed, {available_msat} msat available",
                       code="insufficient_balance", headers={"x-should-retry": "false"})
