"""The event engine under concurrency: closed forms for device placement."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.engines import run_events, simulate
from simulator.latency import Const
from simulator.policies import make

from .conftest import random_trace


@pytest.fixture
def trace(tmp_path):
    return random_trace(tmp_path / "t.parquet", np.random.default_rng(5), [40, 35, 50, 20])


def test_shared_device_is_never_idle(trace, profile_latency):
    """One device, several requests: makespan = the sum of every pass's duration."""
    pol = make("fixed", {"k": 3})
    served = run_events(trace, pol, profile_latency, concurrency=3, placement="shared")
    busy = int(served.rounds.draft_ns.sum() + served.rounds.verify_ns.sum())
    assert served.makespan_ns == busy


def test_separate_devices_overlap(trace):
    pol = make("fixed", {"k": 3})
    lat = Const(draft=0.1, verify=1.0)
    shared = run_events(trace, pol, lat, concurrency=2, placement="shared")
    separate = run_events(trace, pol, lat, concurrency=2, placement="separate")
    assert separate.makespan_ns < shared.makespan_ns
    # the verifier device is the bottleneck: makespan >= its busy time
    assert separate.makespan_ns >= int(separate.rounds.verify_ns.sum())


def test_concurrency_reports_serving_metrics(trace, profile_latency):
    r = simulate(trace, make("fixed", {"k": 2}), profile_latency, engine="events",
                 concurrency=2, placement="separate")
    s = r["serving"]
    assert s["concurrency"] == 2 and s["throughput_tokens_per_second"] > 0
    assert s["request_latency_s"]["p50"] <= s["request_latency_s"]["p99"]


def test_same_decisions_at_any_concurrency(trace, profile_latency):
    pol = make("adaptive", {})
    one = run_events(trace, pol, profile_latency, concurrency=1).rounds
    many = run_events(trace, pol, profile_latency, concurrency=4).rounds
    assert np.array_equal(one.drafted, many.drafted)
    assert np.array_equal(one.accepted, many.accepted)
