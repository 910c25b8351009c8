"""Small shared types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .money import MAX_MSAT  # 21e6 BTC x 1e8 sat x 1e3 msat: defined once, with the money arithmetic

Tier = Literal["local", "standard", "frontier"]
TIER_ORDER: dict[str, int] = {"local": 0, "standard": 1, "frontier": 2}
Complexity = Literal["low", "medium", "high"]
COMPLEXITY_TIER: dict[str, Tier] = {"low": "local", "medium": "standard", "high": "frontier"}
TIER_COMPLEXITY: dict[str, Complexity] = {"local": "low", "standard": "medium", "frontier": "high"}

# Names that become subject tokens or KV keys.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Msat = Annotated[int, Field(ge=0)]
# Bounds of what a client, an operator or a config may ask for. No amount exceeds every bitcoin there will ever be;
# no duration runs for aeons (asyncio, JetStream and the clients waiting on a request all break on huge ones).
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_APPROVAL_TIMEOUT_S = 7 * 86_400  # a human answers within a week, or the spend is denied
MAX_DURATION_S = 30 * 86_400  # intervals, timeouts and TTLs in config
MAX_RATE = MAX_MSAT // 1000  # sats per 1M tokens: all bitcoin
MAX_TOKENS = 100_000_000  # a context length, an output budget
Amount = Annotated[int, Field(ge=0, le=MAX_MSAT, description="msat, at most 2.1e18 (all bitcoin)")]
Seconds = Annotated[float, Field(gt=0, le=MAX_DURATION_S, description="seconds, at most 30 days")]
Rate = Annotated[int, Field(ge=0, description="sats per 1M tokens")]


class Message(BaseModel):
    """Base for every bus message: strict about its own fields, forward-compatible by ignoring extras."""

    model_config = ConfigDict(extra="ignore", frozen=False)
