"""Logging for every arbstr process: text for people, or one JSON object a line (``log_format = "json"``),
each line with the ``request_id`` and ``traceparent`` of the request being handled. Secrets are never passed to
the logger in the first place; as a second line of defence, bearer tokens are masked in every message."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from schemas.trace import REQUEST_ID, TRACEPARENT

_BEARER = re.compile(r"(?i)(bearer\s+|arb_|adm_|sk-)[A-Za-z0-9_\-\.]{6,}")


# Control characters in a message (a path's %0a, a model name's ESC) would let a client write lines of its own into
# a text log, or send escapes to the terminal reading it. Tabs stay; a traceback keeps its own lines.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")


def _mask(text: str) -> str:
    return _BEARER.sub(lambda m: m.group(1) + "[redacted]", text)


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        record.traceparent = TRACEPARENT.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _mask(record.getMessage()),
        }
        for key in ("request_id", "traceparent"):
            value = getattr(record, key, "")
            if value:
                out[key] = value
        if record.exc_info:
            out["exc"] = _mask(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", "")
        record.rid = f" [{rid}]" if rid else ""
        return _mask(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escape(record.message)  # the message only: the traceback appended after keeps its lines
        return super().formatMessage(record)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         TextFormatter("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
