"""Routstr node announcements on Nostr, as pure rules: which events are valid, what they say, which nodes are current.

A Routstr node announces itself with a kind 38421 event (NIP-91 draft, as routstr-core publishes it): tags
``d`` (provider id), one ``u`` per endpoint (the node's root URL: its clearnet URL first, then its onion URL),
``mint`` per accepted Cashu mint, ``version``; the content is JSON metadata (``name``, ``about``) that arbstr does
not need. The announced URL is the node's root: Routstr serves ``/v1/models`` and ``/v1/chat/completions`` under
it, so the OpenAI base URL arbstr uses is ``<root>/v1`` (a root already ending in ``/v1`` is kept as it is).

Everything a relay returns is untrusted: each event's id and BIP-340 signature are checked here, whatever the
relay claims to have verified. The folding rules (newest per coordinate, NIP-09 deletions, NIP-40 expiration)
take plain dicts and the time, so they are tested without a relay; the relay client is ``nostr.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from coincurve import PublicKeyXOnly

log = logging.getLogger("arbstr.pricing.nostr")

ANNOUNCEMENT_KIND = 38421
DELETION_KIND = 5
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
