"""What the breaker actor has stored for a provider (its KV bucket), as tests read it."""

from __future__ import annotations

from typing import Optional

from nats.aio.client import Client as NATS

from actors.runtime.jetstream import open_bucket
from schemas import subjects
from schemas.breaker import BreakerState


async def stored(nc: NATS, provider: str) -> Optional[BreakerState]:
    kv = await open_bucket(nc, subjects.KV_BREAKERS)
    try:
        entry = await kv.get(provider)
    except Exception:
        return None
    return BreakerState.model_validate_json(entry.value or b"")
