"""Latency specs and models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.errors import LatencyError
from simulator.latency import PROFILE_SCHEMA, Const, load_profile, parse_latency


def test_const_spec_and_source():
    lat = parse_latency("const:draft=0.1,verify=1,draft.big=0.3")
    assert isinstance(lat, Const)
    assert lat.seconds("verifier", np.array([1, 5]), np.array([0, 9])).tolist() == [1.0, 1.0]
    assert lat.seconds("small", 1, 0) == 0.1 and lat.seconds("big", 1, 0) == 0.3
    assert parse_latency(lat.source).source == lat.source


@pytest.mark.parametrize("spec", ["const:draft=1", "const:draft=x,verify=1",
                                  "const:draft=-1,verify=1", "const:foo=1,draft=1,verify=1",
                                  "bogus:1", "roofline:TPU9", "profile:"])
def test_bad_specs(spec):
    with pytest.raises(LatencyError):
        parse_latency(spec, {"verifier": "smollm2-135m"})


def test_profile_roundtrip_and_schema(tmp_path):
    doc = {"schema": PROFILE_SCHEMA, "models": {"verifier": {"coef": [1e-3, 1e-4, 1e-6, 0]},
                                                "d": {"coef": [1e-4, 1e-5, 0, 0]}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    lat = load_profile(str(path))
    assert lat.seconds("verifier", 2, 100) == pytest.approx(1e-3 + 2e-4 + 1e-4)
    with pytest.raises(LatencyError, match="no model 'other'"):
        lat.seconds("other", 1, 1)
    path.write_text(json.dumps({**doc, "schema": "entrospec-profile/0"}))
    with pytest.raises(LatencyError, match="schema"):
        load_profile(str(path))


def test_roofline_is_memory_bound_at_small_batch():
    lat = parse_latency("roofline:H100", {"verifier": "qwen2.5-7b-instruct",
                                          "d": "qwen2.5-0.5b-instruct"})
    one, five = lat.seconds("verifier", 1, 512), lat.seconds("verifier", 5, 512)
    assert five < one * 1.1  # verifying 5 tokens costs about the same as 1
    assert lat.seconds("d", 1, 512) < one / 4  # 0.5B vs 7B: launch overhead dominates
    assert lat.seconds("verifier", 1, 4096) > one  # KV cache reads grow with context
    assert "roofline:H100" in lat.source

def test_profile_pieces_price_by_new_tokens(tmp_path):
    pieces = [{"new": [1, 1], "coef": [1.0, 0, 0, 0]},
              {"new": [2, 5], "coef": [2.0, 0.1, 0, 0]},
              {"new": [6, None], "coef": [3.0, 0, 1e-3, 0]}]
    doc = {"schema": PROFILE_SCHEMA,
           "models": {"verifier": {"coef": [9.0, 0, 0, 0], "pieces": pieces}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    lat = load_profile(str(path))
    got = lat.seconds("verifier", np.array([1, 2, 5, 6, 300]), np.array([0, 0, 0, 10, 10]))
    assert got.tolist() == pytest.approx([1.0, 2.2, 2.5, 3.01, 3.01])
    assert lat.source.endswith("(piecewise in new)")
    doc["models"]["verifier"]["new_factors"] = {"2": 1.5, "6": 0.5}
    path.write_text(json.dumps(doc))
    lat = load_profile(str(path))
    got = lat.seconds("verifier", np.array([1, 2, 5, 6, 300]), np.array([0, 0, 0, 10, 10]))
    assert got.tolist() == pytest.approx([1.0, 3.3, 2.5, 1.505, 3.01])
    assert lat.source.endswith("(piecewise in new, per-new factors)")
    for bad in ({"0": 1.2}, {"x": 1.0}, {"3": -1.0}, [1.2]):
        doc["models"]["verifier"]["new_factors"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(LatencyError, match="new_factors"):
            load_profile(str(path))


def test_profile_knee_adds_cost_beyond_its_context(tmp_path):
    """(e + f*new) * max(0, context - K) on top of the piece's line; the source says so."""
    pieces = [{"new": [1, 1], "coef": [1.0, 0, 0, 0]},
              {"new": [2, None], "coef": [2.0, 0, 1e-3, 0],
               "knee": {"context": 100, "coef": [1e-3, 1e-4]}}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": PROFILE_SCHEMA, "models": {
        "verifier": {"coef": [1.0, 0, 0, 0], "pieces": pieces}}}))
    lat = load_profile(str(path))
    got = lat.seconds("verifier", np.array([1, 2, 2, 10]), np.array([300, 50, 300, 300]))
    assert got.tolist() == pytest.approx([1.0, 2.05, 2.3 + 200 * 1.2e-3, 2.3 + 200 * 2e-3])
    assert lat.source.endswith("(piecewise in new, knees)")


@pytest.mark.parametrize("knee", [{"context": -1, "coef": [0, 0]}, {"context": 8, "coef": [1]},
                                  {"context": 8, "coef": [-1e-3, 0]}, {"coef": [0, 0]}, 5])
def test_bad_profile_knee_is_a_one_line_error(tmp_path, knee):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": PROFILE_SCHEMA, "models": {"verifier": {
        "coef": [1.0, 0, 0, 0], "pieces": [{"new": [1, None], "coef": [1, 0, 0, 0],
                                            "knee": knee}]}}}))
    with pytest.raises(LatencyError, match="knee") as err:
        load_profile(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("pieces", [
    [{"new": [2, None], "coef": [1, 0, 0, 0]}],                     # does not start at 1
    [{"new": [1, 3], "coef": [1, 0, 0, 0]}],                        # bounded last piece
    [{"new": [1, 3], "coef": [1, 0, 0, 0]}, {"new": [5, None], "coef": [1, 0, 0, 0]}],  # gap
    [{"new": [1, None], "coef": [1, 0, 0]}],                        # three coefficients
    "all",
])
def test_bad_profile_pieces_are_one_line_errors(tmp_path, pieces):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": PROFILE_SCHEMA, "models": {
        "verifier": {"coef": [1.0, 0, 0, 0], "pieces": pieces}}}))
    with pytest.raises(LatencyError, match="'verifier'") as err:
        load_profile(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_profile_pieces_never_price_more_tokens_cheaper(tmp_path):
    """Noisy separate fits can put new = 2 below new = 1; pricing takes the running max."""
    pieces = [{"new": [1, 1], "coef": [5.0, 0, 0, 0]},
              {"new": [2, None], "coef": [2.0, 1.0, 0, 0]}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"schema": PROFILE_SCHEMA, "models": {
        "verifier": {"coef": [1.0, 0, 0, 0], "pieces": pieces}}}))
    got = load_profile(str(path)).seconds("verifier", np.arange(1, 6), 0)
    assert got.tolist() == [5.0, 5.0, 5.0, 6.0, 7.0]
