"""The configuration model (TOML file, ``${ENV}`` expansion for secrets, unknown keys rejected)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .common import Name, Rate, Tier


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    upstream_connections: int = Field(512, ge=1, description="size of the one pooled upstream session")
    access_log: bool = Field(True, description="one log line per request (costs ~10 % of peak throughput)")


class NatsConfig(_Section):
    url: str = "nats://127.0.0.1:4222"
    request_timeout_s: float = Field(2.0, gt=0, description="timeout of every request/reply on the bus")
    max_concurrency: int = Field(256, ge=1, description="in-flight handlers per actor endpoint")
    kv_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the KV buckets (3 on a cluster)")


class ProviderConfig(_Section):
    name: Name
    url: str = Field(description="OpenAI-compatible base URL, including /v1")
    api_key: Optional[SecretStr] = None
    models: list[str] = Field(default_factory=list, description="models served; an empty list matches nothing")
    input_rate: Rate = Field(description="sats per 1M input tokens")
    output_rate: Rate = Field(description="sats per 1M output tokens")
    base_fee_msat: int = Field(0, ge=0)
    tier: Tier = "standard"
    context_length: int = Field(128_000, ge=1)
    supports_tools: bool = True
    free: bool = Field(False, description="zero prices are accepted only from providers marked free/local")
    connect_timeout_s: float = Field(5.0, gt=0)
    first_byte_timeout_s: float = Field(60.0, gt=0)
    total_timeout_s: Optional[float] = Field(None, gt=0, description="none by default: long generations are not cut")

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


class PolicyConfig(_Section):
    name: Name
    description: str = ""
    keywords: list[str] = Field(default_factory=list, description="case-insensitive; matched in the last user message")
    allowed_models: list[str] = Field(default_factory=list, description="empty: any model")
    max_input_rate: Optional[Rate] = None
    max_output_rate: Optional[Rate] = None
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
    failure_threshold: int = Field(3, ge=1, description="consecutive failures (5xx, connect, timeout, cut) that open")
    cooldown_s: float = Field(30.0, gt=0, description="how long an open breaker keeps its provider out")
    probe_timeout_s: float = Field(10.0, gt=0, description="a half-open probe not resolved by then frees its slot")
    tick_interval_s: float = Field(1.0, gt=0, description="how often the breaker moves open to half-open, frees probes")


class ComplexityConfig(_Section):
    """Weights and thresholds of the complexity score (see actors/router/complexity.py); every point is whole."""

    length_bands: tuple[tuple[int, int], ...] = Field(
        ((1_000, 1), (4_000, 2), (16_000, 3)),
        description="[input tokens, points] pairs: the highest threshold reached gives its points")
    code_block: int = Field(2, ge=0, description="points for a fenced code block")
    file_path: int = Field(1, ge=0, description="points for something that looks like a file path")
    reasoning_word: int = Field(1, ge=0, description="points per distinct reasoning word")
    reasoning_cap: int = Field(3, ge=0, description="most points reasoning words can add")
    reasoning_words: tuple[str, ...] = (
        "prove", "proof", "step by step", "analyze", "analyse", "architecture", "debug", "refactor",
        "optimize", "derive", "reason", "trade-off", "tradeoff", "design", "algorithm", "complexity",
        "root cause", "why does", "compare", "evaluate",
    )
    turn_bands: tuple[tuple[int, int], ...] = Field(
        ((6, 1), (12, 2)), description="[user turns, points] pairs: the highest threshold reached gives its points")
    tools: int = Field(1, ge=0, description="points when the request offers tools")
    medium_at: int = Field(3, ge=0, description="a score from here is medium (standard tier)")
    high_at: int = Field(6, ge=0, description="a score from here is high (frontier tier)")

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


class MockUpstreamConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    latency_ms: int = Field(0, ge=0)
    chunk_delay_ms: int = Field(0, ge=0)


class DefaultPolicyConfig(_Section):
    max_tx_msat: Optional[int] = Field(None, ge=0)
    daily_limit_msat: Optional[int] = Field(None, ge=0)
    approval_over_msat: Optional[int] = Field(None, ge=0)
    approval_timeout_s: int = Field(300, ge=1)


class DemoAgentConfig(_Section):
    name: str = "demo"
    deposit_msat: int = Field(10_000_000, ge=0, description="funded once, when `arbstr up` first creates it")


class WalletConfig(_Section):
    """The money rails: where deposits arrive and payouts leave from."""

    kind: Literal["simulated", "lnd", "cashu", "auto"] = "simulated"
    fee_limit_ppm: int = Field(5_000, ge=0, description="Lightning fee limit per payout, parts per million")
    fee_limit_min_msat: int = Field(1_000, ge=1, description="the fee limit never goes below this (never 0)")
    invoice_expiry_s: int = Field(3600, ge=60)
    pay_wait_s: float = Field(5.0, gt=0, description="a withdrawal answers 'pending' if the rail takes longer")
    check_interval_s: float = Field(5.0, gt=0, description="how often payouts under way are checked")
    reconcile_margin_msat: int = Field(0, ge=0, description="shortfall of assets vs liabilities tolerated")

    @field_validator("kind")
    @classmethod
    def _available(cls, v: str) -> str:
        # Refused here rather than at vault start: a config naming a rail this build cannot drive fails closed.
        if v != "simulated":
            raise ValueError(f"wallet kind {v!r} is not available in this build yet (only \"simulated\")")
        return v


class VaultConfig(_Section):
    """Present: paid mode (every request is reserved and settled against the caller's sub-account)."""

    admin_token: Optional[SecretStr] = Field(None, description="bearer token of /v1/admin/*; ${ARBSTR_ADMIN_TOKEN}")
    hold_ttl_s: int = Field(900, ge=1, description="≥ the longest upstream timeout + the settle retry budget")
    expiry_action: Literal["charge", "release"] = Field(
        "charge", description="an expired hold: charge it and flag it (the provider was probably paid) or release")
    sweep_interval_s: float = Field(5.0, gt=0)
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the ledger, settle and events streams")
    default_policy: DefaultPolicyConfig = Field(default_factory=DefaultPolicyConfig)
    duckdb_path: str = Field("", description="file of the DuckDB projection; empty: in memory")
    demo_agent: Optional[DemoAgentConfig] = None
    wallet: WalletConfig = Field(default_factory=WalletConfig)


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

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        for kind, names in (("provider", [p.name for p in self.providers]),
                            ("policy", [p.name for p in self.policies]),
                            ("policy virtual_model", [p.virtual_model for p in self.policies if p.virtual_model])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} names: {', '.join(dupes)}")
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
