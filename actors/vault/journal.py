"""The JetStream side of the vault: streams, optimistic-concurrency appends, and the ledger follower.

Every vault instance follows the whole ledger from sequence 1 (an ordered consumer), so its in-memory
fold is the stream's, whichever instance wrote. Appends carry ``Nats-Msg-Id = op_id`` and the expected
last sequence over the agent's subjects: a stale expectation (10071) means another writer won, or our own
earlier write landed — the caller catches up and looks for its op_id before trying again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType,
                         StreamConfig)
from nats.js.errors import APIError, NotFoundError

from actors.runtime import ensure_stream, unsubscribe_quietly
from schemas import subjects
from schemas.ledger import JournalEntry

log = logging.getLogger("arbstr.vault.journal")

WRONG_LAST_SEQUENCE = 10071
# On a cluster the stream leader refuses an expectation on a subject that still has a write in flight with
# "wrong last sequence" and no number: the same conflict, seen before the earlier write is applied.
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
H_EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
# Written on every entry so a follower can skip decoding what it already applied (its own writes).
H_AGENT = "Arbstr-Agent"
H_LAST_EVENT_SEQ = "Arbstr-Last-Event-Seq"


class Conflict(Exception):
    """The agent's journal moved on since we read it."""


def stream_configs(replicas: int = 1, events_max_age_s: int = 30 * 86400) -> list[StreamConfig]:
    return [
        # The only source of truth for money: file storage, no limits, nothing can be deleted or purged.
        StreamConfig(name=subjects.STREAM_LEDGER, subjects=[f"{subjects.LEDGER_PREFIX}.>"],
                     storage=StorageType.FILE, num_replicas=replicas, deny_delete=True, deny_purge=True,
                     duplicate_window=120.0),
        # Settle/release commands from gateways: durable from the ack, consumed once by any vault instance.
        StreamConfig(name=subjects.STREAM_SETTLE, subjects=[f"{subjects.SETTLE_PREFIX}.>"],
                     storage=StorageType.FILE, num_replicas=replicas, retention=RetentionPolicy.WORK_QUEUE,
                     duplicate_window=120.0),
        # Spend and provider events, and the gateway's request records, kept by age and replayable from any point.
        StreamConfig(name=subjects.STREAM_EVENTS, subjects=events_subjects(),
                     storage=StorageType.FILE, num_replicas=replicas, max_age=float(events_max_age_s),
                     duplicate_window=120.0),
    ]


def events_subjects() -> list[str]:
    return [f"{subjects.SPEND_PREFIX}.>", f"{subjects.REQUESTS_PREFIX}.>"]


async def ensure_streams(nc: NATS, replicas: int = 1) -> None:
    # On a cluster a new stream takes writes only once it has a leader: ensure_stream waits for that.
    for cfg in stream_configs(replicas):
        await ensure_stream(nc, cfg)
    await _add_missing_subjects(nc, subjects.STREAM_EVENTS, events_subjects())


async def _add_missing_subjects(nc: NATS, stream: str, wanted: list[str]) -> None:
    """A stream created by an older version lacks subjects added since: widen it in place, keeping its data."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    have = list(info.config.subjects or [])
    missing = [s for s in wanted if s not in have]
    if missing:
        cfg = info.config
        cfg.subjects = have + missing
        await js.update_stream(cfg)
        log.info("stream %s: added subjects %s", stream, missing)


class Journal:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.applied_seq = 0  # highest stream sequence the follower has handed over
        self._progress = asyncio.Condition()
        self._sub = None

    async def append(self, entry: JournalEntry, expected_last_seq: int, timeout_s: float = 5.0) -> int:
        """Append one command's events atomically; returns the stream sequence. Raises Conflict on 10071."""
        # op_ids are unique per agent ("create", "reserve:<rid>"): the stream-wide msg id names the agent too.
        headers = {
            subjects.H_MSG_ID: f"{entry.agent_id}:{entry.op_id}",
            H_EXPECTED_SEQ: str(expected_last_seq),
            H_EXPECTED_SUBJECT: subjects.ledger_all(entry.agent_id),
            H_AGENT: entry.agent_id,
            H_LAST_EVENT_SEQ: str(entry.events[-1].seq),
        }
        try:
            ack = await self.js.publish(subjects.ledger(entry.agent_id), entry.model_dump_json().encode(),
                                        headers=headers, timeout=timeout_s)
        except APIError as e:
            if e.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise Conflict(str(e)) from None
            raise
        if ack.duplicate:
            # Nothing was written: this op landed before. Never apply it as if it were new — catch up instead.
            log.info("journal: %s:%s was already journaled at seq %s", entry.agent_id, entry.op_id, ack.seq)
            raise Conflict("duplicate")
        return int(ack.seq)

    async def last_seq_of(self, agent_id: str) -> int:
        """The stream sequence of the agent's newest entry (0 if none)."""
        try:
            msg = await self.js.get_last_msg(subjects.STREAM_LEDGER, subjects.ledger_all(agent_id))
            return int(msg.seq or 0)
        except NotFoundError:
            return 0

    async def stream_last_seq(self) -> int:
        info = await self.js.stream_info(subjects.STREAM_LEDGER)
        return int(info.state.last_seq)

    async def follow(self, apply: Callable[[JournalEntry, int], Awaitable[None] | None],
                     applied: Optional[Callable[[str, int, int], bool]] = None) -> None:
        """Hand every entry, from sequence 1 and then live, to ``apply`` in stream order.

        ``applied(agent_id, last_event_seq, stream_seq)`` may say an entry is already folded (this instance
        wrote it); then it is not decoded at all.
        """

        async def on_msg(msg: Msg) -> None:
            seq = int(msg.metadata.sequence.stream)
            h = msg.headers or {}
            agent, last = h.get(H_AGENT), h.get(H_LAST_EVENT_SEQ)
            if applied is not None and agent and last and last.isdigit() and applied(agent, int(last), seq):
                async with self._progress:
                    self.applied_seq = max(self.applied_seq, seq)
                    self._progress.notify_all()
                return
            try:
                entry = JournalEntry.model_validate_json(msg.data)
            except Exception:
                log.exception("journal: undecodable entry at seq %s (ignored; the books check will flag it)", seq)
            else:
                result = apply(entry, seq)
                if asyncio.iscoroutine(result):
                    await result
            async with self._progress:
                self.applied_seq = max(self.applied_seq, seq)
                self._progress.notify_all()

        self._sub = await self.js.subscribe(f"{subjects.LEDGER_PREFIX}.>", cb=on_msg, ordered_consumer=True,
                                            deliver_policy=DeliverPolicy.ALL, stream=subjects.STREAM_LEDGER)

    async def wait_applied(self, seq: int, timeout_s: float = 10.0) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.applied_seq >= seq), timeout_s)

    async def stop(self) -> None:
        await unsubscribe_quietly(self._sub)
        self._sub = None


def settle_consumer_config() -> ConsumerConfig:
    # A settle fetched by an instance that then dies is redelivered after ack_wait: short enough that holds
    # do not linger, long enough that a journal write (retrying 10071s for a few seconds) finishes first.
    return ConsumerConfig(durable_name="vault-settle", ack_policy=AckPolicy.EXPLICIT, ack_wait=10.0,
                          max_deliver=-1, max_ack_pending=4096)
