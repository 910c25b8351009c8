"""The one KV follow loop every live reader uses, against a real nats-server: initial values, live updates,
a lost watch replaced with the deletes it missed applied, and a stop that returns promptly."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from nats.js.kv import KeyValue

from actors.runtime.bucket_follower import BucketFollower, is_delete
from actors.runtime.jetstream import open_bucket
from tests.support.waiting import eventually


async def test_follows_values_and_drops_what_a_lost_watch_missed(nc: Any) -> None:
    bucket = f"test_follow_{uuid.uuid4().hex[:8]}"
    kv = await open_bucket(nc, bucket)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    held: dict[str, bytes] = {}
    live_updates: list[str] = []

    def on_entry(entry: KeyValue.Entry, live: bool) -> None:
        if is_delete(entry):
            held.pop(entry.key, None)
        else:
            held[entry.key] = entry.value
        if live:
            live_updates.append(entry.key)

    follower = BucketFollower(lambda: open_bucket(nc, bucket), on_entry, held.keys, lambda k: held.pop(k, None),
                              "test", retry_s=0.1)
    follower.start()
    try:
        await asyncio.wait_for(follower.loaded.wait(), 5)
        assert held == {"a": b"1", "b": b"2"} and live_updates == []
        await kv.put("c", b"3")
        await kv.delete("a")
        await eventually(lambda: held == {"b": b"2", "c": b"3"}, interval_s=0.01)
        assert live_updates == ["c", "a"]
        lost = follower.watcher
        await lost.stop()  # what a leader change or a lost consumer looks like
        await kv.delete("b")  # missed by the dead watch: the new watch never delivers it
        await kv.put("d", b"4")
        await eventually(lambda: held == {"c": b"3", "d": b"4"}, interval_s=0.01)
        assert follower.watcher is not lost
    finally:
        started = time.monotonic()
        await follower.stop()
        assert time.monotonic() - started < 2.0
        await nc.jetstream().delete_key_value(bucket)


async def test_keeps_trying_until_the_bucket_can_be_opened(nc: Any) -> None:
    bucket = f"test_follow_{uuid.uuid4().hex[:8]}"
    attempts = 0

    async def open_kv() -> KeyValue:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("jetstream is electing")
        return await open_bucket(nc, bucket)

    follower = BucketFollower(open_kv, lambda e, live: None, lambda: [], lambda k: None, "test", retry_s=0.05)
    follower.start()
    try:
        await asyncio.wait_for(follower.loaded.wait(), 5)
        assert attempts == 3
    finally:
        await follower.stop()
        await nc.jetstream().delete_key_value(bucket)
