"""The live market's pure cores: listings, feed rows, the merge into one table, the price guard, and the
router's treatment of entries it may not choose. No I/O: state and ``now`` in, entries out."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from actors.runtime.netguard import private_host
from actors.pricing.feeds import FeedQuote, endpoint_key, parse_nodes, parse_quotes, parse_time_ms
from actors.pricing.guard import confirm, guard, jumped
from actors.pricing.listing import Listing, ListingError, parse_listing
from actors.pricing.market import DiscoveryState, FeedState, MarketState, Node, api_base, node_name
from actors.pricing.merge import build_table
from actors.router.rank import route
from schemas.config import Config, parse_config
from schemas.errors import ArbstrError
from schemas.pricing import ModelRate, ProviderPrices
from schemas.router import RouteRequest
from tests.support.market_servers import listing

NOW = 1_700_000_000_000
FEED = "http://feed.test"


def cfg(**market: Any) -> Config:
    return parse_config({
        "providers": [
            {"name": "alpha", "url": "http://alpha.test/v1", "models": ["m1", "m2"], "input_rate": 1000,
             "output_rate": 2000},
            {"name": "disco", "url": "http://disco.test/v1", "models": ["m1"], "input_rate": 500,
             "output_rate": 500, "discover": True},
            {"name": "freebie", "url": "http://free.test/v1", "models": ["m1"], "input_rate": 0,
             "output_rate": 0, "free": True, "discover": True},
        ],
        "market": {"feeds": [{"url": FEED, "max_age_s": 60, "reliability_floor": 0.5}], **market},
    })


def fq(endpoint: str, model: str, inp: int, out: int, age_s: float = 1, provider: str = "acme",
       pid: str = "acme-id") -> FeedQuote:
    return FeedQuote(source="routstr", provider=provider, provider_id=pid, model=model, input_rate=inp,
                     output_rate=out, endpoint=endpoint, observed_at_ms=int(NOW - age_s * 1000))


def feed_state(*quotes: FeedQuote, reliability: Optional[dict[str, float]] = None) -> MarketState:
    rel = reliability if reliability is not None else {q.provider_id: 0.9 for q in quotes}
    return MarketState(feeds={"feed.test": FeedState().succeeded(list(quotes), rel, NOW)})


def table(config: Config, state: MarketState, keyed: frozenset[str] = frozenset()) -> dict[str, ProviderPrices]:
    return {e.provider: e for e in build_table(config, state, keyed, NOW, NOW - 5000)}


# --- listings and feed rows ----------------------------------------------------------------------------------
def test_listing_prices_round_up_exactly_from_sats_or_usd() -> None:
    body = listing({"a": (0.00007, "0.0000031"), "b": None, "c": (1e-9, 0)})
    got = parse_listing(body)
    assert got.models == ("a", "b", "c")
    # 0.00007 sats/token is exactly 70 sats/1M (a float product would give 70.00000000000001 → 71).
    assert got.rates["a"] == ModelRate(input_rate=70, output_rate=4)
    assert "b" not in got.rates and got.rates["c"] == ModelRate(input_rate=1, output_rate=0)
    usd = listing({"x": ("0.000003", "0.000015")}, usd=True)
    assert parse_listing(usd).rates == {}  # no conversion rate configured: USD prices are not guessed
    assert parse_listing(usd, sats_per_usd=1000).rates["x"] == ModelRate(input_rate=3000, output_rate=15000)
    for bad in ({"data": []}, {"models": ["a"]}, [], {"data": [{"id": ""}, 5]}):
        with pytest.raises(ListingError):
            parse_listing(bad)
    assert parse_listing({"data": [{"id": "a", "sats_pricing": {"prompt": -1, "completion": 1}}]}).rates == {}


def test_feed_rows_times_and_reliabilities() -> None:
    rows = [
        {"source": "s", "provider": "p", "provider_id": "i", "model": "m", "price_in_sats": 10.2,
         "price_out_sats": "20", "endpoint": "https://x.test/v1/", "observed_at": "2023-11-14T22:13:20Z"},
        {"model": "m", "price_in_sats": 1, "price_out_sats": 1, "endpoint": "ftp://x", "observed_at": 1},
        {"model": "m", "price_in_sats": "n/a", "price_out_sats": 1, "endpoint": "http://y", "observed_at": 1},
        "junk",
    ]
    (q,) = parse_quotes({"quotes": rows})
    assert (q.input_rate, q.output_rate, q.endpoint, q.observed_at_ms) == (11, 20, "https://x.test/v1", NOW)
    assert parse_time_ms(1_700_000_000) == NOW == parse_time_ms(NOW) == parse_time_ms(str(NOW))
    assert parse_time_ms("2023-11-14T22:13:20") == NOW and parse_time_ms("soon") is None
    assert parse_nodes([{"provider_id": "a", "reliability": 0.25}, {"provider_id": "b", "reliability": 97},
                        {"provider_id": "c", "reliability": True}]) == {"a": 0.25, "b": 0.97}
    with pytest.raises(ValueError):
        parse_quotes({"nothing": 1})
    assert endpoint_key("HTTPS://X.test/v1/") == endpoint_key("https://x.test") == "https://x.test"


# --- the merge -----------------------------------------------------------------------------------------------
def test_a_fresh_quote_overlays_a_configured_endpoint_and_a_stale_or_unreliable_one_does_not() -> None:
    config = cfg()
    t = table(config, feed_state(fq("http://alpha.test", "m1", 300, 400), fq("http://alpha.test/v1", "m9", 1, 1)))
    alpha = t["alpha"]
    assert alpha.rates_for("m1") == ModelRate(input_rate=300, output_rate=400)
    assert alpha.rates_for("m2") == ModelRate(input_rate=1000, output_rate=2000)  # configured rate stays
    assert alpha.models == ["m1", "m2"]  # a feed never adds models to a configured provider
    assert alpha.source == "config+feed:feed.test" and alpha.sources[1].observed_at_ms == NOW - 1000
    assert alpha.routable and "acme" not in t  # the quote belonged to alpha: no new endpoint

    stale = table(config, feed_state(fq("http://alpha.test/v1", "m1", 300, 400, age_s=61)))["alpha"]
    assert stale.rates_for("m1").input_rate == 1000 and stale.source == "config"
    assert stale.routable and stale.notes == ["stale quotes: the newest was observed at 2023-11-14T22:12:19Z "
                                              "(max_age_s 60)"]

    low = table(config, feed_state(fq("http://alpha.test/v1", "m1", 300, 400), reliability={"acme-id": 0.4}))
    assert low["alpha"].rates_for("m1").input_rate == 1000
    assert low["alpha"].notes == ["low reliability: 0.40 < reliability_floor 0.50; its quotes are skipped"]


def test_a_new_endpoint_needs_a_credential_and_fresh_reliable_nonzero_quotes() -> None:
    q = [fq("http://new.test/v1", "m1", 100, 200), fq("http://new.test/v1", "m2", 300, 400)]
    t = table(cfg(), feed_state(*q))
    acme = t["acme"]
    assert not acme.routable and acme.reasons == ["no credential: no [[market.credentials]] entry for "
                                                  "http://new.test/v1"]
    assert acme.kind == "feed" and acme.models == ["m1", "m2"] and acme.url == "http://new.test/v1"

    creds = cfg(credentials=[{"url": "http://NEW.test/v1/", "api_key": "k", "name": "newco"}])
    newco = table(creds, feed_state(*q))["newco"]
    assert newco.routable and newco.reasons == [] and newco.credential == "market"
    assert newco.url == "http://NEW.test/v1" and (newco.input_rate, newco.output_rate) == (300, 400)
    assert newco.rates_for("m1") == ModelRate(input_rate=100, output_rate=200)

    # Without a name the operator's URL names it: a feed renaming the provider gets no fresh, unguarded entry.
    unnamed = cfg(credentials=[{"url": "http://new.test:8080/v1", "api_key": "k"}])
    renamed = [fq("http://new.test:8080/v1", "m1", 100, 200, provider=p) for p in ("acme", "acme-2")]
    assert {n for r in renamed for n in table(unnamed, feed_state(r))} - {"alpha", "disco", "freebie"} == {
        "new-test-8080"}
    stale = table(creds, feed_state(*(fq(x.endpoint, x.model, 100, 200, age_s=120) for x in q)))["newco"]
    assert not stale.routable and stale.reasons[0].startswith("stale quotes")
    unreliable = table(creds, feed_state(*q, reliability={}))["newco"]
    assert not unreliable.routable and unreliable.reasons == [
        "low reliability: unrated < reliability_floor 0.50; its quotes are skipped"]
    zero = table(creds, feed_state(fq("http://new.test/v1", "m1", 0, 5), q[1]))["newco"]
    assert zero.routable and zero.models == ["m2"] and "zero price refused" in zero.notes[0]


def test_feed_names_are_tokens_and_collisions_get_a_stable_suffix() -> None:
    q = [fq("http://one.test", "m1", 1, 1, provider="alpha"), fq("http://two.test", "m1", 1, 1, provider="Two Co!"),
         fq("http://three.test", "m1", 1, 1, provider="Two Co")]
    names = sorted(table(cfg(), feed_state(*q)))
    assert [n for n in names if n.startswith("alpha-")] and "alpha" in names  # configured alpha keeps its name
    two = [n for n in names if n.startswith("Two-Co-")]
    assert len(two) == 2 and len(set(two)) == 2
    assert sorted(table(cfg(), feed_state(*q[1:]))) == sorted(n for n in names if not n.startswith("alpha-"))


def test_discovery_replaces_the_list_on_success_and_keeps_the_last_good_one_on_failure() -> None:
    config = cfg()
    first = DiscoveryState().failed("HTTP 500", NOW - 2000)
    disco = table(config, MarketState(discovery={"disco": first}))["disco"]
    assert disco.models == ["m1"] and disco.routable  # never a wildcard, never dropped
    assert disco.notes == ["discovery failed at 2023-11-14T22:13:18Z: HTTP 500; keeping the configured model list"]

    good = first.succeeded(parse_listing(listing({"x1": (0.0001, 0.0002), "x2": None})), NOW - 1000)
    disco = table(config, MarketState(discovery={"disco": good}))["disco"]
    assert disco.models == ["x1", "x2"] and disco.notes == [] and disco.source == "config+discovery"
    assert disco.rates_for("x1") == ModelRate(input_rate=100, output_rate=200)
    assert disco.rates_for("x2") == ModelRate(input_rate=500, output_rate=500)  # unpriced: the configured rate

    broken = good.failed("timed out after 10 s", NOW)
    disco = table(config, MarketState(discovery={"disco": broken}))["disco"]
    assert disco.models == ["x1", "x2"] and disco.rates_for("x1").input_rate == 100
    assert disco.notes == ["discovery failed at 2023-11-14T22:13:20Z: timed out after 10 s; keeping the last good "
                           "model list (2 models, listed at 2023-11-14T22:13:19Z)"]


def test_zero_prices_only_from_free_or_local_providers() -> None:
    zero = DiscoveryState().succeeded(parse_listing(listing({"m1": (0, 0)})), NOW)
    t = table(cfg(), MarketState(discovery={"disco": zero, "freebie": zero}))
    assert t["disco"].rates_for("m1") == ModelRate(input_rate=500, output_rate=500)
    assert t["disco"].notes == ["zero price refused (the provider is not marked free/local) for: m1"]
    assert t["freebie"].rates_for("m1") == ModelRate(input_rate=0, output_rate=0) and t["freebie"].notes == []
    t = table(cfg(), feed_state(fq("http://alpha.test/v1", "m1", 0, 0)))
    assert t["alpha"].rates_for("m1").input_rate == 1000 and "zero price refused" in t["alpha"].notes[0]


def test_routstr_nodes_are_admitted_by_mint_and_routable_with_a_key() -> None:
    config = cfg(nostr={"relays": ["ws://relay.test"], "accepted_mints": ["http://mint.test/"], "tier": "frontier"})
    good = DiscoveryState().succeeded(Listing(models=("r1", "r0", "bare"),
                                              rates={"r1": ModelRate(input_rate=7, output_rate=9),
                                                     "r0": ModelRate(input_rate=0, output_rate=0)},
                                              context={"r1": 32_000}), NOW)
    name = node_name("pk", "main")
    node = Node(name=name, url=api_base("https://node.test/"), mints=("http://mint.test",), pubkey="pk",
                version="0.2", created_at=NOW // 1000 - 10, discovery=good)
    other = Node(name=node_name("pk", "other"), url="https://n2.test/v1", mints=("https://elsewhere",),
                 pubkey="pk", version="0.2", created_at=NOW // 1000)
    expired = Node(name=node_name("pk", "old"), url="https://n3.test/v1", mints=("http://mint.test",), pubkey="pk",
                   version="0.2", created_at=NOW // 1000 - 100, expires_at=NOW // 1000 - 1, discovery=good)
    state = MarketState(nodes={n.name: n for n in (node, other, expired)})
    t = table(config, state)
    assert expired.name not in t and name.startswith("routstr-") and len(name) == 20
    entry = t[name]
    assert entry.url == "https://node.test/v1" and entry.kind == "routstr" and entry.tier == "frontier"
    assert entry.models == ["r1"] and entry.context_length == 32_000 and entry.credential == "provider_keys"
    assert not entry.routable and entry.reasons == [
        "no credential: nothing pays this node ([vault.topup] is not configured, no key in "
            "arbstr_provider_keys)"]
    assert any("zero price refused" in n for n in entry.notes) and any("without sats_pricing" in n
                                                                       for n in entry.notes)
    keyed = table(config, state, frozenset({name}))[name]
    assert keyed.routable and keyed.source == "nostr+discovery"
    assert t[other.name].reasons[0].startswith("no payment possible: the node takes https://elsewhere")
    assert entry.payable and not t[other.name].payable  # the vault tops up payable nodes only
    # An announcement cannot point the pricing actor at its own network (unless allow_private_urls).
    assert all(private_host(u) for u in ("http://127.0.0.1:9/v1", "http://localhost/v1", "http://10.1.2.3",
                                         "http://[::1]:80", "http://169.254.169.254/latest"))
    assert not any(private_host(u) for u in ("https://node.example.com/v1", "http://8.8.8.8"))


# --- the guard -----------------------------------------------------------------------------------------------
def entry(rates: dict[str, tuple[int, int]], models: Optional[list[str]] = None) -> ProviderPrices:
    return ProviderPrices(provider="p", tier="standard", models=models or list(rates), input_rate=100,
                          output_rate=100, source="config+feed:x",
                          model_rates={m: ModelRate(input_rate=i, output_rate=o) for m, (i, o) in rates.items()})


def test_the_guard_holds_a_100x_move_until_confirmed_or_back_to_normal() -> None:
    assert not jumped(ModelRate(input_rate=100, output_rate=100), ModelRate(input_rate=1000, output_rate=10), 10)
    assert jumped(ModelRate(input_rate=100, output_rate=100), ModelRate(input_rate=1001, output_rate=100), 10)
    assert jumped(ModelRate(input_rate=0, output_rate=0), ModelRate(input_rate=1, output_rate=1), 10)

    published = entry({"m": (100, 100)})
    held = guard(published, entry({"m": (10_000, 10_000)}), 10, NOW)
    assert held.rates_for("m") == ModelRate(input_rate=100, output_rate=100)  # the old price stays in force
    h = held.held["m"]
    assert (h.input_rate, h.previous_input_rate, h.source, h.since_ms) == (10_000, 100, "config+feed:x", NOW)
    again = guard(held, entry({"m": (9_000, 9_000)}), 10, NOW + 5000)
    assert again.held["m"].input_rate == 9_000 and again.held["m"].since_ms == NOW  # still held, since first
    normal = guard(again, entry({"m": (150, 150)}), 10, NOW + 9000)
    assert normal.held == {} and normal.rates_for("m").input_rate == 150  # back to normal: hold dropped

    confirmed, what = confirm(again)
    assert what == {"m": ModelRate(input_rate=9_000, output_rate=9_000)} and confirmed.held == {}
    assert guard(confirmed, entry({"m": (9_000, 9_000)}), 10, NOW).held == {}  # compared to the confirmed price
    assert confirm(normal) == (normal, {})
    # A model seen for the first time has nothing to move from; a configured base rate is compared with.
    assert guard(published, entry({"m": (100, 100), "new": (1, 1)}), 10, NOW).held == {}
    base = entry({}, models=["m"])
    assert set(guard(base, entry({"m": (100_000, 100_000)}), 10, NOW).held) == {"m"}


def test_feed_only_entries_show_the_in_force_rates_as_their_base() -> None:
    published = entry({"a": (100, 100), "b": (50, 50)}).model_copy(update={"kind": "feed"})
    held = guard(published, published.model_copy(update={"model_rates": {
        "a": ModelRate(input_rate=100_000, output_rate=100), "b": ModelRate(input_rate=60, output_rate=60)}}), 10, NOW)
    assert (held.input_rate, held.output_rate) == (100, 100)


# --- the router ----------------------------------------------------------------------------------------------
def test_the_router_never_chooses_an_unroutable_entry_and_says_why() -> None:
    config = Config()
    ok = ProviderPrices(provider="ok", tier="standard", models=["m"], input_rate=900, output_rate=900)
    cheap = ProviderPrices(provider="cheap", tier="standard", models=["m", "only"], input_rate=1, output_rate=1,
                           routable=False, reasons=["no credential: x"])
    req = RouteRequest(request_id="r", model="m", input_tokens=10)
    assert [c.provider for c in route(req, [ok], {}, config, NOW, [cheap]).candidates] == ["ok"]
    # A caller that passes the whole table gets the same answer.
    assert [c.provider for c in route(req, [cheap, ok], {}, config, NOW).candidates] == ["ok"]
    auto = RouteRequest(request_id="r", model="auto", input_tokens=10)
    assert {c.provider for c in route(auto, [ok], {}, config, NOW, [cheap]).candidates} == {"ok"}
    with pytest.raises(ArbstrError) as e:
        route(RouteRequest(request_id="r", model="only", input_tokens=10), [ok], {}, config, NOW, [cheap])
    assert e.value.status == 503 and "cheap: not routable (no credential: x)" in e.value.message
    with pytest.raises(ArbstrError) as e:
        route(RouteRequest(request_id="r", model="nope", input_tokens=10), [ok], {}, config, NOW, [cheap])
    assert e.value.status == 404


def test_absurd_prices_are_refused_at_once_not_computed() -> None:
    import time as _time

    from actors.pricing.units import per_million_to_rate, per_token_to_rate

    started = _time.monotonic()
    # A hostile feed row must neither stall the pricing actor (a huge int) nor raise decimal.Overflow.
    assert [per_million_to_rate("1e999999"), per_token_to_rate("1e999999"), per_token_to_rate("1e25")] == [
        None, None, None]
    assert _time.monotonic() - started < 0.5
    assert per_token_to_rate("0.000123") == 123
