"""Model-based test of the vault core: random command sequences against a tiny independent reference model.

The reference is written from the rules in DESIGN.md §6 with plain ints and dicts; it shares no code with
``actors.vault``. Besides the commands, the machine re-delivers earlier commands (duplicates), restarts (refolds
the journal from seq 1) and lets time pass. After every step: the books balance, nothing is negative, model and
implementation agree, a refold equals the live state, and the hash chain verifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors.vault import decide
from actors.vault.decide import Ledger
from actors.vault.fold import FORGET_AFTER_MS, check_invariants, fold
from schemas.errors import ArbstrError
from schemas.ledger import verify_chain
from schemas.router import Envelope
from schemas.vault import AgentPolicy

START = 1_700_000_000_000
DAY = 86_400_000
MINUTE = 60_000
TTL = 60_000
MSAT_PER_TOKEN = 1_000  # both rates are 1,000,000 sats per 1M tokens

POLICIES = [
    AgentPolicy(),
    AgentPolicy(max_tx_msat=20_000, daily_limit_msat=60_000),
    AgentPolicy(max_tx_msat=30_000, daily_limit_msat=80_000, approval_over_msat=10_000, approval_timeout_s=120),
]

RIDS = st.sampled_from([f"r{i}" for i in range(6)])
# None: any rid from RIDS; >= 0: an open hold; < 0: any rid ever reserved (most of them resolved by now).
PICK = st.none() | st.integers(-1_000, 1_000) | st.integers(0, 1_000)
FRESH = st.integers(0, 3)  # 0: reuse an id from the small pool (conflicts, duplicates), else a new one

Result = tuple[Any, ...]  # ("events", n) | ("error", status, code, retry_after)


@dataclass
class RefHold:
    amount: int
    awaiting: bool
    expires_at: int
    deadline: Optional[int]


@dataclass
class Reference:
    """What the vault must do, in the plainest terms."""

    policy: AgentPolicy
    deposited: int = 0
    withdrawn: int = 0
    spent: int = 0
    uncollectible: int = 0
    available: int = 0
    holds: dict[str, RefHold] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)
    ended_at: dict[str, int] = field(default_factory=dict)  # when each rid ended or was tombstoned
    ops: set[str] = field(default_factory=set)
    deposits: dict[str, int] = field(default_factory=dict)
    withdrawals: dict[str, int] = field(default_factory=dict)
    charges: list[tuple[int, int]] = field(default_factory=list)  # (at_ms, msat)

    @property
    def pending(self) -> int:
        return sum(h.amount for h in self.holds.values())

    # -- policy -----------------------------------------------------------------------------------------------
    @staticmethod
    def _bucket_end(at_ms: int) -> int:
        return (at_ms // MINUTE + 1) * MINUTE

    def _used(self, now: int) -> int:
        window = sum(m for t, m in self.charges if self._bucket_end(t) + DAY > now)
        return window + self.pending

    def _retry_after(self, amount: int, now: int) -> Optional[int]:
        limit = self.policy.daily_limit_msat
        assert limit is not None
        if self.pending + amount > limit:
            return None
        need = self._used(now) + amount - limit
        freed = 0
        for end, m in sorted((self._bucket_end(t), m) for t, m in self.charges if self._bucket_end(t) + DAY > now):
            freed += m
            if freed >= need:
                return max(1, -(-(end + DAY - now) // 1000))
        raise AssertionError("the window must free enough")

    def _policy(self, amount: int, now: int) -> Result:
        """("ok", awaiting) or an error result."""
        p = self.policy
        approval = p.approval_over_msat is not None
        if p.max_tx_msat is not None and amount > p.max_tx_msat:
            return ("ok", True) if approval else ("error", 403, "max_tx_exceeded", None)
        if p.daily_limit_msat is not None and self._used(now) + amount > p.daily_limit_msat:
            return ("ok", True) if approval else ("error", 429, "daily_limit_exceeded", self._retry_after(amount, now))
        if approval and amount > p.approval_over_msat:  # type: ignore[operator]
            return ("ok", True)
        return ("ok", False)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _end(self, rid: str, kind: str, charged: int, op: str, now: int, uncollectible: int = 0) -> Result:
        h = self.holds.pop(rid)
        self.available += h.amount - charged
        self.spent += charged
        self.uncollectible += uncollectible
        if charged:
            self.charges.append((now, charged))
        self.ended[rid] = kind
        self.ended_at[rid] = now
        self.ops.add(op)
        return ("events", 1)

    def _tombstone(self, rid: str, op: str, now: int) -> Result:
        self.tombstones.add(rid)
        self.ended_at[rid] = now
        self.ops.add(op)
        return ("events", 1)

    def forget(self, before: int) -> None:
        """A request id is remembered FORGET_AFTER_MS after it ends; the vault forgets as it writes its next event."""
        for rid in [r for r, at in self.ended_at.items() if at < before]:
            del self.ended_at[rid]
            self.ended.pop(rid, None)
            self.tombstones.discard(rid)
            self.ops -= {f"{op}:{rid}" for op in ("reserve", "settle", "release", "expire", "approve", "deny")}

    def _done(self, op: str, rid: str) -> bool:
        return op in self.ops or rid in self.ended or rid in self.tombstones

    # -- commands ---------------------------------------------------------------------------------------------
    def deposit(self, did: str, amount: int, now: int) -> Result:
        if did in self.deposits:
            return ("events", 0) if self.deposits[did] == amount else ("error", 409, "deposit_conflict", None)
        self.deposits[did] = amount
        self.deposited += amount
        self.available += amount
        self.ops.add("deposit:" + did)
        return ("events", 1)

    def withdraw(self, wid: str, amount: int, now: int) -> Result:
        if wid in self.withdrawals:
            return ("events", 0) if self.withdrawals[wid] == amount else ("error", 409, "withdrawal_conflict", None)
        if amount > self.available:
            return ("error", 402, "insufficient_balance", None)
        verdict = self._policy(amount, now)
        if verdict[0] == "error":
            return verdict
        if verdict[1]:
            return ("error", 403, "approval_required", None)
        self.withdrawals[wid] = amount
        self.withdrawn += amount
        self.available -= amount
        self.charges.append((now, amount))
        self.ops.add("withdraw:" + wid)
        return ("events", 1)

    def reserve(self, rid: str, inp: int, out: Optional[int], fee: int, max_out: int, now: int) -> Result:
        op = "reserve:" + rid
        if op in self.ops:
            return ("events", 0)
        if rid in self.tombstones:
            return ("error", 409, "request_released", None)
        fixed = inp * MSAT_PER_TOKEN + fee

        def tokens(budget: int) -> int:
            return (budget - fixed) // MSAT_PER_TOKEN if budget >= fixed else 0

        if out is None:
            budget = tokens(self.available)
            if budget < 1:
                return ("error", 402, "insufficient_balance", None)
            p = self.policy
            headroom = None if p.daily_limit_msat is None else max(0, p.daily_limit_msat - self._used(now))
            for cap in (p.max_tx_msat, headroom, p.approval_over_msat):
                if cap is not None and tokens(cap) >= 1:
                    budget = min(budget, tokens(cap))
            out = min(budget, max_out)
        amount = fixed + out * MSAT_PER_TOKEN
        if amount > self.available:
            return ("error", 402, "insufficient_balance", None)
        verdict = self._policy(amount, now)
        if verdict[0] == "error":
            return verdict
        awaiting = verdict[1]
        deadline = now + self.policy.approval_timeout_s * 1000 if awaiting else None
        expires = (deadline if deadline is not None else now) + TTL
        self.holds[rid] = RefHold(amount, awaiting, expires, deadline)
        self.available -= amount
        self.ops.add(op)
        return ("events", 1)

    def settle(self, rid: str, cost: int, now: int) -> Result:
        op = "settle:" + rid
        if self._done(op, rid):
            return ("events", 0)
        if rid not in self.holds:
            return self._tombstone(rid, op, now)
        h = self.holds[rid]
        from_hold = min(cost, h.amount)
        from_available = min(cost - from_hold, self.available)
        return self._end(rid, "settled", from_hold + from_available, op, now,
                         uncollectible=cost - from_hold - from_available)

    def release(self, rid: str, now: int) -> Result:
        op = "release:" + rid
        if self._done(op, rid):
            return ("events", 0)
        if rid not in self.holds:
            return self._tombstone(rid, op, now)
        return self._end(rid, "released", 0, op, now)

    def expire(self, rid: str, charge: bool, now: int) -> Result:
        op = "expire:" + rid
        if self._done(op, rid):
            return ("events", 0)
        if rid not in self.holds:
            return self._tombstone(rid, op, now)
        h = self.holds[rid]
        if h.awaiting:
            assert h.deadline is not None
            if h.deadline <= now:
                return self._end(rid, "denied", 0, op, now)
            return ("error", 409, "not_expired", None)
        if h.expires_at > now:
            return ("error", 409, "not_expired", None)
        return self._end(rid, "expired", h.amount if charge else 0, op, now)

    def _awaiting(self, op: str, rid: str) -> Optional[Result]:
        if self._done(op, rid):
            return ("events", 0)
        if rid not in self.holds:
            return ("error", 404, "unknown_request", None)
        if not self.holds[rid].awaiting:
            return ("error", 409, "not_awaiting_approval", None)
        return None

    def approve(self, rid: str, now: int) -> Result:
        op = "approve:" + rid
        early = self._awaiting(op, rid)
        if early is not None:
            return early
        h = self.holds[rid]
        assert h.deadline is not None
        if now >= h.deadline:
            return self._end(rid, "denied", 0, op, now)
        h.awaiting = False
        self.ops.add(op)
        return ("events", 1)

    def deny(self, rid: str, now: int) -> Result:
        op = "deny:" + rid
        early = self._awaiting(op, rid)
        if early is not None:
            return early
        return self._end(rid, "denied", 0, op, now)


class VaultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.history: list[tuple[str, tuple[Any, ...]]] = []
        self.reserved: list[str] = []

    @initialize(policy=st.sampled_from(POLICIES), opening=st.integers(0, 200_000))
    def start(self, policy: AgentPolicy, opening: int) -> None:
        self.ref = Reference(policy=policy)
        self.ledger = Ledger("agent-m")
        self.ledger.run(decide.create_agent(self.ledger.state, "model", "hash", policy, self.now), self.now)
        if opening:
            self.run("deposit", ("d-open", opening))

    # -- running one command on both sides -------------------------------------------------------------------
    def _impl(self, name: str, args: tuple[Any, ...]) -> Result:
        s, now = self.ledger.state, self.now
        try:
            if name == "deposit":
                d = decide.deposit(s, args[0], args[1], "simulated", "", now)
            elif name == "withdraw":
                d = decide.withdraw(s, args[0], args[1], "simulated", "", now)
            elif name == "reserve":
                rid, inp, out, fee, max_out = args
                envelope = Envelope(input_tokens=inp, output_tokens=out, input_rate=1_000_000,
                                    output_rate=1_000_000, base_fee_msat=fee, max_output_tokens=max_out)
                d = decide.reserve(s, rid, envelope, now, ttl_ms=TTL)
            elif name == "settle":
                d = decide.settle(s, args[0], args[1], now)
            elif name == "release":
                d = decide.release(s, args[0], "test", now)
            elif name == "expire":
                d = decide.expire(s, args[0], now, action="charge" if args[1] else "release")
            elif name == "approve":
                d = decide.approve(s, args[0], now)
            elif name == "deny":
                d = decide.deny(s, args[0], "test", now)
            else:  # pragma: no cover
                raise AssertionError(name)
        except ArbstrError as e:
            retry = e.headers.get("retry-after")
            return ("error", e.status, e.code, None if retry is None else int(retry))
        before = len(self.ledger.events)
        applied = self.ledger.run(d, now)
        appended = len(self.ledger.events) - before
        assert appended == (0 if applied.duplicate else len(applied.events))
        return ("events", appended)

    def _ref(self, name: str, args: tuple[Any, ...]) -> Result:
        return getattr(self.ref, name)(*args, self.now)

    def run(self, name: str, args: tuple[Any, ...]) -> None:
        before = self.now - FORGET_AFTER_MS
        expected = self._ref(name, args)
        if expected[0] == "events" and expected[1]:
            self.ref.forget(before)
        got = self._impl(name, args)
        assert got == expected, (name, args, got, expected)
        # Visible with --hypothesis-show-statistics: which outcomes the runs actually reached.
        event(f"{name}: {got[0]} {got[1]} {got[2] if len(got) > 2 else ''}")
        self.history.append((name, args))

    # -- rules ------------------------------------------------------------------------------------------------
    @rule(did=st.sampled_from(["d0", "d1"]), fresh=FRESH, amount=st.integers(1, 80_000))
    def deposit(self, did: str, fresh: int, amount: int) -> None:
        self.run("deposit", (f"dn{len(self.history)}" if fresh else did, amount))

    @rule(wid=st.sampled_from(["w0", "w1"]), fresh=FRESH, amount=st.integers(1, 30_000))
    def withdraw(self, wid: str, fresh: int, amount: int) -> None:
        self.run("withdraw", (f"wn{len(self.history)}" if fresh else wid, amount))

    @rule(rid=RIDS, fresh=st.booleans(), inp=st.integers(0, 5), out=st.none() | st.integers(1, 30),
          fee=st.sampled_from([0, 500]), max_out=st.integers(1, 40))
    def reserve(self, rid: str, fresh: bool, inp: int, out: Optional[int], fee: int, max_out: int) -> None:
        if fresh:
            rid = f"n{len(self.reserved)}"
        self.run("reserve", (rid, inp, out, fee, max_out))
        if rid in self.ref.holds and rid not in self.reserved:
            self.reserved.append(rid)

    @rule(inp=st.integers(0, 5), out=st.none() | st.integers(1, 30), fee=st.sampled_from([0, 500]),
          max_out=st.integers(1, 40))
    def reserve_fresh(self, inp: int, out: Optional[int], fee: int, max_out: int) -> None:
        """Reserves are most of the traffic: a second rule makes them as frequent as the ways to end them."""
        self.reserve("unused", True, inp, out, fee, max_out)

    def target(self, rid: str, pick: Optional[int]) -> str:
        """Mostly an open hold or a rid that was reserved; sometimes any rid, so unknown ones come up too."""
        if pick is None:
            return rid
        open_holds = sorted(self.ref.holds)
        if pick >= 0 and open_holds:
            return open_holds[pick % len(open_holds)]
        return self.reserved[pick % len(self.reserved)] if self.reserved else rid

    @rule(rid=RIDS, pick=PICK, cost=st.integers(0, 40_000))
    def settle(self, rid: str, pick: Optional[int], cost: int) -> None:
        # Costs reach well past any hold: overruns and uncollectible amounts happen often.
        self.run("settle", (self.target(rid, pick), cost))

    @rule(rid=RIDS, pick=PICK)
    def release(self, rid: str, pick: Optional[int]) -> None:
        self.run("release", (self.target(rid, pick),))

    @rule(rid=RIDS, pick=PICK, charge=st.booleans())
    def expire(self, rid: str, pick: Optional[int], charge: bool) -> None:
        self.run("expire", (self.target(rid, pick), charge))

    @rule(rid=RIDS, pick=PICK)
    def approve(self, rid: str, pick: Optional[int]) -> None:
        self.run("approve", (self.target(rid, pick),))

    @rule(rid=RIDS, pick=PICK)
    def deny(self, rid: str, pick: Optional[int]) -> None:
        self.run("deny", (self.target(rid, pick),))

    @precondition(lambda self: bool(self.history))
    @rule(pick=st.integers(0, 10_000))
    def duplicate(self, pick: int) -> None:
        """NATS may deliver any earlier command again (buffered during a disconnect, or retried)."""
        name, args = self.history[pick % len(self.history)]
        self.run(name, args)

    @rule()
    def restart(self) -> None:
        """A vault restart: replay the journal from seq 1 and carry on from the refolded state."""
        events = list(self.ledger.events)
        restarted = Ledger("agent-m", events)
        assert restarted.state == self.ledger.state
        self.ledger = restarted

    @rule(ms=st.sampled_from([1, 1_000, 30_000, 60_000, 61_000, 120_000, 3_600_000, 12 * 3_600_000, DAY]))
    def tick(self, ms: int) -> None:
        self.now += ms

    # -- invariants -------------------------------------------------------------------------------------------
    @invariant()
    def books_balance(self) -> None:
        s = self.ledger.state
        check_invariants(s)
        assert s.deposited_msat - s.withdrawn_msat == s.available_msat + s.pending_msat + s.spent_msat
        assert s.available_msat >= 0

    @invariant()
    def model_agrees(self) -> None:
        s, r = self.ledger.state, self.ref
        assert (s.deposited_msat, s.withdrawn_msat, s.spent_msat, s.uncollectible_msat, s.available_msat,
                s.pending_msat) == (r.deposited, r.withdrawn, r.spent, r.uncollectible, r.available, r.pending)
        assert {rid: (h.amount_msat, h.state == "awaiting_approval") for rid, h in s.holds.items()} == {
            rid: (h.amount, h.awaiting) for rid, h in r.holds.items()}
        assert {rid: res.kind for rid, res in s.resolutions.items()} == r.ended
        assert set(s.tombstones) == r.tombstones

    @invariant()
    def refold_equals_live(self) -> None:
        assert fold(self.ledger.events, "agent-m") == self.ledger.state

    @invariant()
    def chain_verifies(self) -> None:
        assert verify_chain(self.ledger.events) == (True, None)


VaultMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_vault_model = VaultMachine.TestCase
