"""Start-up against JetStream, on a real nats-server: a stream another instance is making this moment is waited
for, not taken for missing (a cluster answers "not found" until the assignment has spread); a stream that cannot
be made still fails, once the budget is spent, saying why."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from nats.js.api import StreamConfig

from actors.runtime.jetstream import NotYetVisible, ensure_stream, wait_stream_leader


async def test_a_stream_made_a_moment_later_is_waited_for(nc: Any) -> None:
    name = f"TEST_LATE_{uuid.uuid4().hex[:8]}"

    async def made_later() -> None:
        await asyncio.sleep(0.5)
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"late.{name}"]))

    maker = asyncio.create_task(made_later())
    started = time.monotonic()
    await wait_stream_leader(nc, name, timeout_s=10)
    assert time.monotonic() - started >= 0.4
    await maker
    await nc.jetstream().delete_stream(name)


async def test_a_stream_that_cannot_be_made_fails_with_the_reason(nc: Any) -> None:
    js = nc.jetstream()
    first = f"TEST_OWNER_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=first, subjects=[f"taken.{first}.>"]))
    try:
        started = time.monotonic()
        with pytest.raises(NotYetVisible, match="overlap"):  # its subjects belong to another stream
            await ensure_stream(nc, StreamConfig(name=f"TEST_CLASH_{uuid.uuid4().hex[:8]}",
                                                 subjects=[f"taken.{first}.x"]), timeout_s=1.0)
        assert time.monotonic() - started < 5
    finally:
        await js.delete_stream(first)
