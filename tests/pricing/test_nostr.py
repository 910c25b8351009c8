"""Routstr nodes on Nostr: event verification and folding (pure), the relay client against real local relays
(the nostr-relay package), and the /v1/models parser on a routstr-core-shaped body."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import time
from typing import Any, Iterator

import aiohttp
import pytest

from actors.pricing.announcements import NodeAnnouncement, fold_announcements, openai_base_url, verify_event
from actors.pricing.nostr import RelayError, fetch_announcements
from actors.pricing.routstr import ModelPrice, parse_models, sats_per_token_to_rate
from tests.support.nostr_relay import NostrRelay, Signer, publish_all, running_relay

NOW = 1_750_000_000


@pytest.fixture(scope="module")
def nostr_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "nostr-relay-a")


@pytest.fixture(scope="module")
def nostr_relay_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "nostr-relay-b")


def mine(nodes: list[NodeAnnouncement], *signers: Signer) -> list[NodeAnnouncement]:
    """The nodes of these test identities only: the relays are shared by the tests of this module."""
    keys = {s.pubkey for s in signers}
    return [n for n in nodes if n.pubkey in keys]


# --- verification (pure) -----------------------------------------------------------------------------------

# Independently signed events published in the README of fiatjaf/nak (a Go implementation): our NIP-01
# serialisation and BIP-340 check must agree with the ecosystem's, not only with our own signer.
NAK_EVENTS = [
    {"id": "53443506e7d09e55b922a2369b80f926007a8a8a8ea5f09df1db59fe1993335e",
     "pubkey": "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798", "created_at": 1698632644,
     "kind": 1, "tags": [], "content": "hello from the nostr army knife",
     "sig": "4bdb609c975b2b61338c2ff4c7ce91d4afe74bea4ed1601a62e1fd125bd4c0ae6e0166cca96e5cfb7e0f50583eb6a0dd0b66"
            "072566299b6007742db56278010c"},
    {"id": "e20978737ab7cd36eca300a65f11738176123f2e0c23054544b18fe493e2aa1a",
     "pubkey": "c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5", "created_at": 1698632753,
     "kind": 1, "tags": [["t", "gm"]], "content": "good morning",
     "sig": "5687c1a97066c349cb3bde0c0719fd1652a13403ba6aca7557b646307ee6718528cd86989db08bf6a7fd04bea0b0b87c1dd1"
            "b78c2d21b80b80eebab7f40b8916"},
]


def test_verify_accepts_events_signed_elsewhere() -> None:
    for ev in NAK_EVENTS:
        assert verify_event(ev)


def test_verify_rejects_any_tampering() -> None:
    ev = Signer("tamper").announcement("n", "https://node.example", created_at=NOW)
    assert verify_event(ev)
    tampered: list[dict[str, Any]] = []
    for field, value in [("content", "{}"), ("created_at", NOW + 1), ("tags", [["d", "n"], ["u", "https://evil"]]),
                         ("kind", 30000), ("pubkey", Signer("other").pubkey)]:
        bad = copy.deepcopy(ev)
        bad[field] = value
        tampered.append(bad)
    flipped = copy.deepcopy(ev)
    flipped["sig"] = ("0" if ev["sig"][0] != "0" else "1") + ev["sig"][1:]
    tampered.append(flipped)
    # A forged id with the signature of the real id: the relay in tests/support/nostr_relay.py would even store it.
    forged = copy.deepcopy(ev)
    forged["id"] = "0" * 64
    tampered.append(forged)
    tampered.extend([dict(ev, id=ev["id"].upper()), dict(ev, created_at=True), dict(ev, created_at=float(NOW)),
                     dict(ev, tags=[["d", 1]]), dict(ev, tags=[[]]), dict(ev, sig=ev["sig"][:-2]),
                     {k: v for k, v in ev.items() if k != "content"}, "not an event", None])  # type: ignore[list-item]
    for bad in tampered:
        assert not verify_event(bad), bad


# --- URL mapping and folding (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize("announced,base", [
    ("https://api.node.example", "https://api.node.example/v1"),
    ("https://api.node.example/", "https://api.node.example/v1"),
    ("https://API.Node.example:8443//", "https://api.node.example:8443/v1"),
    ("https://node.example/v1/", "https://node.example/v1"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("https://node.example/routstr", "https://node.example/routstr/v1"),
    ("http://[::1]:9000", "http://[::1]:9000/v1"),
    ("  https://node.example  ", "https://node.example/v1"),
    ("http://abcdefghij.onion", None),
    ("wss://node.example", None),
    ("node.example", None),
    ("https://user:secret@node.example", None),
    ("https://node.example/?key=1", None),
    ("https://node.example/#x", None),
    ("https://node.example:99999", None),
    ("", None),
])
def test_announced_url_maps_to_openai_base(announced: str, base: str | None) -> None:
    assert openai_base_url(announced) == base


def test_announcement_fields_follow_routstr_tags() -> None:
    s = Signer("fields")
    ev = s.announcement("prov-1", "https://node.example/", extra_urls=("http://xyz.onion",),
                        mints=("https://mint.one/", "https://mint.two", "https://mint.one", "not a url"),
                        version="0.1.3", created_at=NOW, expiration=NOW + 60)
    [node] = fold_announcements([ev], now=NOW)
    assert node == NodeAnnouncement(event_id=ev["id"], pubkey=s.pubkey, d="prov-1", url="https://node.example/v1",
                                    mints=("https://mint.one", "https://mint.two"), version="0.1.3",
                                    created_at=NOW, expires_at=NOW + 60)
    # The onion URL comes first here: the clearnet one is still found and used.
    onion_first = s.sign(38421, [["d", "x"], ["u", "http://xyz.onion"], ["u", "https://clear.example"]],
                         created_at=NOW)
    assert [n.url for n in fold_announcements([onion_first], now=NOW)] == ["https://clear.example/v1"]
    no_d = s.sign(38421, [["u", "https://nod.example"]], created_at=NOW)
    assert [(n.d, n.version, n.mints) for n in fold_announcements([no_d], now=NOW)] == [("", "", ())]


def test_newest_version_per_coordinate_wins() -> None:
    s = Signer("fold-newest")
    old = s.announcement("a", "https://old.example", created_at=NOW - 10)
    new = s.announcement("a", "https://new.example", created_at=NOW)
    other_d = s.announcement("b", "https://b.example", created_at=NOW - 20)
    for order in ([old, new, other_d], [new, other_d, old], [other_d, old, new, new, old]):
        assert [(n.d, n.url) for n in fold_announcements(order, now=NOW)] == [
            ("a", "https://new.example/v1"), ("b", "https://b.example/v1")]
    # Same created_at: the lowest id wins (NIP-01), whatever the order.
    twins = [s.announcement("t", f"https://twin{i}.example", created_at=NOW) for i in range(4)]
    lowest = min(twins, key=lambda e: e["id"])
    for order in (twins, twins[::-1]):
        assert [n.event_id for n in fold_announcements(order, now=NOW)] == [lowest["id"]]
    # A newest version without a usable URL retires the node: the version it replaced does not come back.
    onion_only = s.announcement("a", "http://abc.onion", created_at=NOW + 5)
    assert [n.d for n in fold_announcements([old, new, onion_only], now=NOW + 5)] == []


def test_deletions_by_id_and_coordinate() -> None:
    s, mallory = Signer("fold-del"), Signer("fold-mallory")
    ann = s.announcement("a", "https://a.example", created_at=NOW - 100)
    assert fold_announcements([ann, s.deletion(event_ids=(ann["id"],), created_at=NOW)], now=NOW) == []
    # Deletions by anyone but the author count for nothing.
    fake_e = mallory.deletion(event_ids=(ann["id"],), created_at=NOW)
    fake_a = mallory.sign(5, [["a", f"38421:{s.pubkey}:a"]], created_at=NOW)
    assert len(fold_announcements([ann, fake_e, fake_a], now=NOW)) == 1
    # ``a`` deletes every version up to its own created_at; a later re-announcement stands.
    by_coord = s.deletion(d_tags=("a",), created_at=NOW - 50)
    assert fold_announcements([ann, by_coord], now=NOW) == []
    again = s.announcement("a", "https://a2.example", created_at=NOW - 10)
    assert [n.url for n in fold_announcements([ann, by_coord, again], now=NOW)] == ["https://a2.example/v1"]
    # A deletion of the node's older version leaves the current one alone; an ``a`` of another d too.
    assert len(fold_announcements([ann, again, s.deletion(event_ids=(ann["id"],), created_at=NOW),
                                   s.deletion(d_tags=("other",), created_at=NOW)], now=NOW)) == 1
    # A d containing colons still matches its coordinate.
    colon = s.announcement("x:y:z", "https://c.example", created_at=NOW - 5)
    assert fold_announcements([colon, s.deletion(d_tags=("x:y:z",), created_at=NOW)], now=NOW) == []


def test_expiration() -> None:
    s = Signer("fold-exp")
    live = s.announcement("live", "https://l.example", created_at=NOW - 10, expiration=NOW + 1)
    dead = s.announcement("dead", "https://d.example", created_at=NOW - 10, expiration=NOW)
    garbled = s.sign(38421, [["d", "g"], ["u", "https://g.example"], ["expiration", "soon"]], created_at=NOW)
    assert [n.d for n in fold_announcements([live, dead, garbled], now=NOW)] == ["live"]
    assert fold_announcements([live], now=NOW + 1) == []


def test_invalid_events_are_dropped_before_folding() -> None:
    s = Signer("fold-invalid")
    good = s.announcement("a", "https://good.example", created_at=NOW - 10)
    # A newer, forged version must not replace (or hide) the genuine one.
    forged = s.announcement("a", "https://evil.example", created_at=NOW)
    forged["sig"] = good["sig"]
    assert [n.url for n in fold_announcements([good, forged, {"kind": 38421}, 42], now=NOW)] == [
        "https://good.example/v1"]


# --- the client against real relays --------------------------------------------------------------------------

async def test_published_announcements_are_fetched(nostr_relay: NostrRelay, http: aiohttp.ClientSession) -> None:
    a, b = Signer("relay-a"), Signer("relay-b")
    ev_a = a.announcement("node-a", "http://127.0.0.1:9/", mints=("http://127.0.0.1:3338",), version="0.2.0")
    ev_b = b.announcement("node-b", "https://b.example", extra_urls=("http://b.onion",))
    await publish_all(http, nostr_relay.url, ev_a, ev_b)
    nodes = mine(await fetch_announcements(http, [nostr_relay.url], timeout_s=5.0), a, b)
    assert {n.d: (n.event_id, n.pubkey, n.url, n.mints, n.version, n.expires_at) for n in nodes} == {
        "node-a": (ev_a["id"], a.pubkey, "http://127.0.0.1:9/v1", ("http://127.0.0.1:3338",), "0.2.0", None),
        "node-b": (ev_b["id"], b.pubkey, "https://b.example/v1", ("https://mint.example",), "0.2.1", None),
    }


async def test_newer_replacement_wins(nostr_relay: NostrRelay, http: aiohttp.ClientSession) -> None:
    s = Signer("relay-replace")
    now = int(time.time())
    first = s.announcement("n", "https://v1.example", created_at=now - 30)
    second = s.announcement("n", "https://v2.example", created_at=now - 20)
    # Published after the newer one: this relay stores it (it only replaces OLDER versions), the client must
    # still pick the newest.
    late_old = s.announcement("n", "https://stale.example", created_at=now - 25)
    await publish_all(http, nostr_relay.url, first, second, late_old)
    nodes = mine(await fetch_announcements(http, [nostr_relay.url]), s)
    assert [(n.url, n.event_id) for n in nodes] == [("https://v2.example/v1", second["id"])]


async def test_deletion_removes(nostr_relay: NostrRelay, http: aiohttp.ClientSession) -> None:
    s = Signer("relay-delete")
    now = int(time.time())
    by_id = s.announcement("by-id", "https://x.example", created_at=now - 10)
    by_coord = s.announcement("by-coord", "https://y.example", created_at=now - 10)
    kept = s.announcement("kept", "https://z.example", created_at=now - 10)
    await publish_all(http, nostr_relay.url, by_id, by_coord, kept)
    assert len(mine(await fetch_announcements(http, [nostr_relay.url]), s)) == 3
    # This relay removes ``e`` targets itself but keeps ``a`` targets: the client applies both.
    await publish_all(http, nostr_relay.url, s.deletion(event_ids=(by_id["id"],), created_at=now - 5),
                      s.deletion(d_tags=("by-coord",), created_at=now - 5))
    assert [n.d for n in mine(await fetch_announcements(http, [nostr_relay.url]), s)] == ["kept"]


async def test_expired_announcement_removed(nostr_relay: NostrRelay, http: aiohttp.ClientSession) -> None:
    s = Signer("relay-expire")
    now = int(time.time())
    await publish_all(http, nostr_relay.url,
                      s.announcement("gone", "https://g.example", created_at=now - 60, expiration=now - 1),
                      s.announcement("live", "https://l.example", created_at=now - 60, expiration=now + 3600))
    assert [(n.d, n.expires_at) for n in mine(await fetch_announcements(http, [nostr_relay.url]), s)] == [
        ("live", now + 3600)]


async def test_bad_signature_ignored(nostr_relay: NostrRelay, http: aiohttp.ClientSession) -> None:
    s, victim = Signer("relay-badsig"), Signer("relay-victim")
    good = s.announcement("good", "https://good.example")
    bad_sig = s.announcement("bad", "https://bad.example")
    bad_sig["sig"] = good["sig"]
    # Someone else's key claimed with a signature of our own: the relay under test does not check, we do.
    impersonation = s.announcement("imp", "https://imp.example")
    impersonation["pubkey"] = victim.pubkey
    await publish_all(http, nostr_relay.url, good, bad_sig, impersonation)
    nodes = mine(await fetch_announcements(http, [nostr_relay.url]), s, victim)
    assert [n.d for n in nodes] == ["good"]


async def test_two_relays_merged(nostr_relay: NostrRelay, nostr_relay_b: NostrRelay,
                                 http: aiohttp.ClientSession) -> None:
    s = Signer("relay-merge")
    now = int(time.time())
    only_a = s.announcement("only-a", "https://a.example", created_at=now - 30)
    only_b = s.announcement("only-b", "https://b.example", created_at=now - 30)
    old_on_a = s.announcement("both", "https://old.example", created_at=now - 30)
    new_on_b = s.announcement("both", "https://new.example", created_at=now - 20)
    retired = s.announcement("retired", "https://r.example", created_at=now - 30)
    await publish_all(http, nostr_relay.url, only_a, old_on_a, retired)
    await publish_all(http, nostr_relay_b.url, only_b, new_on_b,
                      # The deletion reached relay b only; relay a still serves the announcement.
                      s.deletion(event_ids=(retired["id"],), created_at=now - 10))
    nodes = mine(await fetch_announcements(http, [nostr_relay.url, nostr_relay_b.url]), s)
    assert [(n.d, n.url) for n in nodes] == [("both", "https://new.example/v1"), ("only-a", "https://a.example/v1"),
                                             ("only-b", "https://b.example/v1")]


async def test_dead_and_silent_relays_skipped(nostr_relay: NostrRelay, http: aiohttp.ClientSession,
                                             caplog: pytest.LogCaptureFixture) -> None:
    s = Signer("relay-dead")
    await publish_all(http, nostr_relay.url, s.announcement("n", "https://n.example"))
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        refused = f"ws://127.0.0.1:{probe.getsockname()[1]}"

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never answers the websocket handshake; ends when the client gives up
        writer.close()
    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    silent_url = f"ws://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        caplog.set_level(logging.WARNING, logger="arbstr.pricing.nostr")
        started = time.monotonic()
        nodes = await fetch_announcements(http, [refused, nostr_relay.url, silent_url, "https://not-a-relay",
                                                 "ws://[malformed"], timeout_s=1.0)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert [n.d for n in mine(nodes, s)] == ["n"]
    assert elapsed < 2.5, elapsed
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4, skipped
    assert all(url in " ".join(skipped) for url in (refused, silent_url))
    # No relay answering is not "no nodes": the caller must keep what it last read rather than drop every node.
    with pytest.raises(RelayError, match="no relay answered"):
        await fetch_announcements(http, [refused], timeout_s=1.0)
    assert await fetch_announcements(http, [], timeout_s=1.0) == []


# --- /v1/models ----------------------------------------------------------------------------------------------

def _routstr_model(model_id: str, sats: dict[str, Any] | None, context_length: Any = 128000,
                   top_context: Any = None) -> dict[str, Any]:
    """One entry shaped as routstr-core's Model (payment/models.py) serialises it."""
    usd = {"prompt": 3e-07, "completion": 2.5e-06, "request": 0.0, "image": 0.0, "web_search": 0.0,
           "internal_reasoning": 0.0, "input_cache_read": 7.5e-08, "input_cache_write": 3.8e-07,
           "max_prompt_cost": 0.04, "max_completion_cost": 0.16, "max_cost": 0.2}
    return {
        "id": model_id, "name": model_id.title(), "created": 1750172488, "description": "a model",
        "context_length": context_length,
        "architecture": {"modality": "text->text", "input_modalities": ["text"], "output_modalities": ["text"],
                         "tokenizer": "GPT", "instruct_type": None},
        "pricing": usd, "sats_pricing": sats, "per_request_limits": None,
        "top_provider": {"context_length": top_context, "max_completion_tokens": 65535, "is_moderated": False},
        "enabled": True, "upstream_provider_id": 1, "canonical_slug": model_id, "alias_ids": None,
        "forwarded_model_id": None,
    }


def _sats(prompt: Any, completion: Any) -> dict[str, Any]:
    return {"prompt": prompt, "completion": completion, "request": 0.001, "image": 0.0, "web_search": 0.0,
            "internal_reasoning": 0.0, "input_cache_read": 0.0, "input_cache_write": 0.0,
            "max_prompt_cost": 40.5, "max_completion_cost": 163.2, "max_cost": 203.7}


def test_parse_models_real_shape() -> None:
    body = {"data": [
        _routstr_model("openai/gpt-4o-mini", _sats(0.000123, 0.00042)),
        _routstr_model("tiny", _sats(3e-07, 2.5e-06), context_length=0, top_context=1048576),
        _routstr_model("usd-only", None),
        _routstr_model("strings", _sats("0.0000003", "0.0000025"), context_length=None),
        _routstr_model("negative", _sats(-0.1, 0.2)),
        _routstr_model("nan", _sats(float("nan"), 0.2)),
        _routstr_model("missing", {"completion": 0.1}),
        _routstr_model("free", _sats(0, 0.0)),
        _routstr_model("dup", _sats(0.000010, 0.000050)),
        _routstr_model("dup", _sats(0.000020, 0.000030), context_length=8192),
        {"name": "no id"}, "junk",
    ]}
    assert parse_models(body) == [
        ModelPrice("openai/gpt-4o-mini", 123, 420, 128000),
        ModelPrice("tiny", 1, 3, 1048576),  # 0.3 and 2.5 sats per 1M, rounded up
        ModelPrice("strings", 1, 3, None),
        ModelPrice("free", 0, 0, 128000),
        ModelPrice("dup", 20, 50, 128000),  # listed twice: the higher of each rate
    ]
    assert parse_models({"data": []}) == []
    for not_a_listing in [{}, {"data": {}}, {"models": []}, [], None]:
        with pytest.raises(ValueError):
            parse_models(not_a_listing)  # type: ignore[arg-type]


def test_rates_round_up_exactly() -> None:
    # 0.000123 * 1e6 is 123.00000000000001 in floats: an exact 123 must not become 124.
    assert sats_per_token_to_rate(0.000123) == 123
    assert sats_per_token_to_rate(0.0001231) == 124
    assert sats_per_token_to_rate(1e-12) == 1
    assert [sats_per_token_to_rate(v) for v in (True, "x", "inf", "-0.1", [], "1e999999999")] == [None] * 6
