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
