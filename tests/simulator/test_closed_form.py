"""Exactness against closed forms on synthetic i.i.d. traces."""

from __future__ import annotations

import pytest

from simulator.engines import simulate
from simulator.latency import Const
from simulator.policies import make
from simulator.synth import write_synth
from simulator.trace import read_trace

ALPHA = 0.8


@pytest.fixture(scope="module")
def iid_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "iid.parquet"
    write_synth(path, [ALPHA], tokens=200_000, prompts=25, seed=1)
    return read_trace(path)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("c", [0.05, 0.2])
def test_fixed_k_matches_closed_form(iid_trace, k, c):
    r = simulate(iid_trace, make("fixed", {"k": k}), Const(draft=c, verify=1.0))
    expected_tau = (1 - ALPHA ** (k + 1)) / (1 - ALPHA)
    assert r["mean_accepted_tokens"] == pytest.approx(expected_tau, rel=0.01)
    assert r["speedup"] == pytest.approx(expected_tau / (k * c + 1), rel=0.01)
    # accepted drafts per round: sum_{i=1..k} alpha^i, out of k drafted
    expected_rate = ALPHA * (1 - ALPHA**k) / (1 - ALPHA) / k
    assert r["acceptance_rate"] == pytest.approx(expected_rate, rel=0.01)

def test_k0_is_verifier_only(iid_trace):
    r = simulate(iid_trace, make("fixed", {"k": 0}), Const(draft=0.1, verify=1.0))
    assert r["speedup"] == 1.0 and r["drafter_calls"] == 0
    assert r["verifier_calls"] == r["tokens"]


def test_oracle_bounds_fixed(iid_trace):
    lat = Const(draft=0.05, verify=1.0)
    for k in (2, 4, 8):
        r = simulate(iid_trace, make("fixed", {"k": k}), lat)
        assert r["oracle_speedup"] >= r["speedup"]
        assert r["wasted_draft_tokens"] > 0
    o = simulate(iid_trace, make("oracle", {"k": 4}), lat)
    assert o["wasted_draft_tokens"] == 0 and o["acceptance_rate"] == 1.0
