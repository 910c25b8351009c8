"""The edge between the vault's Cashu wallet and Nutshell: mint calls with a deadline and two kinds of failure,
deterministic outputs, unblinding, token parsing.

Every mint call ends in one of three ways, and the wallet decides money by which: an answer; ``MintRefused``
(the mint processed the request and said no — nothing it was asked to do happened); ``MintUnreachable`` (no
answer — it may or may not have happened, so nothing may be released on it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Awaitable, TypeVar, Union

import httpx
from cashu.core.base import BlindedMessage, BlindedSignature, DLEQWallet, Proof, TokenV3, TokenV4
from cashu.core.crypto import b_dhke
from cashu.core.crypto.secp import PrivateKey, PublicKey
from cashu.core.settings import settings as nutshell_settings
from cashu.wallet.wallet import Wallet
from loguru import logger as nutshell_logger

from .base import WalletError

T = TypeVar("T")

# Nutshell logs proofs (secrets included) at trace/debug level and on some errors: none of it may reach our
# logs. Its settings come from the environment and a .env file; two of them must never be on in a vault:
# ``debug`` turns TLS verification off, ``wallet_verbose_requests`` prints request bodies (proofs) to stdout.
nutshell_logger.disable("cashu")
# The wallet's SQLite driver logs every statement with its parameters at DEBUG: proofs' secrets and issued
# tokens are among them. Never below INFO, whatever level the process logs at.
logging.getLogger("aiosqlite").setLevel(logging.INFO)


def harden_nutshell_settings() -> None:
    nutshell_settings.debug = False
    nutshell_settings.wallet_verbose_requests = False


# Nutshell's error codes (NUT-00 error responses) the wallet acts on.
SPENT = 11001
PENDING = 11002
OUTPUTS_SIGNED = 11003
QUOTE_NOT_PAID = 20001
QUOTE_ISSUED = 20002

_CODE = re.compile(r"\(Code: (\d+)\)\s*$")


class MintRefused(Exception):
    """The mint answered with an error: the request was processed and nothing it asked for happened."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{detail} (code {code})")
        self.code = code
        self.detail = detail


class MintUnreachable(Exception):
    """No usable answer: what was asked may or may not have happened."""


def _translate(e: BaseException) -> Exception:
    if isinstance(e, (asyncio.TimeoutError, httpx.TransportError)):
        return MintUnreachable(f"the mint did not answer: {type(e).__name__}")
    if isinstance(e, httpx.HTTPStatusError):
        status = e.response.status_code
        if 400 <= status < 500:
            return MintRefused(0, f"HTTP {status}")
        return MintUnreachable(f"the mint answered HTTP {status}")
    text = str(e)
    # Nutshell raises a bare Exception("Mint Error: <detail> (Code: <n>)") for the mint's error responses.
    if text.startswith("Mint Error: "):
        body = text[len("Mint Error: "):]
        m = _CODE.search(body)
        code = int(m.group(1)) if m else 0
        detail = body[:m.start()].strip() if m else body.strip()
        return MintRefused(code, detail[:300])
    if "does not support endpoint" in text:
        return MintRefused(0, "the mint does not offer this endpoint")
    return MintUnreachable(f"the mint's answer could not be used: {type(e).__name__}")


async def ask(call: Awaitable[T], timeout_s: float) -> T:
    """One mint call under a deadline, its failures sorted into refused / unreachable."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except (MintRefused, MintUnreachable, WalletError):
        raise
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise _translate(e) from None


# --- outputs from counters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outputs:
    """Blinded messages derived from the wallet seed at counters ``start…start+n-1`` of one keyset.

    Being deterministic, the same request can be rebuilt after a crash and replayed, or its signatures
    fetched again from the mint (NUT-09 restore): an output the mint signed is never lost.
    """

    messages: list[BlindedMessage]
    secrets: list[str]
    rs: list[PrivateKey]
    paths: list[str]


async def derive_outputs(w: Wallet, keyset_id: str, start: int, amounts: list[int]) -> Outputs:
    if not amounts:
        return Outputs([], [], [], [])
    secrets, rs, paths = await w.generate_secrets_from_to(start, start + len(amounts) - 1, keyset_id)
    messages, rs = w._construct_outputs(amounts, secrets, rs, keyset_id)
    return Outputs(messages, secrets, rs, paths)


def unblind(w: Wallet, sig: BlindedSignature, secret: str, r: PrivateKey, path: str) -> Proof:
    """The proof a blind signature makes of our secret (the mint's key for the signed amount unblinds it)."""
    keyset = w.keysets.get(sig.id)
    if keyset is None or sig.amount not in keyset.public_keys:
        raise MintUnreachable(f"signature from unknown keyset {sig.id} or amount {sig.amount}")
    C = b_dhke.step3_alice(PublicKey(bytes.fromhex(sig.C_)), r, keyset.public_keys[sig.amount])
    proof = Proof(id=sig.id, amount=sig.amount, C=C.format().hex(), secret=secret, derivation_path=path)
    if sig.dleq:
        proof.dleq = DLEQWallet(e=sig.dleq.e, s=sig.dleq.s, r=r.to_hex())
    return proof


# --- tokens ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedToken:
    mints: list[str]
    unit: str
    proofs: list[Proof]


def parse_token(token: str) -> ParsedToken:
    """A serialized token (V3 ``cashuA…`` or V4 ``cashuB…``); ``WalletError`` if it is not one."""
    text = token.strip()
    parsed: Union[TokenV3, TokenV4]
    try:
        if text.startswith("cashuA"):
            parsed = TokenV3.deserialize(text)
            mints = [t.mint or "" for t in parsed.token]
            unit = parsed.unit or "sat"
        elif text.startswith("cashuB"):
            parsed = TokenV4.deserialize(text)
            mints = [parsed.mint]
            unit = parsed.unit or "sat"
        else:
            raise ValueError("no cashuA/cashuB prefix")
        proofs = list(parsed.proofs)
    except Exception:
        # The parser's message may quote the token: say only that it is not one.
        raise WalletError("not a Cashu token (expected a V3 cashuA… or V4 cashuB… token)",
                          code="invalid_token") from None
    if not proofs:
        raise WalletError("the token holds no proofs", code="invalid_token")
    return ParsedToken([m.rstrip("/") for m in mints], unit, proofs)


def deposit_id_of(proofs: list[Proof]) -> str:
    """Names a token by its proofs' Y points (public, one per secret): the same ecash in any encoding."""
    ys = sorted(p.Y for p in proofs)
    return "cashu:" + hashlib.sha256("\n".join(ys).encode()).hexdigest()[:40]


def same_mint(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def proof_row(p: Proof) -> dict[str, object]:
    """A proof as kept in an open intent (until the request it belongs to is resolved)."""
    return {"id": p.id, "amount": p.amount, "secret": p.secret, "C": p.C}


def proof_of_row(row: dict[str, object]) -> Proof:
    return Proof(id=str(row["id"]), amount=int(row["amount"]),  # type: ignore[call-overload]
                 secret=str(row["secret"]), C=str(row["C"]))

