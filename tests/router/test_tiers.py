"""The complexity tier table: prompts with their expected complexity route to the cheapest provider at or above
the tier they need, the override header wins, the scorer and its knobs come from the config (the old keyword
scorer's keys only with ``scorer = "keywords"``), and the gateway reports the decision in ``x-arbstr-tier`` /
``x-arbstr-complexity``."""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

import aiohttp
import pytest

from actors.router.rank import route
from gateway.endpoints import CHAT
from schemas.config import ComplexityConfig, Config, parse_config
from schemas.pricing import ProviderPrices
from schemas.router import RouteRequest
from tests.support.stack import Stack, start_stack

NOW = 1_700_000_000_000
CONTEXT = "The service logs show intermittent latency spikes under load. " * 300  # ~4.5k tokens
FRONTIER_CONTEXT = "Quarterly filings, transcripts and analyst notes follow. " * 1200  # ~17k tokens


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def conversation(turns: int, last: str) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    for i in range(turns - 1):
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    return msgs + [{"role": "user", "content": last}]


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]

# (name, request body extras, expected complexity)
TABLE: list[tuple[str, dict[str, Any], str]] = [
    ("greeting", {"messages": user("hi")}, "low"),
    ("fact", {"messages": user("What is the capital of France?")}, "low"),
    ("translation", {"messages": user("Translate 'good morning, see you tomorrow' into Spanish.")}, "low"),
    # A library that fails to load is a task on code and system config: standard, by the tier definitions.
    ("one reasoning word and a path", {"messages": user("Why does /usr/lib/libfoo.so fail to load?")}, "medium"),
    ("short chat with history", {"messages": conversation(4, "thanks! and how do you say goodbye in Italian?")},
     "low"),
    ("debug a snippet", {"messages": user("Please debug this:\n```python\nprint(x)\n```")}, "medium"),
    ("refactor a file", {"messages": user("Refactor src/app/models.py to use dataclasses:\n```python\n"
                                          "class A:\n    def __init__(self, x):\n        self.x = x\n```")},
     "medium"),
    # "Summaries and analysis of a few pages" are standard work; the keyword scorer sent this one to local.
    ("document summary", {"messages": user(CONTEXT + "\nSummarize the evidence.")}, "medium"),
    ("very long document summary", {"messages": user(FRONTIER_CONTEXT + "\nSummarize it.")}, "medium"),
    ("agent loop with tools", {"messages": conversation(12, "continue"), "tools": TOOLS}, "medium"),
    ("long reasoning with code", {"messages": user(CONTEXT + "\nProve step by step that the design is sound, "
                                                   "analyze the hot path and compare the trade-offs:\n"
                                                   "```go\nfunc f() {}\n```")}, "high"),
    ("very long analysis", {"messages": user(FRONTIER_CONTEXT + "\nAnalyze these and evaluate the "
                                             "architecture; derive the root cause.")}, "high"),
]
TIER_OF = {"low": "local", "medium": "standard", "high": "frontier"}
PROVIDER_OF = {"low": "tier_loc", "medium": "tier_std", "high": "tier_top"}


def summary_request(body: dict[str, Any], complexity: Optional[str] = None) -> RouteRequest:
    """Exactly the route request the gateway sends for ``body``."""
    s = CHAT.summarize(body)
    return RouteRequest(request_id="t", model=body["model"], last_user_text=s.last_user_text,
                        text_sample=s.text_sample, input_tokens=s.input_tokens, turns=s.turns,
                        max_tokens=s.max_tokens, tools=s.tools, complexity=complexity)  # type: ignore[arg-type]


def prices() -> list[ProviderPrices]:
    return [
        ProviderPrices(provider="tier_loc", tier="local", models=["m"], input_rate=0, output_rate=0,
                       context_length=200_000),
        ProviderPrices(provider="tier_std", tier="standard", models=["m"], input_rate=300, output_rate=1200,
                       context_length=200_000),
        ProviderPrices(provider="tier_top", tier="frontier", models=["m"], input_rate=3000, output_rate=12000,
                       context_length=200_000),
    ]


@pytest.mark.parametrize("name,extra,expected", TABLE, ids=[t[0] for t in TABLE])
def test_tier_table_routes_to_the_cheapest_provider_at_the_needed_tier(name: str, extra: dict[str, Any],
                                                                       expected: str) -> None:
    reply = route(summary_request({"model": "m", **extra}), prices(), {}, Config(), NOW)
    assert (reply.complexity, reply.tier) == (expected, TIER_OF[expected]), reply.complexity_score
    assert reply.candidates[0].provider == PROVIDER_OF[expected]
    # Never below the tier: every candidate is at it or above.
    order = {"local": 0, "standard": 1, "frontier": 2}
    assert all(order[c.tier] >= order[reply.tier] for c in reply.candidates)


@pytest.mark.parametrize("override", ["low", "medium", "high"])
def test_override_wins_over_the_score(override: str) -> None:
    for _, extra, _ in TABLE:
        reply = route(summary_request({"model": "m", **extra}, override), prices(), {}, Config(), NOW)
        assert (reply.complexity, reply.tier) == (override, TIER_OF[override])
        assert reply.candidates[0].provider == PROVIDER_OF[override]


def test_the_keyword_scorer_keeps_its_weights_and_thresholds() -> None:
    debug = summary_request({"model": "m", "messages": user("Please debug this:\n```python\nprint(x)\n```")})
    keywords = Config(complexity=ComplexityConfig(scorer="keywords"))
    assert route(debug, prices(), {}, keywords, NOW).complexity == "medium"
    strict = Config(complexity=ComplexityConfig(scorer="keywords", medium_at=4, high_at=8))
    assert route(debug, prices(), {}, strict, NOW).complexity == "low"
    eager = Config(complexity=ComplexityConfig(scorer="keywords", code_block=6))
    assert route(debug, prices(), {}, eager, NOW).complexity == "high"
    words = Config(complexity=ComplexityConfig(scorer="keywords", reasoning_words=("Capital",), reasoning_word=3))
    fact = summary_request({"model": "m", "messages": user("What is the capital of France?")})
    assert route(fact, prices(), {}, words, NOW).complexity == "medium"  # config words match case-insensitively
    assert route(fact, prices(), {}, Config(), NOW).complexity == "low"  # the trained scorer ignores those keys
    reply = route(debug, prices(), {}, keywords, NOW)
    assert reply.explanation is not None and reply.explanation.scorer == "keywords"
    assert {f.name for f in reply.explanation.top_features} == {"code", "reasoning"}  # "debug" is a reasoning word


def test_the_margin_decides_how_unsure_the_router_may_be() -> None:
    """The same probabilities, a wider margin: the higher tier is chosen sooner, never later."""
    ask = summary_request({"model": "m", "messages": user("and what about tomorrow?")})
    replies = [route(ask, prices(), {}, Config(complexity=ComplexityConfig(margin=m, frontier_margin=m)), NOW)
               for m in (0.0, 0.2, 0.35, 0.49)]
    order = {"local": 0, "standard": 1, "frontier": 2}
    tiers = [order[r.tier] for r in replies]
    assert tiers == sorted(tiers)
    assert replies[0].tier == "local" and replies[-1].tier != "local"
    # The margin moves the decision, not the model's probabilities.
    assert len({str(r.explanation.probabilities) for r in replies if r.explanation is not None}) == 1


def test_complexity_config_from_toml_values() -> None:
    cfg = parse_config({"complexity": {"scorer": "keywords", "length_bands": [[10, 5]], "medium_at": 2,
                                       "high_at": 5}})
    assert cfg.complexity.length_bands == ((10, 5),)
    with pytest.raises(ValueError):
        parse_config({"complexity": {"scorer": "keywords", "medium_at": 5, "high_at": 4}})
    cfg = parse_config({"complexity": {"margin": 0.3, "frontier_margin": 0.1, "top_features": 3}})
    assert (cfg.complexity.scorer, cfg.complexity.margin, cfg.complexity.frontier_margin) == ("trained", 0.3, 0.1)
    for bad in ({"margin": 0.5}, {"margin": -0.1}, {"scorer": "neural"}, {"top_features": 99}):
        with pytest.raises(ValueError):
            parse_config({"complexity": bad})
    with pytest.raises(ValueError):
        parse_config({"complexity": {"unknown_weight": 1}})
    with pytest.raises(ValueError):
        parse_config({"complexity": {"scorer": "keywords", "length_bands": [[-1, 1]]}})


@pytest.mark.parametrize("key,value", [("length_bands", [[10, 5]]), ("code_block", 3), ("file_path", 0),
                                       ("reasoning_word", 2), ("reasoning_cap", 4), ("reasoning_words", ["why"]),
                                       ("turn_bands", [[3, 1]]), ("tools", 2), ("medium_at", 2), ("high_at", 9)])
def test_old_keyword_keys_fail_at_load_naming_the_new_ones(key: str, value: Any) -> None:
    """A tuned keyword scorer must not be ignored silently: without scorer = "keywords" its keys are a load error
    that names the trained scorer's keys and the way to keep the old scorer."""
    with pytest.raises(ValueError) as err:
        parse_config({"complexity": {key: value}})
    msg = str(err.value)
    assert f"complexity.{key}" in msg and "complexity.margin" in msg and "complexity.frontier_margin" in msg
    assert 'scorer = "keywords"' in msg
    kept = parse_config({"complexity": {"scorer": "keywords", key: value}})
    assert getattr(kept.complexity, key) is not None
    with pytest.raises(ValueError, match="trained scorer"):
        parse_config({"complexity": {"scorer": "keywords", "margin": 0.2}})


# --- through the gateway ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def stack(nats_url: str, mock_upstream: str) -> AsyncIterator[Stack]:
    def provider(name: str, tier: str, rate: int) -> dict[str, Any]:
        return {"name": name, "url": f"{mock_upstream}/{name}/v1", "models": ["m"], "input_rate": rate,
                "output_rate": rate, "tier": tier, "context_length": 200_000}

    cfg = parse_config({"server": {"host": "127.0.0.1", "port": 0},
                        "providers": [provider("tier_loc", "local", 0), provider("tier_std", "standard", 300),
                                      provider("tier_top", "frontier", 3000)]})
    s = await start_stack(cfg, nats_url)
    yield s
    await s.stop()


@pytest.mark.parametrize("name,extra,expected", TABLE, ids=[t[0] for t in TABLE])
async def test_gateway_reports_the_decision(stack: Stack, http: aiohttp.ClientSession, name: str,
                                            extra: dict[str, Any], expected: str) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "max_tokens": 4, **extra})
    assert r.status == 200, await r.text()
    assert r.headers["x-arbstr-complexity"] == expected
    assert r.headers["x-arbstr-tier"] == TIER_OF[expected]
    assert r.headers["x-arbstr-provider"] == PROVIDER_OF[expected]


async def test_gateway_override_header(stack: Stack, http: aiohttp.ClientSession) -> None:
    hard = TABLE[-1][1]
    r = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "max_tokens": 4, **hard},
                        headers={"X-Arbstr-Complexity": "Low"})
    assert r.status == 200
    assert (r.headers["x-arbstr-complexity"], r.headers["x-arbstr-provider"]) == ("low", "tier_loc")
    r = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "messages": user("hi")},
                        headers={"X-Arbstr-Complexity": "high"})
    assert (r.headers["x-arbstr-complexity"], r.headers["x-arbstr-provider"]) == ("high", "tier_top")
    r = await http.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "messages": user("hi")},
                        headers={"X-Arbstr-Complexity": "extreme"})
    assert r.status == 400
    assert (await r.json())["error"]["param"] == "X-Arbstr-Complexity"
