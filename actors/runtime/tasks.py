"""Background tasks and subscriptions that end cleanly on shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Awaitable, Callable, Optional

log = logging.getLogger("arbstr.runtime")


async def until_stopped() -> None:
    """Return on SIGTERM or SIGINT: how a component is told to drain and go."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    await stop.wait()


async def every(interval_s: float, action: Callable[[], Awaitable[Any]], failed: Callable[[Exception], None],
                running: Callable[[], bool] = lambda: True) -> None:
    """Run ``action`` every ``interval_s`` while ``running()``; a failure is handed to ``failed`` and the next
    round comes as usual (cancellation ends it)."""
    while running():
        await asyncio.sleep(interval_s)
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failed(e)


async def unsubscribe_quietly(sub: Any) -> None:
    """End a subscription on the way out; a connection already closing has ended it anyway."""
    if sub is not None:
        try:
            await sub.unsubscribe()
        except Exception:
            pass


async def wait_condition(cond: asyncio.Condition, predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate()`` held, checked each time ``cond`` is notified, within ``timeout`` seconds."""
    async def waiter() -> None:
        async with cond:
            await cond.wait_for(predicate)

    try:
        await asyncio.wait_for(waiter(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def cancel_and_wait(*tasks: Optional["asyncio.Task[Any]"]) -> None:
    """Cancel background tasks and wait until they are gone; whatever they raise on the way out is theirs.

    Cancelled again until done: on Python 3.11 a cancellation that lands as an inner ``wait_for`` completes is
    swallowed (nats-py awaits that way), and a loop that lost its cancel would otherwise be awaited forever."""
    live = [t for t in tasks if t is not None]
    while True:
        pending = [t for t in live if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=1.0)
    for t in live:
        if not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())
