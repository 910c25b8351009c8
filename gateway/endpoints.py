"""What differs between the proxied OpenAI endpoints: validation, the route summary, and token counting."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from pydantic import BaseModel, ValidationError

from schemas.errors import ArbstrError
from schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest
from schemas.router import MAX_CHOICES, MAX_TEXT_CHARS, Endpoint
from schemas.tokens import (content_text, estimate_messages_tokens, estimate_prompt_tokens, estimate_text_tokens,
                            responses_messages)


@dataclass(frozen=True)
class Summary:
    last_user_text: str
    text_sample: str
    input_tokens: int
    turns: int
    max_tokens: Optional[int]  # the output cap per choice, on the fields the endpoint's upstreams honour
    tools: bool
    choices: int = 1  # outputs the upstream generates and bills (n, best_of, prompts)


@dataclass(frozen=True)
class EndpointSpec:
    name: Endpoint
    path: str
    model_type: type[BaseModel]
    summarize: Callable[[dict[str, Any]], Summary]
    output_text: Callable[[dict[str, Any]], str]  # generated text of a whole (non-streamed) response
    delta_text: Callable[[dict[str, Any]], str]   # generated text of one stream chunk
    streams: bool
    # The output caps an upstream of this endpoint honours (any one of them, for chat): the hold covers the
    # largest the client set, and the gateway caps each of them at the budget it reserved. The first is the one
    # set when the client set none. Empty: nothing to cap (embeddings).
    cap_fields: tuple[str, ...]
    typed_events: bool = False  # streams `event:` + `data:` frames with usage on the terminal event, no [DONE]

    @property
    def max_tokens_field(self) -> Optional[str]:
        return self.cap_fields[0] if self.cap_fields else None


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


# The output caps each endpoint's upstreams honour (see EndpointSpec.cap_fields).
CHAT_CAPS = ("max_tokens", "max_completion_tokens")
COMPLETION_CAPS = ("max_tokens",)
RESPONSES_CAPS = ("max_output_tokens",)


def cap_upstream(upstream_body: dict[str, Any], spec: EndpointSpec, reserved_tokens: int, choices: int) -> int:
    """Cap every output field the upstream may honour at the per-choice budget the hold paid for (the client's own
    lower cap stays); set the endpoint's main field when the client set none. Returns that budget: a settle can
    then never exceed its reservation because of output the hold did not cover."""
    budget = max(1, reserved_tokens // max(1, choices))
    present = [f for f in spec.cap_fields if _positive_int(upstream_body.get(f)) is not None]
    for f in present or spec.cap_fields[:1]:
        upstream_body[f] = min(_positive_int(upstream_body.get(f)) or budget, budget)
    return budget


def _tail(text: str) -> str:
    return text[-MAX_TEXT_CHARS:]


def _positive_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def output_cap(body: dict[str, Any], fields: tuple[str, ...]) -> Optional[int]:
    """The largest cap the client set on ``fields``: which one an upstream honours is its business, so the hold
    must cover whichever is larger (a cap on a field the upstream ignores limits nothing)."""
    caps = [c for c in (_positive_int(body.get(f)) for f in fields) if c is not None]
    return max(caps) if caps else None


def _prompt_count(value: Any) -> int:
    """How many prompts a completions ``prompt`` holds: each is completed on its own."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


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
    s = _messages_summary(body["messages"], body.get("tools") or body.get("functions"),
                          output_cap(body, CHAT_CAPS))
    return replace(s, choices=_positive_int(body.get("n")) or 1)


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(v if isinstance(v, str) else str(v) for v in value)
    return ""


def _completion_summary(body: dict[str, Any]) -> Summary:
    prompt = body.get("prompt")
    text = _prompt_text(prompt)
    # Each prompt is completed max(n, best_of) times, and every one of them is billed (best_of picks which
    # n come back, not which are paid for).
    per_prompt = max(_positive_int(body.get("n")) or 1, _positive_int(body.get("best_of")) or 1)
    choices = _prompt_count(prompt) * per_prompt
    if choices > MAX_CHOICES:
        raise ArbstrError(400, f"{choices} completions requested (prompts × max(n, best_of)); the limit is "
                               f"{MAX_CHOICES}", param="n", code="invalid_value")
    return Summary(_tail(text), _tail(text), estimate_prompt_tokens(prompt), 1, output_cap(body, COMPLETION_CAPS),
                   False, choices)


def _embedding_summary(body: dict[str, Any]) -> Summary:
    value = body.get("input")
    text = _prompt_text(value)
    return Summary(_tail(text), _tail(text), estimate_prompt_tokens(value), 1, None, False)


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
    return _messages_summary(responses_messages(body), body.get("tools"), output_cap(body, RESPONSES_CAPS))


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
                    True, CHAT_CAPS)
COMPLETIONS = EndpointSpec("completions", "/completions", CompletionRequest, _completion_summary,
                           _completion_text, _completion_text, True, COMPLETION_CAPS)
EMBEDDINGS = EndpointSpec("embeddings", "/embeddings", EmbeddingRequest, _embedding_summary, _nothing, _nothing,
                          False, ())
# Responses honours max_output_tokens only: a max_completion_tokens (or max_tokens) beside it limits nothing.
RESPONSES = EndpointSpec("responses", "/responses", ResponsesRequest, _responses_summary, _responses_output,
                         _responses_delta, True, RESPONSES_CAPS, typed_events=True)
