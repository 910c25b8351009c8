"""The price-jump guard: a market price that moves more than ``[market] max_price_jump`` between two updates
is held — the price in force stays, the entry shows the held one — until an admin confirms it or the next
update is back within the factor. A typo or a hostile feed must not pull all traffic to a provider that then
charges far more (or mark one up so far that it is never used).

Only market prices (``model_rates``) are guarded: base rates come from the operator's own config. Pure: the
published entry and the proposed one come in, the entry to publish comes out.
"""

from __future__ import annotations

from typing import Iterable, Optional

from schemas.pricing import HeldRate, ModelRate, ProviderPrices


def _moved(before: int, after: int, factor: float) -> bool:
    if before == after:
        return False
    if before == 0 or after == 0:  # from or to free: an unbounded move
        return True
    return after > before * factor or before > after * factor


def jumped(before: ModelRate, after: ModelRate, factor: float) -> bool:
    return _moved(before.input_rate, after.input_rate, factor) or _moved(before.output_rate, after.output_rate, factor)


def _derived_base(entry: ProviderPrices) -> ProviderPrices:
    """Market-only entries have no configured base rates: theirs are the highest in-force model rates."""
    if entry.kind == "configured" or not entry.model_rates:
        return entry
    return entry.model_copy(update={
        "input_rate": max(r.input_rate for r in entry.model_rates.values()),
        "output_rate": max(r.output_rate for r in entry.model_rates.values())})


def guard(published: Optional[ProviderPrices], proposed: ProviderPrices, factor: float,
          now_ms: int) -> ProviderPrices:
    """``proposed`` with every market price that jumped against ``published`` replaced by the one in force."""
    if published is None:
        return proposed
    in_force = dict(proposed.model_rates)
    held: dict[str, HeldRate] = {}
    for model, rate in proposed.model_rates.items():
        if model not in published.models:
            continue  # a model first seen has no price to move from
        before = published.rates_for(model)
        if not jumped(before, rate, factor):
            continue
        in_force[model] = before
        earlier = published.held.get(model)
        held[model] = HeldRate(input_rate=rate.input_rate, output_rate=rate.output_rate,
                               previous_input_rate=before.input_rate, previous_output_rate=before.output_rate,
                               source=proposed.source,
                               since_ms=earlier.since_ms if earlier is not None else now_ms)
    if not held:
        return proposed
    return _derived_base(proposed.model_copy(update={"model_rates": in_force, "held": held}))


def confirm(entry: ProviderPrices,
            models: Optional[Iterable[str]] = None) -> tuple[ProviderPrices, dict[str, ModelRate]]:
    """Put held prices in force (every one, or those of ``models``); returns the entry and what was confirmed."""
    chosen = set(entry.held) if models is None else set(models) & set(entry.held)
    confirmed = {m: ModelRate(input_rate=entry.held[m].input_rate, output_rate=entry.held[m].output_rate)
                 for m in sorted(chosen)}
    if not confirmed:
        return entry, {}
    updated = entry.model_copy(update={
        "model_rates": {**entry.model_rates, **confirmed},
        "held": {m: h for m, h in entry.held.items() if m not in chosen}})
    return _derived_base(updated), confirmed
