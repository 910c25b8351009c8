"""The one polling helper: wait for a condition instead of sleeping for a guessed time.

Tests wait for the outcome they are about (a row written, a breaker open), never for a deadline: the timeout only
bounds how long a broken run hangs before it fails, so on a loaded machine the test is slower, not red.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, Union

Check = Callable[[], Union[Any, Awaitable[Any]]]


async def eventually(check: Check, timeout_s: float = 5.0, what: str = "condition", *,
                     interval_s: float = 0.05) -> float:
    """Poll ``check()`` (plain or async) every ``interval_s`` until it returns something true; the seconds that
    took. Fails the test with "<what> not reached within <timeout_s> s" once ``timeout_s`` has passed."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout_s, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(interval_s)
