"""A subscription is at the server once ``flush_in_order`` returns: nats-py writes ``flush()``'s PING ahead of the
SUBs still queued for its flusher task, so a plain flush can come back before the server has them."""

from __future__ import annotations

from typing import Any

from actors.runtime.connection import flush_in_order


def record_writes(nc: Any) -> list[bytes]:
    """Every command the connection writes from now on, in the order the socket gets them."""
    transport = nc._transport
    write, writelines = transport.write, transport.writelines
    seen: list[bytes] = []

    def one(data: bytes) -> None:
        seen.append(bytes(data))
        write(data)

    def many(items: list[bytes]) -> None:
        seen.extend(bytes(x) for x in items)
        writelines(items)

    transport.write, transport.writelines = one, many
    return seen


async def test_a_ping_follows_every_subscription_made_before(nc: Any) -> None:
    seen = record_writes(nc)

    async def cb(msg: Any) -> None:
        pass

    for n in range(3):
        await nc.subscribe(f"flush.order.{n}", queue="q", cb=cb)
    await flush_in_order(nc)
    subs = [i for i, cmd in enumerate(seen) if cmd.startswith(b"SUB ")]
    pings = [i for i, cmd in enumerate(seen) if cmd == b"PING\r\n"]
    assert len(subs) == 3 and pings and pings[-1] > subs[-1], seen


async def test_a_drain_hands_every_delivered_message_to_the_callback(nc: Any, nats_url: str) -> None:
    import nats

    from actors.runtime.connection import drain_in_order

    got: list[bytes] = []

    async def cb(msg: Any) -> None:
        got.append(msg.data)

    sub = await nc.subscribe("drain.order", cb=cb)
    await flush_in_order(nc)
    other = await nats.connect(nats_url)
    try:
        for n in range(200):
            await other.publish("drain.order", str(n).encode())
        await flush_in_order(other)  # a plain flush may come back before the PUBs are even written
        await drain_in_order(nc, sub)
        assert len(got) == 200 and sub._id not in nc._subs
        await other.publish("drain.order", b"late")
        await flush_in_order(other)
        assert len(got) == 200
    finally:
        await other.close()


async def test_a_drain_on_a_stuck_connection_still_removes_the_subscription(nc: Any) -> None:
    """Else a reconnect would subscribe it again: an instance that let a partition go would keep answering for it."""
    import pytest
    from nats.errors import FlushTimeoutError

    from actors.runtime.connection import drain_in_order

    async def cb(msg: Any) -> None:
        pass

    sub = await nc.subscribe("drain.stuck", cb=cb)

    async def stuck(timeout: float = 0) -> None:
        raise FlushTimeoutError

    nc.flush = stuck
    try:
        with pytest.raises(FlushTimeoutError):
            await drain_in_order(nc, sub)
    finally:
        del nc.flush  # the class's flush again, for the fixture's drain
    assert sub._id not in nc._subs
