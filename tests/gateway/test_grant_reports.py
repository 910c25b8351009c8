"""A gateway's grant reports as messages: cut to what the server accepts in one message, every served request
reported exactly once across the reports, refusals per grant (pure of NATS: the bus is a recorder here)."""

from __future__ import annotations

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
