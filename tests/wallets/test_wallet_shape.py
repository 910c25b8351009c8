"""Every wallet class implements the whole wallet protocol (actors/vault/wallets/base.py ``Wallet``), with the
protocol's parameter names and async-ness — the rails call wallets only through it and never ask their kind."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import actors.vault.wallets as wallets_pkg
from actors.vault.wallets.auto import AutoWallet
from actors.vault.wallets.base import Wallet
from actors.vault.wallets.simulated import SimulatedWallet

PROTOCOL_METHODS = {name: fn for name, fn in vars(Wallet).items()
                    if inspect.isfunction(fn) and not name.startswith("_")}
PROTOCOL_ATTRS = set(Wallet.__annotations__)


def wallet_classes() -> list[type]:
    """Every class in the wallets package that names a wallet kind."""
    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(wallets_pkg.__path__):
        module = importlib.import_module(f"{wallets_pkg.__name__}.{info.name}")
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ and isinstance(vars(cls).get("kind"), str):
                found[cls.__qualname__] = cls
    return sorted(found.values(), key=lambda c: c.__qualname__)


def test_the_package_has_the_wallets_we_know() -> None:
    assert {c.__name__ for c in wallet_classes()} >= {"AutoWallet", "CashuWallet", "LndWallet", "SimulatedWallet"}


def test_the_protocol_covers_what_the_rails_used_to_ask_by_kind() -> None:
    assert {"on_rail", "stores", "rail_for", "fallback_rail", "back_with_journal"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("cls", wallet_classes(), ids=lambda c: c.__name__)
def test_every_wallet_class_implements_the_protocol(cls: type) -> None:
    assert isinstance(cls.kind, str) and isinstance(cls.rails, tuple) and cls.rails  # type: ignore[attr-defined]
    for name, proto in PROTOCOL_METHODS.items():
        impl = getattr(cls, name, None)
        assert impl is not None and callable(impl), f"{cls.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(impl) == inspect.iscoroutinefunction(proto), \
            f"{cls.__name__}.{name}: async-ness differs from the protocol"
        want = list(inspect.signature(proto).parameters)
        got = list(inspect.signature(impl).parameters)
        assert got == want, f"{cls.__name__}.{name}{got} does not match the protocol's {want}"
    assert PROTOCOL_ATTRS == {"kind", "rails", "identity"}  # identity is set per instance (known after start)


def test_a_single_wallet_answers_for_itself() -> None:
    sim = SimulatedWallet()
    assert isinstance(sim, Wallet)
    assert sim.on_rail("cashu") is sim and sim.stores() == (sim,)
    assert sim.rail_for(10, has_invoice=True, auto_threshold_msat=1) == "lightning"
    assert sim.rail_for(10, has_invoice=False, auto_threshold_msat=1) == "cashu"
    assert sim.fallback_rail("lightning") is None


async def test_the_simulated_wallet_is_backed_by_the_journal() -> None:
    sim = SimulatedWallet(initial_assets_msat=5)
    sim.back_with_journal(lambda: 1_000)
    assert await sim.assets_msat() == 1_005


async def test_the_auto_wallet_answers_for_its_parts() -> None:
    ln, ecash = SimulatedWallet(name="ln"), SimulatedWallet(name="ecash")
    auto: Any = AutoWallet(ln, ecash)
    assert isinstance(auto, Wallet)
    assert auto.on_rail("lightning") is ln and auto.on_rail("cashu") is ecash
    assert auto.stores() == (ln, ecash)
    assert auto.rail_for(999, has_invoice=True, auto_threshold_msat=1_000) == "cashu"
    assert auto.rail_for(1_000, has_invoice=False, auto_threshold_msat=1_000) == "lightning"
    assert auto.fallback_rail("lightning") == "cashu" and auto.fallback_rail("cashu") == "lightning"
    auto.back_with_journal(lambda: 1_000)  # its parts hold the money: the journal's figure is not theirs
    assert await ln.assets_msat() == 0 and await ecash.assets_msat() == 0
