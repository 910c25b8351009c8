"""Paying a Routstr node per request with an X-Cashu token: names and recovery decisions, pure.

A token is an ordinary token payout of the operator account (journaled before the wallet makes it), named by the
request it pays; what comes back is credited by the change token's own id, and one ``provider_payment_closed``
event ends it. A payment the gateway never reported on is recovered once it is older than any upstream call could
be: NUT-07 says whether the token was spent; unspent, it is taken back; spent, the node is asked for its change
again (``POST /v1/balance/refund`` with the token that paid), which it keeps until it sweeps it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal, Optional

from schemas.money import MSAT_PER_SAT, ceil_div

_ID = re.compile(r"^xc-([A-Za-z0-9_-]{1,64})-([0-9a-f]{24})$")


def payment_id(agent_id: str, request_id: str, provider: str) -> str:
    """One payment per (agent, request, provider): a retried ask gets the same token, a fallback to another node
    its own. Request ids are unique per agent only, so the agent is part of the name."""
    digest = hashlib.sha256(f"{agent_id}\n{request_id}\n{provider}".encode()).hexdigest()[:24]
    return f"xc-{provider}-{digest}"


def payout_id(operator: str, pid: str) -> str:
    return f"tok:{operator}:{pid}"


def provider_of(pid: str) -> Optional[str]:
    m = _ID.match(pid)
    return m.group(1) if m else None


def is_payment(operator: str, payout: str) -> bool:
    return payout.startswith(f"tok:{operator}:xc-")


def token_msat(amount_msat: int) -> int:
    """Tokens are whole sats: rounded up."""
    return ceil_div(amount_msat, MSAT_PER_SAT) * MSAT_PER_SAT


RefundAction = Literal["change", "wait", "close_spent", "close_lost"]


def refund_action(status: Optional[int], age_s: float, give_up_s: float) -> tuple[RefundAction, str]:
    """What to do with the node's answer to ``/balance/refund`` for a token the mint says is spent (``status``
    None: no answer). 425 is both "still in flight" and "no change was due" (an exact spend): the node cannot tell
    them apart, so it is waited out and then closed as spent."""
    if status == 200:
        return "change", ""
    if status == 404:
        return "close_lost", "spent, and the node has no record of it as an X-Cashu payment"
    if status == 410:
        return "close_lost", "the node swept the change before it was collected"
    if age_s < give_up_s:
        return "wait", ""
    if status == 425:
        return "close_spent", "no change came back (the node kept the whole token)"
    return "close_lost", f"the node never handed the change back (last answer: {status or 'none'})"
