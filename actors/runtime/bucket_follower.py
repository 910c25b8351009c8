"""Following a KV bucket: every value as it changes, for as long as the process lives.

One loop for every reader of a live bucket (router: prices and breakers; pricing: its own table and provider
keys; breaker: states; gateway: the market directory). A watch ends or fails on a leader change or a reconnect;
the follower then watches again, and a new watch delivers the current values but never the deletes it missed,
so every key held before and not delivered again is handed to ``on_gone``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Callable, Iterable, Optional

from nats.js.kv import KeyValue

from .tasks import cancel_and_wait

log = logging.getLogger("arbstr.kv")

_DELETE_OPS = ("DEL", "PURGE")

OnEntry = Callable[[KeyValue.Entry, bool], Optional[Awaitable[None]]]


def is_delete(entry: KeyValue.Entry) -> bool:
    """A delete or purge marker: the key is gone, its value (if any) means nothing."""
    return entry.operation in _DELETE_OPS


class BucketFollower:
    """Watch one bucket in a background task.

    ``on_entry(entry, live)`` hears every update (``live`` is False while the initial values of a watch are
    arriving); ``held()`` names the keys the owner holds now, and ``on_gone(key)`` drops one the latest watch did
    not deliver. ``loaded`` is set once the first watch has delivered its initial values.
    """

    def __init__(self, open_kv: Callable[[], Awaitable[KeyValue]], on_entry: OnEntry,
                 held: Callable[[], Iterable[str]], on_gone: Callable[[str], object], name: str,
                 retry_s: float = 1.0) -> None:
        self._open_kv = open_kv
        self._on_entry = on_entry
        self._held = held
        self._on_gone = on_gone
        self.name = name
        self.retry_s = retry_s
        self.loaded = asyncio.Event()
        self.watcher: Optional[Any] = None  # the current watch (tests stop it to play a lost consumer)
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        await self._stop_watcher()  # a watcher left running holds the connection's drain until its timeout
        await cancel_and_wait(self._task)
        self._task = None
        await self._stop_watcher()  # a watch that came up while the cancel was in flight

    async def _run(self) -> None:
        failing: Optional[str] = None  # the same failure again (a bucket its owner has not made yet) is not news
        while not self._stopping:
            try:
                await self._watch_once()
                failing = None
                if not self._stopping:
                    log.warning("watch of %s ended; watching again", self.name)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a dead watch would mean silently stale values
                kind = type(e).__name__
                (log.debug if kind == failing else log.warning)("watch of %s failed (%s); watching again",
                                                                 self.name, kind)
                failing = kind
            await self._stop_watcher()
            await asyncio.sleep(self.retry_s)

    async def _watch_once(self) -> None:
        kv = await self._open_kv()
        self.watcher = await kv.watchall()
        seen: Optional[set[str]] = set()
        async for entry in self.watcher:
            if entry is None:  # the end of the initial values
                if seen is not None:
                    for gone in [k for k in self._held() if k not in seen]:
                        self._on_gone(gone)
                seen = None
                self.loaded.set()
                continue
            if seen is not None:
                seen.add(entry.key)
            result = self._on_entry(entry, seen is None)
            if inspect.isawaitable(result):
                await result

    async def _stop_watcher(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            return
        try:
            await watcher.stop()
        except Exception:  # gone with the failure, or the connection is closing
            log.debug("stopping the watcher of %s failed", self.name, exc_info=True)
