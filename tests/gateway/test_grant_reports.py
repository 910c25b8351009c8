"""A gateway's grant reports as messages: cut to what the server accepts in one message, every served request
reported exactly once across the reports, refusals per grant (pure of NATS: the bus is a recorder here)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from gateway.grant_meter import GrantMeter, _Agent, _Grant
from schemas.config import GrantsConfig
from schemas.grants import GrantReports, GrantReportsReply, UsageItem
from schemas.requests import RequestRecord
from schemas.vault import AgentPolicy


class RecordingBus:
    timeout_s = 2.0

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.sent: list[bytes] = []
        self.refuse = refuse

    async def ask(self, exchange: Any, msg: GrantReports, *, encoded: bytes, **options: Any) -> GrantReportsReply:
        assert encoded == msg.model_dump_json().encode()
        self.sent.append(encoded)
        return GrantReportsReply(refused={r.grant_id: "no" for r in msg.reports if r.grant_id in self.refuse})


def meter(bus: RecordingBus, max_payload: int) -> GrantMeter:
    return GrantMeter(SimpleNamespace(max_payload=max_payload), SimpleNamespace(bus=bus, agents=None),  # type: ignore
                      GrantsConfig())


def grant(gid: str, n: int, retired: bool = False) -> _Grant:
    g = _Grant(grant_id=gid, agent_id=f"agt_{gid}", partition=3, token_hash="h" * 64, amount_msat=10**9,
               expires_at_ms=0, use_until=time.monotonic() + 60, policy=AgentPolicy(), retired=retired)
    for k in range(n):
        rid = f"{gid}-r{k}"
        g.items.append(UsageItem(kind="settle", request_id=rid, attempt="a1", cost_msat=7, model="m" * 50,
                                 record=RequestRecord(request_id=rid, agent_id=g.agent_id, endpoint="chat", model="m" * 200,
                                                     tier="local", status=200, success=True, streamed=False,
                                                     latency_ms=1.0, overhead_ms=0.1, at_ms=1)))
    return g


async def test_a_report_past_the_payload_limit_goes_in_several_messages_each_request_once() -> None:
    bus = RecordingBus()
    m = meter(bus, max_payload=100 * 1024)  # reports are cut at three quarters of it
    grants = [grant(f"g{k:09d}", 150, retired=(k == 0)) for k in range(3)]
    agent = _Agent(grants=list(grants))
    for _ in range(50):
        pending = [(agent, g) for g in grants if g.items or not g.closed and g.retired]
        if not pending:
            break
        await m._report(3, pending)
    assert all(len(raw) <= 75 * 1024 for raw in bus.sent) and len(bus.sent) > 1
    reported = [i.request_id for raw in bus.sent for r in GrantReports.model_validate_json(raw).reports
                for i in r.items]
    assert sorted(reported) == sorted(f"{g.grant_id}-r{k}" for g in grants for k in range(150))
    closes = [r.grant_id for raw in bus.sent for r in GrantReports.model_validate_json(raw).reports if r.close]
    assert closes == [grants[0].grant_id] and grants[0].closed  # closed once, with its last items


async def test_a_refused_report_is_dropped_for_that_grant_only() -> None:
    bus = RecordingBus(refuse=frozenset({"g000000001"}))
    m = meter(bus, max_payload=8 * 1024 * 1024)
    a, b = grant("g000000001", 3), grant("g000000002", 3)
    agent = _Agent(grants=[a, b])
    await m._report(3, [(agent, a), (agent, b)])
    assert len(bus.sent) == 1 and not a.items and not b.items  # one message; a refusal is not sent again


def _lagging_meter(monkeypatch: Any, slow_holds: list[str]) -> tuple[GrantMeter, _Grant, Any]:
    """A meter whose one grant has no report loop running (the owner never answers unless a test says so)."""
    from actors.runtime.tokens import token_hash
    from schemas.router import Envelope

    async def slow_reserve(token: str, request_id: str, route: Any, endpoint: str) -> str:
        slow_holds.append(request_id)
        return "vault-hold"

    async def _route_async() -> Any:
        return SimpleNamespace(agent_id="agt_g000000001", partition=3)

    agents = SimpleNamespace(route_of=lambda th, rid: _route_async(), forget_agent=lambda a: None)
    m = GrantMeter(SimpleNamespace(max_payload=1 << 20),  # type: ignore[arg-type]
                   SimpleNamespace(bus=RecordingBus(), agents=agents, reserve=slow_reserve),
                   GrantsConfig(report_batch=2))

    async def no_wait(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(m, "_drain", no_wait)
    g = grant("g000000001", 0)
    g.token_hash = token_hash("arb_tok")
    m._by_agent[g.agent_id] = _Agent(grants=[g])
    m._live[g] = m._by_agent[g.agent_id]
    route = SimpleNamespace(candidates=[object()], envelope=Envelope(input_tokens=10, output_tokens=10, input_rate=1,
                                                                       output_rate=1, max_output_tokens=10))
    return m, g, route


async def test_a_grant_whose_reports_lag_makes_new_requests_wait_then_sends_them_to_the_vault(
        monkeypatch: Any) -> None:
    # Backpressure: an owner that does not keep up with a grant's reports must slow the agent down, not let
    # unreported requests pile up in the gateway without bound.
    import gateway.grant_meter as grant_meter

    monkeypatch.setattr(grant_meter, "BACKLOG_WAIT_S", 0.05)
    slow_holds: list[str] = []
    m, g, route = _lagging_meter(monkeypatch, slow_holds)
    waited = []
    for k in range(12):
        started = time.monotonic()
        hold = await m.reserve("arb_tok", f"r{k}", route, "chat")  # type: ignore[arg-type]
        waited.append(time.monotonic() - started)
        if hold != "vault-hold":
            g.inflight -= 1
            g.items.append(UsageItem(kind="release", request_id=f"r{k}", attempt="a1"))  # served, not reported yet
    assert len(g.items) == 8 and slow_holds == [f"r{k}" for k in range(8, 12)]  # 4 report batches of 2, then wait
    assert waited[8] >= 0.05 and m.stats["backlogged"] == 1  # it waited for the reports first
    assert g.retired  # then the idle grant is given back, and the vault decides until one is opened again


async def test_a_backlogged_grant_decides_locally_again_as_soon_as_its_reports_land(monkeypatch: Any) -> None:
    slow_holds: list[str] = []
    m, g, route = _lagging_meter(monkeypatch, slow_holds)
    g.items.extend(UsageItem(kind="release", request_id=f"old{k}", attempt="a1") for k in range(8))

    async def owner_answers() -> None:
        await asyncio.sleep(0.05)
        del g.items[:]

    g.reporting = asyncio.ensure_future(owner_answers())
    started = time.monotonic()
    hold = await m.reserve("arb_tok", "r-next", route, "chat")  # type: ignore[arg-type]
    assert hold != "vault-hold" and hold.grant is g and slow_holds == []
    assert 0.05 <= time.monotonic() - started < 1.0


def test_a_busy_agents_grants_grow_and_a_quiet_ones_shrink_back() -> None:
    from gateway.grant_meter import next_want

    def last(amount: int, lasted_s: float) -> _Grant:
        g = grant("g000000002", 0)
        g.amount_msat, g.opened_at = amount, 100.0 - lasted_s
        return g

    base, most = 1_000_000, 100_000_000
    assert next_want(0, None, False, 100.0, base, most) == 0  # no grant before: as configured
    assert next_want(0, last(base, 0.2), True, 100.0, base, most) == 2 * base  # used up within a second
    assert next_want(0, last(base, 0.2), False, 100.0, base, most) == 0  # replaced early, not used up: kept
    assert next_want(0, last(64_000_000, 0.2), True, 100.0, base, most) == most  # never past the largest
    assert next_want(4 * base, last(4 * base, 2.0), True, 100.0, base, most) == 4 * base  # lasted 1-4 s: kept
    assert next_want(4 * base, last(4 * base, 9.0), True, 100.0, base, most) == 2 * base
    assert next_want(4 * base, last(4 * base, 9.0), False, 100.0, base, most) == 2 * base  # quiet: shrinks too
    assert next_want(2 * base, last(2 * base, 9.0), False, 100.0, base, most) == 0  # back to the configured size


async def test_a_grant_replaced_while_a_request_waited_for_its_reports_is_not_used(monkeypatch: Any) -> None:
    import gateway.grant_meter as grant_meter

    monkeypatch.setattr(grant_meter, "BACKLOG_WAIT_S", 1.0)
    slow_holds: list[str] = []
    m, g, route = _lagging_meter(monkeypatch, slow_holds)
    g.items.extend(UsageItem(kind="release", request_id=f"old{k}", attempt="a1") for k in range(8))

    async def revoked_then_reported() -> None:
        await asyncio.sleep(0.02)
        g.retired = True  # a revocation (or a newer grant) while the request waits
        del g.items[:]

    g.reporting = asyncio.ensure_future(revoked_then_reported())
    hold = await m.reserve("arb_tok", "r-next", route, "chat")  # type: ignore[arg-type]
    assert hold == "vault-hold" and slow_holds == ["r-next"]
    assert (g.used_msat, g.inflight, g.items) == (0, 0, [])  # nothing decided under it


async def test_what_arrives_while_a_report_is_in_flight_waits_for_the_next_tick_unless_a_batch_is_full() -> None:
    # Under load something always arrives during a report's round trip: reporting again at every answer made the
    # interval one round trip, a message per partition each time, for the owner to decide and journal.
    bus = RecordingBus()
    m = GrantMeter(SimpleNamespace(max_payload=1 << 20), SimpleNamespace(bus=bus, agents=None),  # type: ignore
                   GrantsConfig(report_batch=4))
    g = grant("g000000001", 2)
    agent = _Agent(grants=[g])
    g.inflight = 1  # a request still being served: the grant stays open
    real_ask = bus.ask
    arriving = 1

    async def ask_while_requests_end(exchange: Any, msg: GrantReports, **options: Any) -> GrantReportsReply:
        g.items.extend(grant("g000000002", arriving).items)  # requests that ended meanwhile
        return await real_ask(exchange, msg, **options)

    bus.ask = ask_while_requests_end  # type: ignore[method-assign]
    await m._report(3, [(agent, g)])
    assert len(g.items) == 1 and not m._wake.is_set()  # the next tick reports it
    arriving = 4
    await m._report(3, [(agent, g)])
    assert len(g.items) == 4 and m._wake.is_set()  # a full batch waiting goes at once


def test_the_request_ids_a_gateway_remembers_are_bounded_over_all_agents(monkeypatch: Any) -> None:
    # One bound per gateway: per agent, memory grew with the number of agents the gateway ever served.
    import gateway.grant_meter as gm

    monkeypatch.setattr(gm, "SEEN_RIDS", 100)
    m = meter(RecordingBus(), max_payload=1 << 20)
    for agent in range(50):
        for k in range(10):
            m._remember(f"agt_{agent}", f"r{k}")
    m._remember("agt_0", "r0")  # used again: the most recent now
    assert len(m._seen) == 100
    assert ("agt_49", "r9") in m._seen and ("agt_0", "r0") in m._seen and ("agt_0", "r1") not in m._seen


# --- request ids while a request waits to take the per-request path ---------------------------------------------
class SlowPath:
    """The per-request meter: records what it was asked; its agent directory knows one agent."""

    def __init__(self) -> None:
        self.reserved: list[str] = []
        self.bus = RecordingBus()
        self.agents = self

    async def route_of(self, th: str, request_id: str) -> Any:
        return SimpleNamespace(agent_id="agt_g1", partition=3)

    async def reserve(self, token: Any, request_id: str, route: Any, endpoint: str) -> Any:
        self.reserved.append(request_id)
        return SimpleNamespace(request_id=request_id, grant=None)


def route(x_cashu: bool) -> Any:
    from schemas.router import Candidate, Envelope, RouteReply
    return RouteReply(request_id="r", model="m", tier="local", complexity="low", candidates=[Candidate(
        provider="node" if x_cashu else "alpha", model="m", input_rate=1, output_rate=1, tier="local",
        estimated_cost_msat=1)], envelope=Envelope(input_tokens=5, output_tokens=5, input_rate=1, output_rate=1,
                                                   max_output_tokens=5))


async def test_a_copy_of_a_request_id_arriving_while_it_waits_for_the_per_request_path_is_not_served_locally() -> None:
    # The per-request path first gives back idle grants and waits for what was served to be reported; the request
    # id was remembered only after that wait, so a copy sent meanwhile was served under the grant that was still in
    # use, and the vault, not knowing it yet, held the first one too: one request id, served and charged twice.
    import asyncio
    from actors.runtime.tokens import token_hash
    slow = SlowPath()
    m = GrantMeter(SimpleNamespace(max_payload=10**6), slow, GrantsConfig())  # type: ignore[arg-type]
    busy = grant("g1", 1)  # one served request not reported yet: the give-back waits for its report
    busy.agent_id, busy.token_hash, busy.inflight = "agt_g1", token_hash("tok"), 1  # and one in flight: kept
    m._by_agent["agt_g1"] = _Agent(grants=[busy])
    m.needs_vault_hold = lambda r: r.candidates[0].provider == "node"  # the first copy goes to the vault
    first = asyncio.create_task(m.reserve("tok", "dup-1", route(x_cashu=True), "chat"))
    await asyncio.sleep(0.05)  # the first copy waits for the give-back
    copy = asyncio.create_task(m.reserve("tok", "dup-1", route(x_cashu=False), "chat"))
    await asyncio.sleep(0.05)
    busy.items.clear()  # reported: the give-back ends
    hold = await asyncio.wait_for(copy, 10)
    await asyncio.wait_for(first, 10)
    assert hold.grant is None, "a copy of a request id on its way to the vault was served under a grant"
    assert slow.reserved == ["dup-1", "dup-1"]  # both asked the vault, which answers the second with a 409
