"""The seed's quote-feed format as plain data.

``GET {feed}/api/quotes?limit=N[&source=S]`` → quotes ``{source, provider, provider_id, model, price_in_sats,
price_out_sats, endpoint, observed_at}`` (sats per 1M tokens); ``GET {feed}/api/nodes`` → ``{provider_id,
reliability}``. Either may come as a bare array or wrapped (``{"quotes": […]}``, ``{"nodes": […]}``,
``{"data": […]}``). A malformed quote is skipped, never fatal: one bad row must not blank a feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import urlsplit

from .units import per_million_to_rate, to_decimal

MAX_FIELD = 512


@dataclass(frozen=True)
class FeedQuote:
    source: str
    provider: str
    provider_id: str
    model: str
    input_rate: int  # sats per 1M tokens, rounded up
    output_rate: int
    endpoint: str
    observed_at_ms: int


def _rows(body: Any, *keys: str) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in keys:
            if isinstance(body.get(key), list):
                return list(body[key])
    raise ValueError(f"expected a JSON array (or an object with {' or '.join(repr(k) for k in keys)})")


def parse_time_ms(value: Any) -> Optional[int]:
    """Epoch seconds or milliseconds (a number or a numeric string), or ISO 8601 (a naive time is UTC)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()):
        d = to_decimal(value)
        if d is None:
            return None
        # Seconds until the year 5138; anything larger is already milliseconds.
        return int(d * 1000) if d < 100_000_000_000 else int(d)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return int(t.timestamp() * 1000)
    return None


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value.strip()[:MAX_FIELD] if isinstance(value, str) else ""


def parse_quotes(body: Any) -> list[FeedQuote]:
    quotes = []
    for row in _rows(body, "quotes", "data"):
        if not isinstance(row, dict):
            continue
        endpoint, model = _text(row, "endpoint"), _text(row, "model")
        inp, out = per_million_to_rate(row.get("price_in_sats")), per_million_to_rate(row.get("price_out_sats"))
        observed = parse_time_ms(row.get("observed_at"))
        if not endpoint or not model or inp is None or out is None or observed is None:
            continue
        if urlsplit(endpoint).scheme not in ("http", "https"):
            continue
        quotes.append(FeedQuote(source=_text(row, "source"), provider=_text(row, "provider"),
                                provider_id=_text(row, "provider_id"), model=model, input_rate=inp, output_rate=out,
                                endpoint=endpoint.rstrip("/"), observed_at_ms=observed))
    return quotes


def parse_nodes(body: Any) -> dict[str, float]:
    """provider_id → reliability in [0, 1]; a figure above 1 is read as a percentage."""
    out: dict[str, float] = {}
    for row in _rows(body, "nodes", "data"):
        if not isinstance(row, dict):
            continue
        pid = _text(row, "provider_id")
        value = row.get("reliability")
        if not pid or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            continue
        out[pid] = float(value) / 100 if value > 1 else float(value)
    return out


def endpoint_key(url: str) -> str:
    """What two spellings of one endpoint share: scheme and host lower-cased, no trailing slash, no final /v1
    (a feed may quote ``https://x`` for the API a credential names as ``https://x/v1``)."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"
