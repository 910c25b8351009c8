"""Paid mode against free mode, in one run on the same machine (ratios hold on noisy machines):

    python -m bench.paid [--rounds 3] [--requests 1000] [--concurrency 32] [--duration 8] [--agents 100]

Each mode runs the whole stack as processes (as `arbstr up` does, on an authenticated bus) against the mock
upstream. Measured per mode: added latency (sequential p50 against direct-to-mock), streamed time to first token
added, throughput at C in flight from one agent and from many, CPU per request of every arbstr process plus
nats-server (from /proc, the load client and the mock excluded), the messages the nats-server received and
delivered per request (its /varz: every bus hop, whoever sent it), and in paid mode the journal messages and
events-stream messages per request.

The modes take turns, ``--rounds`` times (free then paid, then paid then free, ...), each on a fresh stack: what
else the machine runs drifts over minutes, so a ratio is taken between neighbours in time. Printed: every round
with its ratios paid ÷ free, then per mode the median over rounds of each figure, and the median of the rounds'
ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from typing import Any, Optional

import aiohttp
import nats

from arbstr.components import install_uvloop
from schemas import subjects

from .overhead import Headers, pct, sequential, throughput, ttft
from .stack import BenchStack, bench_stack

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (fields 14 and 15 of /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


async def stream_seq(stack: BenchStack, stream: str) -> int:
    nc = await nats.connect(stack.nats.url, **stack.connect_options("operator"))  # type: ignore[arg-type]
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    except Exception:
        return 0
    finally:
        await nc.close()


async def loaded(stack: BenchStack, http: aiohttp.ClientSession, url: str, concurrency: int, duration_s: float,
                 headers: Headers) -> dict[str, Any]:
    named = stack.arbstr_pids_by_name()
    ledger0, events0 = await stream_seq(stack, subjects.STREAM_LEDGER), await stream_seq(stack, subjects.STREAM_EVENTS)
    cpu0 = {name: cpu_s([pid]) for name, pid in named.items()}
    bus0 = stack.bus_messages()
    result = await throughput(http, url, concurrency, duration_s, headers)
    await asyncio.sleep(0.5)  # settles after the last answers are part of what those requests cost
    cpu = {name: cpu_s([pid]) - cpu0[name] for name, pid in named.items()}
    bus = stack.bus_messages()
    done = max(1, result["ok"] + result["errors"])
    # Every message a client put on the bus (requests, replies, publishes, JetStream API calls and acks) and every
    # delivery the server made, per request: the hops a request costs, whatever sent them.
    result["bus_messages_in_per_request"] = round((bus[0] - bus0[0]) / done, 3)
    result["bus_messages_out_per_request"] = round((bus[1] - bus0[1]) / done, 3)
    result["cpu_ms_per_request"] = round(sum(cpu.values()) * 1000 / done, 3)
    result["cpu_ms_per_request_by_process"] = {name: round(s * 1000 / done, 3) for name, s in cpu.items()}
    if stack.admin_token:
        ledger = await stream_seq(stack, subjects.STREAM_LEDGER) - ledger0
        events = await stream_seq(stack, subjects.STREAM_EVENTS) - events0
        result["journal_messages_per_request"] = round(ledger / done, 3)
        result["events_messages_per_request"] = round(events / done, 3)
    return result


async def measure(stack: BenchStack, requests: int, concurrency: int, duration_s: float, one: Headers,
                  many: Headers) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn) as http:
        gw, direct = f"{stack.gateway_url}/v1/chat/completions", f"{stack.mock_url}/alpha/v1/chat/completions"
        await sequential(http, gw, 200, one)  # warm-up: connections, caches, lazy imports
        await sequential(http, direct, 200, [{}])
        d_lat, _ = await sequential(http, direct, requests, [{}])
        g_lat, g_over = await sequential(http, gw, requests, one)
        d_ttft = await ttft(http, direct, min(requests, 300), [{}])
        g_ttft = await ttft(http, gw, min(requests, 300), one)
        one_agent = await loaded(stack, http, gw, concurrency, duration_s, one)
        many_agents = await loaded(stack, http, gw, concurrency, duration_s, many)
        direct_tp = await throughput(http, direct, concurrency, duration_s, [{}])
    return {
        "added_ms_p50": round(pct(g_lat, 50) - pct(d_lat, 50), 3),
        "added_ms_p99": round(pct(g_lat, 99) - pct(d_lat, 99), 3),
        "x_arbstr_overhead_ms_p50": pct(g_over, 50),
        "ttft_added_ms_p50": round(pct(g_ttft, 50) - pct(d_ttft, 50), 3),
        "one_agent": one_agent,
        "many_agents": many_agents,
        "direct_req_per_s": direct_tp["req_per_s"],
    }


def ratios(free: dict[str, Any], paid: dict[str, Any]) -> dict[str, Any]:
    def r(a: float, b: float) -> Optional[float]:
        return round(a / b, 3) if b else None

    return {
        "throughput_one_agent": r(paid["one_agent"]["req_per_s"], free["one_agent"]["req_per_s"]),
        "throughput_many_agents": r(paid["many_agents"]["req_per_s"], free["many_agents"]["req_per_s"]),
        "cpu_per_request_one_agent": r(paid["one_agent"]["cpu_ms_per_request"],
                                       free["one_agent"]["cpu_ms_per_request"]),
        "added_latency_p50_ms_over_free": round(paid["added_ms_p50"] - free["added_ms_p50"], 3),
        "ttft_added_p50_ms_over_free": round(paid["ttft_added_ms_p50"] - free["ttft_added_ms_p50"], 3),
        "paid_vs_direct_to_mock": r(paid["one_agent"]["req_per_s"], paid["direct_req_per_s"]),
    }


def median_of(results: list[Any]) -> Any:
    """The median over rounds of every number in same-shaped results (dicts of numbers, nested)."""
    first = results[0]
    if isinstance(first, dict):
        return {k: median_of([r.get(k) for r in results]) for k in first}
    numbers = [r for r in results if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if len(numbers) < len(results) or not numbers:
        return first
    return round(statistics.median(numbers), 3)


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with bench_stack(paid=mode == "paid", grants=not args.no_grants) as stack:
        if mode == "paid":
            tokens = [stack.create_agent(f"bench{i}", 10**15) for i in range(args.agents)]
            one: Headers = [{"Authorization": f"Bearer {tokens[0]}"}]
            many: Headers = [{"Authorization": f"Bearer {t}"} for t in tokens]
        else:
            one = many = [{}]
        return asyncio.run(measure(stack, args.requests, args.concurrency, args.duration, one, many))


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="free and paid take turns this many times")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--no-grants", action="store_true", help="paid mode with a vault reserve and settle per request")
    args = ap.parse_args(argv)
    install_uvloop()
    rounds: list[dict[str, Any]] = []
    for k in range(max(1, args.rounds)):
        one_round: dict[str, Any] = {}
        for mode in (("free", "paid") if k % 2 == 0 else ("paid", "free")):
            one_round[mode] = run_mode(mode, args)
        one_round["paid_over_free"] = ratios(one_round["free"], one_round["paid"])
        rounds.append(one_round)
    out: dict[str, Any] = {"concurrency": args.concurrency, "rounds": rounds}
    for key in ("free", "paid", "paid_over_free"):
        out[key] = median_of([r[key] for r in rounds])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
