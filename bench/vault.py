"""Vault throughput: reserve+settle pairs per second over many agents, JetStream fsync on.

    python -m bench.vault [--agents 100] [--pairs 5000] [--concurrency 64] [--instances 1]

Drives the vault actor over NATS exactly as gateways do (reserve by request/reply, settle through the
ARBSTR_SETTLE work queue) and stops the clock when every settle is journaled (no pending hold left).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, TypeVar

import nats
from pydantic import BaseModel

from arbstr.components import install_uvloop
from arbstr.natsserver import NatsServer
from schemas import exchanges, subjects
from schemas.exchanges import Exchange, decode_error
from schemas.router import Envelope
from schemas.vault import CreateAgent, DepositCommand, Empty, ReserveRequest, SettleCommand

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
ENVELOPE = Envelope(input_tokens=200, output_tokens=100, input_rate=12000, output_rate=12000,
                    max_output_tokens=100)


ADMIN_TOKEN = "bench"


async def call(nc: Any, exchange: Exchange[Q, R], msg: Q) -> R:
    # Admin commands carry the operator's token, which the vault checks itself.
    headers = {subjects.H_ADMIN_AUTH: ADMIN_TOKEN} if exchange.auth == "admin" else None
    r = await nc.request(exchange.subject, msg.model_dump_json().encode(), timeout=10, headers=headers)
    error = decode_error(r.data, r.headers)
    if error is not None:
        raise RuntimeError(r.data.decode())
    return exchange.reply.model_validate_json(r.data)


async def run(url: str, agents: int, pairs: int, concurrency: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    accounts = []
    for k in range(agents):
        th = hashlib.sha256(f"bench-token-{k}".encode()).hexdigest()
        view = await call(nc, exchanges.CREATE_AGENT, CreateAgent(name=f"bench{k}", token_hash=th))
        await call(nc, exchanges.ADMIN_DEPOSIT,
                   DepositCommand(agent_id=view.agent_id, amount_msat=10**15, deposit_id="seed"))
        accounts.append((view.agent_id, th))
    counter = iter(range(pairs))
    reserve_lat: list[float] = []

    async def worker() -> None:
        for i in counter:
            agent_id, th = accounts[i % agents]
            rid = f"bench-{i}"
            t = time.perf_counter()
            await call(nc, exchanges.RESERVE, ReserveRequest(request_id=rid, token_hash=th, envelope=ENVELOPE))
            reserve_lat.append((time.perf_counter() - t) * 1000)
            cmd = SettleCommand(kind="settle", request_id=rid, agent_id=agent_id, cost_msat=1000)
            await js.publish(subjects.settle_command(agent_id), cmd.model_dump_json().encode(),
                             headers={subjects.H_MSG_ID: f"settle:{rid}"})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    issued = time.perf_counter() - started
    while True:
        books = await call(nc, exchanges.BOOKS, Empty())
        if books.pending_msat == 0:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await nc.close()
    reserve_lat.sort()
    return {
        "agents": agents, "pairs": pairs, "concurrency": concurrency, "fsync": "always",
        "pairs_per_s": round(pairs / elapsed, 1), "seconds": round(elapsed, 2),
        "issue_seconds": round(issued, 2),
        "reserve_ms": {"p50": round(reserve_lat[len(reserve_lat) // 2], 3),
                       "p99": round(reserve_lat[int(len(reserve_lat) * 0.99)], 3)},
        "books_balanced": books.balanced,
        "spent_msat": books.spent_msat,
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--instances", type=int, default=1, help="vault processes sharing the work")
    ap.add_argument("--restart", action="store_true", help="then stop the vault (SIGTERM) and SIGKILL it, timing "
                                                           "each start to serving, with its memory")
    args = ap.parse_args(argv)
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="arbstr-bench-vault-") as tmp:
        work = Path(tmp)
        cfg = work / "arbstr.toml"
        cfg.write_text(f'[vault]\nadmin_token = "{ADMIN_TOKEN}"\n')
        with NatsServer(work / "nats", sync_always=True) as server:
            log = open(work / "vault.log", "ab")
            def vault() -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "arbstr", "run", "vault", "--config", str(cfg),
                                         "--nats", server.url], stdout=log, stderr=log)

            procs = [vault() for _ in range(args.instances)]
            try:
                result = asyncio.run(_wait_and_run(server.url, args))
                if args.restart:
                    for how in ("stop", "kill"):
                        rss_before = rss_mb(procs[0].pid)
                        if how == "stop":
                            procs[0].terminate()
                        else:
                            procs[0].kill()
                        procs[0].wait(timeout=30)
                        started = time.perf_counter()
                        procs[0] = vault()
                        asyncio.run(_serving(server.url))
                        result[f"restart_after_{how}_s"] = round(time.perf_counter() - started, 2)
                        result[f"rss_mb_before_{how}"], result[f"rss_mb_after_{how}"] = rss_before, rss_mb(procs[0].pid)
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(timeout=10)
    result["instances"] = args.instances
    print(json.dumps(result, indent=2))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def _serving(url: str) -> None:
    """Until every partition is served again: the books (which need each partition's read model) answer, and a
    reserve of an agent made before the restart is decided by its partition's owner."""
    nc = await nats.connect(url)
    th = hashlib.sha256(b"bench-token-0").hexdigest()
    try:
        while True:
            try:
                await call(nc, exchanges.BOOKS, Empty())
                await call(nc, exchanges.RESERVE, ReserveRequest(request_id=f"probe-{time.time_ns()}", token_hash=th,
                                                                 envelope=ENVELOPE))
                return
            except Exception:
                await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def _wait_and_run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    nc = await nats.connect(url)
    for _ in range(200):
        try:
            await nc.request(f"$SRV.PING.{subjects.SERVICE_VAULT}", b"", timeout=0.2)
            break
        except Exception:
            await asyncio.sleep(0.05)
    await nc.close()
    return await run(url, args.agents, args.pairs, args.concurrency)


if __name__ == "__main__":
    main()
