"""Small shared types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Tier = Literal["local", "standard", "frontier"]
TIER_ORDER: dict[str, int] = {"local": 0, "standard": 1, "frontier": 2}
Complexity = Literal["low", "medium", "high"]
COMPLEXITY_TIER: dict[str, Tier] = {"low": "local", "medium": "standard", "high": "frontier"}
TIER_COMPLEXITY: dict[str, Complexity] = {"local": "low", "standard": "medium", "frontier": "high"}

# Names that become subject tokens or KV keys.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Msat = Annotated[int, Field(ge=0)]
Rate = Annotated[int, Field(ge=0, description="sats per 1M tokens")]


class Message(BaseModel):
    """Base for every bus message: strict about its own fields, forward-compatible by ignoring extras."""

    model_config = ConfigDict(extra="ignore", frozen=False)
