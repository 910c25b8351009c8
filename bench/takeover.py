"""Takeover: SIGKILL the vault instance owning half the partitions under a steady paid load, and time until each of
its partitions is served again by the other instance.

    python -m bench.takeover [--agents 100] [--concurrency 32] [--kills 3] [--lease-s 2.0]

Two ``arbstr run vault`` processes share the 16 partitions of a real nats-server (JetStream, fsync always). Load
workers reserve and settle for many agents exactly as gateways do (straight to the partition's owner, asking again
for up to 4 s while nobody serves the partition, the settle queue as the fallback). Then one instance is SIGKILLed;
one probe per partition it owned asks for a reserve every 10 ms, and a partition counts as served again at the
first probe answered 200. Where the time went comes from the survivor's log: when it judged the killed instance
dead, took each lease, and had each partition loaded, fenced and subscribed. After each kill a fresh instance is
started in the dead one's place and the shares settle again before the next kill.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from arbstr.components import install_uvloop
from arbstr.natsserver import NatsServer
from bench.vault import ADMIN_TOKEN, ENVELOPE, call
from gateway.bus import Bus
from schemas import exchanges, subjects
from schemas.errors import ArbstrError
from schemas.exchanges import decode_error
from schemas.partitions import partition_of
from schemas.vault import CreateAgent, DepositCommand, ReserveRequest, SettleCommand

PARTITIONS = 16
OWNER_WAIT_S = 4.0  # as the gateway (gateway/vault_meter.py): a partition without an owner is asked again this long
PROBE_EVERY_S = 0.01
GIVE_UP_S = 30.0


@dataclass
class Account:
    agent_id: str
    token_hash: str
    partition: int


@dataclass
class Load:
    """What the steady load saw: one row per reserve+settle pair."""

    rows: list[tuple[float, float, int, str]] = field(default_factory=list)  # started, ended, partition, "" or code
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def owners(nc: NATS) -> dict[int, str]:
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
    except Exception:  # not made yet: no vault instance has started
        return {}
    out: dict[int, str] = {}
    for k in range(PARTITIONS):
        try:
            entry = await kv.get(f"owner.{k}")
        except Exception:
            continue
        out[k] = str(json.loads(entry.value or b"{}").get("instance", ""))
    return out


async def members(nc: NATS) -> set[str]:
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
        keys = await kv.keys()
    except Exception:
        return set()
    return {k.split(".", 1)[1] for k in keys if k.startswith("member.")}


async def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.05)


async def new_member(nc: NATS, before: set[str]) -> str:
    found: list[str] = []

    async def appeared() -> bool:
        found[:] = sorted(await members(nc) - before)
        return bool(found)

    await wait_for(appeared, 60, "the new vault instance's lease")
    return found[0]


async def balanced(nc: NATS, instances: list[str]) -> None:
    """Every partition owned, half by each instance."""
    async def check() -> bool:
        held = await owners(nc)
        return len(held) == PARTITIONS and all(sum(v == i for v in held.values()) == PARTITIONS // len(instances)
                                               for i in instances)
    await wait_for(check, 60, "the partitions shared out")


async def make_accounts(nc: NATS, agents: int) -> list[Account]:
    """At least ``agents`` funded agents, and at least one in every partition (the probes need one each)."""
    accounts: list[Account] = []
    n = 0
    while len(accounts) < agents or len({a.partition for a in accounts}) < PARTITIONS:
        th = hashlib.sha256(f"takeover-token-{n}".encode()).hexdigest()
        view = await call(nc, exchanges.CREATE_AGENT, CreateAgent(name=f"takeover{n}", token_hash=th))
        await call(nc, exchanges.ADMIN_DEPOSIT, DepositCommand(agent_id=view.agent_id, amount_msat=10**15,
                                                                 deposit_id="seed"))
        accounts.append(Account(view.agent_id, th, partition_of(view.agent_id, PARTITIONS)))
        n += 1
    return accounts


def reserve_of(a: Account, rid: str) -> ReserveRequest:
    return ReserveRequest(request_id=rid, token_hash=a.token_hash, envelope=ENVELOPE, agent_id=a.agent_id,
                          sent_at_ms=int(time.time() * 1000))


async def settle(nc: NATS, bus: Bus, a: Account, rid: str) -> None:
    """As the gateway: to the owner, the durable queue when it does not answer."""
    cmd = SettleCommand(kind="settle", request_id=rid, agent_id=a.agent_id, cost_msat=1000)
    try:
        await bus.ask(exchanges.SETTLE, cmd, partition=a.partition)
        return
    except ArbstrError as e:
        if e.status < 500:
            return
    await nc.jetstream().publish(subjects.settle_command(a.agent_id), cmd.model_dump_json().encode(),
                                 headers={subjects.H_MSG_ID: f"settle:{a.agent_id}:{rid}#"}, timeout=5)


async def load_worker(nc: NATS, bus: Bus, accounts: list[Account], load: Load, w: int, workers: int) -> None:
    n = w
    while not load.stop.is_set():
        a = accounts[n % len(accounts)]
        rid = f"load-{w}-{n}-{time.monotonic_ns()}"
        n += workers
        started = time.monotonic()
        code = ""
        try:
            await bus.ask(exchanges.RESERVE, reserve_of(a, rid), partition=a.partition,
                          wait_for_responder_s=OWNER_WAIT_S)
            await settle(nc, bus, a, rid)
        except ArbstrError as e:
            code = f"{e.status} {e.code}"
        load.rows.append((started, time.monotonic(), a.partition, code))
        if code:
            await asyncio.sleep(0.1)  # a client told to retry does not hammer


async def probe(nc: NATS, bus: Bus, a: Account, killed_at: float) -> Optional[float]:
    """Seconds from the kill until a reserve on ``a``'s partition, sent after the kill, is answered 200."""
    subject = exchanges.RESERVE.on_partition(a.partition)
    n = 0
    while time.monotonic() - killed_at < GIVE_UP_S:
        n += 1
        rid = f"probe-{a.partition}-{n}-{time.monotonic_ns()}"
        try:
            r = await nc.request(subject, reserve_of(a, rid).model_dump_json().encode(), timeout=1.0)
            if decode_error(r.data, r.headers) is None:
                served = time.monotonic() - killed_at
                await settle(nc, bus, a, rid)
                return served
        except NoRespondersError:
            pass
        except Exception:  # a timeout: asked of the dead instance
            pass
        await asyncio.sleep(PROBE_EVERY_S)
    return None


LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


def log_events(path: Path, since: float) -> list[tuple[float, str]]:
    """(wall time, message) of the log lines written after ``since`` (wall clock)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since - 0.001:
            out.append((at, m.group(2)))
    return out


def breakdown(events: list[tuple[float, str]], killed_wall: float, lost: list[int]) -> dict[str, Any]:
    """Where the takeover's time went, from the survivor's log (seconds after the kill)."""
    dead = [at for at, msg in events if msg.startswith("member ") and "silent" in msg]
    taken: dict[int, float] = {}
    serving: dict[int, tuple[float, float, float, float, int]] = {}
    for at, msg in events:
        m = re.match(r"partition (\d+): taken", msg)
        if m and int(m.group(1)) in lost:
            taken.setdefault(int(m.group(1)), at)
        m = re.match(r"partition (\d+): serving .*loaded in (\d+) ms, ready in (\d+) ms; snapshot (\d+) ms, "
                     r"tail of (\d+) batches", msg)
        if m and int(m.group(1)) in lost:
            serving.setdefault(int(m.group(1)), (at, float(m.group(2)) / 1000, float(m.group(3)) / 1000,
                                                 float(m.group(4)) / 1000, int(m.group(5))))
    out: dict[str, Any] = {}
    if dead:
        out["judged_dead_s"] = round(min(dead) - killed_wall, 3)
    if taken:
        out["first_lease_taken_s"] = round(min(taken.values()) - killed_wall, 3)
        out["last_lease_taken_s"] = round(max(taken.values()) - killed_wall, 3)
    if serving:
        out["last_serving_s"] = round(max(s[0] for s in serving.values()) - killed_wall, 3)
        out["load_ms"] = summary([s[1] * 1000 for s in serving.values()], 1)
        out["load_fence_subscribe_ms"] = summary([s[2] * 1000 for s in serving.values()], 1)
        out["snapshot_read_ms"] = summary([s[3] * 1000 for s in serving.values()], 1)
        out["tail_batches"] = summary([float(s[4]) for s in serving.values()], 0)
    return out


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    s = sorted(values)
    return {"p50": round(s[len(s) // 2], digits), "max": round(s[-1], digits)} if s else {}


async def one_kill(url: str, proc: subprocess.Popen[bytes], victim: str, survivor_log: Path,
                   accounts: list[Account], concurrency: int, warm_s: float) -> dict[str, Any]:
    nc = await nats.connect(url)
    bus = Bus(nc, 5.0)
    load = Load()
    try:
        held = await owners(nc)
        lost = sorted(k for k, owner in held.items() if owner == victim)
        workers = [asyncio.create_task(load_worker(nc, bus, accounts, load, w, concurrency))
                   for w in range(concurrency)]
        await asyncio.sleep(warm_s)
        before = len(load.rows)
        killed_wall = time.time()
        killed_at = time.monotonic()
        proc.kill()
        by_partition = {a.partition: a for a in accounts}
        served = await asyncio.gather(*(probe(nc, bus, by_partition[k], killed_at) for k in lost))
        await asyncio.sleep(1.0)  # the load runs on a while on the new owner
        load.stop.set()
        await asyncio.gather(*workers)
        proc.wait(timeout=10)
    finally:
        await nc.close()
    after = [r for r in load.rows if r[1] >= killed_at]
    errors: dict[str, int] = {}
    for _, _, _, code in after:
        if code:
            errors[code] = errors.get(code, 0) + 1
    stalls = [r[1] - r[0] for r in after if not r[3]]
    done = [s for s in served if s is not None]
    return {
        "partitions_lost": len(lost),
        "served_again_s": summary(done),
        "not_served_within_s": GIVE_UP_S if len(done) < len(lost) else None,
        "load_before_kill_pairs_per_s": round(before / warm_s, 1),
        "load_after_kill": {"pairs": len(after), "ok": sum(1 for r in after if not r[3]), "errors": errors,
                            "slowest_ok_s": round(max(stalls), 3) if stalls else None},
        "survivor": breakdown(log_events(survivor_log, killed_wall), killed_wall, lost),
    }


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=32, help="reserve+settle pairs in flight")
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--lease-s", type=float, default=None, help="[vault] lease_s (default: the config default)")
    ap.add_argument("--warm-s", type=float, default=3.0, help="load before each kill")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print its path")
    args = ap.parse_args(argv)
    install_uvloop()
    tmp = tempfile.mkdtemp(prefix="arbstr-bench-takeover-")
    work = Path(tmp)
    cfg = work / "arbstr.toml"
    lease = f"lease_s = {args.lease_s}\n" if args.lease_s else ""
    cfg.write_text(f'[vault]\nadmin_token = "{ADMIN_TOKEN}"\n{lease}')
    results: list[dict[str, Any]] = []
    spawned = 0

    def vault() -> tuple[subprocess.Popen[bytes], Path]:
        nonlocal spawned
        spawned += 1
        path = work / f"vault-{spawned}.log"
        out = open(path, "ab")
        return subprocess.Popen([sys.executable, "-m", "arbstr", "run", "vault", "--config", str(cfg),
                                 "--nats", server.url], stdout=out, stderr=out), path

    with NatsServer(work / "nats", sync_always=True) as server:
        procs: list[tuple[subprocess.Popen[bytes], Path, str]] = []

        async def join() -> None:
            nc = await nats.connect(server.url)
            try:
                before = await members(nc)
                proc, path = vault()
                procs.append((proc, path, await new_member(nc, before)))
                await balanced(nc, [p[2] for p in procs])
            finally:
                await nc.close()

        async def setup() -> list[Account]:
            await join()
            await join()
            nc = await nats.connect(server.url)
            try:
                return await make_accounts(nc, args.agents)
            finally:
                await nc.close()

        try:
            accounts = asyncio.run(setup())
            for _ in range(args.kills):
                proc, _, victim = procs.pop(0)  # the older instance: it holds half the partitions
                survivor_log = procs[0][1]
                results.append(asyncio.run(one_kill(server.url, proc, victim, survivor_log, accounts,
                                                    args.concurrency, args.warm_s)))
                print(json.dumps(results[-1]), file=sys.stderr)
                asyncio.run(join())  # a fresh instance in its place; the shares settle before the next kill
        finally:
            for proc, _, _ in procs:
                proc.terminate()
                proc.wait(timeout=10)
    served = [r["served_again_s"] for r in results if r["served_again_s"]]
    report = {
        "agents": len(accounts), "concurrency": args.concurrency, "partitions": PARTITIONS, "fsync": "always",
        "lease_s": args.lease_s or "default",
        "served_again_p50_s": [min(s["p50"] for s in served), max(s["p50"] for s in served)] if served else None,
        "served_again_max_s": [min(s["max"] for s in served), max(s["max"] for s in served)] if served else None,
        "kills": results,
    }
    print(json.dumps(report, indent=2))
    if args.keep:
        print(f"logs: {work}", file=sys.stderr)
    else:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
