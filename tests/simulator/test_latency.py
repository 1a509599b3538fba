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
