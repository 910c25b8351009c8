"""Reports from the request log: /v1/stats, /v1/requests and `arbstr spend`, on a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from arbstr.cli import build_parser
from arbstr.natsserver import NatsServer
from schemas.money import cost_msat
from tests.support.stack import ADMIN_TOKEN, Stack
from tests.support.vault_helpers import ADMIN, new_agent, settled

CHAT = [{"role": "user", "content": "Tell me about the weather on the coast today."}]
RATES = {"alpha": 8000, "beta": 10000, "gamma": 12000}


@pytest.fixture
async def stack(paid_stack: Stack, mock_upstream: str) -> AsyncIterator[Stack]:
    yield paid_stack
    async with aiohttp.ClientSession() as http:
        for p in RATES:
            await http.delete(f"{mock_upstream}/_mock/{p}/faults")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def chat(http: aiohttp.ClientSession, stack: Stack, token: str, **body: Any) -> tuple[int, dict[str, str]]:
    """Status and headers; a stream's cost (sent in its usage chunk) is copied into x-arbstr-cost-msat."""
    payload = {"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 30, **body}
    r = await http.post(f"{stack.url}/v1/chat/completions", json=payload, headers=bearer(token))
    text = (await r.read()).decode()
    headers = dict(r.headers)
    if body.get("stream"):
        for line in text.splitlines():
            if line.startswith("data: {") and '"cost_msat"' in line:
                headers["x-arbstr-cost-msat"] = str(json.loads(line[6:])["usage"]["cost_msat"])
    return r.status, headers


async def get(http: aiohttp.ClientSession, stack: Stack, path: str, headers: dict[str, str] = ADMIN,
              expect: int = 200) -> Any:
    r = await http.get(f"{stack.url}{path}", headers=headers)
    body = await r.json()
    assert r.status == expect, (r.status, body)
    return body


async def logged(http: aiohttp.ClientSession, stack: Stack, n: int, timeout_s: float = 10.0) -> None:
    """Records reach the vault asynchronously (gateway → events stream → projection)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        body = await get(http, stack, "/v1/requests?limit=1")
        if body["total"] >= n:
            assert body["total"] == n, body
            return
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


@pytest.fixture
async def traffic(http: aiohttp.ClientSession, stack: Stack, mock_upstream: str) -> dict[str, Any]:
    """Two agents: a served on alpha (x2, one streamed), one failed over to beta, one refused by the upstream."""
    a_id, a_tok = await new_agent(http, stack, "alice", deposit_msat=5_000_000)
    b_id, b_tok = await new_agent(http, stack, "bob", deposit_msat=5_000_000)
    costs: dict[str, list[int]] = {a_id: [], b_id: []}
    by_provider: dict[str, int] = {}
    for token, agent, extra in ((a_tok, a_id, {}), (a_tok, a_id, {"stream": True, "stream_options": {"include_usage": True}}), (b_tok, b_id, {})):
        status, h = await chat(http, stack, token, **extra)
        assert status == 200 and h["x-arbstr-provider"] == "alpha"
        costs[agent].append(int(h["x-arbstr-cost-msat"]))
        by_provider["alpha"] = by_provider.get("alpha", 0) + int(h["x-arbstr-cost-msat"])
    r = await http.post(f"{mock_upstream}/_mock/alpha/faults", json={"status": 500, "count": 1})
    assert r.status < 300
    status, h = await chat(http, stack, b_tok)
    assert status == 200 and h["x-arbstr-provider"] == "beta" and h["x-arbstr-tried"] == "alpha"
    costs[b_id].append(int(h["x-arbstr-cost-msat"]))
    by_provider["beta"] = int(h["x-arbstr-cost-msat"])
    r = await http.post(f"{mock_upstream}/_mock/alpha/faults", json={"status": 400, "count": 1})
    assert r.status < 300
    status, _ = await chat(http, stack, b_tok)
    assert status == 400
    await settled(http, stack, a_id)
    await settled(http, stack, b_id)
    await logged(http, stack, 5)
    return {"a": (a_id, a_tok), "b": (b_id, b_tok), "costs": costs, "by_provider": by_provider}


async def test_stats_sum_to_the_billed_costs(http, stack, traffic) -> None:
    costs, by_provider = traffic["costs"], traffic["by_provider"]
    a_id, b_id = traffic["a"][0], traffic["b"][0]
    total = sum(sum(v) for v in costs.values())

    whole = (await get(http, stack, "/v1/stats"))["data"]
    assert len(whole) == 1 and whole[0]["key"] is None
    row = whole[0]
    assert row["requests"] == 5 and row["succeeded"] == 4 and row["failed"] == 1 and row["streamed"] == 1
    assert row["cost_msat"] == total
    # The baseline is the cheapest single provider able to serve every billed request: alpha (8,000 sats per 1M),
    # which every route listed. The request that failed over to beta cost more than alpha would have: routing
    # reports that honestly as negative savings, not as savings against the costliest candidate.
    billed = [r for r in (await get(http, stack, "/v1/requests"))["data"] if r["cost_msat"] > 0]
    at_alpha = sum(cost_msat(r["input_tokens"], r["output_tokens"], 8000, 8000) for r in billed)
    assert (row["savings_baseline"], row["baseline_provider"], row["baseline_model"]) == (
        "cheapest_single_provider", "alpha", "gpt-4o-mini")
    assert row["baseline_msat"] == at_alpha
    assert row["savings_msat"] == row["baseline_msat"] - row["cost_msat"] < 0
    assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]

    prov = {r["key"]: r for r in (await get(http, stack, "/v1/stats?group_by=provider"))["data"]}
    assert prov["alpha"]["cost_msat"] == by_provider["alpha"] and prov["beta"]["cost_msat"] == by_provider["beta"]
    assert prov["alpha"]["requests"] == 3 and prov["beta"]["requests"] == 1
    assert prov[None]["requests"] == 1 and prov[None]["cost_msat"] == 0  # the upstream's 400: nobody served it
    # Each served record keeps the same tokens at every offer able to serve it (the baseline's input), and at
    # gamma's rate, the costliest candidate.
    beta_log = (await get(http, stack, "/v1/requests?provider=beta"))["data"]
    assert len(beta_log) == 1
    rec = beta_log[0]
    assert rec["baseline_msat"] == cost_msat(rec["input_tokens"], rec["output_tokens"], 12000, 12000)
    assert rec["cost_msat"] == cost_msat(rec["input_tokens"], rec["output_tokens"], 10000, 10000)
    assert {(p["provider"], p["cost_msat"]) for p in rec["pinned_costs"]} == {
        (name, cost_msat(rec["input_tokens"], rec["output_tokens"], rate, rate)) for name, rate in RATES.items()}
    assert prov["alpha"]["savings_msat"] == 0 and prov["alpha"]["baseline_provider"] == "alpha"
    assert prov["beta"]["savings_msat"] == cost_msat(rec["input_tokens"], rec["output_tokens"], 8000, 8000) - \
        rec["cost_msat"] < 0

    agents = {r["key"]: r for r in (await get(http, stack, "/v1/stats?group_by=agent"))["data"]}
    assert agents[a_id]["cost_msat"] == sum(costs[a_id]) and agents[a_id]["requests"] == 2
    assert agents[b_id]["cost_msat"] == sum(costs[b_id]) and agents[b_id]["requests"] == 3

    models = (await get(http, stack, "/v1/stats?group_by=model"))["data"]
    assert [(m["key"], m["cost_msat"]) for m in models] == [("gpt-4o-mini", total)]
    days = (await get(http, stack, "/v1/stats?group_by=day"))["data"]
    assert len(days) == 1 and days[0]["requests"] == 5
    one = (await get(http, stack, f"/v1/stats?agent={a_id}"))["data"][0]
    assert one["cost_msat"] == sum(costs[a_id])
    later = (await get(http, stack, "/v1/stats?since=2999-01-01T00:00:00Z"))["data"][0]
    assert later["requests"] == 0 and later["cost_msat"] == 0


async def test_stats_filter_by_provider_and_model(http, stack, traffic) -> None:
    by_provider = traffic["by_provider"]
    alpha = (await get(http, stack, "/v1/stats?provider=alpha"))["data"]
    assert len(alpha) == 1 and alpha[0]["requests"] == 3 and alpha[0]["cost_msat"] == by_provider["alpha"]
    days = (await get(http, stack, "/v1/stats?group_by=day&provider=beta"))["data"]
    assert len(days) == 1 and days[0]["requests"] == 1 and days[0]["cost_msat"] == by_provider["beta"]
    both = (await get(http, stack, "/v1/stats?group_by=provider&model=gpt-4o-mini&provider=alpha"))["data"]
    assert [(r["key"], r["requests"]) for r in both] == [("alpha", 3)]
    # Unknown names match nothing: no groups, or one all-zero total.
    assert (await get(http, stack, "/v1/stats?group_by=day&provider=nobody"))["data"] == []
    none = (await get(http, stack, "/v1/stats?model=gpt-9"))["data"]
    assert none[0]["requests"] == 0 and none[0]["cost_msat"] == 0
    # An agent's token is filtered the same way, within its own requests.
    a_id, a_tok = traffic["a"]
    own = (await get(http, stack, "/v1/stats?provider=alpha", headers=bearer(a_tok)))["data"]
    assert own[0]["requests"] == 2
    for query, param in (("provider=a%20b", "provider"), ("model=" + "m" * 257, "model"),
                         ("provider=alpha&provider=beta", "provider"), ("model=%00", "model")):
        body = await get(http, stack, f"/v1/stats?{query}", expect=400)
        assert body["error"]["param"] == param and body["error"]["code"] == "invalid_value", (query, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_request_log_filters_sorts_and_paginates(http, stack, traffic) -> None:
    a_id, b_id = traffic["a"][0], traffic["b"][0]
    log = (await get(http, stack, "/v1/requests"))["data"]
    assert len(log) == 5
    assert [r["at_ms"] for r in log] == sorted((r["at_ms"] for r in log), reverse=True)
    by_cost = (await get(http, stack, "/v1/requests?sort=cost&order=asc"))["data"]
    assert [r["cost_msat"] for r in by_cost] == sorted(r["cost_msat"] for r in log)
    by_latency = (await get(http, stack, "/v1/requests?sort=latency&order=desc"))["data"]
    assert [r["latency_ms"] for r in by_latency] == sorted((r["latency_ms"] for r in log), reverse=True)

    pages = [(await get(http, stack, f"/v1/requests?sort=at&order=asc&limit=2&offset={o}")) for o in (0, 2, 4)]
    assert [len(p["data"]) for p in pages] == [2, 2, 1] and all(p["total"] == 5 for p in pages)
    ids = [r["request_id"] for p in pages for r in p["data"]]
    assert len(set(ids)) == 5

    failed = (await get(http, stack, "/v1/requests?success=false"))["data"]
    assert len(failed) == 1 and failed[0]["status"] == 400 and failed[0]["agent_id"] == b_id
    streamed = (await get(http, stack, "/v1/requests?streamed=true"))["data"]
    assert len(streamed) == 1 and streamed[0]["agent_id"] == a_id and streamed[0]["success"] is True
    assert len((await get(http, stack, f"/v1/requests?agent={a_id}"))["data"]) == 2
    assert len((await get(http, stack, "/v1/requests?model=gpt-4o-mini&provider=alpha"))["data"]) == 3
    assert (await get(http, stack, "/v1/requests?model=gpt-4o"))["data"] == []

    for query, param in (("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"),
                         ("sort=price", "sort"), ("order=up", "order"), ("success=maybe", "success"),
                         ("since=yesterday", "since"), ("until=soon", "until")):
        body = await get(http, stack, f"/v1/requests?{query}", expect=400)
        assert body["error"]["param"] == param, (query, body)
    body = await get(http, stack, "/v1/stats?group_by=color", expect=400)
    assert body["error"]["param"] == "group_by"


async def test_an_agent_sees_only_its_own(http, stack, traffic) -> None:
    (a_id, a_tok), (b_id, _) = traffic["a"], traffic["b"]
    mine = await get(http, stack, "/v1/requests", headers=bearer(a_tok))
    assert mine["total"] == 2 and {r["agent_id"] for r in mine["data"]} == {a_id}
    stats = (await get(http, stack, "/v1/stats?group_by=agent", headers=bearer(a_tok)))["data"]
    assert [r["key"] for r in stats] == [a_id] and stats[0]["cost_msat"] == sum(traffic["costs"][a_id])
    body = await get(http, stack, f"/v1/requests?agent={b_id}", headers=bearer(a_tok), expect=403)
    assert body["error"]["param"] == "agent"
    await get(http, stack, "/v1/stats", headers=bearer("arb_not-a-token"), expect=401)
    await get(http, stack, "/v1/stats", headers={}, expect=401)


def run_cli(argv: list[str]) -> tuple[int, str]:
    args = build_parser().parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = args.func(args)
    return rc, out.getvalue()


async def test_spend_cli_prints_csv_json_and_table(http, stack, traffic) -> None:
    common = ["--url", stack.url, "--admin-token", ADMIN_TOKEN]
    rc, out = await asyncio.to_thread(run_cli, ["spend", "--by", "provider", "--format", "csv", *common])
    assert rc == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["provider"] for r in rows][-1] == "TOTAL"
    cells = {r["provider"]: r for r in rows}
    assert int(cells["alpha"]["cost_msat"]) == traffic["by_provider"]["alpha"]
    total = cells["TOTAL"]
    assert int(total["cost_msat"]) == sum(sum(v) for v in traffic["costs"].values())
    # The total is the whole range's own row: one baseline provider for all of it (the failover to beta cost
    # more than alpha would have).
    assert int(total["savings_msat"]) == int(total["baseline_msat"]) - int(total["cost_msat"]) < 0
    assert (total["savings_baseline"], total["baseline_provider"]) == ("cheapest_single_provider", "alpha")

    rc, out = await asyncio.to_thread(run_cli, ["spend", "--by", "agent", "--format", "json", *common])
    assert rc == 0
    data = {r["key"]: r for r in json.loads(out)}
    assert data[traffic["a"][0]]["cost_msat"] == sum(traffic["costs"][traffic["a"][0]])

    rc, out = await asyncio.to_thread(run_cli, ["spend", *common])
    assert rc == 0 and "savings_msat" in out.splitlines()[0] and out.splitlines()[1].startswith("all")
    rc, out = await asyncio.to_thread(run_cli, ["spend", "--since", "2999-01-01", "--format", "json", *common])
    assert rc == 0 and json.loads(out)[0]["requests"] == 0


async def test_ensure_streams_widens_an_older_events_stream(fresh_nats: NatsServer) -> None:
    import nats
    from nats.js.api import StreamConfig

    from actors.vault.partition_journal import Layout
    from actors.vault.streams import ensure_streams
    from schemas import subjects

    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=subjects.STREAM_EVENTS, subjects=[f"{subjects.SPEND_PREFIX}.>"]))
        await js.publish(subjects.spend("old"), b"{}")
        await ensure_streams(nc, Layout(16))
        info = await js.stream_info(subjects.STREAM_EVENTS)
        assert set(info.config.subjects or []) == {f"{subjects.SPEND_PREFIX}.>", f"{subjects.REQUESTS_PREFIX}.>"}
        assert info.state.messages == 1  # widened in place: nothing lost
        ack = await js.publish(subjects.requests(None), b"{}")
        assert ack.stream == subjects.STREAM_EVENTS
    finally:
        await nc.drain()


# --- the tier decision in the record ------------------------------------------------------------------------------
def _explained_route() -> Any:
    from schemas.router import Candidate, Envelope, FeatureWeight, RouteReply, TierExplanation

    cand = Candidate(provider="alpha", model="m", input_rate=100, output_rate=400, tier="standard",
                     estimated_cost_msat=5)
    return RouteReply(
        request_id="r1", model="auto", tier="standard", complexity="medium", complexity_score=48,
        explanation=TierExplanation(scorer="trained", predicted_tier="standard", confidence=0.83,
                                    probabilities={"local": 0.1, "standard": 0.83, "frontier": 0.07},
                                    top_features=[FeatureWeight(name="lex:plang", weight=2.5),
                                                  FeatureWeight(name="x:code", weight=1.6)]),
        candidates=[cand], envelope=Envelope(input_tokens=10, input_rate=100, output_rate=400, max_output_tokens=50))


def test_the_record_carries_the_tier_decision_through_the_projection(tmp_path: Any) -> None:
    """The gateway copies the router's explanation into the record; the vault's DuckDB projection keeps it, also in a
    file written before the columns existed (they are added, old rows read with none)."""
    import duckdb

    from actors.vault.projection import Projection
    from actors.vault.request_log import RequestLog
    from gateway.request_log import request_record
    from schemas.requests import RequestsQuery

    path = str(tmp_path / "old.duckdb")
    old = duckdb.connect(path)
    old.execute("CREATE TABLE requests (stream_seq BIGINT, request_id VARCHAR, agent_id VARCHAR, endpoint VARCHAR, "
                "model VARCHAR, provider VARCHAR, upstream_model VARCHAR, tier VARCHAR, status INTEGER, "
                "success BOOLEAN, streamed BOOLEAN, input_tokens BIGINT, output_tokens BIGINT, cost_msat BIGINT, "
                "baseline_msat BIGINT, latency_ms DOUBLE, overhead_ms DOUBLE, at_ms BIGINT, estimated BOOLEAN)")
    old.execute("INSERT INTO requests VALUES (1, 'r0', NULL, 'chat', 'm', 'alpha', 'm', 'local', 200, true, false, "
                "1, 1, 1, 1, 1.0, 0.1, 1000, false)")
    old.execute("CREATE TABLE projection_meta (k VARCHAR PRIMARY KEY, v BIGINT NOT NULL)")
    old.execute("INSERT INTO projection_meta VALUES ('requests_seq', 1)")
    old.close()

    record = request_record(request_id="r1", agent_id=None, endpoint="chat", route=_explained_route(), usage=None,
                            status=503, success=False, streamed=False, latency_ms=1.0, overhead_ms=0.5, at_ms=2000)
    assert (record.predicted_tier, record.tier_confidence, record.tier_scorer) == ("standard", 0.83, "trained")
    assert [(f.name, f.weight) for f in record.tier_features] == [("lex:plang", 2.5), ("x:code", 1.6)]

    log = RequestLog(Projection(path))
    log.add(record, 2)
    items = {r.request_id: r for r in log.requests(RequestsQuery(sort="at", order="asc")).items}
    assert items["r1"] == record
    assert (items["r0"].predicted_tier, items["r0"].tier_features) == (None, [])


async def test_served_records_say_how_the_tier_was_decided(http, stack, traffic) -> None:
    log = (await get(http, stack, "/v1/requests"))["data"]
    # Every provider of this stack sits at one tier: a named model there is never scored, and the record says so.
    assert {r["tier_scorer"] for r in log} == {"skipped"}
    assert all(r["predicted_tier"] is None and r["tier_features"] == [] for r in log)


def test_a_file_projection_keeps_duckdb_to_its_memory_limit(tmp_path: Path) -> None:
    # DuckDB would otherwise let its page cache of the growing file take up to 80 % of the machine's RAM.
    from actors.vault.projection import Projection

    def limit(p: Projection) -> str:
        return str(p.db.execute("SELECT current_setting('memory_limit')").fetchone()[0])

    assert limit(Projection(str(tmp_path / "p.duckdb"), memory_mb=64)) == "64.0 MiB"
    in_memory = Projection("", memory_mb=64)  # nowhere to evict to: DuckDB's own default stays
    assert limit(in_memory) != "64.0 MiB"
