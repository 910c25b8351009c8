"""The one pooled upstream HTTP session and the rules for classifying an upstream attempt."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import aiohttp
import orjson

from actors.runtime.netguard import private_host, public_connector
from actors.runtime.redirects import refuse_redirects
from schemas.breaker import OutcomeKind
from schemas.config import ProviderConfig
from schemas.routstr import NodeError, is_payment_refusal, node_error

# Hop-by-hop and framing headers are never copied from an upstream.
_URL_RE = re.compile(r"https?://\S+")
_SECRETISH_RE = re.compile(r"(sk-|Bearer\s+)[A-Za-z0-9_\-\.]{6,}")


# Upstream statuses that fall over to the next candidate rather than reach the client as they are.
REFUSALS = frozenset({401, 402, 403, 429})

# What can end an upstream body mid-read; ``read_failure`` says which, for a client and the breaker.
READ_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError, OSError)


def read_failure(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "the upstream stopped sending (timeout)"
    return f"the upstream connection broke ({type(exc).__name__})"


class UpstreamBusy(Exception):
    """Every pooled connection to the provider stayed in use for ``[server] upstream_pool_wait_s``: arbstr's own
    capacity, not the provider's fault (nothing goes to its breaker)."""


class UpstreamFailure(Exception):
    """An attempt that may fall over to the next candidate (connect error, timeout, 5xx, 429, a redirect, or the
    provider refusing our credential or payment: 401/402/403, a Routstr node's token errors).

    ``sent`` is False only when no connection was made (an X-Cashu token never left); ``change`` is the ecash a
    Routstr node paid per request handed back (its ``X-Cashu`` response header); ``node`` its parsed error."""

    def __init__(self, kind: OutcomeKind, message: str, status: Optional[int] = None,
                 retry_after_s: Optional[float] = None, *, sent: bool = True, change: Optional[str] = None,
                 node: Optional[NodeError] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s
        self.sent = sent
        self.change = change
        self.node = node


@dataclass
class UpstreamReply:
    response: aiohttp.ClientResponse
    opened_at: float
    headers_at: float
    change: Optional[str] = None  # X-Cashu: the change a node paid per request returned
    body: Optional[bytes] = None  # an error body already read (to tell a node's payment refusal from the client's)


def sanitize(text: str, limit: int = 500) -> str:
    """Upstream error text without URLs or credentials, bounded."""
    text = _URL_RE.sub("[url]", text)
    text = _SECRETISH_RE.sub(r"\1[redacted]", text)
    return text[:limit]


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def upstream_error_detail(status: int, body: bytes) -> tuple[str, Optional[str], Optional[str], Optional[str]]:
    """(message, type, param, code) from whatever error body shape an upstream sent, sanitised."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            msg = err.get("message")
            return (sanitize(str(msg) if msg is not None else f"upstream returned {status}"),
                    err.get("type") if isinstance(err.get("type"), str) else None,
                    err.get("param") if isinstance(err.get("param"), str) else None,
                    str(err["code"]) if err.get("code") is not None else None)
        if isinstance(err, str):
            return sanitize(err), None, None, None
        if isinstance(parsed.get("message"), str):
            return sanitize(parsed["message"]), None, None, None
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("<"):
        text = ""
    return (sanitize(text) or f"upstream returned HTTP {status}"), None, None, None


async def _queued(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                  params: aiohttp.TraceConnectionQueuedStartParams) -> None:
    """The request waits for a pooled connection: its wait ends at the pool deadline, counted from the first time
    it queued (aiohttp may queue it again after losing a freed slot to another request)."""
    wait = ctx.trace_request_ctx
    if isinstance(wait, PoolWait):
        wait.queued()


async def _dequeued(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                    params: aiohttp.TraceConnectionQueuedEndParams) -> None:
    wait = ctx.trace_request_ctx
    if isinstance(wait, PoolWait):
        wait.dequeued()


class PoolWait:
    """The bound on one request's wait for a pooled connection, kept by the pool's own queue events."""

    __slots__ = ("limit_s", "deadline", "since", "waiting")

    def __init__(self, limit_s: float, deadline: asyncio.Timeout) -> None:
        self.limit_s = limit_s
        self.deadline = deadline
        self.since: Optional[float] = None
        self.waiting = False

    def queued(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.since is None:
            self.since = now
        self.waiting = True
        self.deadline.reschedule(self.since + self.limit_s)

    def dequeued(self) -> None:
        self.waiting = False
        self.deadline.reschedule(None)


def _pool_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig(trace_config_ctx_factory=SimpleNamespace)
    trace.on_connection_queued_start.append(_queued)
    trace.on_connection_queued_end.append(_dequeued)
    return trace


class Upstream:
    def __init__(self, connections: int, pool_wait_s: float = 5.0) -> None:
        self._connections = connections
        self._pool_wait_s = pool_wait_s
        self._session: Optional[aiohttp.ClientSession] = None
        self._public: Optional[aiohttp.ClientSession] = None

    async def start(self) -> None:
        self._session = self._new_session(aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=self._connections, ttl_dns_cache=300,
            enable_cleanup_closed=True))
        # Nodes from public announcements: every connection re-checks what the name resolves to (netguard).
        self._public = self._new_session(public_connector(
            limit=self._connections, limit_per_host=self._connections, enable_cleanup_closed=True))

    @staticmethod
    def _new_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(),
                                     auto_decompress=True, skip_auto_headers=("User-Agent",),
                                     trace_configs=[refuse_redirects(_pool_trace())])

    async def close(self) -> None:
        for session in (self._session, self._public):
            if session is not None:
                await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() not called"
        return self._session

    def session_for(self, provider: ProviderConfig) -> aiohttp.ClientSession:
        if provider.public_only:
            assert self._public is not None, "Upstream.start() not called"
            return self._public
        return self.session

    async def open(self, provider: ProviderConfig, path: str, body: bytes, *, request_id: str,
                   traceparent: Optional[str], stream: bool, x_cashu: Optional[str] = None) -> UpstreamReply:
        """Send one attempt (paid with ``x_cashu`` instead of a key when given). Returns a response of status < 500,
        not a redirect and not a refusal, with headers read; else raises UpstreamFailure (or UpstreamBusy when no
        pooled connection came free in time). Redirects are never followed: a key or token sent to one host must
        not follow a Location header to another."""
        if provider.public_only and private_host(provider.url):  # a literal address never reaches the resolver
            raise UpstreamFailure("connect", f"{provider.name} is at a private address", sent=False)
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if stream:
            headers["Accept"] = "text/event-stream"
        if x_cashu is not None:
            headers["X-Cashu"] = x_cashu
        elif provider.api_key is not None:
            headers["Authorization"] = f"Bearer {provider.api_key.get_secret_value()}"
        if traceparent:
            headers["traceparent"] = traceparent
        timeout = aiohttp.ClientTimeout(total=provider.total_timeout_s, sock_connect=provider.connect_timeout_s,
                                        sock_read=provider.first_byte_timeout_s)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(None) as deadline:  # armed only while waiting for a pooled connection
                wait = PoolWait(self._pool_wait_s, deadline)
                resp = await self.session_for(provider).post(provider.url + path, data=body, headers=headers,
                                                             timeout=timeout, allow_redirects=False,
                                                             trace_request_ctx=wait)
        except asyncio.TimeoutError:
            if wait.waiting or deadline.expired():
                raise UpstreamBusy(f"no pooled connection to {provider.name} came free within "
                                   f"{self._pool_wait_s:g} s") from None
            raise UpstreamFailure("timeout", f"{provider.name} timed out") from None
        except aiohttp.ClientConnectorError as e:  # no connection: nothing was sent
            raise UpstreamFailure("connect", f"{provider.name} unreachable ({type(e).__name__})", sent=False) \
                from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise UpstreamFailure("connect", f"{provider.name} unreachable ({type(e).__name__})") from None
        headers_at = time.perf_counter()
        change = resp.headers.get("X-Cashu") if x_cashu is not None else None
        if 300 <= resp.status < 400:  # never followed, never relayed: the provider is not usable as configured
            resp.release()
            raise UpstreamFailure("refused", f"{provider.name} answered a redirect (HTTP {resp.status}); arbstr "
                                             f"does not follow redirects", resp.status, change=change)
        routstr_4xx = provider.routstr and 400 <= resp.status < 500
        if resp.status >= 500 or resp.status in REFUSALS or routstr_4xx:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                raw = b""
            finally:
                resp.release()
            node = node_error(resp.status, _json(raw)) if provider.routstr else None
            if routstr_4xx and resp.status not in REFUSALS and not is_payment_refusal(node):  # type: ignore[arg-type]
                return UpstreamReply(resp, started, headers_at, change, raw)  # the client's own error
            message = upstream_error_detail(resp.status, raw)[0]
            if resp.status == 429:
                raise UpstreamFailure("http_429", message, 429, parse_retry_after(resp.headers.get("Retry-After")),
                                      change=change, node=node)
            if resp.status < 500:
                # The provider refuses *our* key, prepaid balance or token: the client did nothing wrong, and
                # passing the status on would tell an OpenAI client that its own key or balance is at fault.
                raise UpstreamFailure("refused", f"{provider.name} refused arbstr's credential or payment "
                                                 f"(HTTP {resp.status}: {message})", resp.status, change=change,
                                      node=node)
            raise UpstreamFailure("http_5xx", message, resp.status, change=change, node=node)
        return UpstreamReply(resp, started, headers_at, change)


def _json(raw: bytes) -> object:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
