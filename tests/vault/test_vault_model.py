"""Model-based test of the vault core: random command sequences against a tiny independent reference model.

The reference is written from the rules in DESIGN.md §6 with plain ints and dicts; it shares no code with
``actors.vault``. Besides the commands, the machine re-delivers earlier commands (duplicates), restarts (refolds
the journal from seq 1) and lets time pass. After every step: the books balance, nothing is negative, model and
implementation agree, a refold equals the live state, and the hash chain verifies.
"""

from __future__ import annotations

import copy
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
# "" is a caller naming no attempt (older gateways, tools); letters are gateway nonces. "own": the attempt of the
# rid's open hold (or its latest one), so settles and releases mostly name the reserve they belong to.
ATTEMPTS = st.sampled_from(["", "a", "b", "c"])
NAMED = st.sampled_from(["own", "own", "", "a", "b", "c"])
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
    attempt: str = ""


def op(kind: str, rid: str, attempt: str) -> str:
    return f"{kind}:{rid}" + (f"#{attempt}" if attempt else "")


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
    ended: dict[str, str] = field(default_factory=dict)  # rid -> how its latest hold ended
    used_up: set[str] = field(default_factory=set)  # rids charged (settled, or expired with a charge): never again
    had_deadline: dict[str, bool] = field(default_factory=dict)  # rid -> its latest ended hold awaited approval
    attempts: dict[str, set[str]] = field(default_factory=dict)  # rid -> every attempt of it ever reserved
    tombstones: dict[str, set[str]] = field(default_factory=dict)  # rid -> attempts released before reserve
    ended_at: dict[str, int] = field(default_factory=dict)  # rid -> when its latest hold ended
    tombstoned_at: dict[str, int] = field(default_factory=dict)  # rid -> when its latest tombstone was laid
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
        self.had_deadline[rid] = h.deadline is not None
        if kind == "settled" or (kind == "expired" and charged):
            self.used_up.add(rid)
        self.ops.add(op)
        return ("events", 1)

    def _tombstone(self, rid: str, attempt: str, op: str, now: int) -> Result:
        self.tombstones.setdefault(rid, set()).add(attempt)
        self.tombstoned_at[rid] = now
        self.ops.add(op)
        return ("events", 1)

    def forget(self, before: int) -> None:
        """A request id is remembered FORGET_AFTER_MS after it ends (or its latest tombstone): the vault forgets as
        it applies its next event. An open hold of a reused rid keeps the op ids of every attempt of it."""
        for rid in [r for r, at in self.ended_at.items() if at < before]:
            del self.ended_at[rid]
            self.ended.pop(rid, None)
            self.had_deadline.pop(rid, None)
            self.used_up.discard(rid)
            if rid not in self.holds:
                self._forget_ops(rid, {"", *self.attempts.pop(rid, set())})
        for rid in [r for r, at in self.tombstoned_at.items() if at < before]:
            del self.tombstoned_at[rid]
            stones = self.tombstones.pop(rid, set())
            if rid not in self.holds and rid not in self.ended:
                self._forget_ops(rid, {"", *stones})

    def _forget_ops(self, rid: str, attempts: set[str]) -> None:
        self.ops -= {op(kind, rid, a) for kind in ("reserve", "settle", "release", "expire", "approve", "deny")
                     for a in attempts}

    def _open(self, rid: str, attempt: str, op: str, now: int) -> Optional[Result]:
        """None when (rid, attempt) names the open hold; else what a settle/release/expiry of it does."""
        if op in self.ops:
            return ("events", 0)
        h = self.holds.get(rid)
        if h is not None and (not attempt or h.attempt == attempt):
            return None
        if attempt in self.tombstones.get(rid, set()):
            return ("events", 0)
        if (rid in self.ended) if not attempt else attempt in self.attempts.get(rid, set()):
            return ("events", 0)
        return self._tombstone(rid, attempt, op, now)

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

    def reserve(self, rid: str, attempt: str, inp: int, out: Optional[int], fee: int, max_out: int,
                now: int) -> Result:
        op_id = op("reserve", rid, attempt)
        if op_id in self.ops:
            return ("events", 0)
        tombs = self.tombstones.get(rid, set())
        if "" in tombs or attempt in tombs:
            return ("error", 409, "request_released", None)
        # A rid is reserved again only after its hold ended with nothing charged, and only by a named attempt.
        if rid in self.holds or rid in self.used_up or (rid in self.ended and not attempt):
            return ("error", 409, "request_id_reused", None)
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
        self.holds[rid] = RefHold(amount, awaiting, expires, deadline, attempt)
        self.attempts.setdefault(rid, set()).add(attempt)
        self.available -= amount
        self.ops.add(op_id)
        return ("events", 1)

    def settle(self, rid: str, attempt: str, cost: int, now: int) -> Result:
        op_id = op("settle", rid, attempt)
        done = self._open(rid, attempt, op_id, now)
        if done is not None:
            return done
        h = self.holds[rid]
        from_hold = min(cost, h.amount)
        from_available = min(cost - from_hold, self.available)
        return self._end(rid, "settled", from_hold + from_available, op_id, now,
                         uncollectible=cost - from_hold - from_available)

    def release(self, rid: str, attempt: str, now: int) -> Result:
        op_id = op("release", rid, attempt)
        done = self._open(rid, attempt, op_id, now)
        if done is not None:
            return done
        return self._end(rid, "released", 0, op_id, now)

    def expire(self, rid: str, charge: bool, now: int) -> Result:
        h = self.holds.get(rid)
        op_id = op("expire", rid, h.attempt if h is not None else "")
        done = self._open(rid, "", op_id, now)
        if done is not None:
            return done
        assert h is not None
        if h.awaiting:
            assert h.deadline is not None
            if h.deadline <= now:
                return self._end(rid, "denied", 0, op_id, now)
            return ("error", 409, "not_expired", None)
        if h.expires_at > now:
            return ("error", 409, "not_expired", None)
        return self._end(rid, "expired", h.amount if charge else 0, op_id, now)

    def _awaiting(self, kind: str, rid: str) -> tuple[Optional[Result], str]:
        """(an answer that ends the command, or None to act; the command's op id)."""
        h = self.holds.get(rid)
        if h is None:
            if rid not in self.ended:
                return ("error", 404, "unknown_request", None), ""
            decided = self.had_deadline[rid]  # it awaited approval once: decided (or timed out) since
            return ("error", 409, "already_decided" if decided else "not_awaiting_approval", None), ""
        op_id = op(kind, rid, h.attempt)
        if op_id in self.ops:
            return ("events", 0), op_id
        if not h.awaiting:
            return ("error", 409, "already_decided" if h.deadline is not None else "not_awaiting_approval",
                    None), op_id
        return None, op_id

    def approve(self, rid: str, now: int) -> Result:
        early, op_id = self._awaiting("approve", rid)
        if early is not None:
            return early
        h = self.holds[rid]
        assert h.deadline is not None
        if now >= h.deadline:
            return self._end(rid, "denied", 0, op_id, now)
        h.awaiting = False
        self.ops.add(op_id)
        return ("events", 1)

    def deny(self, rid: str, now: int) -> Result:
        early, op_id = self._awaiting("deny", rid)
        if early is not None:
            return early
        return self._end(rid, "denied", 0, op_id, now)


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
                rid, attempt, inp, out, fee, max_out = args
                envelope = Envelope(input_tokens=inp, output_tokens=out, input_rate=1_000_000,
                                    output_rate=1_000_000, base_fee_msat=fee, max_output_tokens=max_out)
                d = decide.reserve(s, rid, envelope, now, ttl_ms=TTL, attempt=attempt)
            elif name == "settle":
                d = decide.settle(s, args[0], args[2], now, attempt=args[1])
            elif name == "release":
                d = decide.release(s, args[0], "test", now, attempt=args[1])
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
        # The vault decides on what it remembers now, and forgets (as of the new event's time) as it applies the
        # event: the reference decides on a copy, and only a command that writes makes it forget, then act.
        trial = copy.deepcopy(self.ref)
        expected = getattr(trial, name)(*args, self.now)
        if expected[0] == "events" and expected[1]:
            self.ref.forget(self.now - FORGET_AFTER_MS)
            again = self._ref(name, args)
            assert again == expected, (name, args, again, expected)
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

    @rule(rid=RIDS, attempt=ATTEMPTS, fresh=st.booleans(), inp=st.integers(0, 5),
          out=st.none() | st.integers(1, 30), fee=st.sampled_from([0, 500]), max_out=st.integers(1, 40))
    def reserve(self, rid: str, attempt: str, fresh: bool, inp: int, out: Optional[int], fee: int,
                max_out: int) -> None:
        if fresh:
            rid = f"n{len(self.reserved)}"
        self.run("reserve", (rid, attempt, inp, out, fee, max_out))
        if rid in self.ref.holds and rid not in self.reserved:
            self.reserved.append(rid)

    @rule(inp=st.integers(0, 5), out=st.none() | st.integers(1, 30), fee=st.sampled_from([0, 500]),
          max_out=st.integers(1, 40))
    def reserve_fresh(self, inp: int, out: Optional[int], fee: int, max_out: int) -> None:
        """Reserves are most of the traffic: a second rule makes them as frequent as the ways to end them."""
        self.reserve("unused", "a", True, inp, out, fee, max_out)

    @precondition(lambda self: bool(self.reserved))
    @rule(pick=st.integers(0, 1_000), attempt=st.sampled_from(["b", "c", "d", "e"]), inp=st.integers(0, 5),
          out=st.none() | st.integers(1, 30))
    def retry(self, pick: int, attempt: str, inp: int, out: Optional[int]) -> None:
        """A client retrying a request with its X-Request-Id: refused while in flight or once charged, accepted
        after a release; a new attempt nonce each time, as a gateway makes."""
        rid = self.reserved[pick % len(self.reserved)]
        before = self.ref.ended.get(rid, "open" if rid in self.ref.holds else "unknown")
        self.run("reserve", (rid, attempt, inp, out, 0, 40))
        event(f"retry after {before}: {'held' if self.ref.holds.get(rid) else 'refused'}")

    def target(self, rid: str, pick: Optional[int]) -> str:
        """Mostly an open hold or a rid that was reserved; sometimes any rid, so unknown ones come up too."""
        if pick is None:
            return rid
        open_holds = sorted(self.ref.holds)
        if pick >= 0 and open_holds:
            return open_holds[pick % len(open_holds)]
        return self.reserved[pick % len(self.reserved)] if self.reserved else rid

    def named(self, rid: str, attempt: str) -> str:
        if attempt != "own":
            return attempt
        h = self.ref.holds.get(rid)
        return h.attempt if h is not None else max(self.ref.attempts.get(rid, {""}))

    @rule(rid=RIDS, pick=PICK, attempt=NAMED, cost=st.integers(0, 40_000))
    def settle(self, rid: str, pick: Optional[int], attempt: str, cost: int) -> None:
        # Costs reach well past any hold: overruns and uncollectible amounts happen often.
        rid = self.target(rid, pick)
        self.run("settle", (rid, self.named(rid, attempt), cost))

    @rule(rid=RIDS, pick=PICK, attempt=NAMED)
    def release(self, rid: str, pick: Optional[int], attempt: str) -> None:
        rid = self.target(rid, pick)
        self.run("release", (rid, self.named(rid, attempt)))

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
        assert {rid: set(t) for rid, t in s.tombstones.items()} == r.tombstones
        assert {rid: h.attempt for rid, h in s.holds.items()} == {rid: h.attempt for rid, h in r.holds.items()}

    @invariant()
    def refold_equals_live(self) -> None:
        assert fold(self.ledger.events, "agent-m") == self.ledger.state

    @invariant()
    def chain_verifies(self) -> None:
        assert verify_chain(self.ledger.events) == (True, None)


VaultMachine.TestCase.settings = settings(
    max_examples=250, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
test_vault_model = VaultMachine.TestCase
