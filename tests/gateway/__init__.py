"""The HTTP edge: routes and OpenAPI, the official openai client, billing of every endpoint and of streams, malformed and abusive input, spend events over SSE, reports, the operator views."""
