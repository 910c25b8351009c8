"""The Cashu rail: ecash held at one Nutshell mint in a wallet directory (its proofs are the money).

Deposits arrive as tokens (swapped at the mint into proofs only this wallet knows) or as mint quotes paid over
Lightning; payouts leave as melts (the mint pays a BOLT11) or as tokens issued to the agent. Amounts are msat
at the interface and whole sats at the mint (see cashu_coins).

Crash safety, the rule every operation follows: before a mint call that signs outputs, the outputs' counters
(they are derived from the wallet seed) and the inputs are recorded as an intent in the same SQLite file as the
proofs; the result — new proofs, spent proofs, and what the call was for — is written in one transaction that
also closes the intent. An intent a crash left open is finished at start (or when its operation is asked
about again): the mint's signatures are fetched back (NUT-09 restore) or the identical request is replayed,
which the mint can only honour once. A melt locks its inputs under the quote id before the call and decides
by the quote's state and the inputs' NUT-07 state, never by a timeout: only "unpaid and inputs unspent" after
a definite answer is a failure.

Several processes may share one wallet directory (vault instances): every operation holds an exclusive lock
on it, and a melt waiting for Lightning does not.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any, Optional, Union

from cashu.core.base import BlindedSignature, MeltQuoteState, MintQuoteState, Proof, Unit
from cashu.core.db import Connection
from cashu.core.nuts import nut20
from cashu.wallet.crud import (
    bump_secret_derivation,
    get_bolt11_mint_quote,
    get_proofs,
    invalidate_proof,
    store_proof,
    update_proof,
)
from cashu.wallet.v1_api import LedgerAPI
from cashu.wallet.wallet import Wallet as NutshellWallet

from schemas.config import CashuConfig

from . import cashu_store as store
from .base import (
    DepositInvoice,
    OnSettled,
    PaymentStatus,
    PayoutPlan,
    Redeemed,
    SettledInvoice,
    SingleWallet,
    WalletError,
    decode_bolt11,
)
from .cashu_coins import (
    MSAT_PER_SAT,
    Coin,
    blank_outputs,
    exact_subset,
    fee_estimate_sat,
    input_fee_sat,
    select_to_cover,
    split_amount,
    whole_sats,
)
from .cashu_mint import (
    OUTPUTS_SIGNED,
    PENDING,
    QUOTE_ISSUED,
    SPENT,
    MintRefused,
    MintUnreachable,
    Outputs,
    ask,
    deposit_id_of,
    derive_outputs,
    harden_nutshell_settings,
    parse_token,
    proof_of_row,
    proof_row,
    same_mint,
    unblind,
)

log = logging.getLogger("arbstr.vault.cashu")


class _DirLock:
    """One operation at a time on a wallet directory, across tasks (asyncio lock) and processes (flock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = asyncio.Lock()
        self._fd: Optional[int] = None

    def open(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def __aenter__(self) -> None:
        await self._mutex.acquire()
        try:
            assert self._fd is not None, "the wallet is not started"
            while True:  # non-blocking tries: a thread blocked in flock could not be cancelled
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    await asyncio.sleep(0.005)
        except BaseException:
            self._mutex.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()


class CashuWallet(SingleWallet):
    kind = "cashu"
    rails = ("cashu",)

    def __init__(self, cfg: CashuConfig, data_dir: Union[str, Path, None] = None, *,
                 poll_interval_s: float = 1.0, quote_grace_s: int = 600) -> None:
        """``cfg.wallet_dir``, or ``<data_dir>/cashu-wallet`` when it is empty, holds the wallet.

        ``poll_interval_s``: how often open deposit quotes are asked about; ``quote_grace_s``: how long past
        its expiry an unpaid deposit quote is still watched.
        """
        self.cfg = cfg
        base = cfg.wallet_dir or (str(Path(data_dir) / "cashu-wallet") if data_dir else "")
        if not base:
            raise ValueError("[vault.wallet.cashu] wallet_dir is empty and no data directory was given")
        self.wallet_dir = Path(base).expanduser().resolve()
        self.mint_url = cfg.mint_url.rstrip("/")
        digest = hashlib.sha256(str(self.wallet_dir).encode()).hexdigest()[:12]
        self.identity = f"cashu:{self.mint_url}:{digest}"
        self.poll_interval_s = poll_interval_s
        self.quote_grace_s = quote_grace_s
        self._w: Optional[NutshellWallet] = None
        self._lock = _DirLock(self.wallet_dir / "wallet.lock")
        # One pay/check at a time per payout; a lock no task holds is dropped (weak values).
        self._quote_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open (or create) the wallet, load the mint's keysets, finish what a crash left open."""
        harden_nutshell_settings()
        self.wallet_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.wallet_dir, 0o700)  # the seed and the proofs live here
        self._lock.open()
        w = await NutshellWallet.with_db(self.mint_url, str(self.wallet_dir), name="wallet", unit="sat")
        self._w = w
        async with self._lock:
            async with w.db.connect() as conn:
                await store.create_schema(conn)
            try:
                await ask(w.load_mint_keysets(), self.cfg.timeout_s)
                await ask(w.load_mint_info(reload=True), self.cfg.timeout_s)
            except (MintRefused, MintUnreachable) as e:
                if not w.keysets:
                    raise RuntimeError(f"the Cashu mint at {self.mint_url} could not be reached and the wallet "
                                       f"knows none of its keysets: {e}") from None
                log.warning("mint %s unreachable at start (%s): using the keysets on file", self.mint_url, e)
            await w.activate_keyset()
            await self._finish_open_intents()

    async def stop(self) -> None:
        if self._w is not None:
            await self._w.db.engine.dispose()
        self._lock.close()

    @property
    def _wallet(self) -> NutshellWallet:
        if self._w is None:
            raise RuntimeError("the Cashu wallet is not started")
        return self._w

    def _quote_lock(self, key: str) -> asyncio.Lock:
        lock = self._quote_locks.get(key)
        if lock is None:
            lock = self._quote_locks[key] = asyncio.Lock()
        return lock

    async def _finish_open_intents(self) -> None:
        """Calls a crash interrupted (lock held): fetch their signatures back or replay them."""
        async with self._wallet.db.connect() as conn:
            open_ = await store.intents(conn)
        for intent in open_:
            try:
                await self._run_intent(intent, fresh=False)
                log.info("finished an interrupted %s call (%s)", intent.kind, intent.op_id)
            except (MintRefused, WalletError) as e:
                log.warning("interrupted %s call %s could not be finished: %s", intent.kind, intent.op_id, e)
            except MintUnreachable as e:
                log.warning("interrupted %s call %s stays open: %s", intent.kind, intent.op_id, e)

    # --- proofs ----------------------------------------------------------------------------------------
    def _keyset_ids(self) -> list[str]:
        return [k for k, ks in self._wallet.keysets.items() if ks.unit == Unit.sat]

    async def _spendable(self, conn: Connection) -> list[Proof]:
        ids = set(self._keyset_ids())
        return [p for p in await get_proofs(db=self._wallet.db, conn=conn) if p.id in ids and not p.reserved]

    def _coins(self, proofs: list[Proof]) -> list[Coin]:
        ks = self._wallet.keysets
        return [Coin(i, p.amount, ks[p.id].input_fee_ppk) for i, p in enumerate(proofs)]

    def _active_ppk(self) -> int:
        return self._wallet.keysets[self._wallet.keyset_id].input_fee_ppk

    async def _known_keysets(self, proofs: list[Proof]) -> None:
        """Full keyset ids on ``proofs`` (V4 tokens carry short ones), fetching keysets the wallet lacks."""
        w = self._wallet
        if any(p.id not in w.keysets and not any(k.startswith(p.id) for k in w.keysets) for p in proofs):
            await ask(w.load_mint_keysets(), self.cfg.timeout_s)
        try:
            await w._expand_short_keyset_ids(proofs)
        except Exception:
            raise WalletError("the token names a keyset this mint does not have", code="invalid_token") from None
        unknown = [p.id for p in proofs if p.id not in w.keysets]
        if unknown:
            raise WalletError("the token names a keyset this mint does not have", code="invalid_token")
        if any(w.keysets[p.id].unit != Unit.sat for p in proofs):
            raise WalletError("only sat tokens are accepted", code="invalid_token")

    # --- intents: mint calls that sign outputs ---------------------------------------------------------
    async def _new_intent(self, kind: str, op_id: str, amounts: list[int], send_from: int,
                          inputs: list[Proof], own_inputs: bool) -> store.Intent:
        """Counters for the outputs and the record of the call, in one transaction (lock held)."""
        w = self._wallet
        async with w.db.connect() as conn:
            start = await bump_secret_derivation(db=w.db, keyset_id=w.keyset_id, by=len(amounts), conn=conn)
            intent = store.Intent(op_id, kind, w.keyset_id, start, amounts, send_from,
                                  [proof_row(p) for p in inputs])
            await store.put_intent(conn, intent)
            if own_inputs:
                for p in inputs:
                    await update_proof(p, reserved=True, send_id=op_id, conn=conn)
        return intent

    async def _restore(self, outs: Outputs) -> dict[int, BlindedSignature]:
        """The mint's signatures on ``outs`` it has already made (NUT-09), by output index."""
        if not outs.messages:
            return {}
        returned, sigs = await ask(LedgerAPI.restore_promises(self._wallet, outs.messages), self.cfg.timeout_s)
        index = {m.B_: i for i, m in enumerate(outs.messages)}
        return {index[o.B_]: s for o, s in zip(returned, sigs) if o.B_ in index}

    async def _run_intent(self, intent: store.Intent, *, fresh: bool) -> None:
        """Make (or finish) the call an intent records (lock held). Raises ``MintRefused`` once the call is
        definitely not going to happen (the intent is then closed), ``MintUnreachable`` while it may."""
        w = self._wallet
        outs = await derive_outputs(w, intent.keyset_id, intent.start, intent.amounts)
        if not fresh:
            signed = await self._restore(outs)
            if signed:
                await self._finish_intent(intent, outs, signed)
                return
        try:
            if intent.kind == "mint":
                quote = await get_bolt11_mint_quote(db=w.db, quote=intent.op_id)
                signature = nut20.sign_mint_quote(intent.op_id, outs.messages, quote.privkey) \
                    if quote is not None and quote.privkey else None
                got = await ask(LedgerAPI.mint(w, outs.messages, intent.op_id, signature), self.cfg.timeout_s)
            else:
                inputs = [proof_of_row(r) for r in intent.inputs]
                got = await ask(LedgerAPI.split(w, inputs, outs.messages), self.cfg.timeout_s)
        except MintRefused as e:
            if e.code in (SPENT, PENDING, OUTPUTS_SIGNED, QUOTE_ISSUED):
                # Perhaps an earlier copy of this very request (same outputs) got there first.
                signed = await self._restore(outs)
                if signed:
                    await self._finish_intent(intent, outs, signed)
                    return
            if e.code == PENDING:
                raise MintUnreachable("the inputs are pending in another operation at the mint") from None
            await self._close_intent(intent, spent=e.code == SPENT)
            raise
        if len(got) != len(outs.messages):
            raise MintUnreachable(f"the mint signed {len(got)} of {len(outs.messages)} outputs")
        await self._finish_intent(intent, outs, dict(enumerate(got)))

    async def _finish_intent(self, intent: store.Intent, outs: Outputs, signed: dict[int, BlindedSignature]) -> None:
        """Record a call's result in one transaction: new proofs, spent inputs, what it was for."""
        w = self._wallet
        if len(signed) != len(outs.messages):
            log.critical("%s call %s: the mint signed %d of %d outputs", intent.kind, intent.op_id, len(signed),
                         len(outs.messages))
        proofs = {i: unblind(w, sig, outs.secrets[i], outs.rs[i], outs.paths[i]) for i, sig in signed.items()}
        try:
            w.verify_proofs_dleq(list(proofs.values()))
        except Exception:
            raise MintUnreachable("the mint's signatures failed their DLEQ proofs") from None
        keep = {i: p for i, p in proofs.items() if intent.kind != "token" or i < intent.send_from}
        send = [p for i, p in sorted(proofs.items()) if intent.kind == "token" and i >= intent.send_from]
        inputs = [proof_of_row(r) for r in intent.inputs]
        token = await w.serialize_proofs(send) if send else ""
        async with w.db.connect() as conn:
            known = await store.known_secrets(conn, [p.secret for p in keep.values()])
            for p in keep.values():
                if p.secret not in known:
                    await store_proof(p, db=w.db, conn=conn)
            if intent.kind == "redeem":
                in_sat = sum(p.amount for p in inputs)
                got = sum(p.amount for p in proofs.values())
                await store.put_receipt(conn, store.Receipt(
                    intent.op_id, got, f"{len(inputs)} proofs, {in_sat} sat, mint fee {in_sat - got} sat"))
            elif intent.kind == "token":
                fee = sum(p.amount for p in inputs) - sum(p.amount for p in proofs.values())
                await store.put_token_payout(conn, store.TokenPayout(
                    intent.op_id, sum(p.amount for p in send), fee, token))
                for p in inputs:
                    await invalidate_proof(p, db=w.db, conn=conn)
            elif intent.kind == "mint":
                await store.issue_mint_quote(conn, intent.op_id)
            await store.drop_intent(conn, intent)

    async def _close_intent(self, intent: store.Intent, spent: bool) -> None:
        """The call will not happen: close it; own inputs go back to spendable (or out, if already spent)."""
        w = self._wallet
        async with w.db.connect() as conn:
            if intent.kind == "token":
                for p in (proof_of_row(r) for r in intent.inputs):
                    if spent:
                        log.critical("payout %s: the wallet's own proofs were spent elsewhere", intent.op_id)
                        await invalidate_proof(p, db=w.db, conn=conn)
                    else:
                        await update_proof(p, reserved=False, send_id=None, conn=conn)
            await store.drop_intent(conn, intent)

    # --- deposits: tokens ------------------------------------------------------------------------------
    def token_id(self, token: str) -> str:
        return deposit_id_of(parse_token(token).proofs)

    async def redeem_token(self, token: str) -> Redeemed:
        parsed = parse_token(token)
        for mint in parsed.mints:
            if not same_mint(mint, self.mint_url):
                raise WalletError(f"the token is from another mint ({mint[:100]}); this wallet accepts "
                                  f"{self.mint_url}", code="foreign_mint")
        if parsed.unit != "sat":
            raise WalletError(f"only sat tokens are accepted, not {parsed.unit[:20]}", code="invalid_token")
        async with self._lock:
            try:
                return await self._redeem(parsed.proofs)
            except MintUnreachable as e:
                raise WalletError(f"the mint did not answer; post the token again: {e}", code="rail_unavailable",
                                  status=503) from None
            except MintRefused as e:
                raise WalletError(f"the mint refused the token: {e.detail}", code="token_refused") from None

    async def _redeem(self, proofs: list[Proof]) -> Redeemed:
        w = self._wallet
        await self._known_keysets(proofs)
        deposit_id = deposit_id_of(proofs)
        async with w.db.connect() as conn:
            done = await store.receipt(conn, deposit_id)
            earlier = await store.intents(conn, deposit_id)
        for intent in earlier:  # this token was being redeemed when the wallet stopped
            try:
                await self._run_intent(intent, fresh=False)
            except MintRefused:
                pass
        if earlier:
            async with w.db.connect() as conn:
                done = await store.receipt(conn, deposit_id)
        if done is not None:  # redeemed before (the vault may not have journaled it): the same answer
            return Redeemed(deposit_id, done.amount_sat * MSAT_PER_SAT, done.reference)
        total = sum(p.amount for p in proofs)
        received = total - w.get_fees_for_proofs(proofs)
        if received <= 0:
            raise WalletError(f"the token ({total} sat) is worth less than the mint's fee to redeem it",
                              code="token_too_small")
        intent = await self._new_intent("redeem", deposit_id, split_amount(received), 0, proofs, own_inputs=False)
        try:
            await self._run_intent(intent, fresh=True)
        except MintRefused as e:
            if e.code == SPENT:
                raise WalletError("the token was already spent", code="token_spent", status=409) from None
            raise WalletError(f"the mint refused the token: {e.detail}", code="token_refused") from None
        async with w.db.connect() as conn:
            done = await store.receipt(conn, deposit_id)
        assert done is not None
        return Redeemed(deposit_id, done.amount_sat * MSAT_PER_SAT, done.reference)

    async def token_state(self, token: str) -> str:
        """NUT-07, read only: "unspent" (every proof of the token), "pending" (one is in an operation at the mint)
        or "spent" (one or more already spent). How a token handed to someone else is known to be used or not."""
        parsed = parse_token(token)
        for mint in parsed.mints:
            if not same_mint(mint, self.mint_url):
                raise WalletError("the token is from another mint", code="foreign_mint")
        try:
            async with self._lock:
                await self._known_keysets(parsed.proofs)
            states = await ask(LedgerAPI.check_proof_state(self._wallet, parsed.proofs), self.cfg.timeout_s)
        except (MintUnreachable, MintRefused) as e:
            raise WalletError(f"the mint could not say: {e}", code="rail_unavailable", status=503) from None
        values = [st.state.value for st in states.states]
        if len(values) != len(parsed.proofs):
            raise WalletError("the mint answered for other proofs", code="rail_unavailable", status=503)
        if "PENDING" in values:
            return "pending"
        return "unspent" if all(v == "UNSPENT" for v in values) else "spent"

    # --- deposits: mint quotes paid over Lightning -----------------------------------------------------
    async def create_invoice(self, amount_msat: int, memo: str, expiry_s: int) -> DepositInvoice:
        sats = whole_sats(amount_msat, "a deposit")
        w = self._wallet
        async with self._lock:  # Nutshell keeps the quote's signing key in the wallet's database
            try:
                quote = await ask(w.request_mint(sats, memo or None), self.cfg.timeout_s)
            except MintRefused as e:
                raise WalletError(f"the mint refused a deposit quote: {e.detail}", code="deposit_refused") from None
            except MintUnreachable as e:
                raise WalletError(f"the mint did not answer: {e}", code="rail_unavailable", status=503) from None
            payment_hash, _, _ = decode_bolt11(quote.request)
            expires_at = int(quote.expiry) if quote.expiry else int(time.time()) + expiry_s
            async with w.db.connect() as conn:
                await store.put_mint_quote(conn, store.MintQuoteRow(quote.quote, payment_hash, sats, expires_at,
                                                                    "open", None))
        return DepositInvoice(payment_hash, quote.request, sats * MSAT_PER_SAT, expires_at * 1000)

    async def watch_invoices(self, after_settle_index: int, on_settled: OnSettled) -> None:
        seen = after_settle_index
        last_error = ""
        while True:
            try:
                await self.collect_deposits()
                last_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if repr(e) != last_error:  # once per outage, not once per poll
                    log.warning("deposit quotes could not be checked: %r", e)
                last_error = repr(e)
            async with self._wallet.db.connect() as conn:
                settled = await store.settled_after(conn, seen)
            for q in settled:
                assert q.settle_index is not None
                await on_settled(SettledInvoice(q.payment_hash, q.amount_sat * MSAT_PER_SAT, q.settle_index))
                seen = q.settle_index
            await asyncio.sleep(self.poll_interval_s)

    async def collect_deposits(self) -> int:
        """Mint the ecash of every paid deposit quote (each once); returns how many were minted now."""
        w = self._wallet
        minted = 0
        async with w.db.connect() as conn:
            open_ = await store.open_mint_quotes(conn)
        for row in open_:
            q = await ask(LedgerAPI.get_mint_quote(w, row.quote_id), self.cfg.timeout_s)
            state = MintQuoteState(q.state) if q.state else MintQuoteState.unpaid
            async with self._lock:
                async with w.db.connect() as conn:
                    row2 = await store.mint_quote(conn, row.quote_id)
                    earlier = await store.intents(conn, row.quote_id)
                if row2 is None or row2.state != "open":
                    continue  # another process got to it
                if state in (MintQuoteState.paid, MintQuoteState.issued) or earlier:
                    if await self._mint_quote(row2, earlier, issued=state == MintQuoteState.issued):
                        minted += 1
                elif time.time() > row.expires_at + self.quote_grace_s:
                    async with w.db.connect() as conn:
                        await store.set_mint_quote_state(conn, row.quote_id, "expired")
        return minted

    async def _mint_quote(self, row: store.MintQuoteRow, earlier: list[store.Intent], issued: bool) -> bool:
        for intent in earlier:
            try:
                await self._run_intent(intent, fresh=False)
            except MintRefused:
                pass
        async with self._wallet.db.connect() as conn:
            now = await store.mint_quote(conn, row.quote_id)
        if now is not None and now.state == "issued":
            return True
        if issued:
            # Issued at the mint, but to outputs of none of our intents: the ecash cannot be recovered here.
            log.critical("deposit quote %s was issued at the mint to outputs this wallet does not know",
                         row.quote_id)
            async with self._wallet.db.connect() as conn:
                await store.set_mint_quote_state(conn, row.quote_id, "lost")
            return False
        intent = await self._new_intent("mint", row.quote_id, split_amount(row.amount_sat), 0, [], own_inputs=False)
        try:
            await self._run_intent(intent, fresh=True)
        except MintRefused as e:
            log.warning("deposit quote %s: the mint refused to mint: %s", row.quote_id, e)
            return False
        return True

    # --- payouts: planning -----------------------------------------------------------------------------
    async def plan_payout(self, bolt11: str, rail: str) -> PayoutPlan:
        if rail != "cashu":
            raise WalletError(f"this wallet pays on the cashu rail, not {rail[:20]}", code="rail_unavailable")
        payment_hash, amount_msat, _ = decode_bolt11(bolt11)
        w = self._wallet
        try:
            q = await ask(LedgerAPI.melt_quote(w, bolt11.strip(), w.unit, None), self.cfg.timeout_s)
        except MintRefused as e:
            raise WalletError(f"the mint will not pay this invoice: {e.detail}", code="invoice_refused") from None
        except MintUnreachable as e:
            raise WalletError(f"the mint did not answer: {e}", code="rail_unavailable", status=503) from None
        # The mint pays whole sats: an invoice of 1,500 msat costs 2 sat; the rounding is part of the fee.
        rounding = q.amount * MSAT_PER_SAT - amount_msat
        if not 0 <= rounding < MSAT_PER_SAT:
            raise WalletError(f"the mint quoted {q.amount} sat for an invoice of {amount_msat} msat",
                              code="invoice_refused")
        async with self._lock:
            async with w.db.connect() as conn:
                coins = self._coins(await self._spendable(conn))
        need = q.amount + q.fee_reserve
        chosen = select_to_cover(coins, need)
        if chosen is None:
            raise WalletError(f"the wallet's spendable ecash does not cover {need} sat", code="wallet_short",
                              status=503)
        fee_limit = rounding + (q.fee_reserve + fee_estimate_sat(chosen, self._active_ppk())) * MSAT_PER_SAT
        return PayoutPlan("cashu", payment_hash, amount_msat, fee_limit, q.quote, bolt11.strip())

    async def plan_token_payout(self, payout_id: str, amount_msat: int) -> PayoutPlan:
        sats = whole_sats(amount_msat, "a token payout")
        w = self._wallet
        async with self._lock:
            async with w.db.connect() as conn:
                coins = self._coins(await self._spendable(conn))
        if exact_subset(coins, sats) is not None:
            fee = fee_estimate_sat([], self._active_ppk())  # handed over as held, unless the wallet changes
        else:
            chosen = select_to_cover(coins, sats)
            if chosen is None:
                raise WalletError(f"the wallet's spendable ecash does not cover {sats} sat", code="wallet_short",
                                  status=503)
            fee = fee_estimate_sat(chosen, self._active_ppk())
        return PayoutPlan("cashu", payout_id, amount_msat, fee * MSAT_PER_SAT, payout_id, "")

    # --- payouts: sending and checking -----------------------------------------------------------------
    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        if plan.rail != "cashu":
            return PaymentStatus("failed", reason=f"not a cashu payout ({plan.rail})")
        async with self._quote_lock(plan.reference):
            if plan.destination == "":
                return await self._pay_token(plan)
            return await self._pay_melt(plan)

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus:
        async with self._quote_lock(plan.reference):
            if plan.destination == "":
                return await self._check_token(plan)
            return await self._check_melt(plan)

    # token payouts
    async def _issued(self, payout_id: str) -> Optional[PaymentStatus]:
        async with self._wallet.db.connect() as conn:
            t = await store.token_payout(conn, payout_id)
        return PaymentStatus("succeeded", t.fee_sat * MSAT_PER_SAT, token=t.token) if t else None

    async def _pay_token(self, plan: PayoutPlan) -> PaymentStatus:
        w = self._wallet
        if plan.amount_msat % MSAT_PER_SAT or plan.amount_msat <= 0:
            return PaymentStatus("failed", reason="a token payout must be whole sats")
        sats = plan.amount_msat // MSAT_PER_SAT
        async with self._lock:
            done = await self._issued(plan.reference)
            if done is not None:
                return done
            async with w.db.connect() as conn:
                earlier = await store.intents(conn, plan.reference)
            for intent in earlier:  # a swap for this payout was under way: finish or replay it, never a second
                try:
                    await self._run_intent(intent, fresh=False)
                except MintUnreachable:
                    return PaymentStatus("in_flight")
                except MintRefused:
                    pass
                done = await self._issued(plan.reference)
                if done is not None:
                    return done
            async with w.db.connect() as conn:
                proofs = await self._spendable(conn)
            coins = self._coins(proofs)
            exact = exact_subset(coins, sats)
            if exact is not None:
                send = [proofs[c.index] for c in exact]
                token = await w.serialize_proofs(send)
                async with w.db.connect() as conn:
                    await store.put_token_payout(conn, store.TokenPayout(plan.reference, sats, 0, token))
                    for p in send:
                        await invalidate_proof(p, db=w.db, conn=conn)
                return PaymentStatus("succeeded", 0, token=token)
            chosen = select_to_cover(coins, sats)
            if chosen is None:
                return PaymentStatus("failed", reason=f"the wallet's spendable ecash does not cover {sats} sat")
            fee = input_fee_sat([c.ppk for c in chosen])
            if fee * MSAT_PER_SAT > plan.fee_limit_msat:
                return PaymentStatus("failed", reason=f"the swap would cost {fee} sat, over the fee limit")
            inputs = [proofs[c.index] for c in chosen]
            keep = split_amount(sum(p.amount for p in inputs) - fee - sats)
            intent = await self._new_intent("token", plan.reference, keep + split_amount(sats), len(keep), inputs,
                                            own_inputs=True)
            try:
                await self._run_intent(intent, fresh=True)
            except MintUnreachable:
                return PaymentStatus("in_flight")
            except MintRefused as e:
                return PaymentStatus("failed", reason=f"the mint refused the swap: {e.detail}")
            done = await self._issued(plan.reference)
            return done if done is not None else PaymentStatus("in_flight")

    async def _check_token(self, plan: PayoutPlan) -> PaymentStatus:
        async with self._lock:
            done = await self._issued(plan.reference)
            if done is not None:
                return done
            async with self._wallet.db.connect() as conn:
                earlier = await store.intents(conn, plan.reference)
            for intent in earlier:
                outs = await derive_outputs(self._wallet, intent.keyset_id, intent.start, intent.amounts)
                signed = await self._restore(outs)
                if signed:
                    await self._finish_intent(intent, outs, signed)
                    done = await self._issued(plan.reference)
                    if done is not None:
                        return done
        # Nothing was signed: the swap never took effect, and pay() replays the same one (never a second).
        return PaymentStatus("not_found")

    # melts
    async def _pay_melt(self, plan: PayoutPlan) -> PaymentStatus:
        w = self._wallet
        quote_id = plan.reference
        async with w.db.connect() as conn:
            row = await store.melt(conn, quote_id)
        if row is not None and row.state in ("paid", "failed"):
            return self._melt_status(row)
        q = await ask(LedgerAPI.get_melt_quote(w, quote_id), self.cfg.timeout_s)  # unreachable: stays pending
        if q.state == MeltQuoteState.paid.value:
            return await self._finish_melt(plan, q.payment_preimage or "", None)
        if q.state == MeltQuoteState.pending.value:
            return PaymentStatus("in_flight")
        if (q.request or plan.destination).strip() != plan.destination or q.amount * MSAT_PER_SAT < plan.amount_msat:
            return PaymentStatus("failed", reason="the melt quote does not match the payout")
        async with self._lock:
            async with w.db.connect() as conn:
                row = await store.melt(conn, quote_id)
                locked = await get_proofs(db=w.db, melt_id=quote_id, conn=conn)
            if locked and not await self._all_unspent(locked):
                return PaymentStatus("in_flight")
            if not locked:
                async with w.db.connect() as conn:
                    proofs = await self._spendable(conn)
                rounding = q.amount * MSAT_PER_SAT - plan.amount_msat
                budget = (plan.fee_limit_msat - rounding) // MSAT_PER_SAT - q.fee_reserve
                chosen = select_to_cover(self._coins(proofs), q.amount + q.fee_reserve)
                if chosen is None:
                    return PaymentStatus("failed", reason="the wallet's spendable ecash does not cover the payout")
                if input_fee_sat([c.ppk for c in chosen]) > budget:
                    return PaymentStatus("failed", reason="the mint's input fees would exceed the fee limit")
                locked = [proofs[c.index] for c in chosen]
            inputs_sat = sum(p.amount for p in locked)
            overpaid = inputs_sat - q.amount - w.get_fees_for_proofs(locked)
            n_change = blank_outputs(overpaid)
            async with w.db.connect() as conn:
                start = await bump_secret_derivation(db=w.db, keyset_id=w.keyset_id, by=n_change, conn=conn) \
                    if n_change else 0
                change = (row.change if row is not None else []) + ([[w.keyset_id, start, n_change]] if n_change
                                                                       else [])
                await store.put_melt(conn, store.MeltRow(quote_id, plan.payment_hash, q.amount, inputs_sat, change,
                                                         "sending"))
                for p in locked:
                    await update_proof(p, reserved=True, melt_id=quote_id, conn=conn)
        outs = await derive_outputs(w, w.keyset_id, start, [1] * n_change)
        try:
            resp = await ask(self._send_melt(quote_id, locked, outs), self.cfg.timeout_s)
        except MintUnreachable:
            return PaymentStatus("in_flight")
        except MintRefused as e:
            return await self._after_refusal(plan, e.detail)
        if resp.state == MeltQuoteState.paid.value:
            given = dict(enumerate(resp.change or [])) if n_change else {}
            return await self._finish_melt(plan, resp.payment_preimage or "", (outs, given))
        if resp.state == MeltQuoteState.pending.value:
            return PaymentStatus("in_flight")
        return await self._after_refusal(plan, "the mint reported the payment unpaid")

    async def _send_melt(self, quote_id: str, inputs: list[Proof], outs: Outputs) -> Any:
        """The melt request itself (a seam: tests stop a wallet here, after its inputs are locked)."""
        return await LedgerAPI.melt(self._wallet, quote_id, inputs, outs.messages or None)

    async def _after_refusal(self, plan: PayoutPlan, detail: str) -> PaymentStatus:
        """The mint answered a melt with an error: its quote state and our inputs' state say what happened."""
        q = await ask(LedgerAPI.get_melt_quote(self._wallet, plan.reference), self.cfg.timeout_s)
        if q.state == MeltQuoteState.paid.value:
            return await self._finish_melt(plan, q.payment_preimage or "", None)
        if q.state == MeltQuoteState.pending.value:
            return PaymentStatus("in_flight")
        if await self._unlock_if_unspent(plan.reference, failed_reason=detail):
            return PaymentStatus("failed", reason=f"the mint could not pay: {detail}")
        return PaymentStatus("in_flight")

    async def _check_melt(self, plan: PayoutPlan) -> PaymentStatus:
        w = self._wallet
        async with w.db.connect() as conn:
            row = await store.melt(conn, plan.reference)
        if row is not None and row.state in ("paid", "failed"):
            return self._melt_status(row)
        q = await ask(LedgerAPI.get_melt_quote(w, plan.reference), self.cfg.timeout_s)
        if q.state == MeltQuoteState.paid.value:
            return await self._finish_melt(plan, q.payment_preimage or "", None)
        if q.state == MeltQuoteState.pending.value:
            return PaymentStatus("in_flight")
        # Unpaid: never sent, or sent and refused. Unlocked so that pay() can send it.
        if await self._unlock_if_unspent(plan.reference, failed_reason=None):
            return PaymentStatus("not_found")
        return PaymentStatus("in_flight")

    async def _all_unspent(self, proofs: list[Proof]) -> bool:
        states = await ask(LedgerAPI.check_proof_state(self._wallet, proofs), self.cfg.timeout_s)
        return len(states.states) == len(proofs) and all(s.state.value == "UNSPENT" for s in states.states)

    async def _unlock_if_unspent(self, quote_id: str, failed_reason: Optional[str]) -> bool:
        """Release a melt's locked inputs if the mint says none was spent; record the outcome. False: some were."""
        w = self._wallet
        async with self._lock:
            async with w.db.connect() as conn:
                locked = await get_proofs(db=w.db, melt_id=quote_id, conn=conn)
                row = await store.melt(conn, quote_id)
            if locked and not await self._all_unspent(locked):
                return False
            async with w.db.connect() as conn:
                for p in locked:
                    await update_proof(p, reserved=False, melt_id=None, conn=conn)
                if row is not None:
                    await store.put_melt(conn, store.MeltRow(
                        row.quote_id, row.payment_hash, row.amount_sat, 0, row.change,
                        "failed" if failed_reason is not None else "unsent", reason=failed_reason or ""))
            return True

    async def _finish_melt(self, plan: PayoutPlan, preimage: str,
                           given: Optional[tuple[Outputs, dict[int, BlindedSignature]]]) -> PaymentStatus:
        """The mint paid: take the change (from its answer, or restored), retire the inputs, record the cost."""
        w = self._wallet
        async with self._lock:
            async with w.db.connect() as conn:
                row = await store.melt(conn, plan.reference)
                locked = await get_proofs(db=w.db, melt_id=plan.reference, conn=conn)
            if row is None:
                log.critical("melt %s was paid but the wallet has no record of sending it", plan.reference)
                return PaymentStatus("succeeded", 0, preimage=preimage)
            if row.state == "paid":
                return self._melt_status(row)
            change: list[Proof] = []
            if given is not None and given[1]:
                outs, sigs = given
                change = [unblind(w, s, outs.secrets[i], outs.rs[i], outs.paths[i]) for i, s in sigs.items()]
            elif given is None:
                for keyset_id, start, n in row.change:  # every attempt's blank outputs: one of them was paid
                    outs = await derive_outputs(w, keyset_id, int(start), [1] * int(n))
                    sigs = await self._restore(outs)
                    change += [unblind(w, s, outs.secrets[i], outs.rs[i], outs.paths[i]) for i, s in sigs.items()]
            change_sat = sum(p.amount for p in change)
            fee_msat = (row.inputs_sat - change_sat) * MSAT_PER_SAT - plan.amount_msat
            if fee_msat > plan.fee_limit_msat or fee_msat < 0:
                log.critical("melt %s cost a fee of %d msat against a limit of %d", plan.reference, fee_msat,
                             plan.fee_limit_msat)
            async with w.db.connect() as conn:
                known = await store.known_secrets(conn, [p.secret for p in change])
                for p in change:
                    if p.secret not in known:
                        await store_proof(p, db=w.db, conn=conn)
                for p in locked:
                    await invalidate_proof(p, db=w.db, conn=conn)
                done = store.MeltRow(row.quote_id, row.payment_hash, row.amount_sat, row.inputs_sat, row.change,
                                     "paid", max(fee_msat, 0), preimage)
                await store.put_melt(conn, done)
            return self._melt_status(done)

    @staticmethod
    def _melt_status(row: store.MeltRow) -> PaymentStatus:
        if row.state == "paid":
            return PaymentStatus("succeeded", row.fee_msat, preimage=row.preimage)
        return PaymentStatus("failed", reason=row.reason or "the mint could not pay the invoice")

    # --- books ---------------------------------------------------------------------------------------------
    async def assets_msat(self) -> int:
        """Every proof held, those locked in a melt under way included (they are ours until it is paid)."""
        async with self._wallet.db.connect() as conn:
            return await store.held_sat(conn, self._keyset_ids()) * MSAT_PER_SAT

    async def balances(self) -> dict[str, Any]:
        """Held, spendable and locked sats (operator view)."""
        async with self._wallet.db.connect() as conn:
            spendable = sum(p.amount for p in await self._spendable(conn))
            held = await store.held_sat(conn, self._keyset_ids())
        return {"held_sat": held, "spendable_sat": spendable, "locked_sat": held - spendable}
