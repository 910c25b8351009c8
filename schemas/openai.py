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
    best_of: Optional[int] = Field(None, ge=1, le=128, strict=True, description="completions generated (and "
                                                                                "billed) per prompt; n of them "
                                                                                "come back")


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1, max_length=256)
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[int] = Field(None, ge=1, strict=True)


class ResponsesRequest(_Open):
    """``POST /v1/responses``: ``input`` is a string or a list of input items (messages, tool outputs…)."""

    model: str = Field(min_length=1, max_length=256)
    input: Union[str, list[Any]]
    instructions: Optional[str] = None
    stream: Optional[bool] = Field(False, strict=True)
    max_output_tokens: Optional[int] = Field(None, ge=1, le=10_000_000, strict=True)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    tools: Optional[list[Any]] = None


# --- response documents (open: upstream fields pass through untouched; these name what clients rely on) ----
class ChatChoice(_Open):
    index: int
    message: dict[str, Any]
    finish_reason: Optional[str] = None


class ChatCompletionResponse(_Open):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Optional[Usage] = None


class ChatCompletionChunk(_Open):
    """One ``data:`` frame of a streamed chat completion; the last one before ``[DONE]`` may carry ``usage``
    (with ``cost_msat``) and no choices, when the client asked for ``stream_options.include_usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Optional[Usage] = None


class CompletionChoice(_Open):
    index: int
    text: str
    finish_reason: Optional[str] = None


class CompletionResponse(_Open):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[Usage] = None


class Embedding(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str] = Field(description="floats, or little-endian float32 in base64")


class EmbeddingResponse(_Open):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Optional[Usage] = None


class ResponsesUsage(_Open):
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    total_tokens: int = Field(0, ge=0)


class ResponseObject(_Open):
    """A Responses API response; streamed, it arrives inside typed events (``response.created`` …
    ``response.completed``), the terminal one carrying ``usage``."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    model: str
    output: list[dict[str, Any]]
    usage: Optional[ResponsesUsage] = None


class ResponseStreamEvent(_Open):
    type: str = Field(description="e.g. response.created, response.output_text.delta, response.completed, error")
    sequence_number: Optional[int] = None
