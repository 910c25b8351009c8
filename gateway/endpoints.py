"""What differs between the proxied OpenAI endpoints: validation, the route summary, and token counting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from pydantic import BaseModel, ValidationError

from schemas.errors import ArbstrError
from schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest
from schemas.router import MAX_TEXT_CHARS, Endpoint
from schemas.tokens import content_text, estimate_messages_tokens, estimate_text_tokens, responses_messages


@dataclass(frozen=True)
class Summary:
    last_user_text: str
    text_sample: str
    input_tokens: int
    turns: int
    max_tokens: Optional[int]
    tools: bool


@dataclass(frozen=True)
class EndpointSpec:
    name: Endpoint
    path: str
    model_type: type[BaseModel]
    summarize: Callable[[dict[str, Any]], Summary]
    output_text: Callable[[dict[str, Any]], str]  # generated text of a whole (non-streamed) response
    delta_text: Callable[[dict[str, Any]], str]   # generated text of one stream chunk
    streams: bool
    max_tokens_field: Optional[str]  # where the output cap goes upstream; None: nothing to cap
    typed_events: bool = False  # streams `event:` + `data:` frames with usage on the terminal event, no [DONE]


def validate(spec: EndpointSpec, body: dict[str, Any]) -> None:
    """400 with ``param`` naming the offending field, the way OpenAI reports it."""
    try:
        spec.model_type.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        loc = first.get("loc", ())
        param = ".".join(str(p) for p in loc) if loc else None
        if param and len(loc) > 1 and isinstance(loc[1], int):
            param = f"{loc[0]}[{loc[1]}]" + "".join(f".{p}" for p in loc[2:])
        msg = first.get("msg", "invalid value")
        raise ArbstrError(400, f"invalid value for '{param}': {msg}" if param else msg,
                          param=param, code="invalid_value") from None


def _tail(text: str) -> str:
    return text[-MAX_TEXT_CHARS:]


def _max_tokens(body: dict[str, Any]) -> Optional[int]:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _messages_summary(messages: list[dict[str, Any]], tools: Any, max_tokens: Optional[int]) -> Summary:
    last_user = ""
    texts: list[str] = []
    turns = 0
    for m in messages:
        text = content_text(m.get("content"))
        texts.append(text)
        if m.get("role") == "user":
            last_user = text
            turns += 1
    extra = estimate_text_tokens(str(tools)) if tools else 0
    return Summary(_tail(last_user), _tail("\n".join(texts)), estimate_messages_tokens(messages) + extra,
                   turns, max_tokens, bool(tools))


def _chat_summary(body: dict[str, Any]) -> Summary:
    return _messages_summary(body["messages"], body.get("tools") or body.get("functions"), _max_tokens(body))


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else str(v) for v in value)
    return ""


def _completion_summary(body: dict[str, Any]) -> Summary:
    text = _prompt_text(body.get("prompt"))
    return Summary(_tail(text), _tail(text), estimate_text_tokens(text), 1, _max_tokens(body), False)


def _embedding_summary(body: dict[str, Any]) -> Summary:
    text = _prompt_text(body.get("input"))
    return Summary(_tail(text), _tail(text), estimate_text_tokens(text), 1, None, False)


def _chat_output(resp: dict[str, Any]) -> str:
    out = []
    for c in resp.get("choices") or ():
        if isinstance(c, dict):
            msg = c.get("message") or {}
            out.append(content_text(msg.get("content")))
            if msg.get("tool_calls"):
                out.append(str(msg["tool_calls"]))
    return "".join(out)


def _chat_delta(chunk: dict[str, Any]) -> str:
    out = []
    for c in chunk.get("choices") or ():
        if isinstance(c, dict):
            delta = c.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                out.append(content)
            if delta.get("tool_calls"):
                out.append(str(delta["tool_calls"]))
    return "".join(out)


def _completion_text(resp: dict[str, Any]) -> str:
    return "".join(c.get("text") or "" for c in resp.get("choices") or () if isinstance(c, dict))


def _responses_summary(body: dict[str, Any]) -> Summary:
    return _messages_summary(responses_messages(body), body.get("tools"), _max_tokens(body))


def _responses_output(resp: dict[str, Any]) -> str:
    out = []
    for item in resp.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            out.append(str(item.get("arguments") or ""))
        out.append(content_text(item.get("content")))
    return "".join(out)


def _responses_delta(event: dict[str, Any]) -> str:
    if event.get("type") in ("response.output_text.delta", "response.function_call_arguments.delta",
                             "response.refusal.delta"):
        delta = event.get("delta")
        return delta if isinstance(delta, str) else ""
    return ""


def _nothing(_: dict[str, Any]) -> str:
    return ""


CHAT = EndpointSpec("chat", "/chat/completions", ChatCompletionRequest, _chat_summary, _chat_output, _chat_delta,
                    True, "max_tokens")
COMPLETIONS = EndpointSpec("completions", "/completions", CompletionRequest, _completion_summary,
                           _completion_text, _completion_text, True, "max_tokens")
EMBEDDINGS = EndpointSpec("embeddings", "/embeddings", EmbeddingRequest, _embedding_summary, _nothing, _nothing,
                          False, None)
RESPONSES = EndpointSpec("responses", "/responses", ResponsesRequest, _responses_summary, _responses_output,
                         _responses_delta, True, "max_output_tokens", typed_events=True)
