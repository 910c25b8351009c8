"""``arbstr events``: print spend events from the ARBSTR_EVENTS stream as JSON lines (replay, then follow)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import nats
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from actors.runtime.connection import ENV_CREDS, credential_options
from schemas import subjects
from schemas.bus_permissions import OPERATOR


def nats_url(args: argparse.Namespace) -> str:
    if args.nats:
        return str(args.nats)
    saved = Path(args.data_dir) / "nats-url"
    return saved.read_text().strip() if saved.exists() else "nats://127.0.0.1:4222"


def start_time(since: Optional[str]) -> Optional[datetime]:
    if not since:
        return None
    if since.isdigit():
        return datetime.fromtimestamp(int(since) / 1000, tz=timezone.utc)
    t = datetime.fromisoformat(since.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def creds_path(args: argparse.Namespace) -> Optional[str]:
    """--creds, else $ARBSTR_NATS_CREDS, else the operator identity `arbstr up` made in the data dir."""
    if args.creds or os.environ.get(ENV_CREDS):
        return str(args.creds or os.environ[ENV_CREDS])
    saved = Path(args.data_dir) / "bus" / f"{OPERATOR}.nk"
    return str(saved) if saved.exists() else None


async def run(args: argparse.Namespace) -> int:
    nc = await nats.connect(nats_url(args), connect_timeout=5, max_reconnect_attempts=3,
                            **credential_options(OPERATOR, creds_path(args)))
    js = nc.jetstream()
    subject = subjects.spend(args.agent) if args.agent else subjects.SPEND_ALL
    since = start_time(args.since)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
                            opt_start_time=since)
    try:  # the newest event on the subject we print, not the stream's newest (it also holds request records)
        last = int((await js.get_last_msg(subjects.STREAM_EVENTS, subject)).seq or 0)
    except nats.js.errors.NotFoundError:
        last = 0
    if last == 0 and not args.follow:
        await nc.close()
        return 0
    sub = await js.subscribe(subject, ordered_consumer=True, stream=subjects.STREAM_EVENTS, config=config)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=None if args.follow else 1.0)
            except nats.errors.TimeoutError:
                break  # nothing more up to now
            sys.stdout.write(msg.data.decode() + "\n")
            sys.stdout.flush()
            if not args.follow and msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
        await nc.close()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("events", help="spend events as JSON lines: the history, then live with --follow")
    p.add_argument("--agent", help="one agent's events only")
    p.add_argument("--since", help="epoch ms or ISO 8601 (default: from the start of the stream)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--nats", help="NATS URL (default: the one `arbstr up` wrote to <data-dir>/nats-url)")
    p.add_argument("--creds", help="bus credential (default: $ARBSTR_NATS_CREDS, else <data-dir>/bus/operator.nk)")
    p.add_argument("--data-dir", default="./arbstr-data")
    p.set_defaults(func=lambda args: asyncio.run(run(args)))
