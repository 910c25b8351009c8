"""The vault's other streams: the settle work queue (the durable fallback of settles) and the events stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.api import AckPolicy, ConsumerConfig, PersistMode, RetentionPolicy, StorageType, StreamConfig

from schemas import subjects

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .partition_journal import Layout


def settle_stream_config(replicas: int) -> StreamConfig:
    # Settle/release commands a gateway could not hand to an owner: durable from the ack, consumed once.
    return StreamConfig(name=subjects.STREAM_SETTLE, subjects=[f"{subjects.SETTLE_PREFIX}.>"],
                        storage=StorageType.FILE, num_replicas=replicas, retention=RetentionPolicy.WORK_QUEUE,
                        duplicate_window=120.0)


def events_subjects() -> list[str]:
    return [f"{subjects.SPEND_PREFIX}.>", f"{subjects.REQUESTS_PREFIX}.>"]


def events_stream_config(replicas: int, max_age_s: int = 30 * 86400) -> StreamConfig:
    """Spend events and request records, kept by age and replayable from any point. They are derived from the
    journal (a new owner publishes recent ones again, deduplicated by id), so a single server need not fsync
    each one: asynchronous persistence there (a replicated stream has its copies instead)."""
    return StreamConfig(name=subjects.STREAM_EVENTS, subjects=events_subjects(), storage=StorageType.FILE,
                        num_replicas=replicas, max_age=float(max_age_s), duplicate_window=120.0,
                        persist_mode=PersistMode.ASYNC if replicas == 1 else None)


def settle_consumer_config() -> ConsumerConfig:
    # A settle fetched by an instance that then dies is redelivered after ack_wait: short enough that holds
    # do not linger, long enough that a journal write finishes first.
    return ConsumerConfig(durable_name="vault-settle", ack_policy=AckPolicy.EXPLICIT, ack_wait=10.0,
                          max_deliver=-1, max_ack_pending=4096)


async def ensure_streams(nc: "NATS", layout: "Layout", replicas: int = 1) -> None:
    """Every stream the vault writes, created when missing (another instance may be doing the same)."""
    from actors.runtime.jetstream import ensure_stream

    from .partition_journal import ledger_stream_configs

    for cfg in [*ledger_stream_configs(layout, replicas), settle_stream_config(replicas), events_stream_config(replicas)]:
        await ensure_stream(nc, cfg)
    await _add_missing_subjects(nc, subjects.STREAM_EVENTS, events_subjects())


async def _add_missing_subjects(nc: "NATS", stream: str, wanted: list[str]) -> None:
    """A stream created by an older version lacks subjects added since: widen it in place, keeping its data."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    have = list(info.config.subjects or [])
    missing = [s for s in wanted if s not in have]
    if missing:
        cfg = info.config
        cfg.subjects = have + missing
        await js.update_stream(cfg)
