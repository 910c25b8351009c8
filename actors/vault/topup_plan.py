"""Top-up decisions for Routstr nodes as pure functions: what to do next, how much, and what a node's answer to
a delivered token means. The shell (``topup.py``) does the I/O.

Sizing follows the node's own 402 rule (``schemas.routstr``): a node refuses a request whose *reserve* — up to its
model's whole ``max_cost`` — exceeds the balance, however little the request will then cost. So the balance kept
at a node covers the dearest reserve among the models arbstr routes there (capped by ``reserve_cap_msat``), and a
top-up after a 402 covers what the refused request needed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

from schemas.money import MSAT_PER_SAT, ceil_div
from schemas.routstr import TOKEN_SPENT, NodeError, NodeModelPrice, is_payment_refusal, worst_reserve_msat
from schemas.vault import ProviderKey

# The node credits a token less its mint's input fee (a few sats for a handful of proofs): a top-up sized to a
# shortfall carries this much more, so what lands still covers it.
FEE_MARGIN_MSAT = 3 * MSAT_PER_SAT


@dataclass(frozen=True)
class Step:
    """What to do next for one provider: deliver a paid top-up, pay a new one of ``amount_msat``, or nothing."""

    kind: str  # "deliver" | "pay" | "none"
    payout_id: str = ""
    amount_msat: int = 0


def topup_prefix(provider: str) -> str:
    return f"topup-{provider}-"


def is_topup_of(provider: str, payout_id: str) -> bool:
    """Whether ``payout_id`` (without the ``tok:<operator>:`` part) is one of ``provider``'s top-ups: the prefix
    alone would give node-a the top-ups of node-a-2."""
    rest = payout_id.removeprefix(topup_prefix(provider))
    return rest != payout_id and rest.isdigit()


def key_of(token: str) -> str:
    """The key a Routstr node makes from a token: it is named by the token itself."""
    return "sk-" + hashlib.sha256(token.encode()).hexdigest()


def settled_out(key: Optional[ProviderKey]) -> set[str]:
    """Paid top-ups that need nothing more: delivered, taken back into the wallet, or known lost."""
    if key is None:
        return set()
    return set(key.delivered) | set(key.returned) | set(key.lost)


def next_step(provider: str, key: Optional[ProviderKey], balance_msat: Optional[int], payouts: dict[str, str],
              threshold_msat: int, amount_msat: int) -> Step:
    """Pure: ``payouts`` maps this provider's top-up payout ids (``tok:<operator>:topup-<provider>-<n>``) to
    their status (pending / succeeded / failed)."""
    if key is not None and key.suspended:
        return Step("none")  # an operator must look at it first
    if any(status == "pending" for status in payouts.values()):
        return Step("none")  # one under way: its driver resolves it
    done = settled_out(key)
    undelivered = sorted((pid for pid, st in payouts.items() if st == "succeeded" and pid not in done),
                         key=_number)
    if undelivered:
        return Step("deliver", undelivered[0])
    if key is not None and key.api_key and (balance_msat is None or balance_msat >= threshold_msat):
        return Step("none")  # funded (or its balance unknown right now: never pay blind)
    n = max((_number(pid) for pid in payouts), default=0) + 1
    return Step("pay", f"{topup_prefix(provider)}{n}", amount_msat)


def _number(payout_id: str) -> int:
    try:
        return int(payout_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def reserve_need_msat(node_prices: Mapping[str, NodeModelPrice], cap_msat: int) -> int:
    """The balance that lets any request to any of these models pass the node's 402 check, capped."""
    return min(cap_msat, max((worst_reserve_msat(p) for p in node_prices.values()), default=0))


def sizing(min_balance_msat: int, amount_msat: int, need_msat: int, needed_msat: int,
           balance_msat: Optional[int]) -> tuple[int, int]:
    """(threshold, amount): top up below ``threshold``, by ``amount`` (whole sats). ``need`` is the standing reserve
    (``reserve_need_msat``), ``needed`` what one refused request wants (0 outside a 402)."""
    threshold = max(min_balance_msat, need_msat, needed_msat)
    shortfall = threshold - (balance_msat or 0)
    amount = max(amount_msat, need_msat, shortfall + shortfall // 100 + FEE_MARGIN_MSAT if shortfall > 0 else 0)
    return threshold, ceil_div(amount, MSAT_PER_SAT) * MSAT_PER_SAT


def credited_msat(info: Any) -> Optional[int]:
    """What the node has credited a key in all: balance + reserved + spent (``/balance/info`` reports the balance
    net of reservations). Only deposits raise it, so a rise tells that a token landed."""
    if not isinstance(info, dict):
        return None
    parts = [info.get("balance"), info.get("reserved", 0), info.get("total_spent", 0)]
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return None
    return sum(parts)  # type: ignore[arg-type]


Verdict = Literal["landed", "check", "refused", "retry"]


def delivery_verdict(status: int, err: NodeError) -> Verdict:
    """What a node's answer to a delivered token means.

    ``check``: "already spent" — perhaps it landed on an earlier delivery whose answer or record was lost; the
    balance tells. ``refused``: the node will not take it (zero value, bad token, fees): it is still ours to take
    back. ``retry``: anything else (the mint unreachable from the node, 5xx, a refused key): try again later."""
    if status == 200:
        return "landed"
    if err.code == TOKEN_SPENT:
        return "check"
    if status in (400, 422) and is_payment_refusal(err) and err.code.startswith(("cashu_", "invalid_cashu")):
        return "refused"
    return "retry"
