"""Who may touch what on the bus: one NATS identity per part, each allowed only the subjects its part needs.

This table is the contract the embedded server's config, ``deploy/``'s and the permission tests are generated
from. Grants are built from the names in ``subjects.py``; JetStream is reached through its API subjects, so a
part that reads a stream gets the API subjects for that stream's consumers and nothing that could write it.

Inboxes: every identity takes replies on ``_INBOX.<identity>.>`` only (the connection sets that inbox prefix),
so no identity can read replies meant for another — a vault reply may carry ecash or an account's figures.
Actors answer requests through ``allow_responses`` (publish only to the reply subject of a request received).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import subjects
from .partitions import MAX_LEDGER_STREAMS

GATEWAY = "gateway"
ROUTER = "router"
PRICING = "pricing"
BREAKER = "breaker"
VAULT = "vault"
OPERATOR = "operator"  # the operator CLI (`arbstr events`, `nats micro ls`): reads, never writes
EVENTS = "events"  # outside tools: spend events and request records, read only

COMPONENT_IDENTITIES = (GATEWAY, ROUTER, PRICING, BREAKER, VAULT)
IDENTITIES = (*COMPONENT_IDENTITIES, OPERATOR, EVENTS)

JS_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responds: bool = False  # may answer requests it received (actors)


def inbox_prefix(identity: str) -> str:
    return f"_INBOX.{identity}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _read_stream(stream: str) -> list[str]:
    """Follow or look up a stream (ordered consumers, KV watches, last-message reads): no write, no purge."""
    return [f"{JS_API}.STREAM.INFO.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}", f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.DELETE.{stream}.>", f"{JS_API}.CONSUMER.INFO.{stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{stream}", f"{JS_API}.DIRECT.GET.{stream}", f"{JS_API}.DIRECT.GET.{stream}.>",
            f"$JS.FC.{stream}.>"]


def _durable_reader(stream: str) -> list[str]:
    """A durable pull consumer of a stream: resumes where it stopped, acks what it handled."""
    return [*_read_stream(stream), f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]


def _own_stream(stream: str) -> list[str]:
    """Create, widen and consume a stream this part owns (never delete or purge it)."""
    return [*_durable_reader(stream), f"{JS_API}.STREAM.CREATE.{stream}", f"{JS_API}.STREAM.UPDATE.{stream}"]


def _own_bucket(bucket: str) -> list[str]:
    return [*_own_stream(kv_stream(bucket)), f"$KV.{bucket}.>"]


def _own_object_store(bucket: str) -> list[str]:
    # Replacing an object purges its older chunks: the one purge any part is allowed, on its own store.
    stream = f"OBJ_{bucket}"
    # Reading an object looks its stream up by subject (nats-py asks for stream names).
    return [*_own_stream(stream), f"{JS_API}.STREAM.PURGE.{stream}", f"$O.{bucket}.>", f"{JS_API}.STREAM.NAMES"]


def _read_bucket(bucket: str, create: bool = False) -> list[str]:
    # Prices and breaker states are public and their config is fixed in code, so a reader that starts first
    # may create the empty bucket; a vault bucket is made by the vault only.
    return [*_read_stream(kv_stream(bucket)), *([f"{JS_API}.STREAM.CREATE.{kv_stream(bucket)}"] if create else [])]


_DISCOVERY = "$SRV.>"  # nats micro: PING/INFO/STATS of every service instance


def table() -> dict[str, Permissions]:
    s = subjects
    ledgers = tuple(s.ledger_stream(i) for i in range(MAX_LEDGER_STREAMS))
    vault_streams = (*ledgers, s.STREAM_SETTLE, s.STREAM_EVENTS)
    return {
        GATEWAY: Permissions(
            publish=(s.ROUTER_ROUTE, s.PRICING_TABLE, s.PRICING_QUOTE, s.PRICING_CONFIRM, s.BREAKER_STATE,
                     s.BREAKER_PROBE, f"{s.BREAKER_OUTCOME_PREFIX}.*", s.VAULT_RESERVE, s.VAULT_AWAIT_APPROVAL,
                     s.VAULT_RELEASE, s.VAULT_XCASHU_TOKEN, s.VAULT_XCASHU_REPORT, s.VAULT_TOPUP_NOW,
                     f"{s.VAULT_AGENT_GROUP}.*", f"{s.VAULT_ADMIN_GROUP}.*", f"{s.REQUESTS_PREFIX}.*",
                     *(f"{s.VAULT_PARTITION_PREFIX}.*.{op}" for op in ("reserve", "await_approval", "extend",
                                                                      "settle", "release", "grant", "grant_usage")),
                     f"{s.SETTLE_PREFIX}.*", "$SRV.PING.>", "$SRV.STATS.>",
                     f"{JS_API}.CONSUMER.INFO.{s.STREAM_SETTLE}.*",  # the settle backlog, for /metrics
                     *_read_bucket(s.KV_PRICES, create=True), *_read_bucket(s.KV_BREAKERS, create=True),
                     *_read_bucket(s.KV_PROVIDER_KEYS), *_read_stream(s.STREAM_EVENTS)),
            subscribe=(f"{inbox_prefix(GATEWAY)}.>", s.TOKEN_REVOKED, s.GRANTS_REVOKED)),
        ROUTER: Permissions(
            publish=(*_read_bucket(s.KV_PRICES, create=True), *_read_bucket(s.KV_BREAKERS, create=True)),
            subscribe=(f"{s.ROUTER_GROUP}.>", _DISCOVERY, f"{inbox_prefix(ROUTER)}.>"), responds=True),
        PRICING: Permissions(
            publish=(*_own_bucket(s.KV_PRICES), *_read_bucket(s.KV_PROVIDER_KEYS)),
            subscribe=(f"{s.PRICING_GROUP}.>", _DISCOVERY, f"{inbox_prefix(PRICING)}.>"), responds=True),
        BREAKER: Permissions(
            publish=(*_own_bucket(s.KV_BREAKERS),),
            subscribe=(s.BREAKER_STATE, s.BREAKER_PROBE, s.BREAKER_OUTCOME_ALL, _DISCOVERY,
                       f"{inbox_prefix(BREAKER)}.>"), responds=True),
        VAULT: Permissions(
            publish=(f"{s.LEDGER_PREFIX}.>", f"{s.LEDGERS_PREFIX}.>", f"{s.SPEND_PREFIX}.*",
                     f"{s.REQUESTS_PREFIX}.*", s.TOKEN_REVOKED, s.GRANTS_REVOKED,
                     f"{s.VAULT_PARTITION_PREFIX}.>",  # a command passed on to its partition's owner
                     *(g for stream in vault_streams for g in _own_stream(stream)),
                     *_own_bucket(s.KV_VAULT), *_own_bucket(s.KV_PARTITIONS), *_own_bucket(s.KV_PROVIDER_KEYS),
                     *_own_object_store(s.OBJ_SNAPSHOTS), *_read_bucket(s.KV_PRICES)),
            subscribe=(f"{s.VAULT_GROUP}.>", _DISCOVERY, f"{inbox_prefix(VAULT)}.>"), responds=True),
        OPERATOR: Permissions(  # the operator holds the admin token anyway; reading the journal lets it audit
            publish=("$SRV.>", f"{JS_API}.INFO", f"{JS_API}.STREAM.INFO.*", f"{JS_API}.STREAM.NAMES",
                     f"{JS_API}.STREAM.LIST", *(g for st in vault_streams for g in _read_stream(st)),
                     *_read_bucket(s.KV_PARTITIONS)),  # the ledger's layout: how many streams to read
            subscribe=(s.SPEND_ALL, f"{inbox_prefix(OPERATOR)}.>")),
        EVENTS: Permissions(
            publish=(*_durable_reader(s.STREAM_EVENTS),),
            subscribe=(s.SPEND_ALL, f"{s.REQUESTS_PREFIX}.*", f"{inbox_prefix(EVENTS)}.>")),
    }


def identity_of_service(service_name: str) -> str:
    """The bus identity an actor runs under, from its nats micro service name (``arbstr-router`` → router)."""
    name = service_name.removeprefix("arbstr-")
    if name not in COMPONENT_IDENTITIES:
        raise ValueError(f"no bus identity for service {service_name!r}")
    return name
