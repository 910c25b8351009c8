"""Spending policy: max per transaction, a rolling 24 h limit, human approval. Pure and fail closed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from schemas.errors import ArbstrError
from schemas.money import ceil_div
from schemas.vault import AgentPolicy

from .fold import DAY_MS, AccountState

Outcome = Literal["allow", "needs_approval", "deny_max_tx", "deny_daily", "deny_error"]

_STATUS: dict[str, int] = {"allow": 200, "needs_approval": 202, "deny_max_tx": 403, "deny_daily": 429,
                           "deny_error": 403}
_CODE: dict[str, str] = {"allow": "", "needs_approval": "approval_required", "deny_max_tx": "max_tx_exceeded",
                         "deny_daily": "daily_limit_exceeded", "deny_error": "policy_error"}


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    retry_after_s: Optional[int] = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"

    @property
    def denied(self) -> bool:
        return self.outcome.startswith("deny")

    @property
    def status(self) -> int:
        return _STATUS[self.outcome]

    @property
    def code(self) -> str:
        return _CODE[self.outcome]

    def error(self) -> ArbstrError:
        """The error a caller sees for this decision (also for ``needs_approval`` where no queue exists)."""
        status = 403 if self.outcome == "needs_approval" else self.status
        headers = {"retry-after": str(self.retry_after_s)} if self.retry_after_s is not None else None
        return ArbstrError(status, self.reason or self.outcome, code=self.code, headers=headers)


def window_charges_msat(state: AccountState, now_ms: int) -> int:
    """Charges still inside the rolling 24 h window at ``now_ms`` (pending holds not included)."""
    return sum(msat for end, msat in state.window if end + DAY_MS > now_ms)


def daily_used_msat(state: AccountState, now_ms: int) -> int:
    """What the daily limit sees: charges in the window plus every pending hold and payout under way."""
    return window_charges_msat(state, now_ms) + state.pending_msat + state.payout_pending_msat


def daily_headroom_msat(policy: AgentPolicy, state: AccountState, now_ms: int) -> Optional[int]:
    """How much more may be spent now without passing the daily limit (None: no limit; never negative)."""
    if policy.daily_limit_msat is None:
        return None
    return max(0, policy.daily_limit_msat - daily_used_msat(state, now_ms))


def _retry_after_s(limit: int, state: AccountState, amount_msat: int, now_ms: int) -> Optional[int]:
    """Seconds until enough window charges age out for ``amount_msat`` to fit; None if waiting cannot help."""
    # Pending holds do not age out on their own, so only the window can make room.
    if state.pending_msat + state.payout_pending_msat + amount_msat > limit:
        return None
    need = daily_used_msat(state, now_ms) + amount_msat - limit
    freed = 0
    for end, msat in sorted((e, m) for e, m in state.window if e + DAY_MS > now_ms):
        freed += msat
        if freed >= need:
            return max(1, ceil_div(end + DAY_MS - now_ms, 1000))
    return None  # pragma: no cover - unreachable: the whole window frees everything above pending + amount


def _check(policy: AgentPolicy, state: AccountState, amount_msat: int, now_ms: int) -> Decision:
    if not isinstance(policy, AgentPolicy):
        raise TypeError("policy must be an AgentPolicy")
    for name, value in (("amount_msat", amount_msat), ("now_ms", now_ms)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int")
    approval = policy.approval_over_msat is not None

    over_max = policy.max_tx_msat is not None and amount_msat > policy.max_tx_msat
    if over_max:
        if approval:
            return Decision("needs_approval", f"{amount_msat} msat is over the per-transaction limit "
                                              f"{policy.max_tx_msat} msat: it needs approval")
        return Decision("deny_max_tx", f"{amount_msat} msat is over the per-transaction limit "
                                       f"{policy.max_tx_msat} msat")

    limit = policy.daily_limit_msat
    if limit is not None:
        used = daily_used_msat(state, now_ms)
        if used + amount_msat > limit:
            what = f"{amount_msat} msat would take the last 24 h to {used + amount_msat} msat, over {limit} msat"
            if approval:
                return Decision("needs_approval", f"{what}: it needs approval")
            retry = _retry_after_s(limit, state, amount_msat, now_ms)
            return Decision("deny_daily", what, retry)

    if approval and amount_msat > policy.approval_over_msat:  # type: ignore[operator]
        return Decision("needs_approval", f"{amount_msat} msat is over the approval threshold "
                                          f"{policy.approval_over_msat} msat")
    return Decision("allow")


def check(policy: AgentPolicy, state: AccountState, amount_msat: int, now_ms: int) -> Decision:
    """May ``state``'s agent spend ``amount_msat`` now under ``policy``? Any unexpected error denies."""
    try:
        return _check(policy, state, amount_msat, now_ms)
    except Exception as e:  # fail closed: a policy that cannot be evaluated forbids the spend
        return Decision("deny_error", f"policy could not be evaluated: {e}")
