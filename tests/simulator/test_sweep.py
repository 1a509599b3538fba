"""Sweep rows equal one-off runs: the state a worker keeps across configurations (matrices built
for one cap and sliced for others, stop rules kept across caps, the oracle per cap, compiled
metric tallies without a round log) changes no number."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.engines import simulate
from simulator.policies import make
from simulator.sweep import SCALARS, configs, run_sweep

from .conftest import random_trace

# caps up to 26: verifier passes over more than Pricer.SMALL new tokens, priced outside the tables
GRIDS = {
    "stop_absolute": {"theta": ["0.3", "1.1", "2.5"], "k": ["1", "3", "2", "6", "4", "26"]},
    "draft_static": {"theta": ["0.8"], "k": ["5", "2"]},
    "fixed": {"k": ["0", "2", "26", "7", "3"]},
    "stop_relative": {"k": ["2", "5"]},
    "relaxed": {"k": ["3", "1"]},
    "router": {"k": ["2", "4"]},
}


@pytest.mark.parametrize("policy", sorted(GRIDS))
@pytest.mark.parametrize("extra", [None, 3])
@pytest.mark.parametrize("n_drafters", [1, 2])
def test_sweep_rows_equal_fresh_runs(tmp_path, profile_latency, policy, extra, n_drafters):
    if make(policy).drafters_needed() > n_drafters:
        pytest.skip("the policy needs more drafters")
    rng = np.random.default_rng(7)
    lengths = [30, 1, 17, 45]
    path = tmp_path / "t.parquet"
    trace = random_trace(path, rng, lengths, n_drafters=n_drafters, sampled=True, k_max=32,
                         max_new_tokens=None if extra is None else max(lengths) + extra)
    grid = GRIDS[policy]
    rows = run_sweep([str(path)], policy, grid, profile_latency, seed=3, workers=1)
    assert len(rows) == len(list(configs(grid)))
    for cfg, row in zip(configs(grid), rows, strict=True):
        fresh = simulate(trace, make(policy, cfg), profile_latency, seed=3)  # no shared state
        for key in SCALARS:
            assert row[key] == fresh.get(key), (cfg, key)
        assert row["latency_p50_ms"] == fresh["latency_ms"]["p50"]
        assert row["latency_p99_ms"] == fresh["latency_ms"]["p99"]
