"""Memory of the whole stack as paid requests accumulate: does any process grow with the number of requests served?

    python -m bench.memory [--checkpoints 100000,1000000] [--agents 100] [--concurrency 16]

The stack `arbstr up` runs (paid, grants, authenticated bus, fsync'd JetStream, the vault's reporting projection in
a file, the mock upstream), requests over
HTTP from ``--agents`` agents in turn, each with its own request id. At every checkpoint the RSS of each arbstr
process is read from /proc (once the reports of the requests so far are journaled), and the books are checked.
Printed: RSS per process at each checkpoint and the ratio of the last checkpoint to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Optional

import aiohttp

from arbstr.components import install_uvloop

from .overhead import BODY
from .stack import BenchStack, bench_stack
from .vault import rss_mb


async def drive(stack: BenchStack, tokens: list[str], checkpoints: list[int], concurrency: int) -> list[dict[str, Any]]:
    url = f"{stack.gateway_url}/v1/chat/completions"
    sent = ok = errors = 0
    out: list[dict[str, Any]] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as http:
        for target in checkpoints:
            async def worker() -> None:
                nonlocal sent, ok, errors
                while sent < target:
                    sent += 1
                    headers = {"Authorization": f"Bearer {tokens[sent % len(tokens)]}"}
                    async with http.post(url, json=BODY, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            ok += 1
                        else:
                            errors += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await asyncio.sleep(3)  # the last reports journaled, the projection flushed
            async with http.get(f"{stack.gateway_url}/v1/admin/books",
                                headers={"Authorization": f"Bearer {stack.admin_token}"}) as r:
                books = await r.json()
            out.append({"requests": sent, "ok": ok, "errors": errors,
                        "elapsed_s": round(time.perf_counter() - started, 1),
                        "rss_mb": {name: rss_mb(pid) for name, pid in stack.arbstr_pids_by_name().items()},
                        "books_balanced": books.get("balanced")})
            print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="100000,1000000", help="request counts at which memory is read")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args(argv)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    install_uvloop()
    with bench_stack(paid=True, projection_file=True) as stack:
        tokens = [stack.create_agent(f"mem{i}", 10**15) for i in range(args.agents)]
        points = asyncio.run(drive(stack, tokens, checkpoints, args.concurrency))
    first, last = points[0]["rss_mb"], points[-1]["rss_mb"]
    print(json.dumps({"checkpoints": points,
                      "rss_last_over_first": {k: round(last[k] / first[k], 3) for k in first if first[k]}}, indent=2))


if __name__ == "__main__":
    main()
