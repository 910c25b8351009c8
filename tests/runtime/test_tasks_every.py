"""``every``: a periodic job that survives its own failures and ends when told to."""

from __future__ import annotations

import asyncio

from actors.runtime.tasks import every


async def test_a_failing_round_is_reported_and_the_next_one_still_comes() -> None:
    rounds: list[int] = []
    failures: list[Exception] = []

    async def action() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise ValueError("second round fails")

    await every(0.001, action, failures.append, running=lambda: len(rounds) < 4)
    assert rounds == [0, 1, 2, 3] and [str(e) for e in failures] == ["second round fails"]


async def test_cancelling_ends_it() -> None:
    rounds: list[None] = []
    failures: list[Exception] = []

    async def action() -> None:
        rounds.append(None)

    task = asyncio.create_task(every(0.001, action, failures.append))
    while len(rounds) < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not failures
