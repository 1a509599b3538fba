"""The reference replay, the fast engine and the event engine give identical metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.engines import run_events, run_fast, run_reference, simulate
from simulator.engines.replay import ROUND_FIELDS
from simulator.errors import TraceError
from simulator.latency import Const
from simulator.policies import REGISTRY, make, names

from .conftest import random_trace

ENGINES = ("reference", "fast", "events")

# max_new_tokens in the metadata: None (budget = each prompt's length, as synthetic traces), or
# the longest prompt plus this many tokens (every shorter prompt ended with EOS at its last row)
BUDGETS = st.one_of(st.none(), st.integers(0, 6))


def budget_of(lengths, extra):
    return None if extra is None else max(lengths) + extra


def results(trace, policy, latency, seed=0):
    out = {}
    for engine in ENGINES:
        r = simulate(trace, policy, latency, engine=engine, seed=seed)
        r.pop("engine")
        out[engine] = r
    return out


def assert_identical(trace, policy, latency, seed, tokens):
    """The three engines give equal summaries and equal rounds, and emit ``tokens`` tokens;
    the rounds, as a list [reference, fast, events]."""
    r = results(trace, policy, latency, seed=seed)
    assert r["reference"] == r["fast"] == r["events"]
    assert r["fast"]["tokens"] == tokens
    rounds = [run_reference(trace, policy, latency, seed), run_fast(trace, policy, latency, seed),
              run_events(trace, policy, latency, seed).rounds]
    for other in rounds[1:]:
        for f in (*ROUND_FIELDS, "length"):
            assert np.array_equal(getattr(rounds[0], f), getattr(other, f)), f
    return rounds


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       sampled=st.booleans(), k=st.integers(0, 5), theta=st.floats(0.1, 3.0),
       name=st.sampled_from(["fixed", "stop_absolute", "oracle"]), extra=BUDGETS)
def test_engines_identical(tmp_path_factory, profile_latency, seed, lengths, sampled, k, theta,
                           name, extra):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("t") / "t.parquet"
    trace = random_trace(path, rng, lengths, sampled=sampled, k_max=5,
                         max_new_tokens=budget_of(lengths, extra))
    params = {"k": k} if name != "stop_absolute" else {"k": k, "theta": theta}
    policy = make(name, params)
    rounds = assert_identical(trace, policy, profile_latency, seed % 7, sum(lengths))
    emitted = np.bincount(rounds[0].prompt, rounds[0].emitted, minlength=len(lengths))
    assert emitted.tolist() == lengths  # every prompt emits its recorded output, EOS included


def test_every_position_emitted_once(tmp_path, profile_latency):
    trace = random_trace(tmp_path / "t.parquet", np.random.default_rng(0), [30, 17, 1])
    r = simulate(trace, make("fixed", {"k": 3}), profile_latency)
    assert r["tokens"] == 48


def test_sampled_replay_depends_on_seed_only(tmp_path, profile_latency):
    trace = random_trace(tmp_path / "t.parquet", np.random.default_rng(1), [200], sampled=True)
    pol = make("fixed", {"k": 4})
    a = simulate(trace, pol, profile_latency, seed=3)
    b = simulate(trace, pol, profile_latency, seed=3)
    c = simulate(trace, pol, profile_latency, seed=4)
    assert a == b and a["accepted_tokens"] != c["accepted_tokens"]


def test_freerun_horizon_is_enforced(tmp_path):
    trace = random_trace(tmp_path / "t.parquet", np.random.default_rng(2), [300], k_max=2)
    for engine in ENGINES:
        with pytest.raises(TraceError, match="free-run horizon"):
            simulate(trace, make("fixed", {"k": 6}), Const(0.1, 1.0), engine=engine)


def _outcome(trace, policy, latency, engine, seed):
    try:
        r = simulate(trace, policy, latency, engine=engine, seed=seed)
    except TraceError as exc:
        return ("error", str(exc))
    r.pop("engine")
    return r


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(1, 30), min_size=1, max_size=3),
       sampled=st.booleans(), gaps=st.booleans(), k=st.integers(1, 6),
       name=st.sampled_from([n for n in names() if n != "oracle"]), extra=BUDGETS)
def test_every_policy_agrees_on_random_traces(tmp_path_factory, profile_latency, seed, lengths,
                                              sampled, gaps, k, name, extra):
    """All registered policies (defaults, small cap) on random 3-drafter traces, with free-run
    lists that may be shorter than k_max and prompts that may end with EOS before the budget:
    the engines agree, errors included."""
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("t") / "t.parquet"
    trace = random_trace(path, rng, lengths, n_drafters=3, sampled=sampled, k_max=4,
                         freerun_gaps=gaps, max_new_tokens=budget_of(lengths, extra))
    fields = {f.name for f in dataclasses.fields(REGISTRY[name])}
    params = {key: k for key in ("k", "gamma_max", "max_run") if key in fields}
    if "k0" in fields:
        params["k0"] = min(k, 3)
    if "thresholds" in fields:
        params["thresholds"] = "0.5,1.0"
    policy = make(name, params)
    out = [_outcome(trace, policy, profile_latency, e, seed % 5) for e in ENGINES]
    assert out[0] == out[1] == out[2]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
       k=st.integers(0, 7), theta=st.floats(0.1, 3.0), chain=st.sampled_from([(0,), (1,), (0, 1)]),
       name=st.sampled_from(["fixed", "stop_absolute", "oracle", "min_entropy", "router"]),
       extra=BUDGETS)
def test_engines_identical_with_chain_drafters(tmp_path_factory, profile_latency, seed, lengths,
                                               k, theta, chain, name, extra):
    """Chain drafters (feature drafters: each round along its own recorded continuation, a
    prefill round first, cache kept to the round's start): the three engines agree."""
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("t") / "t.parquet"
    trace = random_trace(path, rng, lengths, n_drafters=2, k_max=5, chain=chain,
                         max_new_tokens=budget_of(lengths, extra))
    assert trace.chain.tolist() == [d in chain for d in range(2)]
    params = {"fixed": {"k": k}, "stop_absolute": {"k": k, "theta": theta},
              "oracle": {"k": k}, "min_entropy": {"k": max(k, 1), "theta": theta},
              "router": {"thresholds": (1.0,), "k": k}}[name]
    policy = make(name, params)
    try:
        rounds = assert_identical(trace, policy, profile_latency, seed % 7, sum(lengths))
    except TraceError as exc:  # drafting past the free-run horizon
        assert "k_max" in str(exc)
        return
    first = rounds[0].start == 0
    assert (rounds[0].drafted[first] == 0).all() and (rounds[0].probe[first] == 0).all()


def test_chain_rounds_follow_the_continuation_from_their_own_start(tmp_path, profile_latency):
    """Fixed k on a chain drafter: each round accepts the row's own draft, then the run of ones
    in its continuation from that row (never the teacher-forced rows after it)."""
    rng = np.random.default_rng(3)
    trace = random_trace(tmp_path / "c.parquet", rng, [30, 25], k_max=6, chain=(0,))
    k = 4
    r = run_reference(trace, make("fixed", {"k": k}), profile_latency)
    for p in range(trace.n_prompts):
        lo, hi = trace.offsets[p], trace.offsets[p + 1]
        t, want = 1, [(0, 0, 0)]
        while t < hi - lo:
            row, cap = lo + t, min(k, hi - lo - t - 1)
            ok = [bool(trace.match[0, row])] + [
                bool(trace.chain_accept[0, row, j - 1]) for j in range(1, cap)]
            a = cap if all(ok) else ok.index(False)
            want.append((t, cap, a))
            t += a + 1
        mine = r.prompt == p
        assert list(zip(r.start[mine].tolist(), r.drafted[mine].tolist(),
                        r.accepted[mine].tolist(), strict=True)) == want


def test_chain_traces_refuse_sampling_relaxed_rules_and_partial_rows(tmp_path):
    import pyarrow.parquet as pq

    from simulator.trace import read_trace, write_trace

    rng = np.random.default_rng(0)
    path = tmp_path / "c.parquet"
    trace = random_trace(path, rng, [12, 9], n_drafters=2, k_max=4, chain=(1,))
    with pytest.raises(TraceError, match="standard rule only"):
        simulate(trace, make("relaxed", {"k": 3, "rule": "sqrt"}), Const(1e-3, 1e-2))
    table = pq.read_table(path)
    meta = read_trace(path).meta
    cols = {n: table.column(n).to_pylist() for n in table.schema.names}
    bad = dict(cols)
    bad["freerun_accept_prob"] = list(cols["freerun_accept_prob"])
    i = next(i for i, v in enumerate(bad["freerun_accept_prob"]) if v is not None)
    bad["freerun_accept_prob"][i] = None
    write_trace(tmp_path / "bad.parquet", bad, meta)
    with pytest.raises(TraceError, match="every row of a drafter or on none"):
        read_trace(tmp_path / "bad.parquet")
    write_trace(tmp_path / "s.parquet", cols, {**meta, "decoding": "sampled"})
    with pytest.raises(TraceError, match="needs a greedy trace"):
        read_trace(tmp_path / "s.parquet")
