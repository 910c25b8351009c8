"""OpenAI wire types. Requests keep unknown fields (``extra="allow"``) so they are forwarded upstream untouched."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Role
    content: Union[str, list[Any], None] = None
    name: Optional[str] = None


class StreamOptions(_Open):
    include_usage: Optional[bool] = Field(None, strict=True)


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: Optional[bool] = Field(False, strict=True)
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1, le=10_000_000, strict=True)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=10_000_000, strict=True)
    n: Optional[int] = Field(None, ge=1, le=128, strict=True)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    tools: Optional[list[Any]] = None


class Usage(_Open):
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)


class ModelPricing(BaseModel):
    provider: str
    input_msat_per_1m: int
    output_msat_per_1m: int
    base_fee_msat: int = 0
    tier: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "arbstr"
    pricing: Optional[ModelPricing] = Field(None, description="the cheapest provider's price, in msat per 1M tokens")
    providers: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    prompt: Union[str, list[str], list[int], list[list[int]]]
    stream: Optional[bool] = Field(False, strict=True)
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(None, ge=1, le=10_000_000, strict=True)
    n: Optional[int] = Field(None, ge=1, le=128, strict=True)


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[int] = Field(None, ge=1, strict=True)
