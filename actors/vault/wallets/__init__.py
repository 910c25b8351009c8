"""Money rails behind one interface (base.Wallet), chosen by [vault.wallet]."""

from __future__ import annotations

from schemas.config import WalletConfig

from .base import Wallet


def build_wallet(cfg: WalletConfig) -> Wallet:
    # Imported per kind: a node without LND or a mint configured never loads that rail's code.
    if cfg.kind == "simulated":
        from .simulated import SimulatedWallet
        return SimulatedWallet(fee_limit_ppm=cfg.fee_limit_ppm, fee_limit_min_msat=cfg.fee_limit_min_msat)
    if cfg.kind == "lnd":
        return _lnd(cfg)
    if cfg.kind == "cashu":
        return _cashu(cfg)
    if cfg.kind == "auto":
        from .auto import AutoWallet
        return AutoWallet(_lnd(cfg), _cashu(cfg))  # the vault chooses by [vault.wallet] auto_threshold_msat
    raise ValueError(f"wallet kind {cfg.kind!r} is not available in this build")


def _lnd(cfg: WalletConfig) -> Wallet:
    from .lnd import LndWallet
    assert cfg.lnd is not None  # the config refuses kind lnd/auto without [vault.wallet.lnd]
    return LndWallet(cfg.lnd, fee_limit_ppm=cfg.fee_limit_ppm, fee_limit_min_msat=cfg.fee_limit_min_msat)


def _cashu(cfg: WalletConfig) -> Wallet:
    from .cashu_wallet import CashuWallet
    assert cfg.cashu is not None
    return CashuWallet(cfg.cashu)
