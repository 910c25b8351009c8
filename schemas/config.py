"""The configuration model (TOML file, ``${ENV}`` expansion for secrets, unknown keys rejected)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .common import (MAX_APPROVAL_TIMEOUT_S, MAX_DURATION_S, MAX_MSAT, MAX_RATE, MAX_TOKENS, Amount, Name, Rate, Seconds,
                     Tier)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=1024**3, description="larger request bodies get 413")
    upstream_connections: int = Field(512, ge=1, le=100_000, description="size of the one pooled upstream session")
    access_log: bool = Field(True, description="one log line per request (costs ~10 % of peak throughput)")
    header_timeout_s: float = Field(
        20.0, gt=0, le=3600, description="a connection that has not sent a complete request head (request line and "
                                         "headers) this long after opening, or after its first byte, is closed (408)")
    keepalive_timeout_s: float = Field(75.0, gt=0, le=86_400, description="an idle keep-alive connection is closed")
    client_write_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a client that takes longer to accept one write of a response (it stopped "
                                         "reading) is cut off; a stream's upstream is still read to the end and billed")
    upstream_pool_wait_s: float = Field(
        5.0, gt=0, le=600, description="longest wait for a free pooled upstream connection; then the provider counts "
                                       "as busy (next candidate, or 503 upstream_busy with retry-after)")


class NatsConfig(_Section):
    url: str = "nats://127.0.0.1:4222"
    request_timeout_s: Seconds = Field(2.0, description="timeout of every request/reply on the bus")
    max_concurrency: int = Field(256, ge=1, le=100_000, description="in-flight handlers per actor endpoint")
    kv_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the KV buckets (3 on a cluster)")
    creds: Optional[str] = Field(None, description="this process's bus credential: an NKey seed file (or a JWT "
                                                   ".creds file); $ARBSTR_NATS_CREDS or --creds take precedence")


class ProviderConfig(_Section):
    name: Name
    url: str = Field(description="OpenAI-compatible base URL, including /v1")
    api_key: Optional[SecretStr] = None
    models: list[str] = Field(default_factory=list, description="models served; an empty list matches nothing")
    input_rate: Rate = Field(le=MAX_RATE, description="sats per 1M input tokens")
    output_rate: Rate = Field(le=MAX_RATE, description="sats per 1M output tokens")
    base_fee_msat: Amount = Field(0)
    tier: Tier = "standard"
    context_length: int = Field(128_000, ge=1, le=MAX_TOKENS)
    supports_tools: bool = True
    free: bool = Field(False, description="zero prices are accepted only from providers marked free/local")
    discover: bool = Field(False, description="GET {url}/models at start and every [market] discovery_interval_s: "
                                              "a successful listing replaces `models` (and prices it publishes)")
    connect_timeout_s: Seconds = Field(5.0)
    first_byte_timeout_s: Seconds = Field(60.0)
    total_timeout_s: Optional[Seconds] = Field(None, description="none by default: long generations are not cut")
    public_only: bool = Field(False, description="connect only when the host resolves to public addresses (set for "
                                                 "nodes found in public announcements)")
    routstr: bool = Field(False, description="a Routstr node: its cost reports are read (and kept from clients), "
                                             "its payment refusals fall over instead of reaching the client")
    x_cashu: bool = Field(False, description="paid per request with an X-Cashu token from the vault (set for "
                                             "Routstr nodes arbstr holds no key for)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _free(self) -> "ProviderConfig":
        if (self.input_rate == 0 or self.output_rate == 0) and not (self.free or self.tier == "local"):
            raise ValueError(f"provider {self.name!r}: zero rates need free = true or tier = \"local\"")
        return self


def _http_url(v: str) -> str:
    if not re.match(r"^https?://", v):
        raise ValueError("must start with http:// or https://")
    return v.rstrip("/")


class FeedConfig(_Section):
    """A quote feed in the seed's format: ``GET {url}/api/quotes?limit=N[&source=S]`` and ``GET {url}/api/nodes``."""

    url: str = Field(description="base URL of the feed service")
    name: Optional[Name] = Field(None, description="label in each price's sources; default: the URL's host")
    interval_s: Seconds = Field(60.0, description="how often the feed is polled")
    max_age_s: Seconds = Field(900.0, description="quotes observed longer ago than this are dropped")
    reliability_floor: float = Field(0.0, ge=0, le=1, description="providers the feed rates below this are skipped")
    source: Optional[str] = Field(None, min_length=1, description="only quotes of this source (the feed's `source`)")
    limit: int = Field(2000, ge=1, le=100_000, description="quotes asked for per poll")
    timeout_s: Seconds = Field(10.0)
    tier: Tier = Field("standard", description="tier of the endpoints this feed admits")
    context_length: int = Field(128_000, ge=1, le=MAX_TOKENS, description="assumed for the endpoints this feed admits")
    supports_tools: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


class CredentialConfig(_Section):
    """The key of a market endpoint: a feed quote for this URL is admitted only with one of these."""

    url: str = Field(description="the endpoint's OpenAI base URL (as called: including /v1)")
    api_key: SecretStr = Field(description="sent as a bearer token; ${ENV}")
    name: Optional[Name] = Field(None, description="the provider name it gets; default: from the feed")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


class NostrConfig(_Section):
    """Routstr nodes announced on Nostr (kind 38421): admitted when they accept a mint the vault pays with."""

    relays: list[str] = Field(min_length=1, description="ws:// or wss:// relay URLs")
    interval_s: Seconds = Field(300.0, description="how often announcements and each node's /v1/models are read")
    timeout_s: Seconds = Field(5.0)
    tier: Tier = "standard"
    accepted_mints: list[str] = Field(default_factory=list, description="the vault's Cashu mint URL(s); default: "
                                                                      "[vault.wallet.cashu] mint_url")
    authors: list[str] = Field(default_factory=list, description="hex pubkeys whose announcements are read; empty: "
                                                                 "anyone's (then cap what [vault.topup] pays)")
    allow_private_urls: Optional[bool] = Field(
        None, description="read nodes announced at loopback/private addresses; unset: only when every relay is "
                          "itself on loopback/private (a local test net): an announcement on a public relay "
                          "cannot point arbstr at its own network")

    @field_validator("relays")
    @classmethod
    def _relays(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.match(r"^wss?://", url):
                raise ValueError(f"relay {url!r} must start with ws:// or wss://")
        return v

    @field_validator("accepted_mints")
    @classmethod
    def _mints(cls, v: list[str]) -> list[str]:
        return [_http_url(m) for m in v]

    @field_validator("authors")
    @classmethod
    def _authors(cls, v: list[str]) -> list[str]:
        for a in v:
            if not re.fullmatch(r"[0-9a-f]{64}", a):
                raise ValueError(f"author {a[:70]!r} is not a 64-hex-digit public key")
        return v


class MarketConfig(_Section):
    """The live market: model discovery, quote feeds, Routstr nodes on Nostr, and the price guard."""

    max_price_jump: float = Field(10.0, gt=1, le=1e6,
                                  description="a market price moving more than this factor between two "
                                              "updates is held until an admin confirms it")
    discovery_interval_s: Seconds = Field(300.0, description="how often providers with discover = true are listed")
    discovery_timeout_s: Seconds = Field(10.0)
    sats_per_usd: Optional[int] = Field(None, ge=1, le=10**9,
                                        description="converts USD prices in /models listings; unset: "
                                                    "USD prices are ignored")
    connect_timeout_s: Seconds = Field(5.0, description="market endpoints (feeds, Nostr): upstream timeouts")
    first_byte_timeout_s: Seconds = Field(60.0)
    feeds: list[FeedConfig] = Field(default_factory=list)
    credentials: list[CredentialConfig] = Field(default_factory=list)
    nostr: Optional[NostrConfig] = None

    @model_validator(mode="after")
    def _unique(self) -> "MarketConfig":
        for kind, values in (("feed url", [f.url for f in self.feeds]),
                             ("feed name", [f.name for f in self.feeds if f.name]),
                             ("credential url", [c.url for c in self.credentials]),
                             ("credential name", [c.name for c in self.credentials if c.name])):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate market {kind}s: {', '.join(dupes)}")
        return self

    def credential_for(self, url: str) -> Optional[CredentialConfig]:
        for c in self.credentials:
            if c.url == url.rstrip("/"):
                return c
        return None


class PolicyConfig(_Section):
    name: Name
    description: str = ""
    keywords: list[str] = Field(default_factory=list, description="case-insensitive; matched in the last user message")
    allowed_models: list[str] = Field(default_factory=list, description="empty: any model")
    max_input_rate: Optional[Rate] = Field(None, le=MAX_RATE)
    max_output_rate: Optional[Rate] = Field(None, le=MAX_RATE)
    virtual_model: Optional[str] = Field(
        None, min_length=1, max_length=256,
        description="a model name clients may send (e.g. \"arbstr/cheap\"): it selects this policy and lets the "
                    "router pick model and provider together among allowed_models, like model \"auto\"")


class RouterConfig(_Section):
    default_output_tokens: int = Field(
        512, ge=1, description="output tokens assumed when ranking a request that sets no max_tokens")
    max_output_tokens: int = Field(
        16_384, ge=1, description="ceiling of the output budget of a request that sets no max_tokens")


class BreakerConfig(_Section):
    failure_threshold: int = Field(3, ge=1, le=10_000,
                                   description="consecutive failures (5xx, connect, timeout, cut) that open")
    cooldown_s: Seconds = Field(30.0, description="how long an open breaker keeps its provider out")
    probe_timeout_s: Seconds = Field(10.0, description="a half-open probe not resolved by then frees its slot")
    tick_interval_s: Seconds = Field(1.0, description="how often the breaker moves open to half-open, frees probes")


# Keys of the keyword points scorer (``scorer = "keywords"``), the router's first scorer.
KEYWORD_SCORER_KEYS = frozenset({"length_bands", "code_block", "file_path", "reasoning_word", "reasoning_cap",
                                 "reasoning_words", "turn_bands", "tools", "medium_at", "high_at"})
TRAINED_SCORER_KEYS = ("margin", "frontier_margin", "model_file", "top_features")


class ComplexityConfig(_Section):
    """How the router decides the minimum tier a request needs (see actors/router/complexity.py).

    ``scorer = "trained"`` (the default): the model trained on the labelled corpus (README, "Tiers"), tuned by
    ``margin``/``frontier_margin``/``model_file``/``top_features``. ``scorer = "keywords"``: the old keyword points
    scorer, tuned by the remaining keys; setting those without it is a load error naming the new keys.
    """

    scorer: Literal["trained", "keywords"] = Field(
        "trained", description="trained: the shipped tier model; keywords: the old keyword points scorer")
    margin: Optional[float] = Field(
        None, ge=0.0, lt=0.5, description="choose the higher tier once its probability reaches 0.5 - margin "
                                          "(when unsure, the higher tier); unset: the margin the model was "
                                          "trained with")
    frontier_margin: Optional[float] = Field(
        None, ge=0.0, lt=0.5, description="the same for the standard/frontier boundary; unset: the model's")
    model_file: Optional[str] = Field(
        None, description="a tier model file written by `python -m bench.train_tiers --out` (unset: the shipped "
                          "one)")
    top_features: int = Field(5, ge=0, le=20, description="features explained per decision")

    length_bands: tuple[tuple[int, int], ...] = Field(
        ((1_000, 1), (4_000, 2), (16_000, 3)),
        description="keywords scorer: [input tokens, points] pairs: the highest threshold reached gives its points")
    code_block: int = Field(2, ge=0, description="keywords scorer: points for a fenced code block")
    file_path: int = Field(1, ge=0, description="keywords scorer: points for something that looks like a file path")
    reasoning_word: int = Field(1, ge=0, description="keywords scorer: points per distinct reasoning word")
    reasoning_cap: int = Field(3, ge=0, description="keywords scorer: most points reasoning words can add")
    reasoning_words: tuple[str, ...] = (
        "prove", "proof", "step by step", "analyze", "analyse", "architecture", "debug", "refactor",
        "optimize", "derive", "reason", "trade-off", "tradeoff", "design", "algorithm", "complexity",
        "root cause", "why does", "compare", "evaluate",
    )
    turn_bands: tuple[tuple[int, int], ...] = Field(
        ((6, 1), (12, 2)),
        description="keywords scorer: [user turns, points] pairs: the highest threshold reached gives its points")
    tools: int = Field(1, ge=0, description="keywords scorer: points when the request offers tools")
    medium_at: int = Field(3, ge=0, description="keywords scorer: a score from here is medium (standard tier)")
    high_at: int = Field(6, ge=0, description="keywords scorer: a score from here is high (frontier tier)")

    @field_validator("length_bands", "turn_bands")
    @classmethod
    def _bands(cls, v: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if any(threshold < 0 or points < 0 for threshold, points in v):
            raise ValueError("thresholds and points must be >= 0")
        return v

    @field_validator("reasoning_words")
    @classmethod
    def _words(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # Matched against lowered text: store them lowered once, not per request.
        words = tuple(w.strip().lower() for w in v)
        if any(not w for w in words):
            raise ValueError("reasoning words must not be empty")
        return words

    @model_validator(mode="after")
    def _order(self) -> "ComplexityConfig":
        if self.high_at < self.medium_at:
            raise ValueError("high_at must be >= medium_at")
        return self

    @model_validator(mode="after")
    def _scorer_keys(self) -> "ComplexityConfig":
        # A tuned keyword scorer silently ignored would route as if untuned: say what replaced it instead.
        legacy = sorted(self.model_fields_set & KEYWORD_SCORER_KEYS)
        if legacy and self.scorer != "keywords":
            raise ValueError(
                f"{', '.join('complexity.' + k for k in legacy)} {'is a key' if len(legacy) == 1 else 'are keys'} of "
                f"the keyword scorer, which the trained tier scorer replaced: tune that one with {', '.join('complexity.' + k for k in TRAINED_SCORER_KEYS)}, "
                f"or set complexity.scorer = \"keywords\" to keep the keyword scorer and these keys")
        trained = sorted(self.model_fields_set & {"margin", "frontier_margin", "model_file"})
        if trained and self.scorer == "keywords":
            raise ValueError(f"{', '.join('complexity.' + k for k in trained)} tune the trained scorer, "
                             f"but complexity.scorer = \"keywords\"")
        return self


class MockUpstreamConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    latency_ms: int = Field(0, ge=0, le=86_400_000)
    chunk_delay_ms: int = Field(0, ge=0, le=86_400_000)


class DefaultPolicyConfig(_Section):
    max_tx_msat: Optional[Amount] = None
    daily_limit_msat: Optional[Amount] = None
    approval_over_msat: Optional[Amount] = None
    approval_timeout_s: int = Field(300, ge=1, le=MAX_APPROVAL_TIMEOUT_S)


class DemoAgentConfig(_Section):
    name: str = "demo"
    deposit_msat: Amount = Field(10_000_000, description="funded once, when `arbstr up` first creates it")


class LndConfig(_Section):
    """An LND node over gRPC: TLS with the node's certificate, the macaroon in call metadata."""

    host: str = Field("127.0.0.1:10009", description="host:port of the node's gRPC listener")
    tls_cert_path: str = Field("", description="the node's tls.cert (PEM)")
    macaroon_path: str = Field("", description="a macaroon file; baked for invoices, offchain read/write only")
    macaroon_hex: Optional[SecretStr] = Field(None, description="or the macaroon itself, hex; ${LND_MACAROON}")
    timeout_s: Seconds = Field(15.0, description="deadline of every unary call")

    @model_validator(mode="after")
    def _macaroon(self) -> "LndConfig":
        if not self.macaroon_path and self.macaroon_hex is None:
            raise ValueError("[vault.wallet.lnd] needs macaroon_path or macaroon_hex")
        return self


class CashuConfig(_Section):
    """A Nutshell mint the vault holds ecash at."""

    mint_url: str = Field("http://127.0.0.1:3338", description="${CASHU_MINT_URL}")
    wallet_dir: str = Field("arbstr-data/cashu-wallet", min_length=1,
                            description="where the wallet's proofs are kept (they ARE the money: back it up); "
                                        "vault instances may share it (file-locked)")
    unit: Literal["sat"] = "sat"
    timeout_s: Seconds = Field(30.0)

    @field_validator("mint_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class WalletConfig(_Section):
    """The money rails: where deposits arrive and payouts leave from."""

    kind: Literal["simulated", "lnd", "cashu", "auto"] = "simulated"
    fee_limit_ppm: int = Field(5_000, ge=0, le=1_000_000,
                               description="Lightning fee limit per payout, parts per million")
    fee_limit_min_msat: Amount = Field(1_000, ge=1, description="the fee limit never goes below this (never 0)")
    invoice_expiry_s: int = Field(3600, ge=60, le=MAX_DURATION_S)
    pay_wait_s: Seconds = Field(5.0, description="a withdrawal answers 'pending' if the rail takes longer")
    check_interval_s: Seconds = Field(5.0, description="how often payouts under way are checked")
    reconcile_margin_msat: Amount = Field(0, description="shortfall of assets vs liabilities tolerated")
    reconcile_interval_s: Seconds = Field(30.0, description="how often the watchdog compares the books")
    auto_threshold_msat: Amount = Field(1_000_000, ge=1,
                                        description="auto rail: Cashu below this amount, else Lightning")
    lnd: Optional[LndConfig] = None
    cashu: Optional[CashuConfig] = None

    @model_validator(mode="after")
    def _backends(self) -> "WalletConfig":
        # Refused here rather than at vault start: a config naming a rail it cannot reach fails closed.
        need = {"lnd": ["lnd"], "cashu": ["cashu"], "auto": ["lnd", "cashu"]}.get(self.kind, [])
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"wallet kind {self.kind!r} needs " + " and ".join(f"[vault.wallet.{n}]" for n in missing))
        return self


class TopUpConfig(_Section):
    """Prepaid balances at Routstr-style providers, kept topped up with Cashu tokens from the operator account."""

    operator_agent: str = Field("operator", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                description="the vault account top-ups are paid from (fund it like an agent)")
    amount_msat: Amount = Field(100_000, gt=0, description="what one top-up adds")
    min_balance_msat: Amount = Field(20_000, description="top up when the provider's balance falls below this")
    interval_s: Seconds = Field(10.0, description="how often balances are checked")
    timeout_s: Seconds = Field(15.0, description="deadline of each call to a provider")
    daily_limit_msat: Amount = Field(10_000_000, gt=0, description="the operator account's rolling 24 h limit: what "
                                                                "top-ups may spend in a day, all providers together")
    providers: list[str] = Field(default_factory=list, description="top up only these providers; empty: every "
                                                                   "payable Routstr node, up to max_providers")
    max_providers: int = Field(10, ge=1, le=10_000, description="at most this many providers are ever funded")
    reserve_cap_msat: int = Field(2_000_000, gt=0, description="a node's 402 rule may demand its dearest model's "
                                                               "whole max_cost as balance: top-ups are sized to "
                                                               "cover it up to this much")
    wait_on_402_s: float = Field(20.0, ge=0, description="a request a funded node refused with 402 waits this long "
                                                         "for one top-up before falling over (0: never)")
    prepaid_keys: bool = Field(True, description="buy each node a prepaid key and keep it topped up; false: pay "
                                                 "only per request (x_cashu)")
    x_cashu: bool = Field(True, description="pay nodes without a prepaid key per request with an X-Cashu token "
                                            "(non-streamed requests only: the node buffers the whole answer)")
    x_cashu_max_msat: int = Field(1_000_000, gt=0, description="the largest token one request may carry")
    x_cashu_grace_s: float = Field(600.0, gt=0, description="a token sent and not reported on is recovered after "
                                                            "this long (≥ the longest upstream timeout)")
    x_cashu_give_up_s: float = Field(86_400.0, gt=0, description="after this long a spent token whose change the "
                                                                 "node never hands back is closed without it")


class GrantsConfig(_Section):
    """Credit control (DESIGN §6): the gateway decides requests against a slice of the agent's balance the vault
    grants it, and reports them in batches; anything else takes the per-request reserve."""

    enabled: bool = Field(True, description="false: every paid request is reserved and settled at the vault")
    want_msat: int = Field(1_000_000, ge=1, le=MAX_MSAT, description="the usual size of a grant (capped by the "
                                                                      "balance and the daily limit); an agent that "
                                                                      "uses its grants up within 1 s is granted "
                                                                      "twice as much each time, up to max_msat")
    requests_per_grant: int = Field(64, ge=1, le=1_000_000, description="a grant covers at least this many holds "
                                                                        "of the request that asked for it")
    max_msat: int = Field(100_000_000, ge=1, le=MAX_MSAT, description="the largest grant asked for")
    use_s: float = Field(30.0, gt=0, le=3600, description="a grant is replaced after this long (at the latest "
                                                          "at half its hold TTL)")
    idle_s: float = Field(1.0, gt=0, le=3600, description="a grant unused this long is given back")
    report_interval_s: float = Field(0.25, gt=0, le=10, description="how often served requests are reported "
                                                                    "(reads report first; the vault's work per "
                                                                    "report competes with requests for the cores)")
    report_batch: int = Field(256, ge=1, le=4096, description="a report goes at once when this many wait")
    retry_after_refusal_s: float = Field(1.0, ge=0, le=60, description="after a grant is refused, requests take "
                                                                       "the per-request path this long")


class VaultConfig(_Section):
    """Present: paid mode (every request is reserved and settled against the caller's sub-account)."""

    admin_token: Optional[SecretStr] = Field(None, description="bearer token of /v1/admin/*; ${ARBSTR_ADMIN_TOKEN}")
    hold_ttl_s: int = Field(900, ge=1, le=MAX_DURATION_S,
                            description="≥ the longest upstream timeout + the settle retry budget")
    expiry_action: Literal["charge", "release"] = Field(
        "charge", description="an expired hold: charge it and flag it (the provider was probably paid) or release")
    sweep_interval_s: Seconds = Field(5.0)
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the ledger, settle and events streams")
    default_policy: DefaultPolicyConfig = Field(default_factory=DefaultPolicyConfig)
    duckdb_path: str = Field("", description="file of the DuckDB projection; empty: in memory")
    duckdb_memory_mb: int = Field(256, ge=16, le=1_048_576, description="what a file projection's DuckDB may keep "
                                                                         "in memory (its page cache; DuckDB's own "
                                                                         "default is 80 % of the machine's RAM)")
    partitions: int = Field(16, ge=1, le=1024, description="accounts are spread over this many partitions, each "
                                                            "owned by one vault instance at a time; fixed when "
                                                            "the ledger is created (later values are ignored)")
    ledger_streams: int = Field(1, ge=1, le=8, description="journal streams the partitions are spread over (on a "
                                                           "cluster their leaders land on several servers); fixed "
                                                           "when the ledger is created")
    lease_s: float = Field(2.0, ge=0.5, le=60, description="a vault instance silent this long loses its "
                                                            "partitions to the others")
    snapshot_interval_s: float = Field(30.0, gt=0, description="how often each partition's state is saved, so "
                                                               "a takeover folds only the journal since")
    demo_agent: Optional[DemoAgentConfig] = None
    grants: GrantsConfig = Field(default_factory=GrantsConfig)
    wallet: WalletConfig = Field(default_factory=WalletConfig)
    topup: Optional[TopUpConfig] = Field(None, description="present: pay Routstr providers from the Cashu rail")


class Config(_Section):
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    server: ServerConfig = Field(default_factory=ServerConfig)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    complexity: ComplexityConfig = Field(default_factory=ComplexityConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)
    mock_upstream: Optional[MockUpstreamConfig] = None
    vault: Optional[VaultConfig] = None
    market: MarketConfig = Field(default_factory=MarketConfig)

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        for kind, names in (("provider", [p.name for p in self.providers]
                             + [c.name for c in self.market.credentials if c.name]),
                            ("policy", [p.name for p in self.policies]),
                            ("policy virtual_model", [p.virtual_model for p in self.policies if p.virtual_model])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} names: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _mints(self) -> "Config":
        # Nodes are admitted when the vault can pay them: by default, the mint the vault's Cashu rail uses.
        nostr = self.market.nostr
        cashu = self.vault.wallet.cashu if self.vault is not None else None
        if nostr is not None and not nostr.accepted_mints and cashu is not None:
            nostr.accepted_mints = [cashu.mint_url]
        return self

    def provider(self, name: str) -> Optional[ProviderConfig]:
        for p in self.providers:
            if p.name == name:
                return p
        return None


class ConfigError(ValueError):
    pass


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Optional[dict[str, str]] = None, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing variable is an error naming it."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"config: {path or 'value'} refers to ${{{name}}}, which is not set")
        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        else:
            lines.append(f"'{loc}': {e['msg']}")
    return "config: " + "; ".join(lines)


def parse_config(data: dict[str, Any], env: Optional[dict[str, str]] = None) -> Config:
    try:
        return Config.model_validate(expand_env(data, env))
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def load_config(path: str | Path, env: Optional[dict[str, str]] = None) -> Config:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {p} is not valid TOML: {e}") from None
    return parse_config(raw, env)
