"""``POST /v1/completions``: legacy completions, ``max(n, best_of)`` outputs made and billed per prompt."""

from __future__ import annotations

import time
from typing import Any, Optional

import orjson
from aiohttp import web

from .api import ApiFrame
from .state import Call
from .wire import (
    DONE, FINGERPRINT, output_count, plan_output, prompt_texts, prompt_tokens_of, reply_tokens, sse,
    token_limit,
)


async def completions(api: ApiFrame, request: web.Request, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    prompts = prompt_texts(body.get("prompt"), "prompt")
    stream = body.get("stream") is True
    n_out, truncated = plan_output(token_limit(body, ("max_tokens",)), api.target_tokens(call))
    returned = output_count(body, "n")
    made = max(returned, output_count(body, "best_of"))  # best_of are made and billed; n come back
    finish_reason = "length" if truncated else "stop"
    prompt_tokens = prompt_tokens_of(prompts)
    replies = [reply_tokens(p if isinstance(p, str) else "", n_out) for p in prompts]
    billed = n_out * made * len(prompts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": billed, "total_tokens": prompt_tokens + billed}
    # One choice per prompt and output, indexed prompt by prompt as OpenAI does.
    indexed = [(p * returned + j, replies[p]) for p in range(len(prompts)) for j in range(returned)]
    omit_usage = call.fault is not None and call.fault.omit_usage
    base = {"id": f"cmpl-mock{api.next_id()}", "object": "text_completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": FINGERPRINT}
    if not stream:
        reply: dict[str, Any] = {**base, "choices": [{"text": "".join(toks), "index": i, "logprobs": None,
                                                      "finish_reason": finish_reason} for i, toks in indexed]}
        if not omit_usage:
            reply["usage"] = usage
        return await api.send_json(request, call, orjson.dumps(reply), prompt_tokens, billed)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def chunk(text: str, finish: Optional[str], index: int = 0) -> bytes:
        return sse({**base, "choices": [{"text": text, "index": index, "logprobs": None,
                                         "finish_reason": finish}]})

    tail = [chunk("", finish_reason, i) for i, _ in indexed]
    if include_usage and not omit_usage:
        tail.append(sse({**base, "choices": [], "usage": usage}))
    tail.append(DONE)
    content = [chunk(toks[k], None, i) for k in range(n_out) for i, toks in indexed]
    return await api.send_stream(request, call, prompt_tokens, [], content, tail)
