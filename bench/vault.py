"""Vault throughput: reserve+settle pairs per second over many agents, JetStream fsync on.

    python -m bench.vault [--mode direct|queue|grants] [--agents 100] [--pairs 20000] [--concurrency 256] [--clients 2]
                          [--instances 1] [--partitions 16] [--restart]

Drives the vault actor over NATS exactly as gateways do: the load clients are the gateway's own ``VaultMeter``
(reserve, then settle with the request's record, each by request/reply to the owner of the agent's partition).
``--mode queue`` settles through the ARBSTR_SETTLE work queue instead (the fallback path) and stops the clock when
every settle is journaled (no pending hold left); ``--mode grants`` is the gateway's grant meter (credit control:
requests decided in the client against a grant, reported to the owner in batches; the clock stops when every
report is journaled and every grant given back). Reports pairs/s, journal messages per pair and CPU ms per pair
of the vault instances, nats-server and the load clients (all on the same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, TypeVar

import nats
from pydantic import BaseModel

from actors.runtime.tokens import token_hash
from arbstr.components import install_uvloop
from arbstr.natsserver import NatsServer
from schemas import exchanges, subjects
from schemas.exchanges import Exchange, decode_error
from schemas.vault import CreateAgent, DepositCommand, Empty, ReserveRequest

from .vault_load import ENVELOPE, LoadSpec, run_client, usage_of

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

ADMIN_TOKEN = "bench"


async def call(nc: Any, exchange: Exchange[Q, R], msg: Q) -> R:
    # Admin commands carry the operator's token, which the vault checks itself.
    headers = {subjects.H_ADMIN_AUTH: ADMIN_TOKEN} if exchange.auth == "admin" else None
    r = await nc.request(exchange.subject, msg.model_dump_json().encode(), timeout=10, headers=headers)
    error = decode_error(r.data, r.headers)
    if error is not None:
        raise RuntimeError(r.data.decode())
    return exchange.reply.model_validate_json(r.data)


def bench_token(k: int) -> str:
    return f"bench-token-{k}"


async def setup(url: str, agents: int) -> int:
    """The agents, each funded far beyond what the run spends; returns how often a deposit had to be retried."""
    nc = await nats.connect(url)
    retried = 0
    for k in range(agents):
        view = await call(nc, exchanges.CREATE_AGENT, CreateAgent(name=f"bench{k}",
                                                                  token_hash=token_hash(bench_token(k))))
        for attempt in range(50):
            try:
                await call(nc, exchanges.ADMIN_DEPOSIT,
                           DepositCommand(agent_id=view.agent_id, amount_msat=10**15, deposit_id="seed"))
                break
            except RuntimeError:
                if attempt == 49:
                    raise
                retried += 1
                await asyncio.sleep(0.1)
    await nc.close()
    return retried


async def ledger_messages(url: str) -> int:
    """Messages in every ledger stream: their growth over a run is the journal writes it made."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    names = {subjects.ledger_stream(i) for i in range(8)}
    total = sum(int(info.state.messages) for info in await js.streams_info() if info.config.name in names)
    await nc.close()
    return total


async def books_settled(url: str) -> Any:
    """The books once no hold is pending (the queue mode's settles are journaled after the clients finish)."""
    nc = await nats.connect(url)
    deadline = time.monotonic() + 120
    try:
        while True:
            books = await call(nc, exchanges.BOOKS, Empty())
            if books.pending_msat == 0 or time.monotonic() > deadline:  # a hold left pending shows in the result
                return books
            await asyncio.sleep(0.01)
    finally:
        await nc.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * q))], 2)


def load(url: str, args: argparse.Namespace, pids: dict[str, list[int]]) -> dict[str, Any]:
    """Run the load clients (each its own process), timing and metering from the moment all are ready."""
    ctx = multiprocessing.get_context("spawn")
    tokens = [bench_token(k) for k in range(args.agents)]
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    share = -(-args.pairs // args.clients)
    procs = []
    for c in range(args.clients):
        first, count = c * share, max(0, min(share, args.pairs - c * share))
        spec = LoadSpec(url=url, mode=args.mode, tokens=tokens, first=first, count=count,
                        concurrency=max(1, args.concurrency // args.clients))
        p = ctx.Process(target=run_client, args=(spec, ready, go, results))
        p.start()
        procs.append(p)
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a load client did not get ready")
    journal0 = asyncio.run(ledger_messages(url))
    cpu0 = {name: [usage_of(pid) for pid in ps] for name, ps in pids.items()}
    started = time.perf_counter()
    go.set()
    outs = [results.get(timeout=600) for _ in procs]
    books = asyncio.run(books_settled(url))  # direct mode: already settled, every settle was answered
    elapsed = time.perf_counter() - started
    cpu = {name: sum(usage_of(pid) for pid in ps) - sum(cpu0[name]) for name, ps in pids.items()}
    journal = asyncio.run(ledger_messages(url)) - journal0
    for p in procs:
        p.join(timeout=30)
    done = sum(len(o["pair_ms"]) for o in outs)
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    reserve = [x for o in outs for x in o["reserve_ms"]]
    pair = [x for o in outs for x in o["pair_ms"]]
    per_pair = 1000 / max(done, 1)
    return {
        "mode": args.mode, "agents": args.agents, "pairs": done, "concurrency": args.concurrency,
        "clients": args.clients, "partitions": args.partitions, "fsync": "always",
        "pairs_per_s": round(done / elapsed, 1), "seconds": round(elapsed, 2), "errors": errors,
        "journal_msgs_per_pair": round(journal / max(done, 1), 3),
        "cpu_ms_per_pair": {"vault": round(cpu["vault"] * per_pair, 3), "nats_server": round(cpu["nats"] * per_pair, 3),
                            "clients": round(sum(o["cpu_s"] for o in outs) * per_pair, 3)},
        "reserve_ms": {"p50": percentile(reserve, 0.5), "p99": percentile(reserve, 0.99)},
        "pair_ms": {"p50": percentile(pair, 0.5), "p99": percentile(pair, 0.99)},
        "books_balanced": books.balanced, "spent_msat": books.spent_msat, "pending_msat": books.pending_msat,
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("direct", "queue", "grants"), default="direct",
                    help="direct: reserve and settle by request/reply to the partition's owner (as gateways do "
                         "with grants off, and for whatever a grant cannot decide); queue: settle through the "
                         "ARBSTR_SETTLE work queue (the fallback); grants: the gateway's grant meter (decided in the "
                         "client against a grant, reported in batches)")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=256, help="pairs in flight, over all clients")
    ap.add_argument("--clients", type=int, default=2, help="load-client processes (a gateway each)")
    ap.add_argument("--instances", type=int, default=1, help="vault processes sharing the partitions")
    ap.add_argument("--partitions", type=int, default=16, help="[vault] partitions of the fresh ledger")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the first vault instance during the run (raw "
                                                      "samples into FILE; needs py-spy installed)")
    ap.add_argument("--log", metavar="FILE", help="the vault instances' log goes here (default: a temporary file)")
    ap.add_argument("--restart", action="store_true", help="then stop the vault (SIGTERM) and SIGKILL it, timing "
                                                           "each start to serving, with its memory")
    args = ap.parse_args(argv)
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="arbstr-bench-vault-") as tmp:
        work = Path(tmp)
        cfg = work / "arbstr.toml"
        cfg.write_text(f'[vault]\nadmin_token = "{ADMIN_TOKEN}"\npartitions = {args.partitions}\n')
        with NatsServer(work / "nats", sync_always=True) as server:
            log_path = Path(args.log) if args.log else work / "vault.log"
            log = open(log_path, "ab")
            def vault() -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "arbstr", "run", "vault", "--config", str(cfg),
                                         "--nats", server.url], stdout=log, stderr=log)

            procs = [vault() for _ in range(args.instances)]
            spy: Optional[subprocess.Popen[bytes]] = None
            try:
                asyncio.run(_wait_ready(server.url, args.instances, args.partitions))
                retried = asyncio.run(setup(server.url, args.agents))
                assert server.proc is not None
                if args.profile:
                    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                                            str(procs[0].pid), "-r", "200", "-f", "raw", "-o", args.profile,
                                            "--nonblocking"], stdout=log, stderr=log)
                result = load(server.url, args, {"vault": [p.pid for p in procs], "nats": [server.proc.pid]})
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(timeout=60)
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
            except BaseException:
                log.flush()  # what the vault said, before the temporary directory goes
                sys.stderr.write(log_path.read_text(errors="replace")[-20000:])
                raise
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(timeout=10)
    result["instances"] = args.instances
    result["setup_deposits_retried"] = retried
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


async def vault_answers(nc: Any, attempts: int = 600) -> None:
    """Until a vault instance answers a discovery ping (every 50 ms)."""
    for _ in range(attempts):
        try:
            await nc.request(f"$SRV.PING.{subjects.SERVICE_VAULT}", b"", timeout=0.2)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise RuntimeError("the vault did not start")


async def _wait_ready(url: str, instances: int, partitions: int) -> None:
    """The vault answers, and every instance owns its share of the partitions (leases in KV)."""
    nc = await nats.connect(url)
    await vault_answers(nc, attempts=400)
    kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        owners: dict[str, int] = {}
        for k in range(partitions):
            try:
                entry = await kv.get(f"owner.{k}")
                owner = json.loads(entry.value or b"{}").get("instance", "")
            except Exception:
                owner = ""
            if owner:
                owners[owner] = owners.get(owner, 0) + 1
        if len(owners) >= instances and sum(owners.values()) == partitions \
                and max(owners.values()) <= -(-partitions // instances):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the last partitions taken finish loading
    await nc.close()


if __name__ == "__main__":
    main()
