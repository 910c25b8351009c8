"""``POST /v1/responses``: the Responses API, whole or as its typed event stream."""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional

import orjson
from aiohttp import web

from schemas.tokens import estimate_messages_tokens, responses_messages

from .api import ApiFrame
from .state import Call
from .wire import (
    InvalidRequest, last_user_text, plan_output, reply_tokens, responses_usage, sse_event, token_limit,
)


async def responses(api: ApiFrame, request: web.Request, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    if not isinstance(body.get("input"), (str, list)):
        raise InvalidRequest("'input' must be a string or an array of input items", "input")
    messages = responses_messages(body)
    stream = body.get("stream") is True
    n_out, _ = plan_output(token_limit(body, ("max_output_tokens",)), api.target_tokens(call))
    prompt_tokens = estimate_messages_tokens(messages)
    tokens = reply_tokens(last_user_text(messages), n_out)
    text = "".join(tokens)
    omit_usage = call.fault is not None and call.fault.omit_usage
    usage = None if omit_usage else responses_usage(prompt_tokens, n_out)
    n = api.next_id()
    rid, item_id = f"resp_mock{n}", f"msg_mock{n}"
    created = int(time.time())
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}

    def response(status: str, output: list[Any], usage_value: Optional[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": rid, "object": "response", "created_at": created, "status": status,
            "completed_at": created if status == "completed" else None,
            "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": body["model"], "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage_value, "user": None, "metadata": {},
        }

    if not stream:
        return await api.send_json(request, call, orjson.dumps(response("completed", [item], usage)),
                                     prompt_tokens, n_out)
    seq = itertools.count()
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    pending = response("in_progress", [], None)
    head = [
        sse_event({"type": "response.created", "sequence_number": next(seq), "response": pending}),
        sse_event({"type": "response.in_progress", "sequence_number": next(seq), "response": pending}),
        sse_event({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                   "item": {**item, "status": "in_progress", "content": []}}),
        sse_event({"type": "response.content_part.added", "sequence_number": next(seq), **where,
                   "part": {**part, "text": ""}}),
    ]
    content = [sse_event({"type": "response.output_text.delta", "sequence_number": next(seq), **where,
                          "delta": tok, "logprobs": []}) for tok in tokens]
    tail = [
        sse_event({"type": "response.output_text.done", "sequence_number": next(seq), **where, "text": text,
                   "logprobs": []}),
        sse_event({"type": "response.content_part.done", "sequence_number": next(seq), **where, "part": part}),
        sse_event({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                   "item": item}),
        sse_event({"type": "response.completed", "sequence_number": next(seq),
                   "response": response("completed", [item], usage)}),
    ]
    return await api.send_stream(request, call, prompt_tokens, head, content, tail)
