"""The rules of a Routstr node, as read in routstr-core's source (Routstr/routstr-core at 8bd7d7e, 2026-08-21),
rewritten for the test node in ``tests/support/routstr_node.py``. Pure functions over plain data, no I/O.

Where each rule lives in routstr-core (read for facts only; nothing here is copied):
- listing: ``payment/models.py`` (``Pricing``/``Model``, ``_calculate_usd_max_costs``, ``_update_model_sats_pricing``:
  sats prices are the USD ones divided by the BTC price, ``request`` at least ``min_request_msat/1000``);
- the 402 decision: ``payment/helpers.py`` (``get_max_cost_for_model``, ``calculate_discounted_max_cost``: the
  listing's ``max_cost`` less what the prompt estimate (characters // 3) and ``max_tokens`` leave unused, never
  below ``min_request_msat``; ``max_completion_tokens`` is not read) and ``auth.py`` (``validate_bearer_key`` with
  ``min_cost``, ``pay_for_request`` reserving it);
- the charge: ``payment/cost_calculation.py`` (``_calculate_from_tokens``: msat = tokens × sats/token × 1000 per
  part, rounded to 3 decimals, the sum rounded up; a USD cost reported by the upstream is billed first);
- error bodies: ``core/exceptions.py`` (``{"detail": …, "error"?: …, "request_id"}``) and
  ``payment/helpers.create_error_response`` (``{"error": {message, type, code}, "request_id"}``);
- redemption errors: ``wallet.classify_redemption_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

TOLERANCE_PERCENT = 1.0  # routstr-core's default TOLERANCE_PERCENTAGE
FIXED_COST_MSAT = 1000  # FIXED_COST_PER_REQUEST (1 sat): the charge of a model without sats pricing
USD_PER_SAT = 0.001  # the test node's BTC price: 1 sat = $0.001 (BTC at $100k)


@dataclass
class NodeModel:
    """One model a node serves, priced in sats per token (what routstr-core lists as ``sats_pricing``)."""

    prompt: float
    completion: float
    context_length: int = 8192
    max_completion_tokens: Optional[int] = 4096
    cache_read: float = 0.0
    cache_write: float = 0.0
    unpriced: bool = False  # the node does not know the BTC price: ``sats_pricing`` is null


def max_costs(m: NodeModel) -> tuple[float, float, float]:
    """(max_prompt_cost, max_completion_cost, max_cost) in sats, from the context and completion limits."""
    cl, mct = m.context_length, m.max_completion_tokens
    if cl and mct:
        if cl <= mct:
            return cl * m.prompt, cl * m.completion, cl * max(m.prompt, m.completion)
        return cl * m.prompt, mct * m.completion, (cl - mct) * m.prompt + mct * m.completion
    if cl:
        return cl * m.prompt, cl * m.completion, cl * max(m.prompt, m.completion)
    if mct:
        return mct * m.prompt, mct * m.completion, mct * m.completion
    return m.prompt * 1_000_000, m.completion * 32_000, m.prompt * 1_000_000 + m.completion * 32_000


def listing_entry(model_id: str, m: NodeModel, min_request_msat: int, created: int) -> dict[str, Any]:
    """One item of ``GET /v1/models``'s ``data``: OpenRouter-style fields, USD ``pricing``, ``sats_pricing``."""
    mp, mc, mx = max_costs(m)
    sats = {"prompt": m.prompt, "completion": m.completion, "request": min_request_msat / 1000, "image": 0.0,
            "web_search": 0.0, "internal_reasoning": 0.0, "input_cache_read": m.cache_read,
            "input_cache_write": m.cache_write, "max_prompt_cost": mp, "max_completion_cost": mc,
            "max_cost": max(mx, min_request_msat / 1000)}
    usd = {k: v * USD_PER_SAT for k, v in sats.items()}
    usd["request"] = 0.0
    return {
        "id": model_id, "name": model_id, "created": created, "description": f"{model_id} (arbstr test node)",
        "context_length": m.context_length,
        "architecture": {"modality": "text->text", "input_modalities": ["text"], "output_modalities": ["text"],
                         "tokenizer": "Other", "instruct_type": None},
        "pricing": usd, "sats_pricing": None if m.unpriced else sats, "per_request_limits": None,
        "top_provider": {"context_length": m.context_length, "max_completion_tokens": m.max_completion_tokens,
                         "is_moderated": False},
        "enabled": True, "upstream_provider_id": 1, "canonical_slug": None, "alias_ids": None,
        "forwarded_model_id": None,
    }


def estimate_prompt_tokens(messages: Any) -> int:
    """The node's prompt estimate: characters of the text content // 3 (images aside)."""
    total = 0
    for msg in messages if isinstance(messages, list) else []:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(part.get("text", "")) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return total // 3


def reserve_msat(m: NodeModel, body: dict[str, Any], min_request_msat: int) -> int:
    """What the node holds before it forwards a request, and so the balance (or X-Cashu token) it demands."""
    tol = max(0.0, 1 - TOLERANCE_PERCENT / 100)
    if m.unpriced:
        return max(min_request_msat, FIXED_COST_MSAT)  # no sats pricing: the fixed cost per request
    max_prompt, max_completion, max_cost = max_costs(m)
    adjusted = max(min_request_msat, int(max(max_cost, min_request_msat / 1000) * 1000 * tol))
    prompt_allowed, completion_allowed = max_prompt * tol, max_completion * tol
    cl, mct = m.context_length, m.max_completion_tokens
    if cl or mct:  # the prompt may use what the context leaves beside the completion
        prompt_allowed = (max(0, cl - mct) if cl and mct else cl if cl else 0) * m.prompt * tol
    if body.get("messages"):
        delta = prompt_allowed - estimate_prompt_tokens(body["messages"]) * m.prompt
        if delta > 0:
            adjusted -= math.floor(delta * 1000)
    max_tokens = body.get("max_tokens")  # max_completion_tokens is not read
    if max_tokens is not None:
        try:
            delta = completion_allowed - int(max_tokens) * m.completion
        except (TypeError, ValueError):
            delta = 0.0
        if delta > 0:
            adjusted -= math.floor(delta * 1000)
    return max(min_request_msat, adjusted)


@dataclass(frozen=True)
class Cost:
    input_msats: int
    output_msats: int
    total_msats: int
    total_usd: float

    def body(self) -> dict[str, Any]:
        """``usage.cost`` as the node writes it."""
        out: dict[str, Any] = {"base_msats": 0, "input_msats": self.input_msats, "output_msats": self.output_msats,
                               "total_msats": self.total_msats, "cache_read_input_tokens": 0,
                               "cache_creation_input_tokens": 0, "cache_read_msats": 0, "cache_creation_msats": 0}
        if self.total_usd:
            out["total_usd"] = self.total_usd
        return out

    def headers(self) -> dict[str, str]:
        h = {"X-Routstr-Cost-Msats": str(self.total_msats), "X-Routstr-Input-Cost-Msats": str(self.input_msats),
             "X-Routstr-Output-Cost-Msats": str(self.output_msats)}
        if self.total_usd:
            h["X-Routstr-Cost-Usd"] = str(self.total_usd)
        return h


def token_cost(m: NodeModel, prompt_tokens: int, completion_tokens: int) -> Cost:
    """The charge of a request priced by tokens (floats, as the node computes it)."""
    inp = round(prompt_tokens / 1000 * (m.prompt * 1_000_000), 3)
    out = round(completion_tokens / 1000 * (m.completion * 1_000_000), 3)
    total = math.ceil(inp + out)
    visible_out = int(out)
    return Cost(total - visible_out, visible_out, total, total / 1000 * USD_PER_SAT)


def usd_cost(usd: float, prompt_tokens: int, completion_tokens: int, provider_fee: float = 1.0) -> Cost:
    """The charge when the upstream reported its USD cost: that, at the node's BTC price, split by tokens."""
    usd *= provider_fee
    total = math.ceil(usd / USD_PER_SAT * 1000)
    tokens = prompt_tokens + completion_tokens
    inp = int(total * prompt_tokens / tokens) if tokens else 0
    return Cost(inp, total - inp, total, usd)


# --- error bodies -------------------------------------------------------------------------------------------
def http_exception_body(detail: Any, request_id: str) -> dict[str, Any]:
    """FastAPI ``HTTPException`` through the node's handler: ``detail`` always, its ``error`` lifted beside it."""
    content: dict[str, Any] = {"detail": detail}
    if isinstance(detail, dict) and "error" in detail:
        content.update(detail)
    content["request_id"] = request_id
    return content


def error_detail(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_response_body(type_: str, message: str, status: int, request_id: str,
                        code: Optional[object] = None) -> dict[str, Any]:
    """``create_error_response``: no ``detail``; ``code`` is the status when none is named."""
    return {"error": {"message": message, "type": type_, "code": code if code is not None else status},
            "request_id": request_id}


def validation_error_body(loc: list[str], kind: str = "missing", msg: str = "Field required") -> dict[str, Any]:
    """FastAPI's own 422 for a request that does not fit the endpoint's signature (not the node's handler)."""
    return {"detail": [{"type": kind, "loc": loc, "msg": msg, "input": None}]}


# (type, status, message, code) of a redemption failure, by what went wrong: ``classify_redemption_error``.
REDEMPTION_ERRORS: dict[str, tuple[str, int, str, str]] = {
    "spent": ("token_already_spent", 400, "Cashu token already spent", "cashu_token_already_spent"),
    "zero": ("cashu_error", 400, "Failed to redeem Cashu token: token yielded no value", "cashu_token_zero_value"),
    "invalid": ("invalid_token", 400, "Invalid Cashu token", "invalid_cashu_token"),
    "fees": ("mint_error", 422, "Token value is too small to cover swap fees", "cashu_token_swap_fees_exceed_amount"),
    "foreign": ("mint_error", 422, "Failed to swap token from foreign mint", "cashu_foreign_mint_swap_failed"),
    "mint_down": ("mint_unreachable", 503, "Cashu mint is unreachable", "cashu_mint_unreachable"),
}
# Codes after which the token is gone: an X-Cashu error never echoes such a token back.
SPENT_TOKEN_CODES = frozenset({"cashu_token_already_spent", "cashu_token_consumed", "cashu_token_zero_value",
                               "internal_error"})
