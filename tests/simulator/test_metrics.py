"""Metrics helpers: per-token latency percentiles without materializing the per-token array."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.metrics import PERCENTILES, repeated_percentiles


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((a.view(np.int64) == b.view(np.int64))
                                              | (np.isnan(a) & np.isnan(b))))


# a few values, so that ties are common; non-negative as latencies are (numpy orders -0.0 and
# 0.0 as equal but prints them apart)
TIED = st.sampled_from([0.0, 1e-300, 0.1, 0.3, 1 / 3, 0.30000000000000004, 2.5, 7.0, 1e12])
FREE = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
VALUES = st.lists(st.one_of(TIED, FREE), min_size=1, max_size=400)
QUANTILES = st.one_of(st.just(PERCENTILES),
                      st.lists(st.floats(0, 100), min_size=1, max_size=6).map(tuple),
                      st.lists(st.integers(0, 100), min_size=1, max_size=6).map(tuple))


@settings(max_examples=400, deadline=None)
@given(values=VALUES, data=st.data(), q=QUANTILES)
def test_repeated_percentiles_is_numpy_on_the_repeat(values, data, q):
    counts = data.draw(st.lists(st.integers(0, 20), min_size=len(values),
                                max_size=len(values)))
    values, counts = np.asarray(values), np.asarray(counts, dtype=np.int64)
    got = repeated_percentiles(values, counts, q)
    if counts.sum() == 0:
        assert np.isnan(got).all() and got.shape == (len(q),)
    else:
        assert same_bits(got, np.percentile(np.repeat(values, counts), q))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50_000),
       kind=st.sampled_from(["distinct", "ties", "outlier", "constant"]))
def test_repeated_percentiles_large(seed, n, kind):
    """Many rounds, as a sweep's runs have (the bucketed selection path)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 18, n)
    if kind == "distinct":
        values = rng.gamma(2.0, 0.3, n)
    elif kind == "ties":  # a constant-cost latency model: few (wall, emitted) pairs
        values = (1e6 + rng.integers(0, 17, n) * 1e5) / rng.integers(1, 18, n) / 1e6
    elif kind == "outlier":
        values = np.concatenate([rng.random(n - 1), [1e9]])
    else:
        values = np.full(n, 0.7)
    expect = np.percentile(np.repeat(values, counts), PERCENTILES)
    assert same_bits(repeated_percentiles(values, counts), expect)


def test_repeated_percentiles_nan_and_empty():
    assert np.isnan(repeated_percentiles(np.array([1.0, np.nan]), np.array([1, 2]))).all()
    # a NaN counted zero times is not in the repeated array
    got = repeated_percentiles(np.array([1.0, np.nan, 3.0]), np.array([1, 0, 1]))
    assert same_bits(got, np.percentile([1.0, 3.0], PERCENTILES))
    assert np.isnan(repeated_percentiles(np.zeros(0), np.zeros(0, dtype=np.int64))).all()
    assert np.isnan(repeated_percentiles(np.ones(3), np.zeros(3, dtype=np.int64))).all()
