"""The breaker actor: folds the outcome of every upstream attempt into per-provider circuit states kept in the
``arbstr_breakers`` KV bucket (routers watch it), moves them along with time, and hands out half-open probes.

Any number of instances may run: outcomes reach one instance each (queue group) and every write is a KV
compare-and-set on the revision it read, so two instances never overwrite each other's transition; the loser
reads again and re-applies its change to the fresh state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Optional, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from actors.runtime.bucket_follower import BucketFollower, is_delete
from actors.runtime.endpoints import QUEUE_GROUP, Endpoint, serve
from actors.runtime.jetstream import open_bucket
from actors.runtime.tasks import cancel_and_wait
from schemas import exchanges, subjects
from schemas.breaker import BreakerState, Outcome, ProbeReply, ProbeRequest, StateReply, StateRequest
from schemas.config import Config
from schemas.errors import ArbstrError

from .machine import SUCCESSES, grant_probe, on_outcomes, tick

log = logging.getLogger("arbstr.breaker")

VERSION = "0.1.0"
MAX_CAS_ATTEMPTS = 32
CONFLICT_PAUSE_S = 0.002
RETRY_PAUSE_S = 0.2  # before writing a batch again after the bucket refused it
# Outcomes waiting for one provider's write; beyond this the oldest go (only recent ones decide a transition).
MAX_PENDING = 10_000

T = TypeVar("T")
Change = Callable[[BreakerState, int], tuple[BreakerState, T]]


def wall_ms() -> int:
    return int(time.time() * 1000)


class BreakerActor:
    service_name = subjects.SERVICE_BREAKER
    version = VERSION
    description = "arbstr circuit breakers: provider states from upstream outcomes, half-open probes"

    def __init__(self, config: Config, clock: Callable[[], int] = wall_ms) -> None:
        self.config = config
        self.cfg = config.breaker
        self.clock = clock
        # What the bucket held when last seen (watched): drives the tick and the fast path of outcomes.
        self.states: dict[str, BreakerState] = {}
        self.writes = 0
        self.conflicts = 0
        self._kv: Optional[KeyValue] = None
        self._sub: Optional[Subscription] = None
        self._follower: Optional[BucketFollower] = None
        self._pending: dict[str, list[Outcome]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def endpoints(self) -> list[Endpoint]:
        return [
            serve(exchanges.BREAKER_STATE, self._state),
            serve(exchanges.BREAKER_PROBE, self._probe),
        ]

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        replicas = self.config.nats.kv_replicas
        self._kv = await open_bucket(nc, subjects.KV_BREAKERS, replicas=replicas)
        self._follower = BucketFollower(lambda: open_bucket(nc, subjects.KV_BREAKERS, replicas=replicas),
                                        self._on_state, self.states.keys,
                                        lambda key: self.states.pop(key, None), "breaker-states", retry_s=0.5)
        self._follower.start()
        self._tasks.append(asyncio.create_task(self._ticker(), name="breaker-tick"))
        self._sub = await nc.subscribe(subjects.BREAKER_OUTCOME_ALL, queue=QUEUE_GROUP, cb=self._on_outcome)
        try:
            await asyncio.wait_for(self._follower.loaded.wait(), 5)
        except asyncio.TimeoutError:
            log.warning("breaker: initial states not loaded within 5 s")

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                log.debug("breaker: unsubscribe failed", exc_info=True)
            self._sub = None
        if self._workers:  # outcomes already taken in are written before the connection drains
            workers = set(self._workers.values())
            _, stuck = await asyncio.wait(workers, timeout=5)
            await cancel_and_wait(*stuck)
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()

    def _on_state(self, entry: KeyValue.Entry, live: bool) -> None:
        if is_delete(entry):
            self.states.pop(entry.key, None)
            return
        try:
            self.states[entry.key] = BreakerState.model_validate_json(entry.value or b"")
        except ValidationError as e:
            log.warning("breaker: ignoring bad entry %r: %s", entry.key, e)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_interval_s)
            now = self.clock()
            for provider, state in list(self.states.items()):
                if tick(state, now, self.cfg) is state:
                    continue
                try:
                    await self._update(provider, lambda s, n: (tick(s, n, self.cfg), None))
                except Exception:  # the next tick tries again
                    log.warning("breaker: tick of %s failed", provider, exc_info=True)

    # --- the stored state ------------------------------------------------------------------------------
    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise ArbstrError(503, "the breaker actor is not started", code="breaker_unavailable")
        return self._kv

    async def read(self, provider: str) -> tuple[BreakerState, Optional[int]]:
        """The stored state and its revision; a provider never seen is closed, revision None."""
        try:
            entry = await self.kv.get(provider)
        except KeyNotFoundError:
            return BreakerState(provider=provider), None
        try:
            return BreakerState.model_validate_json(entry.value or b""), entry.revision
        except ValidationError:
            log.warning("breaker: replacing an unreadable state of %s", provider)
            return BreakerState(provider=provider), entry.revision

    async def _update(self, provider: str, change: Change[T]) -> tuple[BreakerState, T]:
        """Read, apply ``change(state, now_ms)``, write back only if it changed, compare-and-set on the revision."""
        for attempt in range(MAX_CAS_ATTEMPTS):
            current, revision = await self.read(provider)
            new, result = change(current, self.clock())
            if new is current:
                return current, result
            data = new.model_dump_json().encode()
            try:
                if revision is None:
                    await self.kv.create(provider, data)
                else:
                    await self.kv.update(provider, data, last=revision)
            except KeyWrongLastSequenceError:
                # Another instance wrote first. A random pause breaks the lockstep in which the same instance
                # could lose every round to a busier one.
                self.conflicts += 1
                await asyncio.sleep(random.uniform(0, CONFLICT_PAUSE_S * min(attempt + 1, 8)))
                continue
            self.writes += 1
            self.states[provider] = new
            return new, result
        raise ArbstrError(503, f"breaker state of {provider} is too contended to update",
                          code="breaker_contended", headers={"retry-after": "1"})

    # --- outcomes --------------------------------------------------------------------------------------
    async def _on_outcome(self, msg: Msg) -> None:
        try:
            outcome = Outcome.model_validate_json(msg.data)
        except ValidationError:
            log.warning("breaker: ignoring a malformed outcome on %s", msg.subject)
            return
        if not subjects.TOKEN_RE.match(outcome.provider):
            log.warning("breaker: ignoring an outcome for an invalid provider name")
            return
        pending = self._pending.setdefault(outcome.provider, [])
        pending.append(outcome)
        if len(pending) > MAX_PENDING:
            del pending[: len(pending) - MAX_PENDING]
        if outcome.provider not in self._workers:
            self._workers[outcome.provider] = asyncio.create_task(self._drain(outcome.provider),
                                                                  name=f"breaker-{outcome.provider}")

    def _nothing_to_do(self, provider: str, batch: list[Outcome]) -> bool:
        """Plain successes on a provider last seen closed with no failures change nothing: skip the read.

        The watched state may lag another instance's write by a few milliseconds; in that window a success
        that should have reset a failure count is lost, which a single later success repairs.
        """
        seen = self.states.get(provider)
        if seen is not None and (seen.state != "closed" or seen.consecutive_failures):
            return False
        return all(o.kind in SUCCESSES and not o.probe for o in batch)

    async def _drain(self, provider: str) -> None:
        """One writer per provider in this instance: the outcomes that queued meanwhile go in one write."""
        try:
            while self._pending.get(provider):
                batch = self._pending.pop(provider)
                if self._nothing_to_do(provider, batch):
                    continue
                try:
                    await self._update(provider, lambda s, now: (on_outcomes(s, batch, now, self.cfg), None))
                except Exception:  # KV unavailable or contended: keep the batch, in order, and try again
                    log.warning("breaker: could not record %d outcome(s) of %s yet", len(batch), provider,
                                exc_info=True)
                    later = self._pending.get(provider, [])
                    self._pending[provider] = (batch + later)[-MAX_PENDING:]
                    await asyncio.sleep(RETRY_PAUSE_S)
        finally:
            self._workers.pop(provider, None)

    # --- endpoints -------------------------------------------------------------------------------------
    def _known(self) -> list[str]:
        return sorted({p.name for p in self.config.providers} | set(self.states))

    @staticmethod
    def _check_name(provider: str) -> None:
        if not subjects.TOKEN_RE.match(provider):
            raise ArbstrError(400, f"invalid provider name {provider!r}", code="invalid_provider",
                              param="provider")

    async def _state(self, req: StateRequest, headers: dict[str, str]) -> StateReply:
        names = [req.provider] if req.provider is not None else self._known()
        for name in names:
            self._check_name(name)
        read = await asyncio.gather(*(self.read(n) for n in names))
        now = self.clock()
        if req.provider is not None and read[0][1] is None and req.provider not in self._known():
            raise ArbstrError(404, f"unknown provider {req.provider!r}", code="unknown_provider", param="provider")
        # Report what time has already decided, even if the tick has not written it yet.
        return StateReply(states=[tick(s, now, self.cfg) for s, _ in read], now_ms=now)

    async def _probe(self, req: ProbeRequest, headers: dict[str, str]) -> ProbeReply:
        self._check_name(req.provider)
        state, granted = await self._update(req.provider, lambda s, now: grant_probe(s, req.probe_id, now, self.cfg))
        return ProbeReply(provider=req.provider, granted=granted, state=state.state, probe_id=state.probe_id,
                          probe_deadline_ms=state.probe_deadline_ms, retry_at_ms=state.retry_at_ms)
