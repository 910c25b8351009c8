"""``arbstr providers``: every provider the gateway knows, its prices and sources, and why any cannot be
routed to (the gateway's ``GET /providers``); ``arbstr providers confirm NAME`` puts prices the guard holds in
force (admin token)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any, Optional

from .admin_cli import CliError, request as admin_request

COLUMNS = ("provider", "kind", "tier", "models", "in/out sats/1M", "source", "updated", "routable")


def fetch(url: str) -> dict[str, Any]:
    target = url.rstrip("/") + "/providers"
    try:
        with urllib.request.urlopen(urllib.request.Request(target, headers={"Accept": "application/json"}),
                                    timeout=30) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        raise CliError(f"GET /providers: HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise CliError(f"cannot reach the gateway at {url}: {e.reason}") from None


def _rates(p: dict[str, Any]) -> str:
    rates = p.get("model_rates") or {}
    if rates:  # market prices differ per model: show the range
        ins = [r["input_rate"] for r in rates.values()]
        outs = [r["output_rate"] for r in rates.values()]
        span = (lambda xs: str(min(xs)) if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}")
        return f"{span(ins)} / {span(outs)}"
    if p.get("input_rate") is None:
        return "?"
    return f"{p['input_rate']} / {p['output_rate']}"


def _when(ms: Optional[int]) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def render_table(doc: dict[str, Any]) -> str:
    """One line per provider, then its reasons (not routable) and notes, indented under it."""
    rows = [list(COLUMNS)]
    details: list[list[str]] = [[]]
    for p in doc.get("data", []):
        rows.append([p["name"], p.get("kind") or "", p.get("tier") or "", str(len(p.get("models") or [])),
                     _rates(p), p.get("source") or "", _when(p.get("updated_at_ms")),
                     "yes" if p.get("routable") else "NO"])
        details.append([f"not routable: {r}" for r in p.get("reasons") or []]
                       + [f"note: {n}" for n in p.get("notes") or []])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for row, extra in zip(rows, details):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        lines += [f"    - {text}" for text in extra]
    if not doc.get("prices_available", True):
        lines.append("(the pricing actor did not answer: prices unknown)")
    if not doc.get("breakers_available", True):
        lines.append("(the breaker actor did not answer: breaker states unknown)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "action", None) == "confirm":
            body = {"models": args.model} if args.model else None
            reply = admin_request(args, "POST", f"/v1/admin/prices/{urllib.parse.quote(args.provider)}/confirm",
                                  body)
            print(json.dumps(reply, indent=2))
            return 0
        doc = fetch(args.url)
    except CliError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.format == "json" else render_table(doc))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    url = os.environ.get("ARBSTR_URL", "http://127.0.0.1:8080")
    p = sub.add_parser("providers", help="providers, their prices and sources, and why any cannot be routed to")
    p.add_argument("--url", default=url, help="gateway base URL (env ARBSTR_URL)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    actions = p.add_subparsers(dest="action")
    c = actions.add_parser("confirm", help="put the prices the guard holds for a provider in force (admin)")
    c.add_argument("provider")
    c.add_argument("--model", action="append", help="only this model (repeatable); default: every held price")
    # SUPPRESS: a --url given before "confirm" stands (a subparser's default would overwrite it).
    c.add_argument("--url", default=argparse.SUPPRESS, help="gateway base URL (env ARBSTR_URL)")
    c.add_argument("--admin-token", help="admin token (else env ARBSTR_ADMIN_TOKEN, else --config's [vault] "
                                         "admin_token, else <data-dir>/admin-token)")
    c.add_argument("--config", help="arbstr.toml whose [vault] admin_token to use (after the environment)")
    c.add_argument("--data-dir", default="./arbstr-data")
    p.set_defaults(func=main)
