"""The vault's wall clock, in one place: every part of the actor reads the time through ``clock.now_ms()``,
so a test can move it for all of them at once."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
