"""The router's pure core: policy choice, complexity, filters, ranking, envelope, tiers and ``auto``."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from actors.router.complexity import (DEFAULT_WEIGHTS, ComplexityWeights, classify, complexity_features,
                                      minimum_tier, score_complexity)
from actors.router.policy import choose_policy, keyword_matches
from actors.router.rank import apply_min_tier, route
from schemas.breaker import BreakerState
from schemas.config import Config, PolicyConfig, RouterConfig
from schemas.errors import ArbstrError
from schemas.money import cost_msat
from schemas.pricing import ModelRate, ProviderPrices
from schemas.router import RouteRequest

NOW = 1_700_000_000_000


def pp(name: str, models: list[str], inp: int = 1000, out: int = 2000, *, fee: int = 0, tier: str = "standard",
       ctx: int = 128_000, tools: bool = True, model_rates: Optional[dict[str, ModelRate]] = None) -> ProviderPrices:
    return ProviderPrices(provider=name, tier=tier, models=models, input_rate=inp, output_rate=out,  # type: ignore[arg-type]
                          base_fee_msat=fee, context_length=ctx, supports_tools=tools,
                          model_rates=model_rates or {})


def rq(model: str = "m", **kw: Any) -> RouteRequest:
    kw.setdefault("input_tokens", 100)
    return RouteRequest(request_id="req-1", model=model, **kw)


def cfg(*policies: PolicyConfig, **router: int) -> Config:
    return Config(policies=list(policies), router=RouterConfig(**router))


def breaker(provider: str, state: str, retry_at_ms: int = 0) -> BreakerState:
    return BreakerState(provider=provider, state=state, retry_at_ms=retry_at_ms)  # type: ignore[arg-type]


def providers_of(reply: Any) -> list[str]:
    return [c.provider for c in reply.candidates]


def raises(status: int, code: str, fn: Any, *args: Any) -> ArbstrError:
    with pytest.raises(ArbstrError) as info:
        fn(*args)
    assert (info.value.status, info.value.code) == (status, code), repr(info.value)
    return info.value


CODING = PolicyConfig(name="coding", keywords=["code", "c++", "stack trace"], allowed_models=["m", "m2"])
CHEAP = PolicyConfig(name="cheap", keywords=["cheap", "CODE"], max_input_rate=1500, max_output_rate=2500)
POLICIES = [CODING, CHEAP]

# --- policy -----------------------------------------------------------------------------------------------


def test_policy_named_by_header_wins_over_keywords() -> None:
    assert choose_policy("cheap", "please write some code", POLICIES) is CHEAP


def test_policy_by_keyword_first_rule_wins_case_insensitively() -> None:
    assert choose_policy(None, "Fix my CODE please", POLICIES) is CODING  # both match: first rule wins
    assert choose_policy(None, "something Cheap", POLICIES) is CHEAP
    assert choose_policy(None, "why does c++ hate me", POLICIES) is CODING
    assert choose_policy(None, "here is the Stack  trace", POLICIES) is None  # two spaces: not the phrase
    assert choose_policy(None, "here is the stack trace:", POLICIES) is CODING


def test_policy_keywords_match_whole_words_only() -> None:
    assert choose_policy(None, "decode this base64", POLICIES) is None
    assert choose_policy(None, "codes", POLICIES) is None
    assert choose_policy(None, "(code)", POLICIES) is CODING
    assert not keyword_matches("", "anything")
    assert not keyword_matches("   ", "anything")


def test_no_policy_without_header_or_keyword() -> None:
    assert choose_policy(None, "hello there", POLICIES) is None
    assert choose_policy(None, "", POLICIES) is None
    assert choose_policy(None, "code", []) is None


def test_unknown_policy_header_is_400() -> None:
    err = raises(400, "unknown_policy", choose_policy, "nope", "code", POLICIES)
    assert err.param == "X-Arbstr-Policy"
    raises(400, "unknown_policy", route, rq(policy="nope"), [pp("a", ["m"])], {}, cfg(*POLICIES), NOW)


def test_route_reports_the_policy_it_applied() -> None:
    prices = [pp("a", ["m"])]
    assert route(rq(last_user_text="cheap please"), prices, {}, cfg(*POLICIES), NOW).policy == "cheap"
    assert route(rq(last_user_text="hello"), prices, {}, cfg(*POLICIES), NOW).policy is None

# --- filters ----------------------------------------------------------------------------------------------


def test_unknown_model_is_404() -> None:
    err = raises(404, "model_not_found", route, rq("ghost"), [pp("a", ["m"])], {}, cfg(), NOW)
    assert err.param == "model"


def test_empty_model_list_matches_nothing() -> None:
    prices = [pp("empty", [], 1, 1), pp("a", ["m"])]
    assert providers_of(route(rq(), prices, {}, cfg(), NOW)) == ["a"]
    raises(404, "model_not_found", route, rq(), [pp("empty", [])], {}, cfg(), NOW)


def test_model_match_is_exact() -> None:
    raises(404, "model_not_found", route, rq("M"), [pp("a", ["m"])], {}, cfg(), NOW)
    raises(404, "model_not_found", route, rq("m-mini"), [pp("a", ["m"])], {}, cfg(), NOW)


def test_policy_allowed_models() -> None:
    prices = [pp("a", ["m", "other"])]
    err = raises(400, "model_not_allowed", route, rq("other", policy="coding"), prices, {}, cfg(*POLICIES), NOW)
    assert err.param == "model"
    assert providers_of(route(rq("m", policy="coding"), prices, {}, cfg(*POLICIES), NOW)) == ["a"]
    # No policy: no restriction.
    assert providers_of(route(rq("other"), prices, {}, cfg(*POLICIES), NOW)) == ["a"]


def test_policy_price_caps() -> None:
    prices = [pp("dear_in", ["m"], 1600, 100), pp("dear_out", ["m"], 100, 2600), pp("ok", ["m"], 1500, 2500)]
    reply = route(rq(policy="cheap"), prices, {}, cfg(*POLICIES), NOW)
    assert providers_of(reply) == ["ok"]
    assert sorted(providers_of(route(rq(), prices, {}, cfg(*POLICIES), NOW))) == ["dear_in", "dear_out", "ok"]
    err = raises(503, "no_provider_available", route, rq(policy="cheap"), prices[:2], {}, cfg(*POLICIES), NOW)
    assert "retry-after" not in err.headers


def test_tools_need_a_provider_that_supports_them() -> None:
    prices = [pp("plain", ["m"], 1, 1, tools=False), pp("tooled", ["m"])]
    assert providers_of(route(rq(tools=True), prices, {}, cfg(), NOW)) == ["tooled"]
    assert providers_of(route(rq(tools=False), prices, {}, cfg(), NOW)) == ["plain", "tooled"]
    raises(503, "no_provider_available", route, rq(tools=True), prices[:1], {}, cfg(), NOW)


def test_context_length_covers_input_plus_max_tokens() -> None:
    prices = [pp("small", ["m"], 1, 1, ctx=1000), pp("big", ["m"])]
    assert providers_of(route(rq(input_tokens=600, max_tokens=400), prices, {}, cfg(), NOW)) == ["small", "big"]
    assert providers_of(route(rq(input_tokens=600, max_tokens=401), prices, {}, cfg(), NOW)) == ["big"]
    assert providers_of(route(rq(input_tokens=1001), prices, {}, cfg(), NOW)) == ["big"]
    assert providers_of(route(rq(input_tokens=1000), prices, {}, cfg(), NOW)) == ["small", "big"]


def test_open_breaker_excludes_half_open_and_expired_do_not() -> None:
    prices = [pp("a", ["m"], 1, 1), pp("b", ["m"], 2, 2), pp("c", ["m"], 3, 3)]
    breakers = {"a": breaker("a", "open", NOW + 10_000), "b": breaker("b", "half_open", NOW + 10_000),
                "c": breaker("c", "open", NOW)}  # retry time reached: let it through
    assert providers_of(route(rq(), prices, breakers, cfg(), NOW)) == ["b", "c"]
    assert providers_of(route(rq(), prices, {"a": breaker("a", "closed")}, cfg(), NOW)) == ["a", "b", "c"]


def test_all_breakers_open_gives_503_with_the_soonest_retry_after() -> None:
    prices = [pp("a", ["m"]), pp("b", ["m"])]
    breakers = {"a": breaker("a", "open", NOW + 30_000), "b": breaker("b", "open", NOW + 2_500)}
    err = raises(503, "no_provider_available", route, rq(), prices, breakers, cfg(), NOW)
    assert err.headers == {"retry-after": "3"}
    assert "circuit open" in err.message


def test_retry_after_only_when_waiting_can_help() -> None:
    prices = [pp("a", ["m"], tools=False), pp("b", ["m"])]
    breakers = {"b": breaker("b", "open", NOW + 1)}
    # a never qualifies (tools), b comes back when its breaker allows a probe.
    err = raises(503, "no_provider_available", route, rq(tools=True), prices, breakers, cfg(), NOW)
    assert err.headers == {"retry-after": "1"}
    # a breaker-open provider that could not serve anyway promises nothing.
    breakers = {"a": breaker("a", "open", NOW + 5_000), "b": breaker("b", "closed")}
    err = raises(503, "no_provider_available", route, rq(tools=True), prices[:1], breakers, cfg(), NOW)
    assert "retry-after" not in err.headers

# --- ranking and envelope -----------------------------------------------------------------------------------


def test_cheapest_first() -> None:
    prices = [pp("mid", ["m"], 2000, 2000), pp("dear", ["m"], 3000, 3000), pp("cheap", ["m"], 1000, 1000)]
    assert providers_of(route(rq(), prices, {}, cfg(), NOW)) == ["cheap", "mid", "dear"]


def test_ties_are_broken_by_name_whatever_the_input_order() -> None:
    names = ["zed", "amy", "kim", "bob"]
    for order in (names, list(reversed(names)), sorted(names)):
        prices = [pp(n, ["m"]) for n in order]
        assert providers_of(route(rq(), prices, {}, cfg(), NOW)) == ["amy", "bob", "kim", "zed"]


def test_expected_cost_uses_max_tokens_or_the_default() -> None:
    # "inputs" is cheap to read and dear to write; "outputs" the other way round.
    prices = [pp("inputs", ["m"], 100, 10_000), pp("outputs", ["m"], 10_000, 100)]
    short = route(rq(input_tokens=10_000, max_tokens=10), prices, {}, cfg(), NOW)
    assert providers_of(short) == ["inputs", "outputs"]
    assert short.candidates[0].estimated_cost_msat == cost_msat(10_000, 10, 100, 10_000) == 1100
    long = route(rq(input_tokens=10, max_tokens=10_000), prices, {}, cfg(), NOW)
    assert providers_of(long) == ["outputs", "inputs"]
    # No max_tokens: the configured default output estimate ranks.
    unset = route(rq(input_tokens=10), prices, {}, cfg(default_output_tokens=50_000), NOW)
    assert providers_of(unset) == ["outputs", "inputs"]
    assert unset.candidates[0].estimated_cost_msat == cost_msat(10, 50_000, 10_000, 100)
    unset = route(rq(input_tokens=50_000), prices, {}, cfg(default_output_tokens=10), NOW)
    assert providers_of(unset) == ["inputs", "outputs"]


def test_base_fee_counts_in_the_rank() -> None:
    prices = [pp("fee", ["m"], 1000, 1000, fee=1_000), pp("nofee", ["m"], 1001, 1001)]
    reply = route(rq(input_tokens=100, max_tokens=100), prices, {}, cfg(), NOW)
    assert providers_of(reply) == ["nofee", "fee"]
    assert reply.candidates[1].estimated_cost_msat == 1_000 + 200


def test_per_model_rates_are_used() -> None:
    prices = [pp("a", ["m"], 5000, 5000, model_rates={"m": ModelRate(input_rate=1, output_rate=1)}),
              pp("b", ["m"], 10, 10)]
    reply = route(rq(), prices, {}, cfg(), NOW)
    assert providers_of(reply) == ["a", "b"]
    assert (reply.candidates[0].input_rate, reply.candidates[0].output_rate) == (1, 1)


def test_candidate_fields_and_envelope() -> None:
    prices = [pp("a", ["m"], 1000, 9000, fee=2, tier="local"), pp("b", ["m"], 3000, 1000, fee=7, tier="frontier")]
    reply = route(rq(input_tokens=200, max_tokens=300), prices, {}, cfg(max_output_tokens=4096), NOW)
    assert reply.request_id == "req-1" and reply.model == "m"
    a = next(c for c in reply.candidates if c.provider == "a")
    assert (a.model, a.input_rate, a.output_rate, a.base_fee_msat, a.tier) == ("m", 1000, 9000, 2, "local")
    env = reply.envelope
    assert (env.input_tokens, env.output_tokens) == (200, 300)
    # The envelope is the candidate about to be called (the cheapest), not the costliest: a fallback extends it.
    first = reply.candidates[0]
    assert first.provider == "b"  # 200·3000 + 300·1000 < 200·1000 + 300·9000
    assert (env.input_rate, env.output_rate, env.base_fee_msat) == (3000, 1000, 7)
    assert env.max_output_tokens == 4096
    held = cost_msat(env.input_tokens, env.output_tokens or 0, env.input_rate, env.output_rate, env.base_fee_msat)
    assert held == first.estimated_cost_msat < reply.candidates[1].estimated_cost_msat


def test_envelope_without_max_tokens_leaves_the_output_budget_to_the_vault() -> None:
    reply = route(rq(), [pp("a", ["m"])], {}, cfg(max_output_tokens=1234), NOW)
    assert reply.envelope.output_tokens is None and reply.envelope.max_output_tokens == 1234

# --- complexity and tiers -------------------------------------------------------------------------------------

HARD_TEXT = ("Prove step by step that this architecture is sound, then analyze the hot path:\n"
             "```python\ndef f(x):\n    return x\n```\nsee src/app/main.py")


def test_simple_request_is_low() -> None:
    score, complexity = score_complexity(rq(last_user_text="hi", text_sample="hi", input_tokens=5))
    assert (score, complexity) == (0, "low")


def test_each_feature_scores() -> None:
    w = DEFAULT_WEIGHTS
    f = complexity_features(rq(input_tokens=20_000, text_sample=HARD_TEXT, turns=12, tools=True))
    assert f == {"length": 3, "code": w.code_block, "paths": w.file_path, "reasoning": w.reasoning_cap,
                 "turns": 2, "tools": w.tools}
    assert complexity_features(rq(input_tokens=1_000))["length"] == 1
    assert complexity_features(rq(input_tokens=999))["length"] == 0
    assert complexity_features(rq(turns=6))["turns"] == 1
    assert complexity_features(rq(text_sample="please debug this"))["reasoning"] == 1
    assert complexity_features(rq(text_sample="debugger"))["reasoning"] == 0  # whole words only
    assert complexity_features(rq(text_sample=r"open C:\repo\x.txt"))["paths"] == w.file_path
    assert complexity_features(rq(text_sample="/etc/nginx/nginx.conf"))["paths"] == w.file_path
    assert complexity_features(rq(text_sample="and/or either way."))["paths"] == 0
    assert complexity_features(rq(text_sample="see https://example.com/a/b.html"))["paths"] == 0
    assert complexity_features(rq(text_sample="run (/usr/bin/env)."))["paths"] == w.file_path
    # Without a text sample the last user message is read.
    assert complexity_features(rq(last_user_text="```x```"))["code"] == w.code_block


def test_thresholds() -> None:
    w = ComplexityWeights(scorer="keywords", medium_at=2, high_at=4)
    assert [classify(s, w) for s in (0, 1, 2, 3, 4, 9)] == ["low", "low", "medium", "medium", "high", "high"]
    assert score_complexity(rq(text_sample="debug ```x```"))[1] == "medium"
    assert score_complexity(rq(input_tokens=20_000, text_sample=HARD_TEXT))[1] == "high"
    assert [minimum_tier(c) for c in ("low", "medium", "high")] == ["local", "standard", "frontier"]


def test_override_wins_but_score_is_still_reported() -> None:
    score, complexity = score_complexity(rq(input_tokens=20_000, text_sample=HARD_TEXT, complexity="low"))
    assert complexity == "low" and score >= DEFAULT_WEIGHTS.high_at
    assert score_complexity(rq(text_sample="hi", complexity="high"))[1] == "high"


TIERED = [pp("loc", ["m"], 0, 0, tier="local"), pp("std", ["m"], 100, 100), pp("top", ["m"], 900, 900, tier="frontier")]


def test_computed_tier_excludes_only_providers_below_it() -> None:
    low = route(rq(text_sample="hi", input_tokens=5), TIERED, {}, cfg(), NOW)
    assert (low.complexity, low.tier, providers_of(low)) == ("low", "local", ["loc", "std", "top"])
    medium = route(rq(text_sample="debug ```x```"), TIERED, {}, cfg(), NOW)
    assert (medium.complexity, medium.tier, providers_of(medium)) == ("medium", "standard", ["std", "top"])
    high = route(rq(input_tokens=20_000, text_sample=HARD_TEXT), TIERED, {}, cfg(), NOW)
    assert (high.complexity, high.tier, providers_of(high)) == ("high", "frontier", ["top"])
    assert high.complexity_score >= DEFAULT_WEIGHTS.high_at


def test_computed_tier_nobody_meets_is_ignored() -> None:
    hard = rq(input_tokens=20_000, text_sample=HARD_TEXT)
    reply = route(hard, TIERED[:2], {}, cfg(), NOW)
    assert reply.tier == "frontier" and providers_of(reply) == ["loc", "std"]
    # But a frontier provider that exists and is merely down is waited for: never serve below the tier then.
    err = raises(503, "no_provider_available", route, hard, TIERED, {"top": breaker("top", "open", NOW + 60_000)},
                 cfg(), NOW)
    assert err.headers == {"retry-after": "60"}


def test_override_sets_the_tier_and_is_never_ignored() -> None:
    reply = route(rq(text_sample=HARD_TEXT, input_tokens=20_000, complexity="low"), TIERED, {}, cfg(), NOW)
    assert (reply.complexity, reply.tier, providers_of(reply)) == ("low", "local", ["loc", "std", "top"])
    reply = route(rq(text_sample="hi", complexity="medium"), TIERED, {}, cfg(), NOW)
    assert providers_of(reply) == ["std", "top"]
    err = raises(503, "no_provider_available", route, rq(complexity="high"), TIERED[:2], {}, cfg(), NOW)
    assert "retry-after" not in err.headers
    # The only frontier provider is down: wait for it rather than fall back.
    err = raises(503, "no_provider_available", route, rq(complexity="high"), TIERED,
                 {"top": breaker("top", "open", NOW + 4_000)}, cfg(), NOW)
    assert err.headers == {"retry-after": "4"}


def test_apply_min_tier_rule() -> None:
    from actors.router.rank import Option

    opts = [Option(p, "m", p.rates_for("m")) for p in TIERED[:2]]
    assert apply_min_tier(opts, "standard", explicit=False) == (opts[1:], False)
    assert apply_min_tier(opts, "frontier", explicit=False) == (opts, True)
    assert apply_min_tier(opts, "frontier", explicit=True) == ([], False)
    assert apply_min_tier([], "local", explicit=False) == ([], False)

# --- model "auto" ---------------------------------------------------------------------------------------------


AUTO_PRICES = [
    pp("a", ["small", "big"], 500, 500, tier="standard", model_rates={"big": ModelRate(input_rate=5000, output_rate=5000)}),
    pp("b", ["tiny"], 10, 10, tier="local"),
    pp("c", ["huge"], 8000, 8000, tier="frontier"),
]


def test_auto_picks_the_cheapest_provider_and_model_pairs() -> None:
    reply = route(rq("auto", text_sample="hi", input_tokens=5), AUTO_PRICES, {}, cfg(), NOW)
    assert reply.model == "auto"
    assert [(c.provider, c.model) for c in reply.candidates] == [("b", "tiny"), ("a", "small"), ("a", "big"),
                                                                  ("c", "huge")]
    assert reply.candidates[2].input_rate == 5000


def test_auto_respects_the_tier() -> None:
    reply = route(rq("auto", complexity="medium"), AUTO_PRICES, {}, cfg(), NOW)
    assert [(c.provider, c.model) for c in reply.candidates] == [("a", "small"), ("a", "big"), ("c", "huge")]
    reply = route(rq("auto", input_tokens=20_000, text_sample=HARD_TEXT), AUTO_PRICES, {}, cfg(), NOW)
    assert [(c.provider, c.model) for c in reply.candidates] == [("c", "huge")]
    assert reply.envelope.input_rate == 8000


def test_auto_respects_policy_allowed_models_and_breakers() -> None:
    policy = PolicyConfig(name="p", allowed_models=["big", "huge"])
    reply = route(rq("auto", policy="p"), AUTO_PRICES, {"c": breaker("c", "open", NOW + 1000)}, cfg(policy), NOW)
    assert [(c.provider, c.model) for c in reply.candidates] == [("a", "big")]
    raises(503, "no_provider_available", route, rq("auto"), [pp("x", [])], {}, cfg(), NOW)


def test_policy_virtual_model_picks_model_and_provider_within_the_policy() -> None:
    from schemas.config import parse_config

    config = parse_config({
        "providers": [
            {"name": "cheapo", "url": "http://c/v1", "models": ["small"], "input_rate": 100, "output_rate": 100},
            {"name": "fancy", "url": "http://f/v1", "models": ["big"], "input_rate": 900, "output_rate": 900},
        ],
        "policies": [{"name": "quality", "virtual_model": "arbstr/quality", "allowed_models": ["big"]}],
    })
    from actors.pricing.table import prices_from_config
    from actors.router.rank import route as do_route
    from schemas.router import RouteRequest

    prices = prices_from_config(config, 0)
    reply = do_route(RouteRequest(request_id="v1", model="arbstr/quality", input_tokens=10), prices, {}, config, 0)
    assert reply.policy == "quality" and reply.model == "arbstr/quality"
    assert [(c.provider, c.model) for c in reply.candidates] == [("fancy", "big")]
    with pytest.raises(ArbstrError) as e:
        do_route(RouteRequest(request_id="v2", model="arbstr/quality", input_tokens=10, policy="other"), prices, {},
                 config, 0)
    assert e.value.status == 400


def test_a_request_no_context_can_hold_is_400_naming_the_limit() -> None:
    prices = [pp("small", ["m"], 1, 1, ctx=1000), pp("big", ["m"], ctx=8000), pp("other", ["n"], ctx=10**6)]
    err = raises(400, "context_length_exceeded", route, rq(input_tokens=600, max_tokens=10_000_000), prices, {},
                 cfg(), NOW)
    assert err.param == "max_tokens" and "8000" in err.message and err.headers["x-should-retry"] == "false"
    err = raises(400, "context_length_exceeded", route, rq(input_tokens=9000), prices, {}, cfg(), NOW)
    assert err.param == "messages" and "8000" in err.message
    err = raises(400, "context_length_exceeded", route, rq(input_tokens=100, max_tokens=9000, endpoint="responses"),
                 prices, {}, cfg(), NOW)
    assert err.param == "max_output_tokens"
    err = raises(400, "context_length_exceeded", route, rq(input_tokens=9000, endpoint="embeddings"), prices, {},
                 cfg(), NOW)
    assert err.param == "input"
    # A provider kept out for another reason (tools) does not make the size the client's fault
    tooled = [pp("small", ["m"], ctx=1000), pp("plain", ["m"], ctx=10**6, tools=False)]
    raises(400, "context_length_exceeded", route, rq(input_tokens=5000, tools=True), tooled, {}, cfg(), NOW)
    raises(503, "no_provider_available", route, rq(input_tokens=500, tools=True), tooled[1:], {}, cfg(), NOW)
    # One that fits, even behind an open breaker, is waited for (503), never refused as too large
    ok = route(rq(input_tokens=600, max_tokens=7000), prices, {}, cfg(), NOW)
    assert providers_of(ok) == ["big"]
    raises(503, "no_provider_available", route, rq(input_tokens=600, max_tokens=7000), prices,
           {"big": breaker("big", "open", NOW + 5000)}, cfg(), NOW)


# --- the trained scorer: explanation, skipping --------------------------------------------------------------
def test_the_trained_scorer_explains_its_decision() -> None:
    reply = route(rq("auto", last_user_text="implement binary search in Go",
                     text_sample="implement binary search in Go", input_tokens=8), TIERED, {}, cfg(), NOW)
    x = reply.explanation
    assert x is not None and x.scorer == "trained" and not x.overridden
    assert (reply.tier, x.predicted_tier, reply.complexity) == ("standard", "standard", "medium")
    assert x.confidence == x.probabilities["standard"] and 0 < x.confidence <= 1
    assert abs(sum(x.probabilities.values()) - 1) < 1e-3
    names = [f.name for f in x.top_features]
    assert names and "lex:plang" in names and len(names) <= 5
    assert 0 <= reply.complexity_score <= 100


def test_the_override_keeps_the_prediction_visible() -> None:
    reply = route(rq("auto", last_user_text="hi", text_sample="hi", input_tokens=5, complexity="high"), TIERED, {},
                  cfg(), NOW)
    assert reply.tier == "frontier" and reply.explanation is not None
    assert reply.explanation.overridden and reply.explanation.predicted_tier == "local"


def test_a_named_model_served_at_one_tier_is_not_scored(monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.router.rank as rank

    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("scored a request that names a model served at one tier")

    monkeypatch.setattr(rank, "decide", boom)
    hard = rq(last_user_text=HARD_TEXT, text_sample=HARD_TEXT, input_tokens=20_000)
    reply = route(hard, [pp("s1", ["m"]), pp("s2", ["m"], 200, 200)], {}, cfg(), NOW)
    assert reply.explanation is not None and reply.explanation.scorer == "skipped"
    assert sorted(c.provider for c in reply.candidates) == ["s1", "s2"]
    # Embeddings inputs hold no ask either.
    emb = rq("auto", endpoint="embeddings", last_user_text=HARD_TEXT, text_sample=HARD_TEXT)
    assert route(emb, TIERED, {}, cfg(), NOW).explanation.scorer == "skipped"  # type: ignore[union-attr]
    # A model offered at several tiers is scored (the score picks among them).
    monkeypatch.undo()
    assert route(hard, TIERED, {}, cfg(), NOW).explanation.scorer == "trained"  # type: ignore[union-attr]
