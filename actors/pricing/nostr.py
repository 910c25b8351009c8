"""Routstr nodes announced on Nostr: a read-only NIP-01 client over aiohttp websockets.

It asks each relay for the announcements (kind 38421) and then for their authors' deletions (kind 5), and hands
every event it got to the pure rules in ``announcements.py`` (signature checks, folding into the current set).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import aiohttp

from .announcements import ANNOUNCEMENT_KIND, DELETION_KIND, NodeAnnouncement, fold_announcements, verify_event

log = logging.getLogger("arbstr.pricing.nostr")

# What one REQ asks a relay for; a relay may cap it lower. Routstr's own discovery asks for 100-1000.
QUERY_LIMIT = 1000
# Memory stays bounded whatever a relay sends: past this many events per subscription the rest are ignored,
# and a message over MAX_MESSAGE_BYTES breaks the connection (that relay is skipped). A Routstr announcement is
# well under 1 KiB; nostr-relay itself caps content at 4 KiB.
MAX_EVENTS_PER_QUERY = 2000
MAX_MESSAGE_BYTES = 64 * 1024


class RelayError(Exception):
    """A relay that closed, refused (``CLOSED``) or broke the protocol: it is skipped, never fatal."""


def _relay_label(relay: str) -> str:
    # Only scheme://host:port reaches logs: a relay URL may carry an access token in its path or query.
    try:
        parts = urlsplit(relay)
    except ValueError:
        return "<malformed relay url>"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _reason(exc: BaseException) -> str:
    # Our own RelayError texts are safe to log; a library error's text may echo the URL, so only its type.
    return str(exc) if isinstance(exc, RelayError) else type(exc).__name__


async def _query(ws: aiohttp.ClientWebSocketResponse, filters: list[dict[str, Any]]) -> list[object]:
    """One subscription: REQ, collect EVENTs until EOSE, CLOSE."""
    sub_id = secrets.token_hex(8)
    await ws.send_str(json.dumps(["REQ", sub_id, *filters]))
    events: list[object] = []
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.ERROR):
                break
            continue
        try:
            data = json.loads(msg.data)
        except ValueError:
            continue
        if not isinstance(data, list) or len(data) < 2:
            continue
        if data[0] == "EVENT" and len(data) >= 3 and data[1] == sub_id:
            if len(events) < MAX_EVENTS_PER_QUERY:
                events.append(data[2])
        elif data[0] == "EOSE" and data[1] == sub_id:
            await ws.send_str(json.dumps(["CLOSE", sub_id]))
            return events
        elif data[0] == "CLOSED" and data[1] == sub_id:
            raise RelayError(f"subscription refused: {str(data[2] if len(data) > 2 else '')[:200]}")
        elif data[0] == "NOTICE":
            log.debug("nostr relay notice: %s", str(data[1])[:200])
    raise RelayError("connection closed before EOSE")


async def _open_and_list(session: aiohttp.ClientSession, relay: str, timeout_s: float
                         ) -> tuple[Optional[aiohttp.ClientWebSocketResponse], list[object]]:
    """Connect and list announcements; (None, []) for a relay that is down, slow or broken."""
    if _relay_label(relay).split("://", 1)[0] not in ("ws", "wss"):
        log.warning("nostr relay %s skipped: not a ws:// or wss:// URL", _relay_label(relay))
        return None, []
    ws: Optional[aiohttp.ClientWebSocketResponse] = None
    try:
        async with asyncio.timeout(timeout_s):
            ws = await session.ws_connect(relay, autoping=True, max_msg_size=MAX_MESSAGE_BYTES)
            events = await _query(ws, [{"kinds": [ANNOUNCEMENT_KIND], "limit": QUERY_LIMIT}])
        return ws, events
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, RelayError) as exc:
        log.warning("nostr relay %s skipped: %s", _relay_label(relay), _reason(exc))
        if ws is not None:
            await ws.close()
        return None, []


async def _list_deletions(ws: aiohttp.ClientWebSocketResponse, relay: str, authors: list[str],
                          timeout_s: float) -> list[object]:
    try:
        async with asyncio.timeout(timeout_s):
            return await _query(ws, [{"kinds": [DELETION_KIND], "authors": authors, "limit": QUERY_LIMIT}])
    except (aiohttp.ClientError, OSError, TimeoutError, RelayError) as exc:
        log.warning("nostr relay %s: deletions not read: %s", _relay_label(relay), _reason(exc))
        return []


async def fetch_announcements(session: aiohttp.ClientSession, relays: list[str], timeout_s: float = 5.0
                              ) -> list[NodeAnnouncement]:
    """The current Routstr nodes announced on ``relays`` (queried in parallel, results merged).

    Two rounds on one connection per relay, each bounded by ``timeout_s`` (so the call takes at most
    2·timeout_s): the announcements, then the deletions (kind 5) by every author seen on ANY relay — a relay
    that honoured a deletion no longer has the announcement, so it would not be asked about that author
    otherwise, and an unfiltered kind 5 query on a public relay returns everyone's deletions, truncated by
    the limit. A relay that is down, slow or broken is skipped with a log line; it never fails the call.
    """
    opened = await asyncio.gather(*(_open_and_list(session, relay, timeout_s) for relay in relays))
    sockets = [(relay, ws) for relay, (ws, _) in zip(relays, opened) if ws is not None]
    if relays and not sockets:
        # Not "no nodes": nothing was read. The caller keeps the nodes it last read instead of dropping them all.
        raise RelayError("no relay answered")
    try:
        events: list[object] = [ev for _, listed in opened for ev in listed]
        authors = sorted({ev["pubkey"] for ev in events
                          if isinstance(ev, dict) and ev.get("kind") == ANNOUNCEMENT_KIND and verify_event(ev)})
        if authors and sockets:
            deletions = await asyncio.gather(*(_list_deletions(ws, relay, authors, timeout_s)
                                               for relay, ws in sockets))
            events.extend(ev for listed in deletions for ev in listed)
    finally:
        await asyncio.gather(*(ws.close() for _, ws in sockets), return_exceptions=True)
    return fold_announcements(events, int(time.time()))
