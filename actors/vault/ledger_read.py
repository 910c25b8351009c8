"""Reading the ledger afresh from JetStream, outside any vault instance: every event, and the hash-chain check."""

from __future__ import annotations

import asyncio
from typing import Optional

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from schemas import subjects
from schemas.ledger import JournalEntry, LedgerEvent, verify_batches, verify_chain
from schemas.vault import ChainCheck

from .ownership import LAYOUT_KEY
from .partition_journal import stream_last_seq


async def read_stream(nc: NATS, stream: int, timeout_s: float = 60.0) -> list[bytes]:
    """Every message of one ledger stream, in order, read afresh."""
    js = nc.jetstream()
    last = await stream_last_seq(nc, subjects.ledger_stream(stream))
    out: list[bytes] = []
    if last == 0:
        return out
    done = asyncio.Event()

    async def cb(msg: Msg) -> None:
        out.append(bytes(msg.data))
        if msg.metadata.sequence.stream >= last:
            done.set()

    sub = await js.subscribe(subjects.ledger_stream_subjects(stream)[0], cb=cb, ordered_consumer=True,
                             stream=subjects.ledger_stream(stream), deliver_policy=DeliverPolicy.ALL)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await sub.unsubscribe()
    return out


async def read_ledger(nc: NATS, timeout_s: float = 60.0) -> dict[str, list[LedgerEvent]]:
    """Every agent's events, read afresh from every ledger stream (for verification and replay checks)."""
    out: dict[str, list[LedgerEvent]] = {}
    for stream in range(await _streams(nc)):
        for raw in await read_stream(nc, stream, timeout_s):
            doc = orjson.loads(raw)
            entries = doc.get("entries", ()) if doc.get("kind") == "batch" else [doc]
            for entry in entries:
                e = JournalEntry.model_validate(entry)
                out.setdefault(e.agent_id, []).extend(e.events)
    return out


async def verify_ledger(nc: NATS, streams: Optional[int] = None) -> ChainCheck:
    """Re-read the whole ledger and check every hash chain: each partition's batches, and each agent's events
    written before partitions."""
    streams = streams if streams is not None else await _streams(nc)
    broken: list[str] = []
    agents: set[str] = set()
    events = 0
    for stream in range(streams):
        legacy: dict[str, list[LedgerEvent]] = {}
        batches: dict[int, list[bytes]] = {}
        for raw in await read_stream(nc, stream):
            doc = orjson.loads(raw)
            if doc.get("kind") == "batch":
                batches.setdefault(int(doc["partition"]), []).append(raw)
                for entry in doc.get("entries", ()):
                    agents.add(entry["agent_id"])
                    events += len(entry["events"])
            else:
                entry = JournalEntry.model_validate_json(raw)
                legacy.setdefault(entry.agent_id, []).extend(entry.events)
        for agent, evs in legacy.items():
            agents.add(agent)
            events += len(evs)
            if not verify_chain(evs)[0]:
                broken.append(agent)
        for k, raws in batches.items():
            if not verify_batches(raws)[0]:
                broken.append(f"partition-{k}")
    return ChainCheck(agents=len(agents), events=events, ok=not broken, broken=sorted(broken))


async def _streams(nc: NATS) -> int:
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
        return int(orjson.loads((await kv.get(LAYOUT_KEY)).value or b"{}").get("streams", 1))
    except Exception:
        return 1
