"""One live price table from everything the pricing actor knows: the configured providers, what their own
``/models`` listings say, quote feeds, and Routstr nodes announced on Nostr.

Precedence for one (provider, model) price: the provider's own listing (what it will bill) over a feed's
quote (someone else's observation) over the configured rate. Each entry names its sources and when they
observed it; an entry the router must not choose says why (``routable = False`` + ``reasons``); what an
operator should know about a routable one goes in ``notes``. Pure: state and ``now`` in, entries out (the
guard runs after this, against what is published).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import urlsplit

from schemas.config import Config, FeedConfig, ProviderConfig
from schemas.pricing import ModelRate, Payment, PriceSource, ProviderPrices

from .feeds import FeedQuote, endpoint_key
from .market import DiscoveryState, MarketState, Node

# A quote dated further ahead than this is read as observed now: a feed cannot make a quote live forever.
MAX_FUTURE_MS = 5 * 60_000


def feed_label(feed: FeedConfig) -> str:
    return feed.name or urlsplit(feed.url).netloc


def _at(at_ms: int) -> str:
    """An absolute UTC time: a note that said "12 s ago" would change, and be republished, every second."""
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _zero(rate: ModelRate) -> bool:
    return rate.input_rate == 0 or rate.output_rate == 0


def _joined(sources: list[PriceSource]) -> str:
    return "+".join(s.name for s in sources)


# --- feeds --------------------------------------------------------------------------------------------------
@dataclass
class Endpoint:
    """Every quote the feeds hold for one endpoint, sorted into what may be used and why the rest may not."""

    key: str
    endpoint: str
    provider: str
    provider_id: str
    feed: FeedConfig  # the first feed quoting it: tier, context length and tools of an endpoint it admits
    fresh: dict[str, tuple[FeedQuote, str]] = field(default_factory=dict)  # model → newest usable quote, feed
    shown: dict[str, FeedQuote] = field(default_factory=dict)  # model → newest quote of any kind
    newest_stale_ms: int = 0
    max_age_s: float = 0.0
    unreliable: Optional[tuple[Optional[float], float]] = None  # (reliability or None if unrated, floor)


def collect_quotes(feeds: list[FeedConfig], state: MarketState, now_ms: int) -> dict[str, Endpoint]:
    endpoints: dict[str, Endpoint] = {}
    for feed in feeds:
        label = feed_label(feed)
        fs = state.feeds.get(label)
        if fs is None:
            continue
        for q in fs.quotes:
            if feed.source is not None and q.source != feed.source:
                continue
            key = endpoint_key(q.endpoint)
            ep = endpoints.get(key)
            if ep is None:
                ep = endpoints[key] = Endpoint(key, q.endpoint, q.provider, q.provider_id, feed)
            observed = q.observed_at_ms if q.observed_at_ms <= now_ms + MAX_FUTURE_MS else now_ms
            shown = ep.shown.get(q.model)
            if shown is None or observed > shown.observed_at_ms:
                ep.shown[q.model] = q
            if feed.reliability_floor > 0:
                rel = fs.reliability.get(q.provider_id) if q.provider_id else None
                if rel is None or rel < feed.reliability_floor:  # unrated counts as below: fail closed
                    ep.unreliable = (rel, feed.reliability_floor)
                    continue
            if now_ms - observed > feed.max_age_s * 1000:
                if observed > ep.newest_stale_ms:
                    ep.newest_stale_ms, ep.max_age_s = observed, feed.max_age_s
                continue
            best = ep.fresh.get(q.model)
            if best is None or observed > best[0].observed_at_ms:
                ep.fresh[q.model] = (q, label)
    return endpoints


def _feed_notes(ep: Endpoint) -> list[str]:
    notes = []
    if ep.unreliable is not None:
        rel, floor = ep.unreliable
        notes.append(f"low reliability: {'unrated' if rel is None else f'{rel:.2f}'} < reliability_floor "
                     f"{floor:.2f}; its quotes are skipped")
    if ep.newest_stale_ms and not ep.fresh:
        notes.append(f"stale quotes: the newest was observed at {_at(ep.newest_stale_ms)} "
                     f"(max_age_s {ep.max_age_s:g})")
    return notes


# --- configured providers -------------------------------------------------------------------------------
def _discovery_note(d: DiscoveryState) -> Optional[str]:
    if d.error is None:
        return None
    kept = (f"keeping the last good model list ({len(d.listing.models)} models, listed at {_at(d.ok_at_ms)})"
            if d.listing is not None else "keeping the configured model list")
    return f"discovery failed at {_at(d.failed_at_ms)}: {d.error}; {kept}"


def configured_entry(p: ProviderConfig, config_at_ms: int, d: Optional[DiscoveryState], ep: Optional[Endpoint],
                     now_ms: int) -> ProviderPrices:
    free = p.free or p.tier == "local"
    models = list(p.models)
    sources = [PriceSource(name="config", observed_at_ms=config_at_ms)]
    rates: dict[str, ModelRate] = {}
    notes: list[str] = []
    refused: list[str] = []
    if p.discover and d is not None:
        if d.listing is not None:
            models = list(d.listing.models)
            sources.append(PriceSource(name="discovery", observed_at_ms=d.ok_at_ms))
            for model, rate in d.listing.rates.items():
                if _zero(rate) and not free:
                    refused.append(model)
                else:
                    rates[model] = rate
        note = _discovery_note(d)
        if note:
            notes.append(note)
    reasons: list[str] = []
    if p.discover and not models:
        # Nothing configured and nothing listed yet: not a wildcard, not silently gone — listed, with why.
        reasons.append(f"discovery failed: {d.error}; no model list to keep" if d is not None and d.error
                       else "discovery pending: /models not read yet")
    if ep is not None:
        served = set(models)
        used: dict[str, int] = {}
        for model, (q, label) in sorted(ep.fresh.items()):
            if model not in served or model in rates:
                continue  # a feed neither adds models to a configured provider nor overrides its own listing
            rate = ModelRate(input_rate=q.input_rate, output_rate=q.output_rate)
            if _zero(rate) and not free:
                refused.append(model)
                continue
            rates[model] = rate
            used[label] = max(used.get(label, 0), q.observed_at_ms)
        sources += [PriceSource(name=f"feed:{label}", observed_at_ms=at) for label, at in sorted(used.items())]
        notes += _feed_notes(ep)
    if refused:
        notes.append(f"zero price refused (the provider is not marked free/local) for: {', '.join(sorted(refused))}")
    return ProviderPrices(
        provider=p.name, tier=p.tier, models=models, input_rate=p.input_rate, output_rate=p.output_rate,
        base_fee_msat=p.base_fee_msat, model_rates=rates, context_length=p.context_length,
        supports_tools=p.supports_tools, source=_joined(sources), updated_at_ms=now_ms, kind="configured",
        credential="config", sources=sources, notes=notes, free=p.free, routable=not reasons, reasons=reasons)


# --- endpoints only a feed knows --------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:64]


def feed_names(endpoints: dict[str, Endpoint], config: Config, taken: set[str]) -> dict[str, str]:
    """endpoint key → provider name. An admitted endpoint is named by the operator (the credential's name, else
    its URL's host): a feed that renames a provider must not get a fresh entry the guard has no price to compare
    with. An endpoint without a credential (never routed) takes the feed's provider name. Names that collide get
    a suffix from the endpoint itself, so a name never depends on which other endpoints exist."""
    base: dict[str, str] = {}
    for key, ep in endpoints.items():
        cred = next((c for c in config.market.credentials if endpoint_key(c.url) == key), None)
        if cred is not None:
            base[key] = cred.name or _slug(urlsplit(cred.url).netloc.replace(":", "-")) or "feed"
        else:
            base[key] = _slug(ep.provider) or _slug(ep.provider_id) or _slug(urlsplit(ep.endpoint).netloc) or "feed"
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    named = {}
    for key, name in base.items():
        named_by_operator = any(c.name == name and endpoint_key(c.url) == key for c in config.market.credentials)
        if not named_by_operator and (counts[name] > 1 or name in taken):
            name = f"{name[:55]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        named[key] = name
    return named


def feed_entry(name: str, ep: Endpoint, config: Config, now_ms: int) -> ProviderPrices:
    cred = next((c for c in config.market.credentials if endpoint_key(c.url) == ep.key), None)
    reasons: list[str] = []
    notes = _feed_notes(ep)
    if cred is None:
        reasons.append(f"no credential: no [[market.credentials]] entry for {ep.endpoint}")
    usable = {m: (q, label) for m, (q, label) in ep.fresh.items() if q.input_rate > 0 and q.output_rate > 0}
    refused = sorted(set(ep.fresh) - set(usable))
    if refused:
        notes.append(f"zero price refused (market endpoints are never free) for: {', '.join(refused)}")
    if not usable:
        # Nothing to route to: the notes say why (stale, unreliable, zero); they become the reasons.
        reasons += notes or ["no usable quotes"]
        notes = []
        shown = {m: ModelRate(input_rate=q.input_rate, output_rate=q.output_rate) for m, q in ep.shown.items()}
        sources = [PriceSource(name=f"feed:{feed_label(ep.feed)}", observed_at_ms=max(
            (q.observed_at_ms for q in ep.shown.values()), default=0))]
    else:
        shown = {m: ModelRate(input_rate=q.input_rate, output_rate=q.output_rate) for m, (q, _) in usable.items()}
        seen: dict[str, int] = {}
        for q, label in usable.values():
            seen[label] = max(seen.get(label, 0), q.observed_at_ms)
        sources = [PriceSource(name=f"feed:{label}", observed_at_ms=at) for label, at in sorted(seen.items())]
    return ProviderPrices(
        provider=name, tier=ep.feed.tier, models=sorted(shown), model_rates=dict(sorted(shown.items())),
        input_rate=max((r.input_rate for r in shown.values()), default=0),
        output_rate=max((r.output_rate for r in shown.values()), default=0),
        context_length=ep.feed.context_length, supports_tools=ep.feed.supports_tools, source=_joined(sources),
        updated_at_ms=now_ms, kind="feed", url=cred.url if cred is not None else ep.endpoint, credential="market",
        sources=sources, routable=not reasons, reasons=reasons, notes=notes)


# --- Routstr nodes ----------------------------------------------------------------------------------------
def node_entry(node: Node, config: Config, keyed: frozenset[str], now_ms: int) -> ProviderPrices:
    nostr = config.market.nostr
    assert nostr is not None
    accepted = set(nostr.accepted_mints)
    mints = [m.rstrip("/") for m in node.accepted_mints]
    reasons: list[str] = []
    notes: list[str] = []
    sources = [PriceSource(name="nostr", observed_at_ms=node.created_at * 1000)]
    models: list[str] = []
    rates: dict[str, ModelRate] = {}
    context = 128_000
    payable = bool(accepted.intersection(mints))
    node_prices = {}
    if not payable:
        reasons.append(f"no payment possible: the node takes {', '.join(mints) or 'no mint'}; the vault pays with "
                       f"{', '.join(sorted(accepted)) or 'no mint ([market.nostr] accepted_mints is empty)'}")
    else:
        d = node.discovery
        if d.listing is None:
            reasons.append(f"discovery failed: {d.error}" if d.error else "discovery pending: /v1/models not read yet")
        else:
            sources.append(PriceSource(name="discovery", observed_at_ms=d.ok_at_ms))
            note = _discovery_note(d)
            if note:
                notes.append(note)
            priced = {m: r for m, r in d.listing.rates.items() if m in d.listing.models}
            refused = sorted(m for m, r in priced.items() if _zero(r))
            unpriced = sorted(set(d.listing.models) - set(priced))
            if refused:
                notes.append(f"zero price refused (market endpoints are never free) for: {', '.join(refused)}")
            if unpriced:
                notes.append(f"listed without sats_pricing, not routed: {', '.join(unpriced[:10])}")
            rates = {m: r for m, r in priced.items() if not _zero(r)}
            models = [m for m in d.listing.models if m in rates]
            node_prices = {m: d.listing.node[m] for m in models if m in d.listing.node}
            contexts = [d.listing.context[m] for m in models if m in d.listing.context]
            context = min(contexts) if contexts else context
            if not models:
                reasons.append("its listing has no priced model")
    payment = pay_by(node.name, config, keyed) if payable else ""
    if payment == "x_cashu":
        notes.append("paid per request with X-Cashu (no prepaid key yet): non-streamed requests only")
    elif not payment:
        reasons.append(
            "no credential: the vault has not topped up this node yet (no key in arbstr_provider_keys)"
            if config.vault is not None and config.vault.topup is not None else
            "no credential: nothing pays this node ([vault.topup] is not configured, no key in "
            "arbstr_provider_keys)")
    return ProviderPrices(
        provider=node.name, tier=nostr.tier, models=models, model_rates=rates,
        input_rate=max((r.input_rate for r in rates.values()), default=0),
        output_rate=max((r.output_rate for r in rates.values()), default=0), context_length=context,
        source=_joined(sources), updated_at_ms=now_ms, kind="routstr", url=node.url, credential="provider_keys",
        sources=sources, routable=not reasons, reasons=reasons, notes=notes, mints=mints, payable=payable,
        payment=payment, node_prices=node_prices)


def pay_by(name: str, config: Config, keyed: frozenset[str]) -> Payment:
    """How a payable node is paid: its prepaid key once the vault holds one, else per request with X-Cashu when
    the vault may (top-ups configured with x_cashu, the node allow-listed if a list is set), else not at all."""
    if name in keyed:
        return "key"
    topup = config.vault.topup if config.vault is not None else None
    if topup is not None and topup.x_cashu and (not topup.providers or name in topup.providers):
        return "x_cashu"
    return ""


# --- the table ----------------------------------------------------------------------------------------------
def build_table(config: Config, state: MarketState, keyed: frozenset[str], now_ms: int,
                config_at_ms: int) -> list[ProviderPrices]:
    """Configured providers (config order), then feed-only endpoints, then Routstr nodes (both by name)."""
    endpoints = collect_quotes(config.market.feeds, state, now_ms)
    table = []
    for p in config.providers:
        ep = endpoints.pop(endpoint_key(p.url), None)
        table.append(configured_entry(p, config_at_ms, state.discovery.get(p.name), ep, now_ms))
    live_nodes = {name: n for name, n in state.nodes.items()
                  if config.market.nostr is not None and (n.expires_at is None or n.expires_at * 1000 > now_ms)}
    taken = {p.name for p in config.providers} | set(live_nodes)
    names = feed_names(endpoints, config, taken)
    table += sorted((feed_entry(names[key], ep, config, now_ms) for key, ep in endpoints.items()),
                    key=lambda e: e.provider)
    table += [node_entry(n, config, keyed, now_ms) for _, n in sorted(live_nodes.items())]
    return table
