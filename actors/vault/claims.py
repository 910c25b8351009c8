"""Vault-wide ownership that one agent's journal cannot express, in KV ``arbstr_vault``.

- A **claim** names who owns a thing forever (the first agent to post a Cashu token): created once, never moved.
- A **lease** names which vault instance may talk to a rail about one payout right now. It is taken before a
  payment is sent or checked, renewed while the driver runs, released on a clean stop; after a crash it lapses
  within its TTL and another instance resumes the payout. Without it, one instance's check loop could resend a
  payout another instance is sending (a Lightning hash whose first attempt failed may be paid again).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Optional

import orjson
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from actors.runtime.jetstream import open_bucket
from schemas import subjects

log = logging.getLogger("arbstr.vault.claims")


def _key(kind: str, name: str) -> str:
    return f"{kind}.{hashlib.sha256(name.encode()).hexdigest()[:40]}"


class Claims:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._kv: Optional[KeyValue] = None

    async def start(self, nc: NATS, replicas: int) -> None:
        self._kv = await open_bucket(nc, subjects.KV_VAULT, history=64, replicas=replicas)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Claims.start() not called"
        return self._kv

    async def claim(self, name: str, owner: str) -> str:
        """Who owns ``name``: ``owner`` if this call (or an earlier one by the same owner) claimed it first."""
        key = _key("claim", name)
        try:
            await self.kv.create(key, owner.encode())
            return owner
        except KeyWrongLastSequenceError:
            entry = await self.kv.get(key)
            return (entry.value or b"").decode()

    async def acquire(self, name: str, ttl_s: float) -> bool:
        """Take or renew the lease on ``name``; False while another live instance holds it."""
        key = _key("lease", name)
        try:
            await self.kv.create(key, self._lease(ttl_s))
            return True
        except KeyWrongLastSequenceError:
            pass
        held = await self._held(key)
        if held is None:
            return False  # released between the two calls: the next round takes it
        lease, revision = held
        if lease.get("owner") != self.instance and int(lease.get("until_ms", 0)) > time.time() * 1000:
            return False
        return await self._extend(key, revision, ttl_s)

    async def renew(self, name: str, ttl_s: float) -> bool:
        """Extend a lease this instance holds. Never takes one: a renewal racing the release must not revive it."""
        key = _key("lease", name)
        held = await self._held(key)
        if held is None or held[0].get("owner") != self.instance:
            return False
        return await self._extend(key, held[1], ttl_s)

    def _lease(self, ttl_s: float) -> bytes:
        return orjson.dumps({"owner": self.instance, "until_ms": int((time.time() + ttl_s) * 1000)})

    async def _held(self, key: str) -> Optional[tuple[dict[str, Any], int]]:
        """The lease on ``key`` and its revision (an unreadable one reads as nobody's), or None when there is none."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        try:
            lease = orjson.loads(entry.value or b"{}")
        except orjson.JSONDecodeError:
            lease = {}
        return (lease if isinstance(lease, dict) else {}), int(entry.revision or 0)

    async def _extend(self, key: str, revision: int, ttl_s: float) -> bool:
        try:
            await self.kv.update(key, self._lease(ttl_s), last=revision)
            return True
        except KeyWrongLastSequenceError:
            return False  # released (or taken over) meanwhile

    async def park(self, name: str, value: bytes) -> None:
        """Keep something that must be retried later (a deposit the journal refused for now), vault-wide."""
        await self.kv.put(_key("parked", name), value)

    async def parked(self) -> list[tuple[str, bytes]]:
        """(key, value) of everything parked."""
        try:
            keys = await self.kv.keys()
        except Exception:  # NoKeysError: an empty bucket
            return []
        out = []
        for key in keys:
            if key.startswith("parked."):
                try:
                    entry = await self.kv.get(key)
                except KeyNotFoundError:
                    continue
                if entry.value:
                    out.append((key, entry.value))
        return out

    async def unpark(self, key: str) -> None:
        try:
            await self.kv.delete(key)
        except KeyNotFoundError:
            pass

    async def release(self, name: str) -> None:
        key = _key("lease", name)
        try:
            held = await self._held(key)
            if held is not None and held[0].get("owner") == self.instance:
                await self.kv.delete(key, last=held[1])
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            pass
        except Exception as e:  # a lease left behind only delays a resume by its TTL
            log.warning("lease %s not released: %r", name, e)
