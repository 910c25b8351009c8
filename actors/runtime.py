"""The actor contract every arbstr actor runs under.

An actor is a plain object with a name, a version, a description and a list of endpoints; each endpoint
decodes one pydantic message, calls the actor, and replies with one pydantic message. This module does
everything else once: the ``nats.micro`` service (discovery, INFO/STATS that validate), queue groups so
N instances share the load, bounded concurrent handling (micro runs one handler at a time otherwise),
errors mapped to ``Nats-Service-Error-Code`` with an OpenAI error body, reconnect forever and a drain on
shutdown that lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Protocol, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.errors import (ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError,
                         NoRespondersError, OutboundBufferLimitError, StaleConnectionError)
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import BucketNotFoundError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.errors import Error as NatsError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service
from pydantic import BaseModel, ValidationError

from schemas import subjects, trace
from schemas.bus_permissions import IDENTITIES, identity_of_service, inbox_prefix
from schemas.config import Config
from schemas.errors import ArbstrError

log = logging.getLogger("arbstr.runtime")

Handler = Callable[[Any, dict[str, str]], Awaitable[BaseModel]]
T = TypeVar("T")
# How long an actor's start may wait for JetStream (leaders being elected on a fresh or degraded cluster).
STARTUP_BUDGET_S = 60.0
QUEUE_GROUP = "arbstr"


# Where a process finds its bus credential when no --creds flag names one (a seed file or a JWT .creds file).
ENV_CREDS = "ARBSTR_NATS_CREDS"


@dataclass(frozen=True)
class Endpoint:
    name: str
    subject: str
    request_model: type[BaseModel]
    handler: Handler
    # "admin": the request must carry the operator's admin token in ``subjects.H_ADMIN_AUTH``, checked here
    # against the actor's own copy of its hash, so a bus credential alone cannot mint or move money.
    auth: Optional[str] = None


@dataclass(frozen=True)
class RawReply:
    """A reply relayed as it came (an actor that forwarded the request to the instance that handles it)."""

    data: bytes
    headers: Optional[dict[str, str]] = None


class Actor(Protocol):
    service_name: str
    version: str
    description: str

    def endpoints(self) -> list[Endpoint]: ...

    async def start(self, nc: NATS) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class _Counters:
    handled: int = 0
    errors: int = 0
    in_flight: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def read_seed(path: Path) -> str:
    """The NKey user seed in a seed file (comments and blank lines ignored)."""
    for line in path.read_text().splitlines():
        if line.strip().startswith("SU"):
            return line.strip()
    raise ValueError(f"{path} holds no NKey user seed")


def credential_options(identity: str, creds: Optional[str] = None) -> dict[str, Any]:
    """nats.connect keywords: the credential (``creds``, else $ARBSTR_NATS_CREDS; none: an open bus) and the inbox
    prefix its permissions allow replies on — of the identity a seed file ``<identity>.nk`` is named for, else
    ``identity``."""
    path = creds or os.environ.get(ENV_CREDS) or None
    options: dict[str, Any] = {}
    if path:
        file = Path(path)
        if "BEGIN NATS USER JWT" in file.read_text():
            options["user_credentials"] = str(file)  # decentralised auth: JWT and seed in one .creds file
        else:
            options["nkeys_seed_str"] = read_seed(file)
        if file.suffix == ".nk" and file.stem in IDENTITIES:
            identity = file.stem
    options["inbox_prefix"] = inbox_prefix(identity)
    return options


async def connect(url: str, name: str, identity: Optional[str] = None, creds: Optional[str] = None,
                  **kwargs: Any) -> NATS:
    """Connect as ``identity`` (default: the one ``name`` implies) with reconnect-forever semantics; callbacks
    must be coroutines for nats-py."""

    async def error_cb(e: Exception) -> None:
        log.warning("nats error (%s): %r", name, e)

    async def disconnected_cb() -> None:
        log.warning("nats disconnected (%s)", name)

    async def reconnected_cb() -> None:
        log.info("nats reconnected (%s)", name)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        **credential_options(identity or identity_of_service(name), creds),
        **kwargs,
    )


def token_hash(token: str) -> str:
    """How every bearer token is stored and compared: its sha256, never the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def admin_token_hash(config: Config) -> Optional[str]:
    """The admin token's hash ($ARBSTR_ADMIN_TOKEN wins, else [vault] admin_token: the rule of
    arbstr/admin_token.py, whose data-dir file `arbstr up` hands over in the environment); None: admin is off."""
    value = os.environ.get("ARBSTR_ADMIN_TOKEN", "")
    if not value and config.vault is not None and config.vault.admin_token is not None:
        value = config.vault.admin_token.get_secret_value()
    return token_hash(value) if value else None


def check_admin(headers: dict[str, str], expected_hash: Optional[str]) -> None:
    """The admin token a command carries, against this actor's own hash of it (constant time)."""
    if expected_hash is None:
        raise ArbstrError(403, "no admin token is configured for this service", code="admin_disabled")
    presented = headers.get(subjects.H_ADMIN_AUTH, "")
    try:
        digest = token_hash(presented)
    except UnicodeEncodeError:
        digest = ""
    if not presented or not hmac.compare_digest(digest, expected_hash):
        raise ArbstrError(401, "this command needs the operator's admin token", code="admin_proof_required")


async def unsubscribe_quietly(sub: Any) -> None:
    """End a subscription on the way out; a connection already closing has ended it anyway."""
    if sub is not None:
        try:
            await sub.unsubscribe()
        except Exception:
            pass


async def wait_condition(cond: asyncio.Condition, predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate()`` held, checked each time ``cond`` is notified, within ``timeout`` seconds."""
    async def waiter() -> None:
        async with cond:
            await cond.wait_for(predicate)

    try:
        await asyncio.wait_for(waiter(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def cancel_and_wait(*tasks: Optional["asyncio.Task[Any]"]) -> None:
    """Cancel background tasks and wait until they are gone; whatever they raise on the way out is theirs.

    Cancelled again until done: on Python 3.11 a cancellation that lands as an inner ``wait_for`` completes is
    swallowed (nats-py awaits that way), and a loop that lost its cancel would otherwise be awaited forever."""
    live = [t for t in tasks if t is not None]
    while True:
        pending = [t for t in live if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=1.0)
    for t in live:
        if not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())


async def open_bucket(nc: NATS, bucket: str, history: int = 1, replicas: int = 1, create: bool = True) -> KeyValue:
    """Open a KV bucket, creating it when missing, so actors may start in any order.

    ``replicas`` matters on a cluster only: an R1 bucket dies with the one server that holds it. ``create=False``
    for a bucket another part owns (and only it may create): BucketNotFoundError until it exists.
    """
    js = nc.jetstream()

    async def open_or_create() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise
        try:
            return await js.create_key_value(bucket=bucket, history=history, replicas=replicas)
        except NatsError as e:
            if isinstance(e, _TRANSIENT):
                raise
            # Someone created it meanwhile (perhaps with other settings): theirs is as good as ours.
            return await js.key_value(bucket)

    kv = await retry_transient(open_or_create, f"bucket {bucket}")
    await wait_stream_leader(nc, f"KV_{bucket}")
    return kv


async def ensure_stream(nc: NATS, config: StreamConfig, timeout_s: float = STARTUP_BUDGET_S) -> None:
    """Create a stream when missing (another instance may be doing the same) and wait until it takes writes."""
    js = nc.jetstream()
    assert config.name is not None

    async def create() -> None:
        try:
            await js.stream_info(config.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(config)
            except NatsError as e:
                if isinstance(e, _TRANSIENT):
                    raise
                log.debug("add_stream %s: %s", config.name, e)  # created concurrently by another instance

    await retry_transient(create, f"stream {config.name}", timeout_s)
    await wait_stream_leader(nc, config.name, timeout_s)


async def wait_stream_leader(nc: NATS, stream: str, timeout_s: float = STARTUP_BUDGET_S) -> None:
    """A replicated stream just created (or whose leader just died) refuses writes until it has a leader."""
    js = nc.jetstream(timeout=1.0)

    async def leader() -> None:
        info = await js.stream_info(stream)
        if info.cluster is not None and not info.cluster.leader:
            raise NoRespondersError  # no leader yet: the same "try again shortly"

    await retry_transient(leader, f"stream {stream} leader", timeout_s)


async def retry_transient(step: Callable[[], Awaitable[T]], what: str, timeout_s: float = STARTUP_BUDGET_S) -> T:
    """Run ``step`` until it gets past transient bus errors (a fresh cluster electing leaders), within a budget."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await step()
        except _TRANSIENT as e:
            if time.monotonic() > deadline:
                raise
            log.info("%s not ready yet (%r); retrying", what, e)
            await asyncio.sleep(0.2)


# What a JetStream election, a lost server or a reconnect looks like to a handler: over in seconds.
_TRANSIENT = (NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError,
              ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError,
              OutboundBufferLimitError, StaleConnectionError)


def transient_bus_error(exc: BaseException) -> Optional[ArbstrError]:
    """A 503 with ``retry-after`` for a bus failure a handler met (the caller may try again), else None."""
    if not isinstance(exc, _TRANSIENT):
        return None
    return ArbstrError(503, f"the message bus or JetStream is unavailable for now ({type(exc).__name__})",
                       code="bus_unavailable", headers={"retry-after": "1"})


def error_reply(err: ArbstrError) -> tuple[bytes, dict[str, str]]:
    headers = {
        subjects.H_SERVICE_ERROR: err.message[:200],
        subjects.H_SERVICE_ERROR_CODE: str(err.status),
    }
    for k, v in err.headers.items():
        headers[f"X-Http-{k}"] = v
    return err.body().model_dump_json().encode(), headers


async def answer(ep: Endpoint, data: bytes, headers: dict[str, str], admin_hash: Optional[str],
                 service: str) -> tuple[bytes, Optional[dict[str, str]], str]:
    """Decode one request, run the endpoint, encode its reply or its error: (body, headers, status). The one
    codec of every actor endpoint (nats micro's, and any other subscription an actor serves requests on)."""
    try:
        trace.REQUEST_ID.set(headers.get(subjects.H_REQUEST_ID, ""))
        trace.TRACEPARENT.set(headers.get(subjects.H_TRACEPARENT, ""))
        if ep.auth == "admin":
            check_admin(headers, admin_hash)
        try:
            message = ep.request_model.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {}
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise ArbstrError(400, f"invalid {ep.name} message: {loc} {first.get('msg', '')}".strip(),
                              code="invalid_message", param=loc or None) from None
        reply = await ep.handler(message, headers)
        if isinstance(reply, RawReply):
            return reply.data, reply.headers, (reply.headers or {}).get(subjects.H_SERVICE_ERROR_CODE, "200")
        return reply.model_dump_json().encode(), None, "200"
    except ArbstrError as err:
        body, h = error_reply(err)
        return body, h, str(err.status)
    except Exception as exc:  # the reply must always go out, or the caller waits for its timeout
        unavailable = transient_bus_error(exc)
        if unavailable is not None:
            log.warning("%s.%s: %r", service, ep.name, exc)
            body, h = error_reply(unavailable)
            return body, h, "503"
        log.exception("%s.%s failed", service, ep.name)
        body, h = error_reply(ArbstrError(500, f"internal error in {service}: {type(exc).__name__}",
                                          code="internal_error"))
        return body, h, "500"


class ActorHost:
    """Runs one actor on one NATS connection."""

    def __init__(self, actor: Actor, nc: NATS, max_concurrency: int = 256) -> None:
        self.actor = actor
        # The actor's own copy of the admin token's hash (``admin_hash`` attribute), for endpoints marked admin.
        self._admin_hash: Optional[str] = getattr(actor, "admin_hash", None)
        self.nc = nc
        self._sem = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._service: Optional[Service] = None
        self._counters: dict[str, _Counters] = {}

    async def start(self) -> None:
        await self.actor.start(self.nc)
        self._service = await add_service(
            self.nc,
            name=self.actor.service_name,
            version=self.actor.version,
            description=self.actor.description,
            stats_handler=self._stats,
        )
        for ep in self.actor.endpoints():
            self._counters[ep.subject] = _Counters()
            await self._service.add_endpoint(
                EndpointConfig(name=ep.name, subject=ep.subject, handler=self._dispatcher(ep), queue_group=QUEUE_GROUP)
            )
        await self.nc.flush()

    def _stats(self, endpoint_stats: Any) -> dict[str, Any]:
        c = self._counters.get(endpoint_stats.subject)
        if c is None:
            return {}
        data: dict[str, Any] = {"handled": c.handled, "errors": c.errors, "in_flight": c.in_flight,
                                "by_status": dict(c.by_status)}
        extra = getattr(self.actor, "stats", None)  # instance-wide figures an actor may add (same on each endpoint)
        if callable(extra):
            data["instance"] = extra()
        return data

    def _dispatcher(self, ep: Endpoint) -> Callable[[Request], Awaitable[None]]:
        counters = self._counters[ep.subject]

        async def dispatch(req: Request) -> None:
            # Acquire here, in micro's per-endpoint callback: when all slots are busy the subscription
            # stops being read, which is the back-pressure we want.
            await self._sem.acquire()
            counters.in_flight += 1
            task = asyncio.create_task(self._handle(ep, req, counters))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return dispatch

    async def _handle(self, ep: Endpoint, req: Request, counters: _Counters) -> None:
        started = time.perf_counter()
        try:
            data, headers, status = await answer(ep, req.data, dict(req.headers or {}), self._admin_hash,
                                                 self.actor.service_name)
            if status == "200":
                counters.handled += 1
            else:
                counters.errors += 1
            counters.by_status[status] = counters.by_status.get(status, 0) + 1
            try:
                await req.respond(data, headers=headers)
            except Exception:
                log.warning("could not send a reply on %s", req.subject)
        finally:
            counters.in_flight -= 1
            self._sem.release()
            log.debug("%s handled in %.3f ms", ep.subject, (time.perf_counter() - started) * 1000)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let in-flight ones answer, then drain the connection."""
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        await self.actor.stop()


async def run_forever(actor: Actor, nats_url: str, max_concurrency: int = 256, creds: Optional[str] = None) -> None:
    """Entry point of ``arbstr run COMPONENT``: serve until SIGTERM/SIGINT, then drain."""
    nc = await connect(nats_url, name=actor.service_name, creds=creds)
    host = ActorHost(actor, nc, max_concurrency=max_concurrency)
    await host.start()
    log.info("%s %s serving on %s", actor.service_name, actor.version, nats_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    await stop.wait()
    log.info("%s draining", actor.service_name)
    await host.stop()
    await nc.drain()
