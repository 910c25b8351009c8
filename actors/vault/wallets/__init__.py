"""Money rails behind one interface (base.Wallet), chosen by [vault.wallet]."""

from __future__ import annotations

from schemas.config import WalletConfig

from .base import Wallet


def build_wallet(cfg: WalletConfig) -> Wallet:
    if cfg.kind == "simulated":
        from .simulated import SimulatedWallet
        return SimulatedWallet(fee_limit_ppm=cfg.fee_limit_ppm, fee_limit_min_msat=cfg.fee_limit_min_msat)
    raise ValueError(f"wallet kind {cfg.kind!r} is not available in this build")
