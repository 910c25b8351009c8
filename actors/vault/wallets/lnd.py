"""The Lightning rail on an LND node, over gRPC: TLS with the node's certificate, a macaroon in call metadata.

Deposits are invoices (AddInvoice) reported once settled by SubscribeInvoices, whose settle index is the
vault's cursor. Payouts are decoded by the node first (DecodePayReq: the invoice's amount is what is charged),
sent with routerrpc SendPaymentV2 and a non-zero fee limit, and checked with TrackPaymentV2. The node is
idempotent on the payment hash (a second send of a known hash is refused with ALREADY_EXISTS), which is what
makes a resend after a crash safe. Only a FAILED payment is reported as failed: a timeout or a broken stream
is "in flight" or an exception, never a failure.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from types import ModuleType
from typing import Any, Callable, Optional

import grpc
import grpc.aio

from schemas.config import LndConfig

from . import macaroons
from .base import (DepositInvoice, OnSettled, PaymentStatus, PayoutPlan, Redeemed, SettledInvoice, SingleWallet,
                   WalletError, decode_bolt11, lightning_fee_limit_msat)

log = logging.getLogger("arbstr.vault.lnd")


def _load_protos() -> tuple[ModuleType, ModuleType]:
    """The generated LND messages shipped in the cashu package, loaded by file.

    Importing them as ``cashu.lightning.…`` would run ``cashu.lightning``'s ``__init__``, which imports every
    mint backend and reads a ``.env`` from the working directory. Loading the two files directly registers the
    same descriptors (an identical later import shares them), without those side effects.
    """
    spec = importlib.util.find_spec("cashu")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the LND rail needs the cashu package (it ships LND's generated gRPC messages)")
    base = os.path.join(list(spec.submodule_search_locations)[0], "lightning", "lnd_grpc", "protos")
    modules = []
    for name in ("lightning_pb2", "router_pb2"):
        file_spec = importlib.util.spec_from_file_location(f"arbstr_lnd_{name}", os.path.join(base, f"{name}.py"))
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


ln, routerrpc = _load_protos()

GET_INFO = "/lnrpc.Lightning/GetInfo"
ADD_INVOICE = "/lnrpc.Lightning/AddInvoice"
LIST_INVOICES = "/lnrpc.Lightning/ListInvoices"
SUBSCRIBE_INVOICES = "/lnrpc.Lightning/SubscribeInvoices"
DECODE_PAY_REQ = "/lnrpc.Lightning/DecodePayReq"
CHANNEL_BALANCE = "/lnrpc.Lightning/ChannelBalance"
SEND_PAYMENT_V2 = "/routerrpc.Router/SendPaymentV2"
TRACK_PAYMENT_V2 = "/routerrpc.Router/TrackPaymentV2"

_LIST_PAGE = 1_000
# Transport or availability failures: the node may never have seen the request, or its answer was lost. Any other
# code is the node's own answer (a refusal).
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.RESOURCE_EXHAUSTED}


class LndError(Exception):
    """The node cannot be used as configured (certificate, macaroon, unreachable at start), or it gave no clear
    answer about a payment (the vault keeps that payout pending and asks again)."""


def _rpc_error(e: grpc.aio.AioRpcError) -> str:
    # The code and the node's own message: never the metadata (which holds the macaroon).
    return f"{e.code().name}: {e.details() or ''}".strip()


def payment_status(p: Any) -> PaymentStatus:
    """An lnrpc.Payment update as one of the vault's states."""
    if p.status == ln.Payment.SUCCEEDED:
        return PaymentStatus("succeeded", fee_msat=int(p.fee_msat), preimage=p.payment_preimage)
    if p.status == ln.Payment.FAILED:
        return PaymentStatus("failed", reason=ln.PaymentFailureReason.Name(p.failure_reason))
    return PaymentStatus("in_flight")  # INITIATED, IN_FLIGHT: it may still go either way


class LndWallet(SingleWallet):
    kind = "lnd"
    rails = ("lightning",)

    def __init__(self, cfg: LndConfig, fee_limit_ppm: int = 5_000, fee_limit_min_msat: int = 1_000,
                 payment_timeout_s: int = 60, pay_wait_s: Optional[float] = None) -> None:
        self.cfg = cfg
        self.fee_limit_ppm = fee_limit_ppm
        self.fee_limit_min_msat = fee_limit_min_msat
        self.payment_timeout_s = payment_timeout_s  # how long the node keeps trying routes
        self.pay_wait_s = pay_wait_s if pay_wait_s is not None else cfg.timeout_s  # how long pay() listens
        self.identity = ""
        self.alias = ""
        self._channel: Optional[grpc.aio.Channel] = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._callables: dict[str, Callable[..., Any]] = {}

    # --- lifecycle -------------------------------------------------------------------------------------
    def _read_cert(self) -> Optional[bytes]:
        if not self.cfg.tls_cert_path:
            return None  # the system's trust store (a node behind a publicly trusted certificate)
        try:
            with open(self.cfg.tls_cert_path, "rb") as f:
                return f.read()
        except OSError as e:
            raise LndError(f"cannot read the LND TLS certificate {self.cfg.tls_cert_path}: {e.strerror}") from None

    def _read_macaroon(self) -> bytes:
        if self.cfg.macaroon_hex is not None:
            raw = self.cfg.macaroon_hex.get_secret_value().strip()
            source = "macaroon_hex"
        else:
            try:
                with open(self.cfg.macaroon_path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise LndError(f"cannot read the LND macaroon {self.cfg.macaroon_path}: {e.strerror}") from None
            if data[:1] == b"\x02":
                return data
            raw, source = data.decode("ascii", "replace").strip(), "the macaroon file"  # a hex dump of one
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise LndError(f"{source} is neither a binary macaroon nor hex") from None

    async def start(self) -> None:
        cert = self._read_cert()
        mac = self._read_macaroon()
        try:
            macaroons.check_vault_macaroon(mac)
        except macaroons.MacaroonError as e:
            raise LndError(f"refusing to start the LND rail: {e}") from None
        self._metadata = (("macaroon", mac.hex()),)
        self._channel = grpc.aio.secure_channel(
            self.cfg.host, grpc.ssl_channel_credentials(root_certificates=cert),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        self._callables = {}
        try:
            info = await self._unary(GET_INFO, ln.GetInfoRequest(), ln.GetInfoResponse)
        except grpc.aio.AioRpcError as first:
            try:
                if first.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # Not reachable yet (LND may come up after the vault): wait for the channel until the deadline.
                info = await self._unary(GET_INFO, ln.GetInfoRequest(), ln.GetInfoResponse, wait_for_ready=True)
            except grpc.aio.AioRpcError:
                await self.stop()
                # The first error says why (connection refused, TLS handshake); the retry only says "deadline".
                raise LndError(f"the LND node at {self.cfg.host} did not answer GetInfo ({_rpc_error(first)})") \
                    from None
        self.identity = "lnd:" + info.identity_pubkey
        self.alias = info.alias
        log.info("LND rail: node %s (%s) at %s", info.identity_pubkey, info.alias, self.cfg.host)

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # --- calls -------------------------------------------------------------------------------------------
    def _callable(self, method: str, response_cls: Any, streaming: bool) -> Callable[..., Any]:
        fn = self._callables.get(method)
        if fn is None:
            if self._channel is None:
                raise LndError("the LND rail is not started")
            make = self._channel.unary_stream if streaming else self._channel.unary_unary
            fn = make(method, request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=response_cls.FromString)
            self._callables[method] = fn
        return fn

    async def _unary(self, method: str, request: Any, response_cls: Any, wait_for_ready: bool = False) -> Any:
        return await self._callable(method, response_cls, False)(
            request, timeout=self.cfg.timeout_s, metadata=self._metadata, wait_for_ready=wait_for_ready)

    def _stream(self, method: str, request: Any, response_cls: Any, timeout: Optional[float]) -> Any:
        return self._callable(method, response_cls, True)(request, timeout=timeout, metadata=self._metadata)

    # --- deposits --------------------------------------------------------------------------------------
    async def create_invoice(self, amount_msat: int, memo: str, expiry_s: int) -> DepositInvoice:
        try:
            resp = await self._unary(ADD_INVOICE, ln.Invoice(value_msat=amount_msat, memo=memo, expiry=expiry_s),
                                     ln.AddInvoiceResponse)
        except grpc.aio.AioRpcError as e:
            raise WalletError(f"the Lightning node did not create an invoice ({_rpc_error(e)})",
                              code="rail_unavailable", status=503) from None
        # What the invoice itself says (hash, amount, expiry) is what a payer will see.
        payment_hash, amount, expires_at_s = decode_bolt11(resp.payment_request)
        if payment_hash != resp.r_hash.hex():
            raise WalletError("the node's invoice does not match its payment hash", code="rail_unavailable",
                              status=503)
        return DepositInvoice(payment_hash, resp.payment_request, amount, expires_at_s * 1000)

    async def watch_invoices(self, after_settle_index: int, on_settled: OnSettled) -> None:
        """Report settled invoices after the cursor, in settle-index order, each once; return when the stream ends.

        LND replays settlements after a non-zero ``settle_index`` and nothing for 0, so from 0 (no deposit
        credited yet) the ones already settled are listed; a later gap in the indexes (settlements made while
        the subscription was being set up) is filled the same way.
        """
        seen = after_settle_index
        call = self._stream(SUBSCRIBE_INVOICES, ln.InvoiceSubscription(settle_index=seen), ln.Invoice, None)
        try:
            if seen == 0:
                seen = await self._backfill(seen, None, on_settled)
            async for inv in call:
                if inv.state != ln.Invoice.SETTLED or inv.settle_index <= seen:
                    continue  # an added/cancelled invoice, or a settlement already reported (a replay)
                if inv.settle_index > seen + 1:
                    seen = await self._backfill(seen, inv.settle_index, on_settled)
                await on_settled(SettledInvoice(inv.r_hash.hex(), int(inv.amt_paid_msat), int(inv.settle_index)))
                seen = inv.settle_index
        finally:
            call.cancel()

    async def _backfill(self, after: int, before: Optional[int], on_settled: OnSettled) -> int:
        """Report invoices settled with ``after < settle_index < before`` (found by listing); the new cursor."""
        settled: list[SettledInvoice] = []
        offset = 0
        while True:
            page = await self._unary(LIST_INVOICES, ln.ListInvoiceRequest(index_offset=offset,
                                                                          num_max_invoices=_LIST_PAGE),
                                     ln.ListInvoiceResponse)
            for inv in page.invoices:
                if inv.state == ln.Invoice.SETTLED and inv.settle_index > after and (
                        before is None or inv.settle_index < before):
                    settled.append(SettledInvoice(inv.r_hash.hex(), int(inv.amt_paid_msat), int(inv.settle_index)))
            if len(page.invoices) < _LIST_PAGE or page.last_index_offset <= offset:
                break
            offset = page.last_index_offset
        for s in sorted(settled, key=lambda s: s.settle_index):
            await on_settled(s)
            after = s.settle_index
        return after

    def token_id(self, token: str) -> str:
        raise WalletError("the LND rail takes no ecash tokens", code="rail_unavailable", status=400)

    async def redeem_token(self, token: str) -> Redeemed:
        raise WalletError("the LND rail takes no ecash tokens", code="rail_unavailable", status=400)

    # --- payouts ---------------------------------------------------------------------------------------
    async def plan_payout(self, bolt11: str, rail: str = "lightning") -> PayoutPlan:
        if rail != "lightning":
            raise WalletError(f"the LND rail cannot pay on the {rail} rail", code="rail_unavailable", status=400)
        invoice = bolt11.strip()
        try:
            req = await self._unary(DECODE_PAY_REQ, ln.PayReqString(pay_req=invoice), ln.PayReq)
        except grpc.aio.AioRpcError as e:
            if e.code() in _UNREACHABLE:
                raise WalletError(f"the Lightning node is unavailable ({_rpc_error(e)})", code="rail_unavailable",
                                  status=503) from None
            raise WalletError(f"the node cannot pay this invoice ({_rpc_error(e)})", code="invalid_invoice") \
                from None
        amount = int(req.num_msat)
        if amount <= 0:
            raise WalletError("the invoice has no amount: only invoices that name their amount can be paid",
                              code="invoice_without_amount")
        if req.timestamp + req.expiry <= time.time():
            raise WalletError("the invoice has expired", code="invoice_expired")
        fee_limit = lightning_fee_limit_msat(amount, self.fee_limit_ppm, self.fee_limit_min_msat)
        return PayoutPlan("lightning", req.payment_hash, amount, fee_limit, req.payment_hash, invoice)

    async def plan_token_payout(self, payout_id: str, amount_msat: int) -> PayoutPlan:
        raise WalletError("the LND rail issues no ecash tokens", code="rail_unavailable", status=400)

    async def pay(self, plan: PayoutPlan) -> PaymentStatus:
        """Send once and listen for up to ``pay_wait_s``; a hash the node knows is tracked (its first fate stands)."""
        request = routerrpc.SendPaymentRequest(payment_request=plan.destination,
                                               fee_limit_msat=plan.fee_limit_msat,  # 0 would mean free routes only
                                               timeout_seconds=self.payment_timeout_s, no_inflight_updates=True)
        call = self._stream(SEND_PAYMENT_V2, request, ln.Payment, self.pay_wait_s)
        try:
            async for update in call:
                status = payment_status(update)
                if status.state != "in_flight":
                    return status
            return PaymentStatus("in_flight")  # the stream ended with the payment still under way
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                return await self._follow(plan)
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return PaymentStatus("in_flight")  # sent or not, a later check tells (and resends if not)
            if e.code() not in _UNREACHABLE and await self._never_payable(plan):
                return PaymentStatus("failed", reason=f"the invoice expired before it was sent ({_rpc_error(e)})")
            raise LndError(f"SendPaymentV2 for {plan.payment_hash}: {_rpc_error(e)}") from None
        finally:
            call.cancel()

    async def _never_payable(self, plan: PayoutPlan) -> bool:
        """The node refused to send, nothing was ever sent, and no later send can succeed (the invoice expired).

        Without this, a payout whose invoice expired between planning and sending would stay held forever:
        every check finds it not sent and every resend is refused.
        """
        try:
            _, _, expires_at_s = decode_bolt11(plan.destination)
        except WalletError:
            return False
        if expires_at_s > time.time():
            return False
        return (await self.check_payout(plan)).state == "not_found"

    async def _follow(self, plan: PayoutPlan) -> PaymentStatus:
        """The state of a payment the node already knows, waiting up to ``pay_wait_s`` for it to end."""
        request = routerrpc.TrackPaymentRequest(payment_hash=bytes.fromhex(plan.reference))
        call = self._stream(TRACK_PAYMENT_V2, request, ln.Payment, self.pay_wait_s)
        status = PaymentStatus("in_flight")
        try:
            async for update in call:
                status = payment_status(update)
                if status.state != "in_flight":
                    return status
            return status
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return status
            raise LndError(f"TrackPaymentV2 for {plan.payment_hash}: {_rpc_error(e)}") from None
        finally:
            call.cancel()

    async def check_payout(self, plan: PayoutPlan) -> PaymentStatus:
        # The first update of TrackPaymentV2 is the payment's current state. no_inflight_updates stays off: with
        # it, the node holds back in-flight states, so a payment under way would answer nothing.
        request = routerrpc.TrackPaymentRequest(payment_hash=bytes.fromhex(plan.reference))
        call = self._stream(TRACK_PAYMENT_V2, request, ln.Payment, self.cfg.timeout_s)
        try:
            async for update in call:
                return payment_status(update)
            raise LndError(f"TrackPaymentV2 for {plan.payment_hash} ended without a state")
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return PaymentStatus("not_found")  # never initiated: safe (and necessary) to send
            raise LndError(f"TrackPaymentV2 for {plan.payment_hash}: {_rpc_error(e)}") from None
        finally:
            call.cancel()

    async def assets_msat(self) -> int:
        """Spendable channel balance plus what sits in outgoing HTLCs (payouts under way are still liabilities)."""
        bal = await self._unary(CHANNEL_BALANCE, ln.ChannelBalanceRequest(), ln.ChannelBalanceResponse)
        return int(bal.local_balance.msat) + int(bal.unsettled_local_balance.msat)
