"""Who owns which partition: leases in the ``arbstr_partitions`` bucket, balanced over the live vault instances.

Each instance renews one key (``member.<instance>``) a few times a lease; an instance whose key stops changing
for a whole lease (measured on the observer's own clock, so no two machines' clocks are compared) is dead, and
its partitions are taken over. A partition's owner is named in ``owner.<k>`` with an epoch, changed only by a
compare-and-set on the revision the changer saw, so two instances never both take it. Every instance aims at
its share (partitions ÷ live instances): it takes free or orphaned partitions while below it and hands back
extras while above it, so a new instance gets work within a few renewals and two instances carry twice the
agents. A lease is only the right to try: the journal's fencing decides (a stale owner's write fails).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from actors.runtime.tasks import cancel_and_wait, every

log = logging.getLogger("arbstr.vault.ownership")

LAYOUT_KEY = "layout"
LOAD_ATTEMPTS = 3  # a partition that cannot be loaded this often in a row is handed back


def owner_key(partition: int) -> str:
    return f"owner.{partition}"


def member_key(instance: str) -> str:
    return f"member.{instance}"


@dataclass
class _Seen:
    value: dict[str, object]
    revision: int
    changed_at: float  # local monotonic time the revision last moved


@dataclass(frozen=True)
class Claim:
    partition: int
    epoch: int
    revision: int


Acquired = Callable[[Claim], Awaitable[bool]]  # load and start serving; False: could not (give it back)
Lost = Callable[[int, str], Awaitable[None]]  # stop serving at once (lease taken over, or handing back)


def share(partitions: int, members: int) -> int:
    return math.ceil(partitions / max(1, members))


class Ownership:
    def __init__(self, kv: KeyValue, instance: str, partitions: int, lease_s: float,
                 acquired: Acquired, lost: Lost) -> None:
        self.kv = kv
        self.instance = instance
        self.partitions = partitions
        self.lease_s = lease_s
        self._acquired = acquired
        self._lost = lost
        self.owned: dict[int, Claim] = {}
        self._leaving: set[int] = set()  # being handed back right now: not ours, not yet free either
        self._taking: dict[int, asyncio.Task[None]] = {}  # leases being taken and partitions loaded, side by side
        self._seen: dict[str, _Seen] = {}
        self._started = time.monotonic()
        self._task: Optional[asyncio.Task[None]] = None
        self._renew_task: Optional[asyncio.Task[None]] = None
        self._watch_task: Optional[asyncio.Task[None]] = None
        self._watcher: Optional[object] = None
        self._changed = asyncio.Event()
        self._loaded = asyncio.Event()  # the watch delivered every key there was: only then is "free" meaningful
        self._stopping = False
        self._dead: set[str] = set()  # members judged dead (logged once each)

    # --- lifecycle -------------------------------------------------------------------------------------
    @property
    def renew_every(self) -> float:
        return self.lease_s / 4

    async def start(self) -> None:
        await self._renew()
        self._watch_task = asyncio.create_task(self._watch(), name="ownership-watch")
        self._renew_task = asyncio.create_task(self._renew_forever(), name="ownership-renew")
        self._task = asyncio.create_task(self._loop(), name="ownership")

    async def stop(self) -> None:
        """Hand every partition back (the next owner need not wait out a lease) and leave."""
        self._stopping = True
        await cancel_and_wait(self._task, self._renew_task, *self._taking.values())
        for partition in sorted(self.owned):
            await self._give_back(partition, "stopping")
        try:
            await self.kv.delete(member_key(self.instance))
        except Exception:
            pass
        await self._stop_watch()
        await cancel_and_wait(self._watch_task)

    async def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()  # type: ignore[attr-defined]
            except Exception:
                pass

    # --- what others hold ------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while not self._stopping:
            try:
                self._watcher = watcher = await self.kv.watchall()
                async for entry in watcher:  # type: ignore[attr-defined]
                    if entry is None:
                        self._loaded.set()
                        self._changed.set()
                        continue
                    key = entry.key
                    if entry.operation in ("DEL", "PURGE"):
                        self._seen.pop(key, None)
                    else:
                        try:
                            value = orjson.loads(entry.value or b"{}")
                        except orjson.JSONDecodeError:
                            continue
                        seen = self._seen.get(key)
                        if seen is None or (entry.revision or 0) > seen.revision:
                            self._seen[key] = _Seen(value, entry.revision or 0, time.monotonic())
                    self._notice(key)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("ownership watch failed (%r); watching again", e)
            await self._stop_watch()
            await asyncio.sleep(0.5)

    def _notice(self, key: str) -> None:
        if key.startswith("owner."):
            partition = int(key.split(".", 1)[1])
            claim = self.owned.get(partition)
            seen = self._seen.get(key)
            if claim is not None and (seen is None or seen.revision > claim.revision):
                # Someone changed our lease: it is theirs now. Stop serving at once; fencing covers the gap.
                owner = str(seen.value.get("instance", "")) if seen else ""
                if owner != self.instance:
                    self.owned.pop(partition, None)
                    asyncio.ensure_future(self._lost(partition, f"taken over by {owner or 'nobody'}"))
        self._changed.set()

    def alive_members(self) -> list[str]:
        now = time.monotonic()
        alive = []
        for key, seen in self._seen.items():
            if not key.startswith("member."):
                continue
            name = key.split(".", 1)[1]
            # Seen only since we started: give it a whole lease before judging it.
            silent_s = now - max(seen.changed_at, self._started)
            if name == self.instance or silent_s < self.lease_s:
                alive.append(name)
                self._dead.discard(name)
            elif name not in self._dead:
                self._dead.add(name)
                log.info("member %s: silent for %.2f s; its partitions are free", name, silent_s)
        if self.instance not in alive:
            alive.append(self.instance)
        return sorted(alive)

    def next_expiry_in(self, now: float) -> Optional[float]:
        """Seconds until the first live member's lease runs out: the loop wakes then and takes its partitions at
        once, instead of at its next periodic pass (up to a renewal interval later)."""
        due = [max(seen.changed_at, self._started) + self.lease_s - now for key, seen in self._seen.items()
               if key.startswith("member.") and key != member_key(self.instance)
               and now - max(seen.changed_at, self._started) < self.lease_s]
        return max(0.0, min(due)) if due else None

    def owner_of(self, partition: int) -> Optional[str]:
        seen = self._seen.get(owner_key(partition))
        owner = str(seen.value.get("instance", "")) if seen else ""
        return owner or None

    # --- the loop ----------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        await self._loaded.wait()
        while not self._stopping:
            try:
                await self._balance()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("ownership: %r", e)
            self._changed.clear()
            wait = self.renew_every
            expiry = self.next_expiry_in(time.monotonic())
            if expiry is not None:
                wait = min(wait, expiry + 0.001)  # just past it: the member is judged dead on this wake-up
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _renew_forever(self) -> None:
        """Renewals on their own clock: a pass of the loop that loads partitions (seconds, on a big ledger) must
        not let this instance's own lease run out, or the others take everything it has."""
        await every(self.renew_every, self._renew, lambda e: log.warning("ownership: lease not renewed (%r)", e),
                    lambda: not self._stopping)

    async def _renew(self) -> None:
        # Bounded: a renewal lost in a JetStream election would otherwise hold up the next one for the client's
        # default timeout (5 s), longer than the lease itself; half a lease still leaves a slow server time to ack.
        await asyncio.wait_for(self.kv.put(member_key(self.instance), orjson.dumps({"at_ms": int(time.time() * 1000)})),
                               self.lease_s / 2)

    async def _balance(self) -> None:
        members = self.alive_members()
        target = share(self.partitions, len(members))
        held = set(self.owned) | set(self._taking)
        if len(held) > target and len(members) > 1:
            # Hand back the highest-numbered extras (never one still loading): someone below its share takes them.
            extras = sorted((k for k in self.owned if k not in self._taking), reverse=True)[:len(held) - target]
            for partition in extras:
                await self._give_back(partition, f"balancing to {target} of {self.partitions}")
            return
        free: list[tuple[int, Optional[_Seen]]] = []
        for partition in range(self.partitions):
            if partition in held or partition in self._leaving:
                continue
            seen = self._seen.get(owner_key(partition))
            owner = str(seen.value.get("instance", "")) if seen else ""
            if owner == self.instance and seen is not None and len(held) + len(free) >= target:
                # Named as ours but not served here: a hand-back whose write was lost (an election, say). Nobody
                # else takes a live instance's partition: the hand-back is written now.
                await self._unname(partition, seen)
                continue
            if len(held) + len(free) >= target:
                continue
            # (Named as ours and below our share: taken again like any free one, with the next epoch.)
            if owner and owner in members and owner != self.instance:
                continue  # held by a live instance
            log.debug("partition %s: free (owner %r, members %s)", partition, owner, members)
            free.append((partition, seen))
        # Side by side, and not awaited here: one partition whose load hangs (a JetStream election) holds up
        # neither the others nor the next pass of the loop.
        for partition, seen in free:
            task = asyncio.create_task(self._take(partition, seen), name=f"take-p{partition}")
            self._taking[partition] = task
            task.add_done_callback(lambda t, k=partition: self._took(k, t))

    def _took(self, partition: int, task: "asyncio.Task[None]") -> None:
        # No wake-up of the loop here: a lease taken or lost shows in the bucket (the watch wakes it), and a failed
        # compare-and-set retried at once, before the watch has delivered what beat it, would only spin.
        if self._taking.get(partition) is task:
            del self._taking[partition]

    async def _take(self, partition: int, seen: Optional[_Seen]) -> None:
        epoch = int(seen.value.get("epoch", 0)) + 1 if seen else 1
        value = orjson.dumps({"instance": self.instance, "epoch": epoch})
        try:
            if seen is None:
                revision = await self.kv.create(owner_key(partition), value)
            else:
                revision = await self.kv.update(owner_key(partition), value, last=seen.revision)
        except (KeyWrongLastSequenceError, Exception) as e:
            log.debug("partition %s: not taken (%r)", partition, e)
            return
        claim = Claim(partition, epoch, int(revision))
        self.owned[partition] = claim
        self._seen[owner_key(partition)] = _Seen({"instance": self.instance, "epoch": epoch}, int(revision),
                                                 time.monotonic())
        log.info("partition %s: taken (epoch %d)", partition, epoch)
        ok = False
        for attempt in range(LOAD_ATTEMPTS):
            try:
                ok = await self._acquired(claim)
                break
            except Exception as e:
                if attempt + 1 == LOAD_ATTEMPTS or self.owned.get(partition) != claim or self._stopping:
                    log.exception("partition %s: could not start serving", partition)
                    break
                # Mostly the journal electing a leader: tried again under the lease we hold, at once, rather than
                # handed back and taken again a renewal later.
                log.warning("partition %s: could not start serving (%r); trying again", partition, e)
                await asyncio.sleep(0.1)
        if not ok and self.owned.get(partition) == claim:
            await self._give_back(partition, "could not load")
            await asyncio.sleep(self.renew_every)  # not taken here again at once (the journal may be electing)
        elif ok and self.owned.get(partition) != claim:
            # Taken over by another instance while this one was loading it: what just started serving stops.
            await self._lost(partition, "taken over while loading")

    async def _give_back(self, partition: int, reason: str) -> None:
        claim = self.owned.pop(partition, None)
        if claim is None:
            return
        self._leaving.add(partition)
        try:
            await self._lost(partition, reason)  # stop serving first: nothing new is written under the lease
            value = orjson.dumps({"instance": "", "epoch": claim.epoch})
            try:
                revision = await self.kv.update(owner_key(partition), value, last=claim.revision)
                self._seen[owner_key(partition)] = _Seen({"instance": "", "epoch": claim.epoch}, int(revision),
                                                         time.monotonic())
                log.info("partition %s: handed back (%s)", partition, reason)
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                pass  # someone took it meanwhile
            except Exception as e:
                log.warning("partition %s: hand-back not recorded (%r); it stays named ours and is taken again",
                            partition, e)
        finally:
            self._leaving.discard(partition)
            self._changed.set()

    async def _unname(self, partition: int, seen: _Seen) -> None:
        value = {"instance": "", "epoch": int(seen.value.get("epoch", 0))}
        try:
            revision = await self.kv.update(owner_key(partition), orjson.dumps(value), last=seen.revision)
        except Exception as e:
            log.debug("partition %s: hand-back not recorded again (%r)", partition, e)
            return
        self._seen[owner_key(partition)] = _Seen(value, int(revision), time.monotonic())
        log.info("partition %s: handed back (recorded late)", partition)

    async def freeze(self) -> None:
        """Stop renewing and watching, holding on to what is owned: what a paused process looks like to the
        others (tests: a stale owner that keeps writing must be fenced)."""
        await cancel_and_wait(self._task, self._renew_task, self._watch_task)
        await self._stop_watch()

    async def hand_back(self, partition: int, reason: str) -> None:
        await self._give_back(partition, reason)
