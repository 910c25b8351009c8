"""What arbstr adds to a request: direct-to-upstream vs through the gateway, against the mock upstream.

    python -m bench.overhead [--requests N] [--concurrency C] [--duration S]

Prints JSON: sequential p50/p99 latency (direct, gateway, and the difference), the gateway's own
``x-arbstr-overhead-ms`` figures, throughput at C in flight, and streamed time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any, Optional

import aiohttp

from arbstr.components import install_uvloop

from .stack import bench_stack

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Benchmark prompt: say something."}],
        "max_tokens": 16}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return round(s[k], 3)


Headers = list[dict[str, str]]  # rotated per request: one entry per agent


async def sequential(http: aiohttp.ClientSession, url: str, n: int, headers: Headers
                     ) -> tuple[list[float], list[float]]:
    lat, overhead = [], []
    for i in range(n):
        t = time.perf_counter()
        async with http.post(url, json=BODY, headers=headers[i % len(headers)]) as r:
            await r.read()
            assert r.status == 200, r.status
            if "x-arbstr-overhead-ms" in r.headers:
                overhead.append(float(r.headers["x-arbstr-overhead-ms"]))
        lat.append((time.perf_counter() - t) * 1000)
    return lat, overhead


async def throughput(http: aiohttp.ClientSession, url: str, concurrency: int, duration_s: float,
                     headers: Headers) -> dict[str, Any]:
    done = errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker(k: int) -> None:
        nonlocal done, errors
        while time.perf_counter() < deadline:
            async with http.post(url, json=BODY, headers=headers[(done + k) % len(headers)]) as r:
                await r.read()
                if r.status == 200:
                    done += 1
                else:
                    errors += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t
    return {"req_per_s": round(done / elapsed, 1), "ok": done, "errors": errors, "in_flight": concurrency}


async def ttft(http: aiohttp.ClientSession, url: str, n: int, headers: Headers) -> list[float]:
    out = []
    body = {**BODY, "stream": True}
    for i in range(n):
        t = time.perf_counter()
        first: Optional[float] = None
        async with http.post(url, json=body, headers=headers[i % len(headers)]) as r:
            async for line in r.content:
                if first is None and b'"content"' in line:
                    first = (time.perf_counter() - t) * 1000
        out.append(first if first is not None else float("nan"))
    return out


async def measure(gateway: str, direct: str, requests: int, concurrency: int, duration_s: float,
                  headers: Headers) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn) as http:
        gw_url, direct_url = f"{gateway}/v1/chat/completions", f"{direct}/alpha/v1/chat/completions"
        await sequential(http, gw_url, 200, headers)  # warm-up: connections, caches, JIT-free but lazy imports
        await sequential(http, direct_url, 200, [{}])
        d_lat, _ = await sequential(http, direct_url, requests, [{}])
        g_lat, g_over = await sequential(http, gw_url, requests, headers)
        d_tp = await throughput(http, direct_url, concurrency, duration_s, [{}])
        g_tp = await throughput(http, gw_url, concurrency, duration_s, headers)
        d_ttft = await ttft(http, direct_url, min(requests, 300), [{}])
        g_ttft = await ttft(http, gw_url, min(requests, 300), headers)
    return {
        "sequential": {
            "requests": requests,
            "direct_ms": {"p50": pct(d_lat, 50), "p99": pct(d_lat, 99)},
            "gateway_ms": {"p50": pct(g_lat, 50), "p99": pct(g_lat, 99)},
            "added_ms": {"p50": round(pct(g_lat, 50) - pct(d_lat, 50), 3),
                         "p99": round(pct(g_lat, 99) - pct(d_lat, 99), 3)},
            "x_arbstr_overhead_ms": {"p50": pct(g_over, 50), "p99": pct(g_over, 99),
                                     "mean": round(statistics.fmean(g_over), 3) if g_over else None},
        },
        "throughput": {"direct": d_tp, "gateway": g_tp},
        "stream_ttft_ms": {"direct_p50": pct(d_ttft, 50), "gateway_p50": pct(g_ttft, 50),
                           "added_p50": round(pct(g_ttft, 50) - pct(d_ttft, 50), 3)},
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--paid", action="store_true", help="with the vault: every request reserved and settled")
    ap.add_argument("--agents", type=int, default=100, help="paid mode: requests rotate over this many agents")
    args = ap.parse_args(argv)
    install_uvloop()
    with bench_stack(paid=args.paid) as stack:
        headers: Headers = [{}]
        if args.paid:
            headers = [{"Authorization": f"Bearer {stack.create_agent(f'bench{i}', 10**15)}"}
                       for i in range(args.agents)]
        result = asyncio.run(measure(stack.gateway_url, stack.mock_url, args.requests, args.concurrency,
                                     args.duration, headers))
    result["mode"] = "paid" if args.paid else "free"
    if args.paid:
        result["agents"] = args.agents
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
