"""Prometheus metrics of one gateway (``GET /metrics``), and a poller that mirrors the actors' own state —
breaker states from the ``arbstr_breakers`` bucket and the vault's counters from ``nats micro`` STATS —
so one scrape of any gateway shows the whole system."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

from aiohttp import web
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from actors.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.breaker import BreakerState

log = logging.getLogger("arbstr.gateway.metrics")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("arbstr_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram("arbstr_request_seconds", "HTTP request latency", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("arbstr_overhead_seconds", "time spent in arbstr (not upstream) per request",
                                  ["endpoint"], buckets=_OVERHEAD_BUCKETS, registry=r)
        self.upstream = Counter("arbstr_upstream_attempts", "upstream attempts by outcome",
                                ["provider", "model", "outcome"], registry=r)
        self.served = Counter("arbstr_served_requests", "requests served by a provider",
                              ["provider", "model", "endpoint", "streamed"], registry=r)
        self.tokens = Counter("arbstr_tokens", "tokens billed", ["provider", "model", "direction"], registry=r)
        self.spent = Counter("arbstr_spent_msat", "millisats charged for served requests", ["provider", "model"],
                             registry=r)
        self.provider_charged = Counter("arbstr_provider_charged_msat", "millisats providers say they charged arbstr "
                                        "(Routstr nodes' own cost reports)", ["provider"], registry=r)
        self.cost_drift = Counter("arbstr_provider_cost_drift", "requests whose provider-reported charge is far from "
                                  "arbstr's computed cost", ["provider"], registry=r)
        self.breaker = Gauge("arbstr_breaker_state", "circuit state per provider (0 closed, 1 half-open, 2 open)",
                             ["provider"], registry=r)
        self.vault_ops = Gauge("arbstr_vault_operations", "vault endpoint requests (all instances)",
                               ["endpoint", "status"], registry=r)
        self.vault_commit = Gauge("arbstr_vault_group_commit", "the vault's group commit, all instances: journal "
                                  "messages written (batches), commands decided, commands journaled; "
                                  "partitions owned and taken over", ["figure"], registry=r)
        self.journal_lag = Gauge("arbstr_journal_lag", "settle/release commands waiting to be journaled",
                                 registry=r)
        self._task: Optional[asyncio.Task[None]] = None

    # --- recorded by the request path ------------------------------------------------------------------
    def attempt(self, provider: str, model: str, outcome: str) -> None:
        self.upstream.labels(provider, model, outcome).inc()

    def provider_cost(self, provider: str, charged_msat: int, drift: bool) -> None:
        self.provider_charged.labels(provider).inc(charged_msat)
        if drift:
            self.cost_drift.labels(provider).inc()

    def served_request(self, endpoint: str, provider: str, model: str, streamed: bool, input_tokens: int,
                       output_tokens: int, cost_msat: int, overhead_s: float) -> None:
        self.served.labels(provider, model, endpoint, str(streamed).lower()).inc()
        self.tokens.labels(provider, model, "input").inc(input_tokens)
        self.tokens.labels(provider, model, "output").inc(output_tokens)
        self.spent.labels(provider, model).inc(cost_msat)
        self.overhead.labels(endpoint).observe(overhead_s)

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    # --- mirrored from the actors ----------------------------------------------------------------------
    async def poll(self, nc: NATS, interval_s: float = 5.0) -> None:
        while True:
            try:
                await self._poll_once(nc)
            except Exception as e:  # metrics must never take the gateway down
                log.debug("metrics poll: %r", e)
            await asyncio.sleep(interval_s)

    async def _poll_once(self, nc: NATS) -> None:
        js = nc.jetstream()
        try:
            kv = await js.key_value(subjects.KV_BREAKERS)
            for key in await kv.keys():
                entry = await kv.get(key)
                if entry.value:
                    state = BreakerState.model_validate_json(entry.value)
                    self.breaker.labels(state.provider).set(BREAKER_VALUES.get(state.state, 0))
        except Exception:
            pass  # no bucket yet / no keys
        try:
            info = await js.consumer_info(subjects.STREAM_SETTLE, "vault-settle")
            self.journal_lag.set(info.num_pending + info.num_ack_pending)
        except Exception:
            pass  # free mode: no settle stream
        totals: dict[tuple[str, str], float] = {}
        commit: dict[str, dict[str, float]] = {}
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.STATS.{subjects.SERVICE_VAULT}", b"", reply=inbox)
        try:
            while True:
                msg = await sub.next_msg(timeout=0.3)
                reply = json.loads(msg.data)
                for ep in reply.get("endpoints") or []:
                    data: dict[str, Any] = ep.get("data") or {}
                    instance = data.get("instance") or {}
                    if instance and reply.get("id", "") not in commit:
                        commit[reply.get("id", "")] = instance
                        for op, counts in (instance.get("ops") or {}).items():
                            for status, n in counts.items():
                                totals[(op, status)] = totals.get((op, status), 0) + n
                    for status, n in (data.get("by_status") or {}).items():
                        key = (ep["name"], status)
                        totals[key] = totals.get(key, 0) + n
        except Exception:
            pass
        finally:
            await sub.unsubscribe()
        for (name, status), n in totals.items():
            self.vault_ops.labels(name, status).set(n)
        for figure in ("batches", "commands", "journaled", "partitions", "takeovers"):
            if commit:
                self.vault_commit.labels(figure).set(sum(float(i.get(figure, 0)) for i in commit.values()))

    def start(self, nc: NATS) -> None:
        self._task = asyncio.create_task(self.poll(nc))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def handler(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
