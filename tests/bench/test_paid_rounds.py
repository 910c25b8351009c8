"""bench.paid's summary over rounds: the median of every figure, whatever its nesting, and nothing invented where a
round has no number."""

from __future__ import annotations

from bench.paid import median_of, ratios


def test_the_median_over_rounds_is_taken_figure_by_figure() -> None:
    rounds = [{"a": 1.0, "n": {"x": 10, "by": {"gw": 0.5}}, "label": "r1"},
              {"a": 3.0, "n": {"x": 30, "by": {"gw": 0.7}}, "label": "r2"},
              {"a": 2.0, "n": {"x": 20, "by": {"gw": 0.9}}, "label": "r3"}]
    assert median_of(rounds) == {"a": 2.0, "n": {"x": 20, "by": {"gw": 0.7}}, "label": "r1"}


def test_a_figure_missing_from_a_round_is_not_averaged_away() -> None:
    assert median_of([{"j": None}, {"j": 0.02}]) == {"j": None}
    assert median_of([{"j": 0.5}, {"j": 0.7}]) == {"j": 0.6}


def test_ratios_are_paid_over_free_from_the_same_round() -> None:
    def mode(rps: float, cpu: float, lat: float) -> dict:
        return {"one_agent": {"req_per_s": rps, "cpu_ms_per_request": cpu},
                "many_agents": {"req_per_s": rps / 2, "cpu_ms_per_request": cpu},
                "added_ms_p50": lat, "ttft_added_ms_p50": lat, "direct_req_per_s": 4 * rps}

    r = ratios(mode(1000, 1.0, 2.0), mode(900, 1.2, 2.5))
    assert r["throughput_one_agent"] == 0.9 and r["cpu_per_request_one_agent"] == 1.2
    assert r["added_latency_p50_ms_over_free"] == 0.5 and r["paid_vs_direct_to_mock"] == 0.25
