"""A real Nutshell mint for tests (FakeWallet backend), and a second wallet that plays the outside world.

The mint is the package's ``mint`` console script in its own working directory (it reads a ``.env`` from its
cwd) with its database there too. FakeWallet pays every mint quote it issues at once (``brr``) and "pays" any
BOLT11 it is asked to melt — a regtest invoice made by ``actors.vault.wallets.simulated.make_invoice`` is
enough — charging 1 sat of Lightning fee against a reserve of max(2 sat, 1 %). An invoice of one of the
mint's own quotes is settled internally (no reserve, no Lightning fee). The mint refuses a second melt quote
for an invoice it has paid ("Melt quote already paid or pending"). Melts stay pending with
``FAKEWALLET_PAY_INVOICE_STATE=PENDING`` and ``FAKEWALLET_PAYMENT_STATE=PENDING`` (see ``start_mint``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator, Optional

import httpx
import pytest

INPUT_FEE_PPK = 100  # the mint charges 0.1 sat per proof spent, rounded up per request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NutshellMint:
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    private_key: str = ""
    input_fee_ppk: int = INPUT_FEE_PPK

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def restart(self, env_overrides: Optional[dict[str, str]] = None) -> "NutshellMint":
        """The same mint (key, database, port) started again, perhaps with other FakeWallet settings."""
        self.stop()
        return start_mint(self.workdir, input_fee_ppk=self.input_fee_ppk, port=self.port,
                          private_key=self.private_key, env_overrides=env_overrides)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_mint(workdir: Path, input_fee_ppk: int = INPUT_FEE_PPK, timeout_s: float = 30.0, *,
               port: Optional[int] = None, private_key: Optional[str] = None,
               env_overrides: Optional[dict[str, str]] = None) -> NutshellMint:
    """Starts a mint on a free loopback port and waits until it answers; the caller stops it.

    ``env_overrides`` set FakeWallet's behaviour, e.g. ``FAKEWALLET_PAY_INVOICE_STATE=PENDING`` and
    ``FAKEWALLET_PAYMENT_STATE=PENDING`` for melts that stay pending until the mint is restarted without them.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    private_key = private_key or secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MINT_", "FAKEWALLET_", "CASHU_"))}
    env.pop("DEBUG", None)
    env.update({
        "MINT_BACKEND_BOLT11_SAT": "FakeWallet",
        "MINT_LISTEN_HOST": "127.0.0.1",
        "MINT_LISTEN_PORT": str(port),
        "MINT_PRIVATE_KEY": private_key,
        "MINT_DATABASE": str(workdir / "db"),
        "CASHU_DIR": str(workdir / "cashu"),
        "MINT_INPUT_FEE_PPK": str(input_fee_ppk),
        "MINT_RATE_LIMIT": "false",  # tests make more than 20 transactions a minute
        "FAKEWALLET_DELAY_INCOMING_PAYMENT": "0",
        "FAKEWALLET_DELAY_OUTGOING_PAYMENT": "0",
        "FAKEWALLET_BALANCE_SAT": "100000000",  # melts draw on it; it may never go negative
        **(env_overrides or {}),
    })
    log_path = workdir / "mint.log"
    script = Path(sys.executable).parent / "mint"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(script)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    mint = NutshellMint(f"http://127.0.0.1:{port}", workdir, proc, log_path, port, private_key, input_fee_ppk)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the mint exited with {proc.returncode}:\n{mint.log_tail()}")
        try:
            if httpx.get(f"{mint.url}/v1/keysets", timeout=1.0).status_code == 200:
                return mint
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            mint.stop()
            raise RuntimeError(f"the mint did not answer within {timeout_s} s:\n{mint.log_tail()}")
        time.sleep(0.05)


@dataclass
class OutsideWallet:
    """Somebody else's Nutshell wallet at the same mint: mints tokens to hand over, redeems tokens received."""

    mint_url: str
    path: Path
    _wallet: Optional[object] = field(default=None, repr=False)

    async def wallet(self) -> "object":
        from cashu.wallet.wallet import Wallet

        from actors.vault.wallets.cashu_mint import harden_nutshell_settings

        if self._wallet is None:
            harden_nutshell_settings()
            w = await Wallet.with_db(self.mint_url, str(self.path), name="outside")
            await w.load_mint()
            await w.load_proofs(reload=True)
            self._wallet = w
        return self._wallet

    async def fund(self, amount_sat: int) -> list["object"]:
        """Proofs worth ``amount_sat``, minted from a quote FakeWallet pays at once."""
        from cashu.core.base import MintQuoteState

        w = await self.wallet()
        quote = await w.request_mint(amount_sat)  # type: ignore[attr-defined]
        for _ in range(200):
            if (await w.get_mint_quote(quote.quote)).state == MintQuoteState.paid:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        return list(await w.mint(amount_sat, quote_id=quote.quote))  # type: ignore[attr-defined]

    async def mint_token(self, amount_sat: int, legacy: bool = False) -> str:
        """A fresh token worth exactly ``amount_sat`` (V4, or V3 with ``legacy``)."""
        w = await self.wallet()
        proofs = await self.fund(amount_sat)
        await w.set_reserved_for_send(proofs, reserved=True)  # type: ignore[attr-defined]
        return str(await w.serialize_proofs(proofs, legacy=legacy))  # type: ignore[attr-defined]

    async def redeem(self, token: str) -> int:
        """Swaps a token into this wallet; the sats received (after the mint's input fee)."""
        from cashu.core.helpers import sum_proofs
        from cashu.wallet.helpers import deserialize_token_from_string

        w = await self.wallet()
        t = deserialize_token_from_string(token)
        proofs = t.proofs
        await w._expand_short_keyset_ids(proofs)  # type: ignore[attr-defined]
        kept, _ = await w.redeem(proofs)  # type: ignore[attr-defined]
        return int(sum_proofs(kept))

    async def spent(self, token: str) -> bool:
        """Whether the mint has seen the token's proofs spent (NUT-07)."""
        from cashu.wallet.helpers import deserialize_token_from_string

        w = await self.wallet()
        proofs = deserialize_token_from_string(token).proofs
        await w._expand_short_keyset_ids(proofs)  # type: ignore[attr-defined]
        states = await w.check_proof_state(proofs)  # type: ignore[attr-defined]
        return all(s.state.value == "SPENT" for s in states.states)

    async def close(self) -> None:
        if self._wallet is not None:
            await self._wallet.db.engine.dispose()  # type: ignore[attr-defined]


def value_after_fee(token: str, input_fee_ppk: int = INPUT_FEE_PPK) -> int:
    """What redeeming ``token`` at the test mint yields, in sats (its amount less the input fee)."""
    from actors.vault.wallets.cashu_coins import input_fee_sat
    from actors.vault.wallets.cashu_mint import parse_token

    proofs = parse_token(token).proofs
    return sum(p.amount for p in proofs) - input_fee_sat([input_fee_ppk] * len(proofs))


def foreign_token(token: str, other_mint: str = "http://127.0.0.1:1") -> str:
    """The same proofs re-labelled as another mint's: what a token from a mint we do not use looks like."""
    from cashu.core.base import TokenV4

    t = TokenV4.deserialize(token)
    t.set_mint(other_mint)
    return str(t.serialize())


_shared: Optional[NutshellMint] = None


@pytest.fixture(scope="session")
def nutshell_mint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NutshellMint]:
    """One mint for the whole session (it takes seconds to start), registered in tests/conftest.py for every test."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        _shared = start_mint(tmp_path_factory.mktemp("nutshell"))
    yield _shared
    _shared.stop()


@pytest.fixture(scope="session")
async def outside(nutshell_mint: NutshellMint, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[OutsideWallet]:
    w = OutsideWallet(nutshell_mint.url, tmp_path_factory.mktemp("outside-wallet"))
    yield w
    await w.close()
