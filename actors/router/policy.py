"""Which routing policy applies to a request: named by the client, else found by keyword, else none."""

from __future__ import annotations

from typing import Optional

from schemas.config import PolicyConfig
from schemas.errors import ArbstrError

from .text import contains_term

POLICY_HEADER = "X-Arbstr-Policy"


def keyword_matches(keyword: str, text_lower: str) -> bool:
    """Whole-word-ish and case-insensitive: "code" fires on "Code:" but not inside "decode"."""
    return contains_term(text_lower, keyword.strip().lower())


def choose_policy(requested: Optional[str], last_user_text: str,
                  policies: list[PolicyConfig]) -> Optional[PolicyConfig]:
    """The policy named by ``requested`` (unknown name: 400), else the first rule whose keywords occur in the
    last user message, else None."""
    if requested is not None:
        for p in policies:
            if p.name == requested:
                return p
        raise ArbstrError(400, f"unknown policy {requested!r}", code="unknown_policy", param=POLICY_HEADER)
    if not last_user_text:
        return None
    text = last_user_text.lower()
    for p in policies:
        if any(keyword_matches(k, text) for k in p.keywords):
            return p
    return None
