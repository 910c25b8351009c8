"""Vault restart and memory after a long history: N paid requests journaled, then a real vault restarted on them.

    python -m bench.vault_history [--requests 100000] [--agents 100] [--rate 100] [--load-s 25]

1. A real vault process creates the agents and funds them (over the bus), then stops.
2. The history is written in-process by the vault's own parts — ``PartitionOwner`` (snapshot + tail load, fenced
   takeover marker), ``GroupCommit`` and the deciders ``decide.reserve`` / ``decide.settle`` — against the same
   nats-server (fsync always), one reserve and one settle per request, each settle carrying a request record like
   a gateway's. Time is simulated: requests arrive at ``--rate`` per second (so the history spans
   requests / rate seconds, ending now) and forgetting after ``FORGET_AFTER_MS`` applies as in production. The
   spend events and request records the vault derives from each batch are published to the events stream as the
   vault does (``serving.published_of``). Each partition is snapshotted on the production cadence
   (``snapshot_interval_s``, each partition's timer at its own phase) in simulated time; since a snapshot
   replaces the one before, only each partition's last tick is written unless ``--all-snapshots``; the journal
   after it is the tail a restart folds.
3. A real vault is started on that store (the generator's tail, as after a crash), stopped with SIGTERM and
   started again (clean restart), then loaded over the bus for ``--load-s`` seconds (reserve + settle pairs, as
   gateways send them), SIGKILLed and started again. Each start is timed from process start until every
   partition is served (16 "serving" lines in its log) and answers a reserve (released at once); its RSS is read
   from /proc when it serves and once it is idle (the reporting projection caught up).

The simulated history ends when generating begins, so by the time the vault runs, its last 10 minutes are older
than that in real time: the first two starts hold the full window of resolutions (the production steady state at
``--rate``), but the load before the SIGKILL makes every agent it touches forget the generated window.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import nats
import orjson

from actors.runtime.jetstream import open_bucket
from actors.vault import decide, group_commit
from actors.vault.expiry import Timers
from actors.vault.fold import AccountState
from actors.vault.owner import PartitionOwner
from actors.vault.ownership import LAYOUT_KEY, Claim, owner_key
from actors.vault.partition_journal import Layout, PartitionJournal
from actors.vault.serving import published_of
from actors.vault.snapshots import SnapshotStore
from arbstr.components import install_uvloop
from arbstr.natsserver import NatsServer
from bench.vault import ADMIN_TOKEN, ENVELOPE, call, rss_mb, vault_answers
from schemas import exchanges, subjects
from schemas.ledger import JournalBatch, JournalEntry
from schemas.partitions import partition_of
from schemas.requests import RequestRecord
from schemas.vault import CreateAgent, DepositCommand, ReserveRequest, SettleCommand

PROVIDERS = [("local-a", "llama-3.1-8b"), ("node-b", "gpt-4o-mini"), ("node-c", "claude-3-haiku")]
SETTLE_LATENCY_MS = 1_500  # a request's upstream time: its settle comes this long after its reserve
HOLD_TTL_MS = 900_000


def token_hash(k: int) -> str:
    return hashlib.sha256(f"bench-token-{k}".encode()).hexdigest()


class SimClock:
    """The time the vault's group commit stamps batches with (``group_commit.now_ms``), moved by the generator."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


def request_record(agent_id: str, rid: str, provider: str, model: str, cost: int, at_ms: int) -> RequestRecord:
    return RequestRecord(request_id=rid, agent_id=agent_id, endpoint="/v1/chat/completions", model=model,
                         provider=provider, upstream_model=model, tier="simple", status=200, success=True,
                         streamed=False, input_tokens=200, output_tokens=100, cost_msat=cost, baseline_msat=cost * 3,
                         latency_ms=float(SETTLE_LATENCY_MS), overhead_ms=1.2, at_ms=at_ms)


def plan(requests: int, agents: int, seed: int = 7) -> list[int]:
    """Which agent sends each request: a skewed mix (a few busy agents, a long tail), as real traffic is."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** 0.8 for k in range(agents)]
    return rng.choices(range(agents), weights=weights, k=requests)


def snapshot_ticks(partitions: int, start_ms: int, end_ms: int, interval_ms: int, every: bool,
                   seed: int = 11) -> dict[int, list[int]]:
    """When each partition's snapshot timer fires over [start, end] (its own phase): all ticks, or the last one."""
    rng = random.Random(seed)
    out: dict[int, list[int]] = {}
    for k in range(partitions):
        first = start_ms + rng.randrange(interval_ms)
        ticks = list(range(first, end_ms + 1, interval_ms))
        out[k] = ticks if every else ticks[-1:]
    return out


async def generate(url: str, agent_ids: list[str], requests: int, rate: float, chunk: int,
                   snapshot_interval_s: float, every_snapshot: bool, events: bool) -> dict[str, Any]:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    kv = await open_bucket(nc, subjects.KV_PARTITIONS)
    doc = orjson.loads((await kv.get(LAYOUT_KEY)).value or b"{}")
    layout = Layout(int(doc["partitions"]), int(doc.get("streams", 1)))
    journal = PartitionJournal(nc, layout)
    snaps = SnapshotStore(nc, 1)
    await snaps.start()
    span_ms = int(requests / rate * 1000)
    end_ms = int(time.time() * 1000)
    clock = SimClock(end_ms - span_ms)
    group_commit.now_ms = clock  # type: ignore[assignment]  # the writer stamps batches with simulated time
    outgoing: list[tuple[str, bytes, dict[str, str]]] = []

    def committed(batch: JournalBatch, seq: int, touched: list[tuple[JournalEntry, AccountState]]) -> None:
        if events:
            for entry, state in touched:
                outgoing.extend(published_of(entry, state))

    async def noop_due(due: list[tuple[str, str, str]]) -> None:
        return None

    owners: dict[int, PartitionOwner] = {}
    epochs: dict[int, int] = {}
    for k in range(layout.partitions):
        try:
            epochs[k] = int(orjson.loads((await kv.get(owner_key(k))).value or b"{}").get("epoch", 0)) + 1
        except Exception:
            epochs[k] = 1
        owner = PartitionOwner(Claim(k, epochs[k], 0), journal, snaps, Timers(noop_due), committed,
                               lambda p, reason: print(f"partition {p} broken: {reason}", file=sys.stderr),
                               snapshot_interval_s=1e9)  # snapshots are taken below, on simulated time
        await owner.load()
        await owner.start()
        owners[k] = owner
    ticks = snapshot_ticks(layout.partitions, clock.ms, end_ms, int(snapshot_interval_s * 1000), every_snapshot)
    snapshots_taken = 0

    async def snapshot_due() -> None:
        nonlocal snapshots_taken
        for k, due in ticks.items():
            while due and due[0] <= clock.ms:
                due.pop(0)
                await owners[k].snapshot()
                snapshots_taken += 1

    who = plan(requests, len(agent_ids))
    rng = random.Random(3)
    started = time.perf_counter()
    step_ms = 1000.0 / rate
    t0 = clock.ms
    cpu_decide = 0.0
    for lo in range(0, requests, chunk):
        hi = min(requests, lo + chunk)
        batch: list[tuple[str, str, str, str, int, int]] = []
        for i in range(lo, hi):
            agent = agent_ids[who[i]]
            provider, model = PROVIDERS[rng.randrange(len(PROVIDERS))]
            batch.append((agent, f"req_{uuid.UUID(int=rng.getrandbits(128)).hex}", provider, model,
                          rng.randrange(800, 2400), int(t0 + i * step_ms)))
        # Reserves at their arrival times, settles SETTLE_LATENCY_MS later: one group-commit round each.
        clock.ms = batch[0][5]
        await snapshot_due()
        t = time.perf_counter()
        await asyncio.gather(*(_reserve(owners[partition_of(a, layout.partitions)], a, rid, p, m)
                               for a, rid, p, m, _, _ in batch))
        clock.ms = batch[-1][5] + SETTLE_LATENCY_MS
        await asyncio.gather(*(_settle(owners[partition_of(a, layout.partitions)], a, rid, p, m, cost, at)
                               for a, rid, p, m, cost, at in batch))
        cpu_decide += time.perf_counter() - t
        if outgoing:
            sent, outgoing[:] = list(outgoing), []
            for subject, data, headers in sent:
                await nc.publish(subject, data, headers=headers)
        if (hi // chunk) % 50 == 0:
            print(f"  {hi} requests, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    clock.ms = end_ms
    await snapshot_due()
    await nc.flush(timeout=60)
    stats = {"batches": 0, "journaled": 0}
    for k, owner in owners.items():
        if owner.writer is not None:
            stats["batches"] += owner.writer.stats["batches"]
            stats["journaled"] += owner.writer.stats["journaled"]
            await owner.writer.stop("generated")  # no final snapshot: the tail since the last tick stays a tail
        await kv.put(owner_key(k), orjson.dumps({"instance": "", "epoch": epochs[k]}))
    tail = {k: o.part.last_seq - o._last_snapshot_seq for k, o in owners.items()}
    await nc.close()
    elapsed = time.perf_counter() - started
    return {"requests": requests, "agents": len(agent_ids), "simulated_span_h": round(span_ms / 3_600_000, 2),
            "journal_batches": stats["batches"], "journal_entries": stats["journaled"],
            "snapshots_written": snapshots_taken, "tail_batches_max": max(tail.values()),
            "seconds": round(elapsed, 1), "decide_and_commit_s": round(cpu_decide, 1),
            "requests_per_s": round(requests / elapsed)}


async def _reserve(owner: PartitionOwner, agent: str, rid: str, provider: str, model: str) -> None:
    assert owner.writer is not None
    attempt = rid[-16:]
    w = await owner.writer.submit(agent, lambda s, at: decide.reserve(
        s, rid, ENVELOPE, at, ttl_ms=HOLD_TTL_MS, provider=provider, model=model, attempt=attempt))
    if not w.events:
        raise RuntimeError(f"reserve {rid} journaled nothing ({w.decided.noop})")


async def _settle(owner: PartitionOwner, agent: str, rid: str, provider: str, model: str, cost: int,
                  at: int) -> None:
    assert owner.writer is not None
    record = request_record(agent, rid, provider, model, cost, at + SETTLE_LATENCY_MS)
    w = await owner.writer.submit(agent, lambda s, now: decide.settle(
        s, rid, cost, now, input_tokens=200, output_tokens=100, provider=provider, model=model,
        attempt=rid[-16:]), record=record)
    if not w.events:
        raise RuntimeError(f"settle {rid} journaled nothing ({w.decided.noop})")


async def create_agents(url: str, agents: int) -> list[str]:
    nc = await nats.connect(url)
    await vault_answers(nc)
    ids = []
    for k in range(agents):
        view = await call(nc, exchanges.CREATE_AGENT, CreateAgent(name=f"bench{k}", token_hash=token_hash(k)))
        await call(nc, exchanges.ADMIN_DEPOSIT,
                   DepositCommand(agent_id=view.agent_id, amount_msat=10**15, deposit_id="seed"))
        ids.append(view.agent_id)
    await nc.close()
    return ids


async def until_serving(url: str, log: Path, log_from: int, partitions: int, agent_ids: list[str],
                        proc: subprocess.Popen[bytes], timeout_s: float = 600) -> bool:
    """Every partition served: its "serving" log line, then a reserve of an agent of each partition decided (and
    released). True; False when the process exited first."""
    probes: dict[int, int] = {}
    for k, agent in enumerate(agent_ids):
        probes.setdefault(partition_of(agent, partitions), k)
    nc = await nats.connect(url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            text = log.read_bytes()[log_from:].decode(errors="replace")
            if text.count(": serving (epoch") >= partitions:
                try:
                    await asyncio.gather(*(_probe(nc, k, agent_ids[k]) for k in probes.values()))
                    return True
                except Exception:
                    pass
            await asyncio.sleep(0.02)
        raise RuntimeError("the vault did not serve every partition in time")
    finally:
        await nc.close()


async def _probe(nc: Any, k: int, agent_id: str) -> None:
    rid, attempt = f"probe_{uuid.uuid4().hex}", uuid.uuid4().hex[:16]
    await call(nc, exchanges.RESERVE, ReserveRequest(request_id=rid, token_hash=token_hash(k), envelope=ENVELOPE,
                                                     attempt=attempt))
    await call(nc, exchanges.RELEASE, SettleCommand(kind="release", request_id=rid, agent_id=agent_id,
                                                    attempt=attempt, reason="probe"))


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def until_idle(pid: int, timeout_s: float = 900) -> float:
    """Seconds until the process uses under 5 % of a core over 2 s (the projection rebuilt, nothing left to do)."""
    started = time.monotonic()
    last = cpu_s(pid)
    while time.monotonic() - started < timeout_s:
        time.sleep(2)
        now = cpu_s(pid)
        if now - last < 0.1:
            return time.monotonic() - started
        last = now
    return float("nan")


async def load(url: str, agent_ids: list[str], seconds: float, concurrency: int = 32) -> int:
    """Reserve + settle pairs over the bus for ``seconds``, as gateways send them (settle by request/reply)."""
    nc = await nats.connect(url)
    stop = time.monotonic() + seconds
    done = 0

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.monotonic() < stop:
            k = i % len(agent_ids)
            rid = f"req_{uuid.uuid4().hex}"
            attempt = uuid.uuid4().hex[:16]
            await call(nc, exchanges.RESERVE, ReserveRequest(request_id=rid, token_hash=token_hash(k),
                                                             envelope=ENVELOPE, attempt=attempt))
            await call(nc, exchanges.SETTLE, SettleCommand(kind="settle", request_id=rid, agent_id=agent_ids[k],
                                                           cost_msat=1000, attempt=attempt))
            done += 1
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    await nc.close()
    return done


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100.0, help="simulated paid requests per second of history")
    ap.add_argument("--chunk", type=int, default=2048, help="requests decided per group-commit round")
    ap.add_argument("--snapshot-interval", type=float, default=30.0, help="[vault] snapshot_interval_s")
    ap.add_argument("--all-snapshots", action="store_true", help="write every snapshot tick, not only the last")
    ap.add_argument("--no-events", action="store_true", help="do not publish the derived events")
    ap.add_argument("--load-s", type=float, default=25.0, help="load on the vault before it is SIGKILLed")
    ap.add_argument("--duckdb", choices=("memory", "file"), default="memory",
                    help="the vault's reporting projection: in memory (the shipped config) or in a file")
    ap.add_argument("--generate-only", action="store_true", help="stop once the store is generated (with --workdir)")
    ap.add_argument("--workdir", type=Path, help="keep the store here; an existing generated store is reused")
    args = ap.parse_args(argv)
    install_uvloop()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="arbstr-bench-history-") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    result: dict[str, Any] = {"duckdb": args.duckdb}
    if True:
        cfg = work / "arbstr.toml"
        duckdb = str(work / "vault.duckdb") if args.duckdb == "file" else ""
        cfg.write_text(f'[vault]\nadmin_token = "{ADMIN_TOKEN}"\nsnapshot_interval_s = {args.snapshot_interval}\n'
                       f'duckdb_path = "{duckdb}"\n')
        log = work / "vault.log"
        generated = work / "generated.json"
        with NatsServer(work / "nats", sync_always=True) as server, open(log, "ab") as logf:
            def vault() -> tuple[subprocess.Popen[bytes], int, float]:
                at = log.stat().st_size
                started = time.perf_counter()
                return subprocess.Popen([sys.executable, "-m", "arbstr", "run", "vault", "--config", str(cfg),
                                         "--nats", server.url], stdout=logf, stderr=logf), at, started

            def start_timed(name: str) -> subprocess.Popen[bytes]:
                wall = time.time()
                proc, at, started = vault()
                crashes = 0
                while not asyncio.run(until_serving(server.url, log, at, 16, agent_ids, proc)):
                    # Exited before serving: started again at once, as a supervisor would (the clock runs on).
                    crashes += 1
                    print(f"{name}: the vault exited ({proc.returncode}) before serving; starting it again",
                          file=sys.stderr, flush=True)
                    proc, at, _ = vault()
                serving = time.perf_counter() - started
                rss_serving = rss_mb(proc.pid)
                text = log.read_bytes()[at:].decode(errors="replace")
                loads = [int(m) for m in re.findall(r"loaded in (\d+) ms", text)]
                # When the last partition logged "serving" (log times are the wall clock, to the millisecond).
                stamps = re.findall(r"^(\S+ \S+) INFO arbstr.vault: partition \d+: serving", text, re.M)
                loaded_s = time.mktime(time.strptime(stamps[-1][:19], "%Y-%m-%d %H:%M:%S")) + \
                    int(stamps[-1][20:23]) / 1000 - wall if stamps else float("nan")
                idle_after = until_idle(proc.pid)
                result[name] = {"serving_s": round(serving, 2), "crashes_before_serving": crashes,
                                "all_partitions_loaded_s": round(loaded_s, 2),
                                "partition_load_ms": {"sum": sum(loads), "max": max(loads, default=0)}, "rss_mb_serving": rss_serving,
                                "idle_after_s": round(idle_after, 1), "rss_mb_idle": rss_mb(proc.pid)}
                print(f"{name}: {result[name]}", file=sys.stderr, flush=True)
                return proc

            proc = None
            try:
                if generated.exists():  # a store generated before: restarted as it is
                    doc = json.loads(generated.read_text())
                    agent_ids, result["generate"] = doc["agent_ids"], doc["generate"]
                else:
                    proc, _, _ = vault()
                    agent_ids = asyncio.run(create_agents(server.url, args.agents))
                    proc.terminate()
                    proc.wait(timeout=60)
                    result["generate"] = asyncio.run(generate(
                        server.url, agent_ids, args.requests, args.rate, args.chunk, args.snapshot_interval,
                        args.all_snapshots, not args.no_events))
                    generated.write_text(json.dumps({"agent_ids": agent_ids, "generate": result["generate"]}))
                if args.generate_only:
                    print(json.dumps(result, indent=2))
                    return
                print(f"generate: {result['generate']}", file=sys.stderr, flush=True)
                proc = start_timed("start_on_generated_tail")
                proc.terminate()
                t = time.perf_counter()
                proc.wait(timeout=120)
                result["stop_s"] = round(time.perf_counter() - t, 2)
                proc = start_timed("restart_after_stop")
                time.sleep(max(0.0, 1.0))
                result["load_pairs"] = asyncio.run(load(server.url, agent_ids, args.load_s))
                result["rss_mb_after_load"] = rss_mb(proc.pid)
                proc.kill()
                proc.wait(timeout=30)
                proc = start_timed("restart_after_kill")
                result["nats_store_mb"] = round(sum(f.stat().st_size for f in (work / "nats").rglob("*")
                                                    if f.is_file()) / 2**20, 1)
            finally:
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=60)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
