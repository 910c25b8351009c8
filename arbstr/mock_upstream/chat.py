"""``POST /v1/chat/completions``: ``n`` echo replies, whole or as chunk streams with OpenAI's usage options."""

from __future__ import annotations

import time
from typing import Any, Optional

import orjson
from aiohttp import web

from schemas.tokens import estimate_messages_tokens

from .api import ApiFrame
from .state import Call
from .wire import (
    DONE, FINGERPRINT, InvalidRequest, chat_usage, last_user_text, output_count, plan_output, reply_tokens,
    sse, token_limit,
)


async def chat(api: ApiFrame, request: web.Request, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    stream = body.get("stream") is True
    n_out, truncated = plan_output(token_limit(body, ("max_completion_tokens", "max_tokens")),
                                   api.target_tokens(call))
    outputs = output_count(body, "n")
    finish_reason = "length" if truncated else "stop"
    prompt_tokens = estimate_messages_tokens(messages)
    tokens = reply_tokens(last_user_text(messages), n_out)
    usage = chat_usage(prompt_tokens, n_out * outputs)
    fault = call.fault
    omit_usage = fault is not None and fault.omit_usage
    model = body["model"]
    cid = f"chatcmpl-mock{api.next_id()}"
    created = int(time.time())
    if not stream:
        reply: dict[str, Any] = {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(tokens),
                                                 "refusal": None, "annotations": []},
                         "logprobs": None, "finish_reason": finish_reason} for i in range(outputs)],
        }
        if not omit_usage:
            reply["usage"] = usage
        return await api.send_json(request, call, orjson.dumps(reply), prompt_tokens, n_out * outputs)

    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    on_content = fault is not None and fault.usage_on_content_chunk
    base: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": FINGERPRINT}
    if include_usage:
        base["usage"] = None  # as OpenAI: every chunk carries usage null until the usage chunk

    def chunk(delta: dict[str, Any], finish: Optional[str], index: int = 0) -> dict[str, Any]:
        return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    head = [sse(chunk({"role": "assistant", "content": "", "refusal": None}, None, i)) for i in range(outputs)]
    content = [sse(chunk({"content": tok}, None, i)) for tok in tokens for i in range(outputs)]
    finals = [chunk({}, finish_reason, i) for i in range(outputs)]
    if on_content and not omit_usage:
        finals[-1]["usage"] = usage
    tail = [sse(final) for final in finals]
    if include_usage and not omit_usage and not on_content:
        tail.append(sse({**base, "choices": [], "usage": usage}))
    tail.append(DONE)
    return await api.send_stream(request, call, prompt_tokens, head, content, tail)
