"""Routstr nodes announced on Nostr: a read-only NIP-01 client and the pure rules that turn events into nodes.

A Routstr node announces itself with a kind 38421 event (NIP-91 draft, as routstr-core publishes it): tags
``d`` (provider id), one ``u`` per endpoint (the node's root URL: its clearnet URL first, then its onion URL),
``mint`` per accepted Cashu mint, ``version``; the content is JSON metadata (``name``, ``about``) that arbstr does
not need. The announced URL is the node's root: Routstr serves ``/v1/models`` and ``/v1/chat/completions`` under
it, so the OpenAI base URL arbstr uses is ``<root>/v1`` (a root already ending in ``/v1`` is kept as it is).

Everything a relay returns is untrusted: each event's id and BIP-340 signature are checked here, whatever the
relay claims to have verified. The folding rules (newest per coordinate, NIP-09 deletions, NIP-40 expiration)
are pure functions over plain dicts so they are tested without a relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

import aiohttp
from coincurve import PublicKeyXOnly

log = logging.getLogger("arbstr.pricing.nostr")

ANNOUNCEMENT_KIND = 38421
DELETION_KIND = 5
# What one REQ asks a relay for; a relay may cap it lower. Routstr's own discovery asks for 100-1000.
QUERY_LIMIT = 1000
# Memory stays bounded whatever a relay sends: past this many events per subscription the rest are ignored,
# and a message over MAX_MESSAGE_BYTES breaks the connection (that relay is skipped). A Routstr announcement is
# well under 1 KiB; nostr-relay itself caps content at 4 KiB.
MAX_EVENTS_PER_QUERY = 2000
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class NodeAnnouncement:
    """The current announcement of one Routstr node (one ``(pubkey, d)`` coordinate).

    ``url`` is the OpenAI base URL (announced root + ``/v1``), not the announced string itself.
    """

    event_id: str
    pubkey: str
    d: str
    url: str
    mints: tuple[str, ...]
    version: str
    created_at: int
    expires_at: Optional[int]


# ---------------------------------------------------------------------------------------------------------------
# Pure core: event validation, tag parsing, folding into the current set.
# ---------------------------------------------------------------------------------------------------------------


def _is_hex(value: object, length: int) -> bool:
    # NIP-01 ids, pubkeys and signatures are lowercase hex of a fixed length.
    return (isinstance(value, str) and len(value) == length
            and all(c in "0123456789abcdef" for c in value))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(ev: object) -> bool:
    if not isinstance(ev, dict):
        return False
    tags = ev.get("tags")
    return (_is_hex(ev.get("id"), 64) and _is_hex(ev.get("pubkey"), 64) and _is_hex(ev.get("sig"), 128)
            and _is_int(ev.get("created_at")) and ev["created_at"] >= 0
            and _is_int(ev.get("kind")) and 0 <= ev["kind"] <= 65535
            and isinstance(ev.get("content"), str)
            and isinstance(tags, list)
            and all(isinstance(t, list) and t and all(isinstance(x, str) for x in t) for t in tags))


def serialize_event(ev: dict[str, Any]) -> bytes:
    """NIP-01 serialisation: ``[0,pubkey,created_at,kind,tags,content]``, compact UTF-8 JSON.

    ``ensure_ascii=False`` keeps non-ASCII text verbatim as NIP-01 requires; control characters come out as
    JSON escapes exactly as JavaScript's JSON.stringify (what most signers use) writes them.
    """
    data = [0, ev["pubkey"], ev["created_at"], ev["kind"], ev["tags"], ev["content"]]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_event_id(ev: dict[str, Any]) -> str:
    return hashlib.sha256(serialize_event(ev)).hexdigest()


def verify_event(ev: object) -> bool:
    """True only for a well-formed event whose id is the hash of its content and whose signature is valid."""
    if not _well_formed(ev):
        return False
    assert isinstance(ev, dict)
    try:
        if compute_event_id(ev) != ev["id"]:
            return False
        key = PublicKeyXOnly(bytes.fromhex(ev["pubkey"]))
        return bool(key.verify(bytes.fromhex(ev["sig"]), bytes.fromhex(ev["id"])))
    except (ValueError, TypeError, UnicodeEncodeError):
        # Not a point on the curve, a lone surrogate in the text, ...: not a valid event either way.
        return False


def _first_tag(ev: dict[str, Any], name: str) -> Optional[str]:
    for tag in ev["tags"]:
        if tag[0] == name:
            return tag[1] if len(tag) > 1 else ""
    return None


def _tag_values(ev: dict[str, Any], name: str) -> list[str]:
    return [tag[1] for tag in ev["tags"] if tag[0] == name and len(tag) > 1]


def d_tag(ev: dict[str, Any]) -> str:
    """The ``d`` identifier; NIP-01 treats a missing or empty ``d`` as ``""``."""
    return _first_tag(ev, "d") or ""


def openai_base_url(announced: str) -> Optional[str]:
    """Map an announced ``u`` URL to the OpenAI base URL, or None when arbstr cannot or must not use it.

    http(s) only, with a host; no credentials, query or fragment (they would end up in logs and requests);
    no ``.onion`` host (arbstr has no Tor). Trailing slashes go; ``/v1`` is appended unless already there.
    """
    try:
        parts = urlsplit(announced.strip())
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.query or parts.fragment or host.endswith(".onion"):
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path = f"{path}/v1"
    return f"{scheme}://{netloc}{path}"


def _mint_url(value: str) -> Optional[str]:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return value


def parse_announcement(ev: dict[str, Any]) -> Optional[NodeAnnouncement]:
    """A verified kind 38421 event as a NodeAnnouncement; None when it names no usable URL or its
    ``expiration`` tag is malformed (its lifetime unknown, it is not trusted to be current)."""
    if ev["kind"] != ANNOUNCEMENT_KIND:
        return None
    url = next((u for u in map(openai_base_url, _tag_values(ev, "u")) if u is not None), None)
    if url is None:
        return None
    expires_at: Optional[int] = None
    raw_expiration = _first_tag(ev, "expiration")
    if raw_expiration is not None:
        if not raw_expiration.strip().isdigit():
            return None
        expires_at = int(raw_expiration)
    mints = tuple(dict.fromkeys(m for m in map(_mint_url, _tag_values(ev, "mint")) if m is not None))
    return NodeAnnouncement(
        event_id=ev["id"], pubkey=ev["pubkey"], d=d_tag(ev), url=url, mints=mints,
        version=_first_tag(ev, "version") or "", created_at=ev["created_at"], expires_at=expires_at,
    )


def _deletions(events: Iterable[dict[str, Any]]) -> tuple[set[tuple[str, str]], dict[tuple[str, str], int]]:
    """NIP-09: ``e`` tags delete that id, ``a`` tags delete every version of that coordinate up to the
    deletion's created_at. Either counts only when signed by the author of what it deletes."""
    ids: set[tuple[str, str]] = set()
    coords: dict[tuple[str, str], int] = {}
    for ev in events:
        if ev["kind"] != DELETION_KIND:
            continue
        author = ev["pubkey"]
        for target in _tag_values(ev, "e"):
            ids.add((author, target))
        for coordinate in _tag_values(ev, "a"):
            kind, _, rest = coordinate.partition(":")
            pubkey, sep, d = rest.partition(":")
            if kind != str(ANNOUNCEMENT_KIND) or not sep or pubkey != author:
                continue
            coords[(author, d)] = max(coords.get((author, d), 0), ev["created_at"])
    return ids, coords


def fold_announcements(events: Iterable[object], now: int) -> list[NodeAnnouncement]:
    """The current set of nodes from raw events (any relay, any order, duplicates allowed).

    Invalid events are dropped first. Per ``(pubkey, d)`` the newest announcement wins (a tie goes to the
    lowest id, as NIP-01 says); if that one is deleted, expired or unusable the node is gone: an older version
    it replaced never comes back. Sorted by (pubkey, d) so every caller sees the same order.
    """
    valid: dict[str, dict[str, Any]] = {}
    for ev in events:
        if verify_event(ev):
            assert isinstance(ev, dict)
            valid.setdefault(ev["id"], ev)
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in valid.values():
        if ev["kind"] != ANNOUNCEMENT_KIND:
            continue
        key = (ev["pubkey"], d_tag(ev))
        held = newest.get(key)
        if held is None or (ev["created_at"], _neg_id(ev["id"])) > (held["created_at"], _neg_id(held["id"])):
            newest[key] = ev
    deleted_ids, deleted_coords = _deletions(valid.values())
    nodes: list[NodeAnnouncement] = []
    for key, ev in newest.items():
        if (ev["pubkey"], ev["id"]) in deleted_ids:
            continue
        if key in deleted_coords and ev["created_at"] <= deleted_coords[key]:
            continue
        node = parse_announcement(ev)
        if node is None:
            log.debug("nostr announcement %s skipped: no usable http(s) url or bad expiration", ev["id"])
            continue
        if node.expires_at is not None and node.expires_at <= now:
            continue
        nodes.append(node)
    nodes.sort(key=lambda n: (n.pubkey, n.d))
    return nodes


def _neg_id(event_id: str) -> int:
    # Larger is better in the comparison above, and the lowest id must win a created_at tie.
    return -int(event_id, 16)


# ---------------------------------------------------------------------------------------------------------------
# I/O: NIP-01 over aiohttp websockets.
# ---------------------------------------------------------------------------------------------------------------


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
