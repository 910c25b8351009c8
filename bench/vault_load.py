"""One load-client process of ``bench.vault``: reserve+settle pairs sent exactly as a gateway sends them.

The direct mode uses the gateway's own ``VaultMeter`` (the same subjects, headers and bodies: a reserve by
request/reply to the owner of the agent's partition, then a settle carrying the request record the same way);
the queue mode reserves the same way and publishes the settle to the ``ARBSTR_SETTLE`` work queue (the
fallback path); the grants mode is the gateway's ``GrantMeter`` with its default config (requests decided
against a grant in the client, reported to the owner in batches). Several of these run side by side so that the client's own Python is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import nats

from actors.runtime.tokens import token_hash
from gateway.bus import Bus
from gateway.grant_meter import GrantMeter
from gateway.meter import Usage
from gateway.request_log import request_record
from gateway.vault_meter import VaultMeter
from schemas import subjects
from schemas.config import GrantsConfig
from schemas.router import Candidate, Envelope, RouteReply
from schemas.vault import SettleCommand

ENVELOPE = Envelope(input_tokens=200, output_tokens=100, input_rate=12000, output_rate=12000,
                    max_output_tokens=100)
# A route as the router answers it: the candidate about to be called first, a costlier fallback after it.
ROUTE = RouteReply(request_id="", model="auto", tier="standard", complexity="medium", envelope=ENVELOPE, candidates=[
    Candidate(provider="bench-a", model="bench-model", input_rate=12000, output_rate=12000, tier="standard",
              estimated_cost_msat=3600),
    Candidate(provider="bench-b", model="bench-model", input_rate=20000, output_rate=20000, tier="standard",
              estimated_cost_msat=6000)])
USAGE = Usage(provider="bench-a", model="bench-model", input_tokens=200, output_tokens=80, cost_msat=3360,
              estimated=False)


@dataclass(frozen=True)
class LoadSpec:
    url: str
    # "direct": request/reply to the partition's owner, as gateways do with grants off; "queue": the settle through
    # the work queue; "grants": the gateway's GrantMeter (decided against a grant, reported in batches)
    mode: str
    tokens: list[str]  # one bearer token per agent
    first: int  # this client's pairs are numbered first, first + 1, … first + count - 1
    count: int
    concurrency: int
    timeout_s: float = 10.0


def usage_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(spec: LoadSpec, ready: Any, go: Any) -> dict[str, Any]:
    nc = await nats.connect(spec.url)
    bus = Bus(nc, spec.timeout_s)
    slow = VaultMeter(nc, bus)
    meter: Any = slow
    if spec.mode == "grants":
        meter = GrantMeter(nc, slow, GrantsConfig())
        await meter.start()
    js = nc.jetstream()
    for token in spec.tokens:  # a gateway asks the vault once per token, then goes straight to the owner
        await meter.agents.route_of(token_hash(token))
    ready()
    await asyncio.get_running_loop().run_in_executor(None, go)
    counter = iter(range(spec.first, spec.first + spec.count))
    reserve_lat: list[float] = []
    pair_lat: list[float] = []
    errors: dict[str, int] = {}

    async def worker() -> None:
        for i in counter:
            token = spec.tokens[i % len(spec.tokens)]
            rid = f"bench-{i}"
            t = time.perf_counter()
            try:
                hold = await meter.reserve(token, rid, ROUTE, "chat")
                t_res = time.perf_counter()
                if spec.mode != "queue":
                    record = request_record(request_id=rid, agent_id=hold.agent_id, endpoint="chat", route=ROUTE,
                                            usage=USAGE, status=200, success=True, streamed=False,
                                            latency_ms=(t_res - t) * 1000, overhead_ms=0.5,
                                            at_ms=int(time.time() * 1000))
                    await meter.settle(hold, USAGE, record)
                else:
                    cmd = SettleCommand(kind="settle", request_id=rid, attempt=hold.attempt, agent_id=hold.agent_id,
                                        provider=USAGE.provider, model=USAGE.model, cost_msat=USAGE.cost_msat)
                    await js.publish(subjects.settle_command(hold.agent_id or ""), cmd.model_dump_json().encode(),
                                     headers={subjects.H_MSG_ID: f"settle:{hold.agent_id}:{rid}#{hold.attempt}"})
            except Exception as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            reserve_lat.append((t_res - t) * 1000)
            pair_lat.append((time.perf_counter() - t) * 1000)

    cpu0, started = usage_of(os.getpid()), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    if spec.mode == "grants":
        await meter.close()  # every request reported and journaled, every grant given back
    elapsed, cpu = time.perf_counter() - started, usage_of(os.getpid()) - cpu0
    await nc.drain()
    return {"seconds": elapsed, "cpu_s": cpu, "reserve_ms": reserve_lat, "pair_ms": pair_lat, "errors": errors}


def run_client(spec: LoadSpec, ready: Any, go: Any, results: Any) -> None:
    """Entry point of a client process: releases ``ready`` once connected and warmed, starts when ``go`` is set."""
    from arbstr.components import install_uvloop
    install_uvloop()
    results.put(asyncio.run(drive(spec, ready.release, go.wait)))
