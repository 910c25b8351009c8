"""The configuration model (TOML file, ``${ENV}`` expansion for secrets, unknown keys rejected)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from .common import Name, Rate, Tier


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    upstream_connections: int = Field(512, ge=1, description="size of the one pooled upstream session")


class NatsConfig(_Section):
    url: str = "nats://127.0.0.1:4222"
    request_timeout_s: float = Field(2.0, gt=0, description="timeout of every request/reply on the bus")
    max_concurrency: int = Field(256, ge=1, description="in-flight handlers per actor endpoint")


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


class RouterConfig(_Section):
    default_output_tokens: int = Field(
        512, ge=1, description="output tokens assumed when ranking a request that sets no max_tokens")
    max_output_tokens: int = Field(
        16_384, ge=1, description="ceiling of the output budget of a request that sets no max_tokens")


class MockUpstreamConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)
    latency_ms: int = Field(0, ge=0)
    chunk_delay_ms: int = Field(0, ge=0)


class Config(_Section):
    log_level: str = "INFO"
    server: ServerConfig = Field(default_factory=ServerConfig)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)
    mock_upstream: Optional[MockUpstreamConfig] = None

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        for kind, names in (("provider", [p.name for p in self.providers]),
                            ("policy", [p.name for p in self.policies])):
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
