"""Metrics parse with the Prometheus parser; a request's traceparent reaches its logs and its upstream call."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from typing import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from arbstr.logs import ContextFilter, JsonFormatter, TextFormatter
from schemas.money import cost_msat
from tests.support.stack import Stack, demo_config, start_stack

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
async def stack(nats_url: str, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(demo_config(mock_upstream), nats_url)
    yield s
    await s.stop()


@contextlib.contextmanager
def captured_logs(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """Every log line of the block (INFO and up), formatted as the process would write it."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def test_metrics_count_requests_cost_and_overhead(http: aiohttp.ClientSession, stack: Stack) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "metrics"}],
                              "max_tokens": 7})
    body = await r.json()
    assert r.status == 200
    cost = int(r.headers["x-arbstr-cost-msat"])
    assert cost == cost_msat(body["usage"]["prompt_tokens"], 7, 8000, 8000)
    r = await http.get(f"{stack.url}/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    s = samples(await r.text())
    ok = [x for x in s["arbstr_requests_total"] if x.labels["status"] == "200"
          and x.labels["route"] == "/v1/chat/completions"]
    assert ok and ok[0].value >= 1
    spent = [x for x in s["arbstr_spent_msat_total"] if x.labels == {"provider": "alpha", "model": "gpt-4o-mini"}]
    assert spent and spent[0].value >= cost
    assert any(x.labels["outcome"] == "ok" for x in s["arbstr_upstream_attempts_total"])
    assert s["arbstr_overhead_seconds_count"][0].value >= 1
    assert "arbstr_request_seconds_bucket" in s


async def test_traceparent_is_kept_returned_sent_upstream_and_logged(http: aiohttp.ClientSession, stack: Stack,
                                                                     mock_upstream: str) -> None:
    with captured_logs(JsonFormatter()) as buf:
        r = await http.post(f"{stack.url}/v1/chat/completions",
                            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "trace me"}]},
                            headers={"traceparent": TRACE, "X-Request-Id": "trace-req-1"})
        assert r.status == 200
    assert r.headers["traceparent"] == TRACE
    stats = await (await http.get(f"{mock_upstream}/_mock/alpha/stats")).json()
    assert stats["last_headers"].get("traceparent") == TRACE
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    mine = [line for line in lines if line.get("request_id") == "trace-req-1"]
    assert mine and all(line["traceparent"] == TRACE for line in mine)


async def test_a_new_trace_starts_when_the_client_sends_none(http: aiohttp.ClientSession, stack: Stack) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
                        headers={"traceparent": "garbage"})
    assert r.status == 200
    tp = r.headers["traceparent"]
    assert tp != "garbage" and len(tp.split("-")) == 4 and tp.startswith("00-")


async def test_client_bytes_cannot_forge_or_break_text_log_lines(http: aiohttp.ClientSession, stack: Stack) -> None:
    # The access line logs the path as decoded: %0a became a real newline, so a client could write a line of its
    # choosing into the text log ("... INFO arbstr.access: POST /v1/admin/... 200"), and %00 a NUL byte.
    with captured_logs(TextFormatter("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")) as buf:
        r = await http.get(f"{stack.url}/v1/nothing%0d%0a2026-01-01 00:00:00,000 INFO arbstr.access: FORGED%00%1b[2J",
                           headers={"X-Request-Id": "forge-1"})
        assert r.status == 404
    text = buf.getvalue()
    assert "forge-1" in text  # the access line was written...
    forged = [line for line in text.splitlines() if "FORGED" in line]
    assert forged and all("[forge-1]" in line for line in forged), text  # ...as one line, the request's own
    assert not any(c in text for c in "\x00\x1b\r"), repr(text)


def test_a_traceback_keeps_its_lines() -> None:
    fmt = TextFormatter("%(levelname)s %(name)s%(rid)s: %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("a\nb",), sys.exc_info())
    out = fmt.format(record)
    assert out.startswith("ERROR x: failed: a\\nb\n"), out  # the message escaped, the traceback on its lines
    assert "\nValueError: boom" in out, out
