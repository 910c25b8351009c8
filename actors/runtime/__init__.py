"""The shared runtime: infrastructure every actor and the gateway run on, and nothing of any one actor.

- ``connection``: connect to the bus with the component's own credential.
- ``host``: the actor contract (``Actor``) and ``ActorHost``/``run_forever``, which serve one on ``nats.micro``.
- ``endpoints``: one endpoint (subject, message, handler) and the codec every endpoint answers through.
- ``jetstream``: streams and KV buckets made when missing, leaders waited for, transient bus errors retried.
- ``tasks``: background tasks and subscriptions that end cleanly.
- ``tokens``: bearer and admin tokens, kept as hashes.
- ``bucket_follower``: following a KV bucket for as long as the process lives.
- ``netguard``, ``redirects``: keeping announced URLs off our own network.

Import from the module that holds a name (``from actors.runtime.tasks import cancel_and_wait``). The flat names
below are resolved lazily for code written before the split (``from actors.runtime import ActorHost``).
"""

from __future__ import annotations

import importlib
from typing import Any

_FLAT = {
    "ENV_CREDS": "connection", "read_seed": "connection", "credential_options": "connection", "connect": "connection",
    "flush_in_order": "connection", "drain_in_order": "connection",
    "token_hash": "tokens", "admin_token_hash": "tokens", "check_admin": "tokens",
    "unsubscribe_quietly": "tasks", "wait_condition": "tasks", "cancel_and_wait": "tasks",
    "STARTUP_BUDGET_S": "jetstream", "open_bucket": "jetstream", "ensure_stream": "jetstream",
    "wait_stream_leader": "jetstream", "retry_transient": "jetstream", "transient_bus_error": "jetstream",
    "QUEUE_GROUP": "endpoints", "Handler": "endpoints", "Endpoint": "endpoints", "RawReply": "endpoints",
    "error_reply": "endpoints", "answer": "endpoints",
    "Actor": "host", "ActorHost": "host", "run_forever": "host",
}


def __getattr__(name: str) -> Any:
    module = _FLAT.get(name)
    if module is None:
        raise AttributeError(f"module 'actors.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
