"""Every NATS subject, stream and KV bucket name arbstr uses, named once.

Nothing else in the code base spells a subject literally: import it from here.
"""

from __future__ import annotations

import re

PREFIX = "arbstr.v1"

# --- request/reply (nats.micro endpoints: group + endpoint name) -------------
ROUTER_GROUP = f"{PREFIX}.router"
ROUTER_ROUTE = f"{ROUTER_GROUP}.route"

PRICING_GROUP = f"{PREFIX}.pricing"
PRICING_QUOTE = f"{PRICING_GROUP}.quote"
PRICING_TABLE = f"{PRICING_GROUP}.table"
PRICING_CONFIRM = f"{PRICING_GROUP}.confirm"

BREAKER_GROUP = f"{PREFIX}.breaker"
BREAKER_STATE = f"{BREAKER_GROUP}.state"
BREAKER_PROBE = f"{BREAKER_GROUP}.probe"

VAULT_GROUP = f"{PREFIX}.vault"
VAULT_RESERVE = f"{VAULT_GROUP}.reserve"
VAULT_SETTLE = f"{VAULT_GROUP}.settle"
VAULT_RELEASE = f"{VAULT_GROUP}.release"
VAULT_AWAIT_APPROVAL = f"{VAULT_GROUP}.await_approval"
VAULT_XCASHU_TOKEN = f"{VAULT_GROUP}.xcashu.token"  # a per-request token for a Routstr node
VAULT_XCASHU_REPORT = f"{VAULT_GROUP}.xcashu.report"  # what became of it (the node's change handed back)
VAULT_TOPUP_NOW = f"{VAULT_GROUP}.topup.now"  # top up a node that answered 402, once, while the request waits
VAULT_AGENT_GROUP = f"{VAULT_GROUP}.agent"
VAULT_ADMIN_GROUP = f"{VAULT_GROUP}.admin"
VAULT_WHOAMI = f"{VAULT_AGENT_GROUP}.whoami"  # token hash -> agent id (any instance): where to send its commands
VAULT_PARTITION_PREFIX = f"{VAULT_GROUP}.p"  # .<k>.<op>: only the owner of partition k listens
VAULT_FANOUT_PREFIX = f"{VAULT_GROUP}.all"  # .<op>: every vault instance answers for the partitions it owns

# --- events --------------------------------------------------------------------
BREAKER_OUTCOME_PREFIX = f"{BREAKER_GROUP}.outcome"
BREAKER_OUTCOME_ALL = f"{BREAKER_OUTCOME_PREFIX}.*"
SPEND_PREFIX = f"{PREFIX}.spend"
SPEND_ALL = f"{SPEND_PREFIX}.*"
AUDIT_PREFIX = f"{PREFIX}.audit"
# The vault announces tokens that stopped being valid (rotation); every gateway ends what is open on them.
TOKEN_REVOKED = f"{PREFIX}.tokens.revoked"
GRANTS_REVOKED = f"{PREFIX}.grants.revoked"  # GrantsRevoked: gateways close that agent's grants
REQUESTS_PREFIX = f"{PREFIX}.requests"  # one RequestRecord per request, captured by STREAM_EVENTS
REQUESTS_ANON = "anon"  # the agent token of free-mode requests

# --- JetStream -------------------------------------------------------------------
LEDGER_PREFIX = "arbstr.ledger"
STREAM_LEDGER = "ARBSTR_LEDGER"
# Further ledger streams (a cluster spreads partitions' journals so their leaders land on several servers).
LEDGERS_PREFIX = "arbstr.ledgers"
OBJ_SNAPSHOTS = "arbstr_snapshots"  # object store: one snapshot of each partition's state
STREAM_SETTLE = "ARBSTR_SETTLE"
SETTLE_PREFIX = "arbstr.settle"
STREAM_EVENTS = "ARBSTR_EVENTS"

# --- KV buckets ------------------------------------------------------------------
KV_BREAKERS = "arbstr_breakers"
KV_PRICES = "arbstr_prices"
KV_PARTITIONS = "arbstr_partitions"  # the ledger's layout, vault instances, and who owns each partition
KV_VAULT = "arbstr_vault"  # vault-wide switches: key "freeze" (fail closed on a reconciliation shortfall)
# Prepaid keys of Routstr nodes, filled by the vault after a top-up: key = provider name, value = {"api_key": …}.
# Secrets: only the vault writes it; pricing and gateways read it (bus permissions).
KV_PROVIDER_KEYS = "arbstr_provider_keys"

# --- service names (nats micro discovery) ---------------------------------------
SERVICE_ROUTER = "arbstr-router"
SERVICE_PRICING = "arbstr-pricing"
SERVICE_BREAKER = "arbstr-breaker"
SERVICE_VAULT = "arbstr-vault"

# A token that is safe as one subject token and as a KV key.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _token(value: str) -> str:
    if not TOKEN_RE.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def breaker_outcome(provider: str) -> str:
    return f"{BREAKER_OUTCOME_PREFIX}.{_token(provider)}"


def spend(agent_id: str) -> str:
    return f"{SPEND_PREFIX}.{_token(agent_id)}"


def requests(agent_id: str | None) -> str:
    return f"{REQUESTS_PREFIX}.{_token(agent_id) if agent_id else REQUESTS_ANON}"


def audit(agent_id: str) -> str:
    return f"{AUDIT_PREFIX}.{_token(agent_id)}"


def ledger(agent_id: str, kind: str = "event") -> str:
    return f"{LEDGER_PREFIX}.{_token(agent_id)}.{_token(kind)}"


def ledger_all(agent_id: str) -> str:
    """Wildcard over one agent's journal: the optimistic-concurrency scope."""
    return f"{LEDGER_PREFIX}.{_token(agent_id)}.>"


def ledger_stream(index: int) -> str:
    return STREAM_LEDGER if index == 0 else f"{STREAM_LEDGER}_{index}"


def ledger_stream_subjects(index: int) -> list[str]:
    return [f"{LEDGER_PREFIX}.>"] if index == 0 else [f"{LEDGERS_PREFIX}.{index}.>"]


def ledger_partition(partition: int, stream_index: int) -> str:
    """The one subject a partition's journal batches are written on (its owner's writes are fenced on it)."""
    if stream_index == 0:
        return f"{LEDGER_PREFIX}.p.{partition}"
    return f"{LEDGERS_PREFIX}.{stream_index}.p.{partition}"


def vault_partition(partition: int, op: str) -> str:
    return f"{VAULT_PARTITION_PREFIX}.{partition}.{_token(op)}"


def vault_fanout(op: str) -> str:
    return f"{VAULT_FANOUT_PREFIX}.{_token(op)}"


def settle_command(agent_id: str) -> str:
    return f"{SETTLE_PREFIX}.{_token(agent_id)}"


def vault_agent(op: str) -> str:
    return f"{VAULT_AGENT_GROUP}.{_token(op)}"


def vault_admin(op: str) -> str:
    return f"{VAULT_ADMIN_GROUP}.{_token(op)}"


# NATS message headers carried on every bus message.
H_REQUEST_ID = "X-Request-Id"
H_TRACEPARENT = "traceparent"
H_MSG_ID = "Nats-Msg-Id"
H_SERVICE_ERROR = "Nats-Service-Error"
H_SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
# The operator's admin token on admin commands: the actor checks it itself (defence in depth behind the gateway).
H_ADMIN_AUTH = "Arbstr-Admin-Token"
