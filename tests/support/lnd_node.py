"""A small LND node for tests: a real grpc.aio server over TLS serving the Lightning and Router RPCs the vault
uses, from the generated stubs that ship in the cashu package, checking a macaroon on every call.

It behaves like LND where the vault depends on it: macaroons in LND's format (v2 binary, identifier = version 3 +
protobuf MacaroonId, HMAC-SHA256 signature chain), per-RPC permissions (UNAUTHENTICATED for a bad macaroon,
PERMISSION_DENIED for a missing permission), settle indexes that replay only after a non-zero cursor, one
payment per hash (ALREADY_EXISTS on a repeat unless the first one failed), NOT_FOUND for an unknown payment,
TrackPaymentV2 whose first update is the current state, and a fee limit of 0 meaning zero-fee routes only.

Knobs: ``settle`` (an outside payer paid an invoice), ``replay_on_subscribe`` / ``replay`` (re-send settled
invoices), ``end_subscriptions``, ``outcome`` of the next payments (succeed, fail, in_flight, unavailable before
recording, drop the stream after recording), ``resolve`` (an in-flight payment ends), ``fee_msat``, and the
local balance, which moves with payments and settled invoices.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Optional

import bolt11 as bolt11_lib
import grpc
import grpc.aio
from bolt11 import Bolt11, Feature, Features, FeatureState, MilliSatoshi, TagChar, Tags
from cashu.lightning.lnd_grpc.protos import lightning_pb2 as ln
from cashu.lightning.lnd_grpc.protos import lightning_pb2_grpc as ln_grpc
from cashu.lightning.lnd_grpc.protos import router_pb2_grpc as router_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from actors.vault.wallets import macaroons

Outcome = Literal["succeed", "fail", "in_flight", "unavailable", "drop"]

# What each RPC needs, as in LND's permission table.
RPC_PERMISSIONS: dict[str, tuple[str, str]] = {
    "/lnrpc.Lightning/GetInfo": ("info", "read"),
    "/lnrpc.Lightning/AddInvoice": ("invoices", "write"),
    "/lnrpc.Lightning/LookupInvoice": ("invoices", "read"),
    "/lnrpc.Lightning/ListInvoices": ("invoices", "read"),
    "/lnrpc.Lightning/SubscribeInvoices": ("invoices", "read"),
    "/lnrpc.Lightning/DecodePayReq": ("offchain", "read"),
    "/lnrpc.Lightning/ChannelBalance": ("offchain", "read"),
    "/routerrpc.Router/SendPaymentV2": ("offchain", "write"),
    "/routerrpc.Router/TrackPaymentV2": ("offchain", "read"),
}
ADMIN_OPS: dict[str, list[str]] = {
    "address": ["read", "write"], "info": ["read", "write"], "invoices": ["read", "write"],
    "macaroon": ["generate", "read", "write"], "message": ["read", "write"], "offchain": ["read", "write"],
    "onchain": ["read", "write"], "peers": ["read", "write"], "signer": ["generate", "read"]}
VAULT_OPS: dict[str, list[str]] = {"info": ["read"], "invoices": ["read", "write"], "offchain": ["read", "write"]}
ROOT_KEY_ID = b"0"


# --- macaroons, minted independently of the wallet's decoder (the identifier is real protobuf) ---------------
def _macaroon_id_class() -> Any:
    f = descriptor_pb2.FileDescriptorProto(name="arbstr_tests_macaroonid.proto", package="arbstrtests",
                                           syntax="proto3")
    op = f.message_type.add(name="Op")
    op.field.add(name="entity", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                 label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    op.field.add(name="actions", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                 label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    mid = f.message_type.add(name="MacaroonId")
    mid.field.add(name="nonce", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    mid.field.add(name="storageId", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    mid.field.add(name="ops", number=3, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                  label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, type_name=".arbstrtests.Op")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("arbstrtests.MacaroonId"))


MacaroonId = _macaroon_id_class()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _packet(field_type: int, data: bytes) -> bytes:
    return _uvarint(field_type) + _uvarint(len(data)) + data


def mint_macaroon(root_key: bytes, ops: dict[str, list[str]], caveats: tuple[str, ...] = (),
                  storage_id: bytes = ROOT_KEY_ID, location: str = "lnd") -> bytes:
    """A v2 binary macaroon as LND bakes it: ops sorted, identifier = b"\\x03" + MacaroonId."""
    mid = MacaroonId(nonce=os.urandom(16), storageId=storage_id)
    for entity in sorted(ops):
        mid.ops.add(entity=entity, actions=sorted(set(ops[entity])))
    identifier = b"\x03" + mid.SerializeToString()
    sig = _hmac(_hmac(b"macaroons-key-generator", root_key), identifier)
    out = b"\x02" + _packet(1, location.encode()) + _packet(2, identifier) + b"\x00"
    for c in caveats:
        out += _packet(2, c.encode()) + b"\x00"
        sig = _hmac(sig, c.encode())
    return out + b"\x00" + _packet(6, sig)


# --- TLS ----------------------------------------------------------------------------------------------------
def make_tls(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 and localhost, as LND makes its tls.cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "arbstr test lnd"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls.cert", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- state --------------------------------------------------------------------------------------------------
@dataclass
class NodeInvoice:
    memo: str
    preimage: bytes
    payment_hash: bytes
    value_msat: int
    payment_request: str
    creation_date: int
    expiry: int
    add_index: int
    payment_addr: bytes
    state: int = ln.Invoice.OPEN
    settle_index: int = 0
    settle_date: int = 0
    amt_paid_msat: int = 0

    def proto(self) -> Any:
        return ln.Invoice(memo=self.memo, r_preimage=self.preimage, r_hash=self.payment_hash,
                          value=self.value_msat // 1000, value_msat=self.value_msat,
                          settled=self.state == ln.Invoice.SETTLED,
                          creation_date=self.creation_date, settle_date=self.settle_date,
                          payment_request=self.payment_request, expiry=self.expiry, add_index=self.add_index,
                          settle_index=self.settle_index, amt_paid_sat=self.amt_paid_msat // 1000,
                          amt_paid_msat=self.amt_paid_msat, state=self.state, payment_addr=self.payment_addr)


@dataclass
class NodePayment:
    payment_hash: str
    value_msat: int
    payment_request: str
    fee_limit_msat: int
    status: int = ln.Payment.IN_FLIGHT
    fee_msat: int = 0
    preimage: str = ""
    failure_reason: int = ln.FAILURE_REASON_NONE
    created_ns: int = field(default_factory=time.time_ns)

    def proto(self) -> Any:
        return ln.Payment(payment_hash=self.payment_hash, value_sat=self.value_msat // 1000,
                          value_msat=self.value_msat, payment_request=self.payment_request, status=self.status,
                          fee_sat=self.fee_msat // 1000, fee_msat=self.fee_msat, payment_preimage=self.preimage,
                          creation_time_ns=self.created_ns, failure_reason=self.failure_reason)


_TERMINAL = (ln.Payment.SUCCEEDED, ln.Payment.FAILED)


class LndNode:
    """Start with ``await node.start()``; ``host``, ``cert_path`` and ``vault_macaroon()`` configure a wallet."""

    def __init__(self, directory: Path, network: str = "bcrt") -> None:
        self.directory = directory
        self.network = network
        self.root_key = os.urandom(32)
        self._node_key = ec.generate_private_key(ec.SECP256K1())
        self.pubkey = self._node_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint).hex()
        self.alias = "arbstr-test-lnd"
        self.server: Optional[grpc.aio.Server] = None
        self.port = 0
        self.cert_path, self.key_path = make_tls(directory)
        # State.
        self.local_balance_msat = 0
        self.remote_balance_msat = 1_000_000_000
        self.invoices: dict[str, NodeInvoice] = {}  # hex payment hash -> invoice
        self.payments: dict[str, NodePayment] = {}
        self._add_index = 0
        self._settle_index = 0
        # Knobs.
        self.outcome: Outcome = "succeed"
        self.drop_then: Literal["succeed", "fail", "in_flight"] = "succeed"  # what a dropped payment becomes
        self.failure_reason: int = ln.FAILURE_REASON_NO_ROUTE
        self.fee_msat = 0  # the route fee a payment costs (a fee limit below it: no route)
        self.replay_on_subscribe = False  # a new subscription first re-sends every settled invoice
        # Observations.
        self.calls: Counter[str] = Counter()
        self.send_counts: Counter[str] = Counter()  # SendPaymentV2 requests per payment hash
        self.subscription_requests: list[int] = []  # the settle_index of each SubscribeInvoices
        self._invoice_subs: set[asyncio.Queue[Optional[Any]]] = set()
        self._payment_subs: dict[str, set[asyncio.Queue[Any]]] = {}

    # --- lifecycle -----------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "LndNode":
        self.server = grpc.aio.server()
        ln_grpc.add_LightningServicer_to_server(_Lightning(self), self.server)
        router_grpc.add_RouterServicer_to_server(_Router(self), self.server)
        creds = grpc.ssl_server_credentials([(self.key_path.read_bytes(), self.cert_path.read_bytes())])
        self.port = self.server.add_secure_port(f"127.0.0.1:{self.port}", creds)
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.end_subscriptions()
            await self.server.stop(grace=None)
            self.server = None

    def admin_macaroon(self) -> bytes:
        return mint_macaroon(self.root_key, ADMIN_OPS)

    def vault_macaroon(self) -> bytes:
        return mint_macaroon(self.root_key, VAULT_OPS)

    # --- auth -------------------------------------------------------------------------------------------
    async def authorize(self, context: grpc.aio.ServicerContext, method: str) -> None:
        self.calls[method.rsplit("/", 1)[-1]] += 1
        values = [v for k, v in (context.invocation_metadata() or ()) if k == "macaroon"]
        if len(values) != 1:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"expected 1 macaroon, got {len(values)}")
        try:
            raw = bytes.fromhex(values[0] if isinstance(values[0], str) else values[0].decode())
            mac = macaroons.decode(raw)
            mid = MacaroonId.FromString(mac.identifier[1:]) if mac.identifier[:1] == b"\x03" else None
        except Exception:
            mid = None
        if mid is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "cannot decode the macaroon")
        if mid.storageId != ROOT_KEY_ID:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "root key with that id doesn't exist")
        sig = _hmac(_hmac(b"macaroons-key-generator", self.root_key), mac.identifier)
        for c in mac.caveats:
            sig = _hmac(sig, c.identifier)
        if not hmac.compare_digest(sig, mac.signature):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "verification failed: signature mismatch after caveat verification")
        for c in mac.caveats:
            if not self._caveat_holds(c.identifier.decode("utf-8", "replace")):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caveat not satisfied")
        granted = {(op.entity, a) for op in mid.ops for a in op.actions}
        if RPC_PERMISSIONS[method] not in granted and ("uri", method) not in granted:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "verification failed: permission denied")

    @staticmethod
    def _caveat_holds(condition: str) -> bool:
        kind, _, arg = condition.partition(" ")
        if kind == "time-before":
            return datetime.datetime.now(datetime.timezone.utc) < datetime.datetime.fromisoformat(
                arg.replace("Z", "+00:00"))
        return False  # unknown conditions fail closed, as in the bakery

    # --- invoices ---------------------------------------------------------------------------------------
    def make_invoice(self, amount_msat: int, memo: str = "", expiry_s: int = 86_400,
                     preimage: Optional[bytes] = None, date: Optional[int] = None
                     ) -> tuple[str, bytes, bytes, bytes]:
        """(bolt11, payment hash, preimage, payment addr) signed with this node's key."""
        preimage = preimage or os.urandom(32)
        payment_hash = hashlib.sha256(preimage).digest()
        payment_addr = os.urandom(32)
        tags = Tags()
        tags.add(TagChar.features, Features.from_feature_list({Feature.payment_secret: FeatureState.required}))
        tags.add(TagChar.description, memo)
        tags.add(TagChar.expire_time, expiry_s)
        tags.add(TagChar.payment_secret, payment_addr.hex())
        tags.add(TagChar.payment_hash, payment_hash.hex())
        invoice = Bolt11(currency=self.network, amount_msat=MilliSatoshi(amount_msat) if amount_msat else None,
                         date=date if date is not None else int(time.time()), tags=tags)
        key_hex = self._node_key.private_numbers().private_value.to_bytes(32, "big").hex()
        return bolt11_lib.encode(invoice, key_hex), payment_hash, preimage, payment_addr

    def add_invoice(self, value_msat: int, memo: str = "", expiry: int = 86_400) -> NodeInvoice:
        pr, payment_hash, preimage, addr = self.make_invoice(value_msat, memo, expiry)
        self._add_index += 1
        inv = NodeInvoice(memo, preimage, payment_hash, value_msat, pr, int(time.time()), expiry, self._add_index,
                          addr)
        self.invoices[payment_hash.hex()] = inv
        self._publish_invoice(inv)
        return inv

    def settle(self, payment_hash: str, amount_msat: Optional[int] = None) -> NodeInvoice:
        """Knob: a payer outside paid our invoice (``amount_msat``: more or less than asked)."""
        inv = self.invoices[payment_hash]
        if inv.state != ln.Invoice.OPEN:
            raise ValueError("invoice is not open")
        self._settle_index += 1
        inv.state, inv.settle_index, inv.settle_date = ln.Invoice.SETTLED, self._settle_index, int(time.time())
        inv.amt_paid_msat = inv.value_msat if amount_msat is None else amount_msat
        self.local_balance_msat += inv.amt_paid_msat
        self.remote_balance_msat -= inv.amt_paid_msat
        self._publish_invoice(inv)
        return inv

    def settled(self) -> list[NodeInvoice]:
        return sorted((i for i in self.invoices.values() if i.state == ln.Invoice.SETTLED),
                      key=lambda i: i.settle_index)

    def replay(self) -> None:
        """Knob: re-send every settled invoice to the current subscribers (a node replaying its feed)."""
        for inv in self.settled():
            self._publish_invoice(inv)

    def end_subscriptions(self) -> None:
        """Knob: end every SubscribeInvoices stream (a node restart, as far as the subscriber can tell)."""
        for q in list(self._invoice_subs):
            q.put_nowait(None)

    def _publish_invoice(self, inv: NodeInvoice) -> None:
        for q in list(self._invoice_subs):
            q.put_nowait(inv.proto())

    # --- payments ---------------------------------------------------------------------------------------
    def resolve(self, payment_hash: str, succeed: bool) -> None:
        """Knob: an in-flight payment ends."""
        p = self.payments[payment_hash]
        assert p.status == ln.Payment.IN_FLIGHT, "not in flight"
        self._finish(p, succeed)

    def _finish(self, p: NodePayment, succeed: bool) -> None:
        self.local_balance_msat += p.value_msat + p.fee_limit_msat  # the HTLC's lock is lifted ...
        if succeed:
            p.status, p.fee_msat = ln.Payment.SUCCEEDED, self.fee_msat
            p.preimage = self._preimage_for(p.payment_hash)
            self.local_balance_msat -= p.value_msat + p.fee_msat  # ... and what it paid leaves
            self.remote_balance_msat += p.value_msat
        else:
            p.status, p.failure_reason = ln.Payment.FAILED, self.failure_reason
        self._publish_payment(p)

    def _preimage_for(self, payment_hash: str) -> str:
        # Tests pay invoices made by make_invoice elsewhere; the preimage is whatever the payee revealed. Any
        # 32 bytes do for a test node, except that a hash we issued ourselves has its real preimage.
        own = self.invoices.get(payment_hash)
        return own.preimage.hex() if own is not None else hashlib.sha256(payment_hash.encode()).hexdigest()

    @property
    def in_flight_msat(self) -> int:
        return sum(p.value_msat + p.fee_limit_msat for p in self.payments.values()
                   if p.status == ln.Payment.IN_FLIGHT)

    def _publish_payment(self, p: NodePayment) -> None:
        for q in list(self._payment_subs.get(p.payment_hash, ())):
            q.put_nowait(p.proto())

    async def payment_updates(self, p: NodePayment, include_first: bool, no_inflight: bool
                              ) -> AsyncIterator[Any]:
        """The payment's updates (the current state first), until it is terminal."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        subs = self._payment_subs.setdefault(p.payment_hash, set())
        subs.add(q)
        try:
            update = p.proto()
            if include_first:
                q.put_nowait(update)
            while True:
                update = await q.get()
                if no_inflight and update.status not in _TERMINAL:
                    continue
                yield update
                if update.status in _TERMINAL:
                    return
        finally:
            subs.discard(q)


class _Lightning(ln_grpc.LightningServicer):
    def __init__(self, node: LndNode) -> None:
        self.node = node

    async def GetInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/GetInfo")
        return ln.GetInfoResponse(identity_pubkey=self.node.pubkey, alias=self.node.alias, version="0.19.0-beta",
                                  synced_to_chain=True, synced_to_graph=True, block_height=800_000,
                                  num_active_channels=1, chains=[ln.Chain(chain="bitcoin", network="regtest")])

    async def AddInvoice(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/AddInvoice")
        if request.value and request.value_msat:
            await context.abort(grpc.StatusCode.UNKNOWN, "value and value_msat are mutually exclusive")
        value_msat = request.value_msat or request.value * 1000
        inv = self.node.add_invoice(value_msat, request.memo, request.expiry or 86_400)
        return ln.AddInvoiceResponse(r_hash=inv.payment_hash, payment_request=inv.payment_request,
                                     add_index=inv.add_index, payment_addr=inv.payment_addr)

    async def LookupInvoice(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/LookupInvoice")
        key = request.r_hash.hex() if request.r_hash else request.r_hash_str
        inv = self.node.invoices.get(key)
        if inv is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unable to locate invoice")
        return inv.proto()

    async def ListInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/ListInvoices")
        limit = request.num_max_invoices or 1_000
        rows = sorted((i for i in self.node.invoices.values()
                       if i.add_index > request.index_offset
                       and not (request.pending_only and i.state != ln.Invoice.OPEN)),
                      key=lambda i: i.add_index)[:limit]
        return ln.ListInvoiceResponse(invoices=[i.proto() for i in rows],
                                      first_index_offset=rows[0].add_index if rows else 0,
                                      last_index_offset=rows[-1].add_index if rows else 0)

    async def SubscribeInvoices(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self.node.authorize(context, "/lnrpc.Lightning/SubscribeInvoices")
        node = self.node
        node.subscription_requests.append(request.settle_index)
        q: asyncio.Queue[Optional[Any]] = asyncio.Queue()
        node._invoice_subs.add(q)
        try:
            if node.replay_on_subscribe:
                for inv in node.settled():
                    yield inv.proto()
            # LND sends the backlog only for a non-zero index ("backwards compatibility").
            if request.settle_index:
                for inv in node.settled():
                    if inv.settle_index > request.settle_index:
                        yield inv.proto()
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
        finally:
            node._invoice_subs.discard(q)

    async def DecodePayReq(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/DecodePayReq")
        try:
            d = bolt11_lib.decode(request.pay_req)
        except Exception as e:
            await context.abort(grpc.StatusCode.UNKNOWN, f"invalid payment request: {e}")
        if d.currency != self.node.network:
            await context.abort(grpc.StatusCode.UNKNOWN, "invoice not for current active network 'regtest'")
        msat = int(d.amount_msat or 0)
        return ln.PayReq(destination=d.payee or "", payment_hash=d.payment_hash, num_satoshis=msat // 1000,
                         num_msat=msat, timestamp=d.date, expiry=d.expiry, description=d.description or "",
                         cltv_expiry=d.min_final_cltv_expiry or 18,
                         payment_addr=bytes.fromhex(d.payment_secret) if d.payment_secret else b"")

    async def ChannelBalance(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.node.authorize(context, "/lnrpc.Lightning/ChannelBalance")
        node = self.node
        local, unsettled, remote = node.local_balance_msat, node.in_flight_msat, node.remote_balance_msat
        return ln.ChannelBalanceResponse(
            balance=local // 1000, local_balance=ln.Amount(sat=local // 1000, msat=local),
            remote_balance=ln.Amount(sat=remote // 1000, msat=remote),
            unsettled_local_balance=ln.Amount(sat=unsettled // 1000, msat=unsettled))


class _Router(router_grpc.RouterServicer):
    def __init__(self, node: LndNode) -> None:
        self.node = node

    async def SendPaymentV2(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        node = self.node
        await node.authorize(context, "/routerrpc.Router/SendPaymentV2")
        try:
            d = bolt11_lib.decode(request.payment_request)
        except Exception as e:
            await context.abort(grpc.StatusCode.UNKNOWN, f"invalid payment request: {e}")
        payment_hash = d.payment_hash
        node.send_counts[payment_hash] += 1
        if request.timeout_seconds <= 0:
            await context.abort(grpc.StatusCode.UNKNOWN, "timeout_seconds must be specified")
        amount = int(d.amount_msat or 0)
        if amount == 0:
            await context.abort(grpc.StatusCode.UNKNOWN,
                                "amount must be specified when paying a zero amount invoice")
        if d.date + d.expiry <= time.time():
            await context.abort(grpc.StatusCode.UNKNOWN, "invoice expired")
        if node.outcome == "unavailable":  # refused before anything was recorded
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        known = node.payments.get(payment_hash)
        if known is not None and known.status == ln.Payment.SUCCEEDED:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "invoice is already paid")
        if known is not None and known.status == ln.Payment.IN_FLIGHT:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "payment is in transition")
        fee_limit = request.fee_limit_msat or request.fee_limit_sat * 1000
        p = NodePayment(payment_hash, amount, request.payment_request, fee_limit)
        node.payments[payment_hash] = p  # a failed one is replaced: LND lets a failed hash be paid again
        updates = node.payment_updates(p, include_first=True, no_inflight=request.no_inflight_updates)
        try:
            # The HTLC locks the amount and the most it may pay in fees.
            if node.fee_msat > fee_limit or amount + fee_limit > node.local_balance_msat:
                p.failure_reason = (ln.FAILURE_REASON_NO_ROUTE if node.fee_msat > fee_limit
                                    else ln.FAILURE_REASON_INSUFFICIENT_BALANCE)
                p.status = ln.Payment.FAILED
            else:
                node.local_balance_msat -= amount + fee_limit
                if node.outcome == "succeed":
                    node._finish(p, True)
                elif node.outcome == "fail":
                    node._finish(p, False)
                elif node.outcome == "drop":
                    # Recorded, then the client loses the stream; the payment goes on without it.
                    if node.drop_then != "in_flight":
                        node._finish(p, node.drop_then == "succeed")
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped")
            if p.status in _TERMINAL:
                yield p.proto()
                return
            async for update in updates:
                yield update
        finally:
            await updates.aclose()

    async def TrackPaymentV2(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        node = self.node
        await node.authorize(context, "/routerrpc.Router/TrackPaymentV2")
        p = node.payments.get(request.payment_hash.hex())
        if p is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "payment isn't initiated")
        async for update in node.payment_updates(p, include_first=True, no_inflight=request.no_inflight_updates):
            yield update
