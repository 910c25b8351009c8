"""``POST /v1/embeddings``: deterministic vectors (float or base64), prompt tokens billed."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .api import ApiFrame
from .state import Call
from .wire import (
    MAX_EMBEDDING_DIMENSIONS, InvalidRequest, embedding_vector, encode_embedding, is_int, prompt_texts,
    prompt_tokens_of,
)


async def embeddings(api: ApiFrame, request: web.Request, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    items = prompt_texts(body.get("input"), "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = body.get("dimensions", api.embedding_dimensions)
    if not is_int(dimensions) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise InvalidRequest(f"'dimensions' must be an integer in [1, {MAX_EMBEDDING_DIMENSIONS}]", "dimensions")
    prompt_tokens = prompt_tokens_of(items)
    reply: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": i,
                  "embedding": encode_embedding(embedding_vector(item, dimensions), encoding)}
                 for i, item in enumerate(items)],
        "model": body["model"],
    }
    if call.fault is None or not call.fault.omit_usage:
        reply["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return await api.send_json(request, call, orjson.dumps(reply), prompt_tokens, 0)
