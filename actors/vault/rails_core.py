"""The state every part of the vault's rails shares, declared once (``Rails`` in rails.py sets it)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional

from schemas.config import WalletConfig
from schemas.errors import ArbstrError

from . import decide
from .book import Book
from .claims import Claims
from .fold import AccountState
from .freeze import FreezeSwitch
from .wallets.base import Wallet, WalletError

Execute = Callable[[str, Callable[[AccountState, int], decide.Decided]], Awaitable[object]]
Credit = Callable[[str, str, int, str, str], Awaitable[None]]  # (agent, deposit id, msat, rail, reference)


def wallet_error(e: WalletError) -> ArbstrError:
    return ArbstrError(e.status, e.message, code=e.code)


class RailsCore:
    cfg: WalletConfig
    wallet: Wallet
    book: Book
    execute: Execute
    owns: Callable[[str], bool]
    credit: Optional[Credit]
    freeze: FreezeSwitch
    claims: Claims
    catch_up: Callable[[], Awaitable[None]]
    _invoice_owner: dict[str, tuple[str, str]]  # payment hash -> (agent id, deposit id)
    _parked_here: bool
    _driving: dict[str, asyncio.Task[None]]
    _releasing: set[asyncio.Future[None]]  # lease releases under way (awaited at stop)
    _tasks: list[asyncio.Task[None]]
