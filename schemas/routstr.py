"""The Routstr node wire contract every arbstr part must read identically (routstr-core, checked against commit
8bd7d7e of 2026-08-21): a node's own pricing of a model, the rule by which it answers 402, the cost it reports,
and its error envelope. Pure: plain data in, plain data out.

Why the reserve rule matters: a node decides 402 *before* forwarding, on the model's maximum cost (its listing's
``max_cost``) less what the request's prompt estimate (text characters // 3) and ``max_tokens`` leave unused —
``max_completion_tokens`` is not read — and never below ``min_request_msat``. A balance that covers what a request
will cost can still be refused; top-ups and per-request (X-Cashu) tokens are sized by this rule, not by the cost.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from pydantic import Field

from .common import Message, Msat
from .money import ceil_div

PER_MTOK = 1_000_000  # node rates are kept as msat per 1M tokens (ceil): integers, never below the node's


class NodeModelPrice(Message):
    """One model as a Routstr node prices it (its ``/v1/models`` ``sats_pricing``), in integer msat."""

    prompt_msat_per_mtok: Msat
    completion_msat_per_mtok: Msat
    cache_read_msat_per_mtok: Msat = 0
    cache_write_msat_per_mtok: Msat = 0
    min_request_msat: Msat = Field(0, description="sats_pricing.request × 1000: the smallest reserve")
    max_prompt_cost_msat: Msat = 0
    max_completion_cost_msat: Msat = 0
    max_cost_msat: Msat = Field(0, description="the reserve of a request the node can discount nothing from")
    context_length: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)


def prompt_chars(messages: Any) -> int:
    """The characters of a chat's text content, the way the node counts them for its prompt estimate."""
    total = 0
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p["text"]) for p in content
                         if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return total


def worst_reserve_msat(p: NodeModelPrice) -> int:
    """The most any single request can make the node reserve: nothing discounted."""
    return max(p.min_request_msat, p.max_cost_msat)


def node_reserve_msat(p: NodeModelPrice, chars: Optional[int], max_tokens: Optional[int]) -> int:
    """What the node will reserve for a request with ``chars`` characters of messages (None: no messages) and
    ``max_tokens`` (None: not sent). An upper bound: the node's tolerance (1 % by default, not published) is
    taken as 0 and every rate is rounded up, so a balance or token of this size is never refused."""
    reserve = worst_reserve_msat(p)
    prompt_allowed = p.max_prompt_cost_msat
    cl, mct = p.context_length, p.max_completion_tokens
    if cl or mct:  # the prompt may use only what the context leaves beside the completion
        limit = max(0, cl - mct) if cl and mct else (cl or 0)
        prompt_allowed = limit * p.prompt_msat_per_mtok // PER_MTOK
    if chars is not None:  # messages present (even empty ones): the node discounts the prompt
        estimate = chars // 3
        unused = prompt_allowed - ceil_div(estimate * p.prompt_msat_per_mtok, PER_MTOK)
        reserve -= max(0, unused)
    if max_tokens is not None and max_tokens >= 0:
        unused = p.max_completion_cost_msat - ceil_div(max_tokens * p.completion_msat_per_mtok, PER_MTOK)
        reserve -= max(0, unused)
    return max(p.min_request_msat, reserve, 0)


# --- what a node says it charged ------------------------------------------------------------------------------
def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def reported_cost_msat(usage: Any, headers: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The node's own charge: ``usage.cost.total_msats`` (an object; a plain number there is an upstream's USD
    cost, not the node's), else the ``X-Routstr-Cost-Msats`` header of a non-streamed answer; None if neither."""
    if isinstance(usage, dict) and isinstance(usage.get("cost"), dict):
        got = _int(usage["cost"].get("total_msats"))
        if got is not None:
            return got
    if headers is not None:
        return _int(headers.get("X-Routstr-Cost-Msats"))
    return None


# A reported charge this far from ours is flagged: the node bills an upstream's USD cost first when there is one,
# and its sats prices move with BTC between our reads of its listing.
DRIFT_RATIO_PERCENT = 5
DRIFT_MIN_MSAT = 50


def drifted(ours_msat: int, theirs_msat: int) -> bool:
    allowed = max(DRIFT_MIN_MSAT, ours_msat * DRIFT_RATIO_PERCENT // 100)
    return abs(theirs_msat - ours_msat) > allowed


# Fields of a node's answer that describe arbstr's account at the node, not the agent's: never relayed.
USAGE_FIELDS = ("cost", "cost_sats", "remaining_balance_msats")


def strip_billing(body: dict[str, Any]) -> dict[str, Any]:
    """A node's answer without its billing of arbstr (our balance at the node, what it charged us)."""
    out = {k: v for k, v in body.items() if k != "cost"}
    usage = out.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {k: v for k, v in usage.items() if k not in USAGE_FIELDS or
                        (k == "cost" and not isinstance(v, dict))}
    meta = out.get("metadata")
    if isinstance(meta, dict) and "routstr" in meta:
        rest = {k: v for k, v in meta.items() if k != "routstr"}
        if rest:
            out["metadata"] = rest
        else:
            del out["metadata"]
    return out


# --- errors ------------------------------------------------------------------------------------------------------
class NodeError(Message):
    """A node's error answer, whichever of its shapes it came in: ``{"detail": {"error": …}, "error": …,
    "request_id"}`` (its HTTP errors), ``{"error": {…}, "request_id"}`` (proxy errors), ``{"detail": "…"}``,
    ``{"detail": [..]}`` (FastAPI's 422), ``{"detail": {"type": "minimum_balance_required", …}}`` (X-Cashu 402)."""

    status: int
    code: str = ""
    type: str = ""
    message: str = ""
    required_msat: Optional[int] = Field(None, description="a 402's figure of what the node wants")


# Codes that say the token (or key) we paid with was refused: never the client's fault.
TOKEN_SPENT = "cashu_token_already_spent"
PAYMENT_CODES = frozenset({
    TOKEN_SPENT, "cashu_token_zero_value", "cashu_token_consumed", "invalid_cashu_token",
    "cashu_token_redemption_failed", "cashu_token_swap_fees_exceed_amount", "cashu_foreign_mint_swap_failed",
    "cashu_mint_unreachable", "cashu_source_mint_unreachable", "cashu_mint_rate_limited", "insufficient_balance",
    "balance_limit_exceeded", "minimum_balance_required", "invalid_api_key", "missing_api_key", "key_expired",
    "send_token_failed",
})
_REQUIRED = re.compile(r"\(?(\d{1,15}) m[sS]ats\)? required")


def _text(value: Any, limit: int = 300) -> str:
    return value[:limit] if isinstance(value, str) else ""


def node_error(status: int, body: Any) -> NodeError:
    detail = body.get("detail") if isinstance(body, dict) else None
    error = body.get("error") if isinstance(body, dict) else None
    if error is None and isinstance(detail, dict):
        error = detail.get("error")
    code = type_ = message = ""
    required: Optional[int] = None
    if isinstance(error, dict):
        code = str(error.get("code") if error.get("code") is not None else "")[:100]
        type_, message = _text(error.get("type"), 100), _text(error.get("message"))
    elif isinstance(error, str):
        message = error[:300]
    if isinstance(detail, dict) and detail.get("type") == "minimum_balance_required":
        code = type_ = "minimum_balance_required"
        required = _int(detail.get("amount_required_msat"))
    elif isinstance(detail, str) and not message:
        message = detail[:300]
    elif isinstance(detail, list) and not message:
        message = "the node did not accept the request's shape"
    if required is None and status == 402:
        found = _REQUIRED.search(message)
        required = int(found.group(1)) if found else None
    return NodeError(status=status, code=code, type=type_, message=message, required_msat=required)


def is_payment_refusal(err: NodeError) -> bool:
    """The node refused what arbstr paid with (its key, its balance, its token): ours to fix, not the client's."""
    return err.status in (401, 402) or err.code in PAYMENT_CODES
