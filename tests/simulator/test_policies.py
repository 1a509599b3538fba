"""Every registered policy: the three engines agree on it, its decisions are prefix-causal, and
its decision logic does what its docstring says on hand-made signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.engines import simulate
from simulator.errors import PolicyError
from simulator.latency import Const, Profile
from simulator.policies import RULE_INDEX, Context, Outcome, make, names
from simulator.policies.hf_assisted import (
    ConfidenceState,
    confidence_update,
    roc_curve,
    roc_threshold,
)
from simulator.synth import write_synth
from simulator.trace import read_trace

ENGINES = ("reference", "fast", "events")
ALPHAS = [0.75, 0.55, 0.35]
DRAFTERS = [f"synth-d{d}" for d in range(len(ALPHAS))]

# name -> parameter sets to run through the engines (unlisted policies: defaults only)
PARAMS: dict[str, list[dict]] = {
    "fixed": [{}, {"k": 6}],
    "oracle": [{}, {"k": 3}],
    "stop_absolute": [{}, {"theta": 0.6, "k": 5, "entropy": "renyi2"}],
    "draft_static": [{}, {"theta": 1.4, "k": 3, "entropy": "topk"}],
    "stop_relative": [{}, {"rho": 1.2, "k": 6, "entropy": "topk"}],
    "stop_combined": [{}, {"theta": 1.0, "rho": 2.0, "k": 5}],
    "stop_window": [{}, {"theta": 0.8, "w": 2, "k": 10}],
    "adaptive": [{}, {"theta0": 0.5, "eta": 2.0, "target": 0.5, "k": 10}],
    "stop_adaptive": [{}, {"theta0": 2.0, "eta": 1.0, "target": 0.9, "k": 6, "entropy": "renyi2"}],
    "draft_moving_average": [{}, {"beta": 1.2, "lam": 0.3, "theta0": 0.8, "k": 10,
                                  "entropy": "renyi2"}],
    "draft_cumulative": [{}, {"budget": 1.5, "k": 12}],
    "dynamic_gamma": [{}, {"tau": 0.7, "gamma_min": 2, "gamma_max": 6}],
    "relaxed": [{}, {"k": 6, "tau": 1.0, "rule": "all", "stop_theta": "2.0"}],
    "typical": [{}, {"k": 6}],
    "esar": [{}, {"tau": 0.6, "max_run": 5}],
    "router": [{}, {"thresholds": "0.6,1.2", "k": 5}],
    "min_entropy": [{}, {"k": 5, "theta": 1.5}],
    "hf_confidence": [{}, {"threshold": 0.6, "k": 8}, {"roc": "false", "k": 6}],
    "hf_confidence_static": [{}, {"threshold": 0.2, "k": 6}],
    "hf_heuristic": [{}, {"k0": 3, "k": 10, "threshold": 0.4}],
    "adaedl": [{}, {"lam": 0.3, "eta": 0.2, "target": 0.5, "k": 10}],
    "adaedl_static": [{}, {"gamma": 0.5, "lam": 0.6, "k": 6}],
}


def engine_cases() -> list:
    cases = []
    for name in names():
        for i, params in enumerate(PARAMS.get(name, [{}])):
            cases.append(pytest.param(name, params, i, id=f"{name}-{i}"))
    return cases


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """3 drafters, 6 prompts, free-run horizon 64 (hf_heuristic's default cap drafts far)."""
    path = tmp_path_factory.mktemp("policies") / "synth.parquet"
    write_synth(path, ALPHAS, tokens=300, prompts=6, seed=11, k_max=64)
    return read_trace(path)


def latency(i: int):
    if i % 2 == 0:
        return Const(0.002, 0.02, {"synth-d2": 0.004})
    coef = {"verifier": np.array([1e-2, 1e-4, 1e-6, 1e-8])}
    for d, name in enumerate(DRAFTERS):
        coef[name] = np.array([1e-3 * (d + 1), 1e-5, 1e-7, 1e-9])
    return Profile("test-profile", coef)


@pytest.mark.parametrize(("name", "params", "i"), engine_cases())
def test_engines_agree_on_every_policy(trace, name, params, i):
    policy = make(name, params)
    out = {}
    for engine in ENGINES:
        r = simulate(trace, policy, latency(i), engine=engine, seed=i)
        r.pop("engine")
        out[engine] = r
    assert out["reference"] == out["fast"] == out["events"]
    assert out["fast"]["tokens"] == trace.n_positions
    assert out["fast"]["drafted_tokens"] >= out["fast"]["accepted_tokens"]


# ---- prefix-causality ---------------------------------------------------------------------

def signal_dict(h: list[float], p: list[float]) -> dict[str, np.ndarray]:
    h_arr = np.asarray(h, dtype=np.float64)
    return {"entropy": h_arr, "renyi2": h_arr * 0.7, "topk": np.minimum(h_arr, 1.5),
            "top1_prob": np.asarray(p, dtype=np.float64)}


def take(sig: dict[str, np.ndarray], sl) -> dict[str, np.ndarray]:
    return {s: v[..., sl] for s, v in sig.items()}


steps_st = st.integers(1, 24)


@st.composite
def rounds(draw, steps=None):
    n = draw(steps_st) if steps is None else steps
    h = draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n))
    p = draw(st.lists(st.floats(0.001, 1.0), min_size=n, max_size=n))
    return signal_dict(h, p)


def evolved_state(policy, history: list[tuple[dict, int]]):
    """The policy's state after rounds (signals, accepted) of a prompt, via update()."""
    state = policy.initial_state()
    for sig, a in history:
        n = len(sig["entropy"])
        state = policy.update(state, Outcome(0, n, min(a, n), sig))
    return state


@pytest.mark.parametrize("name", names())
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stop_and_rules_are_prefix_causal(name, data):
    for params in PARAMS.get(name, [{}]):
        policy = make(name, params)
        history = data.draw(st.lists(st.tuples(rounds(), st.integers(0, 24)), max_size=4))
        state = evolved_state(policy, history)
        sig = data.draw(rounds())
        full_stop = np.asarray(policy.stop(state, sig), dtype=bool)
        full_rules = np.asarray(policy.rules(state, sig))
        n = len(sig["entropy"])
        assert full_stop.shape == full_rules.shape == (n,)
        for m in range(1, n + 1):
            prefix = take(sig, slice(0, m))
            assert np.array_equal(np.asarray(policy.stop(state, prefix), dtype=bool),
                                  full_stop[:m])
            assert np.array_equal(np.asarray(policy.rules(state, prefix)), full_rules[:m])
        assert set(np.unique(full_rules)) <= {RULE_INDEX[r] for r in policy.accept_rules()} | \
            {RULE_INDEX["standard"]}


@pytest.mark.parametrize("name", [n for n in names() if make(n).memoryless])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_memoryless_matrix_rows_equal_single_rounds(name, data):
    """The fast engine's (starts, steps) call answers each row as a (steps,) call would."""
    steps = data.draw(steps_st)
    rows = data.draw(st.lists(rounds(steps), min_size=1, max_size=5))
    for params in PARAMS.get(name, [{}]):
        policy = make(name, params)
        matrix = {s: np.stack([r[s] for r in rows]) for s in rows[0]}
        stop, rules = policy.stop(None, matrix), policy.rules(None, matrix)
        for i, r in enumerate(rows):
            assert np.array_equal(stop[i], policy.stop(None, r))
            assert np.array_equal(rules[i], policy.rules(None, r))


@pytest.mark.parametrize("name", names())
def test_plan_scalar_and_array_contexts_agree(name):
    rng = np.random.default_rng(0)
    n, n_d = 12, len(ALPHAS)
    prev = rng.gamma(2.0, 0.6, n)
    prev[[0, 5]] = np.nan
    ctx = Context(position=np.arange(n), remaining=np.arange(n, 0, -1),
                  prev_verifier_entropy=prev, first_entropy=rng.gamma(2.0, 0.5, (n_d, n)),
                  run_length=rng.integers(0, 9, n))
    for params in PARAMS.get(name, [{}]):
        policy = make(name, params)
        state = policy.initial_state()
        many = policy.plan(state, ctx)
        d_many = np.broadcast_to(np.asarray(many.drafter), (n,))
        c_many = np.broadcast_to(np.asarray(many.cap), (n,))
        assert (c_many <= policy.max_cap()).all() and (c_many >= 0).all()
        for s in range(n):
            one = policy.plan(state, Context(
                position=int(ctx.position[s]), remaining=int(ctx.remaining[s]),
                prev_verifier_entropy=float(prev[s]), first_entropy=ctx.first_entropy[:, s],
                run_length=int(ctx.run_length[s])))
            assert int(one.drafter) == d_many[s] and int(one.cap) == c_many[s]
            assert 0 <= int(one.drafter) < n_d


# ---- decision logic on hand-made signals --------------------------------------------------

def stops(policy, h, state=None, p=None) -> list[bool]:
    sig = signal_dict(h, p if p is not None else [0.5] * len(h))
    return [bool(x) for x in policy.stop(state, sig)]


def test_stop_relative_compares_with_the_mean_before():
    pol = make("stop_relative", {"rho": 1.5})
    # means before: -, 1.0, 1.0, 1.1667; 1.6 > 1.5 fires at step 2, not at step 1 (1.4)
    assert stops(pol, [1.0, 1.0, 1.6, 0.1]) == [False, False, True, False]
    assert stops(pol, [1.0, 1.4, 1.7]) == [False, False, False]
    assert stops(pol, [9.0]) == [False]  # step 0 never stops on the relative rule


def test_stop_combined_fires_on_either_rule():
    pol = make("stop_combined", {"rho": 1.5, "theta": 2.0})
    assert stops(pol, [2.5, 0.1]) == [True, False]  # absolute at step 0
    assert stops(pol, [0.2, 0.5, 0.1]) == [False, True, False]  # relative: 0.5 > 0.3


def test_stop_window_means_the_last_w_steps():
    pol = make("stop_window", {"theta": 1.0, "w": 2})
    # window means: 0.5, 1.0, 1.35, 0.9
    assert stops(pol, [0.5, 1.5, 1.2, 0.6]) == [False, False, True, False]


def test_draft_cumulative_spends_a_budget():
    pol = make("draft_cumulative", {"budget": 2.0})
    assert stops(pol, [0.5, 0.5, 0.5, 0.6, 0.1]) == [False, False, False, True, True]


def test_dynamic_gamma_respects_min_and_max():
    pol = make("dynamic_gamma", {"tau": 1.0, "gamma_min": 3, "gamma_max": 6})
    assert stops(pol, [2.0, 2.0, 0.1, 2.0]) == [False, False, False, True]
    assert stops(pol, [2.0, 2.0, 2.0]) == [False, False, True]
    assert pol.max_cap() == pol.k == 6


def test_adaptive_threshold_follows_acceptance():
    pol = make("adaptive", {"theta0": 1.0, "eta": 0.5, "target": 0.7, "theta_max": 1.2})
    sig = signal_dict([0.1] * 4, [0.5] * 4)
    up = pol.update(pol.initial_state(), Outcome(0, 4, 4, sig))
    assert up == pytest.approx(math.exp(0.5 * 0.3))
    assert pol.update(up, Outcome(0, 4, 4, sig)) == 1.2  # clipped at theta_max
    down = pol.update(1.0, Outcome(0, 4, 0, sig))
    assert down == pytest.approx(math.exp(-0.35))
    assert pol.update(down, Outcome(0, 0, 0, take(sig, slice(0, 0)))) == down  # n = 0: kept
    assert stops(pol, [0.9, 1.1], state=1.0) == [False, True]
    assert stops(pol, [0.9, 1.1], state=0.8) == [True, True]
    assert make("stop_adaptive").params() == make("adaptive").params()


def test_draft_moving_average_folds_every_drafted_token():
    pol = make("draft_moving_average", {"beta": 2.0, "lam": 0.5, "theta0": 1.0})
    # thresholds 2 * m before each step: m = 1.0, 0.5, 0.25 -> 2.0, 1.0, 0.5
    assert stops(pol, [0.0, 0.0, 0.6]) == [False, False, True]
    state = pol.update(pol.initial_state(), Outcome(0, 2, 1, signal_dict([0.0, 3.0], [1, 1])))
    assert state == pytest.approx(0.5 * (0.5 * 1.0) + 0.5 * 3.0)


def test_adaedl_bound_is_an_entropy_threshold():
    pol = make("adaedl_static", {"gamma": 0.2, "lam": 0.5})  # stop iff H > 0.25 / 0.2 = 1.25
    assert stops(pol, [1.2, 1.3]) == [False, True]
    ada = make("adaedl", {"lam": 0.5, "eta": 0.1, "target": 0.7})
    sig = signal_dict([0.1] * 5, [0.5] * 5)
    assert ada.update(0.5, Outcome(0, 5, 5, sig)) == pytest.approx(0.47)  # accepted more: lower
    assert ada.update(0.5, Outcome(0, 5, 0, sig)) == pytest.approx(0.57)
    assert ada.update(1.0, Outcome(0, 5, 0, sig)) == 1.0  # clipped


def test_relaxed_and_typical_rules():
    rel = make("relaxed", {"tau": 0.5, "rule": "all"})
    r = rel.rules(None, signal_dict([0.2, 0.5, 0.8], [1, 1, 1]))
    assert list(r) == [RULE_INDEX["all"], RULE_INDEX["all"], RULE_INDEX["standard"]]
    assert stops(rel, [9.0, 9.0]) == [False, False]  # stop_theta inf: fixed k
    assert stops(make("relaxed", {"stop_theta": 1.0}), [0.5, 1.5]) == [False, True]
    typ = make("typical")
    assert list(typ.rules(None, signal_dict([0.1, 3.0], [1, 1]))) == [RULE_INDEX["typical"]] * 2
    assert rel.lossy and typ.lossy


def test_esar_emits_while_sure_and_defers_the_first_uncertain_token():
    pol = make("esar", {"tau": 1.0})
    sig = signal_dict([0.1, 0.2, 1.5, 0.1], [1] * 4)
    assert list(pol.rules(None, sig)) == [RULE_INDEX["all"], RULE_INDEX["all"],
                                          RULE_INDEX["none"], RULE_INDEX["all"]]
    assert list(pol.stop(None, sig)) == [False, False, True, False]
    assert pol.max_cap() == 64


def test_esar_rounds_on_a_trace(trace):
    """Every round: drafts accepted up to the first uncertain one, which is deferred."""
    from simulator.engines import run_reference
    pol = make("esar", {"tau": 0.8, "max_run": 6})
    r = run_reference(trace, pol, Const(0.001, 0.01))
    rows = trace.offsets[r.prompt] + r.start
    last = trace.signals["entropy"][0, rows + np.maximum(r.drafted, 1) - 1]
    deferred = r.accepted < r.drafted
    assert np.all(r.accepted[deferred] == r.drafted[deferred] - 1)
    assert np.all(last[deferred] > 0.8)
    full = ~deferred & (r.drafted > 0)
    assert np.all(last[full] <= 0.8)
    assert np.all(r.drafted[full] == np.minimum(6, trace.lengths[r.prompt] - r.start - 1)[full])


def test_router_picks_drafters_by_thresholds():
    pol = make("router", {"thresholds": "0.5,1.5"})
    assert pol.thresholds == (0.5, 1.5)
    x = np.array([np.nan, 0.2, 0.5, 0.7, 1.5, 2.0, 99.0])
    assert list(pol.drafter(x)) == [0, 0, 0, 1, 1, 2, 2]
    plan = pol.plan(None, Context(position=3, remaining=10, prev_verifier_entropy=1.0))
    assert int(plan.drafter) == 1 and int(plan.cap) == 4
    plan = pol.plan(None, Context(position=0, remaining=10, prev_verifier_entropy=np.nan))
    assert int(plan.drafter) == 0


def test_router_with_one_reachable_drafter_is_fixed(trace):
    lat = Const(0.002, 0.02)
    a = simulate(trace, make("router", {"thresholds": (1e9,), "k": 3}), lat)
    b = simulate(trace, make("fixed", {"k": 3}), lat)
    for key in ("tokens", "time_s", "accepted_tokens", "drafted_tokens"):
        assert a[key] == b[key]
    assert a["drafter_share"][DRAFTERS[0]] == 1.0


def test_min_entropy_picks_the_surest_drafter():
    pol = make("min_entropy")
    fe = np.array([[0.9, 0.1, 0.5], [0.3, 0.1, 0.6], [0.4, 0.7, 0.2]])  # (D, starts)
    plan = pol.plan(None, Context(position=np.arange(3), remaining=np.full(3, 9),
                                  prev_verifier_entropy=np.zeros(3), first_entropy=fe))
    assert list(plan.drafter) == [1, 0, 2]  # tie at start 1: the first drafter
    one = pol.plan(None, Context(position=0, remaining=9, prev_verifier_entropy=np.nan,
                                 first_entropy=fe[:, 2]))
    assert int(one.drafter) == 2 and pol.probes_all_drafters


# ---- Hugging Face assisted generation -----------------------------------------------------

def test_hf_heuristic_schedule():
    pol = make("hf_heuristic", {"k0": 20, "k": 25})
    sig = signal_dict([0.1] * 3, [0.9] * 3)
    state = pol.initial_state()
    seq = [state]
    for drafted, accepted in [(20, 20), (22, 22), (24, 3), (23, 0), (22, 22)]:
        state = pol.update(state, Outcome(0, drafted, accepted, sig))
        seq.append(state)
    assert seq == [20, 22, 24, 23, 22, 24]
    assert int(pol.plan(24, Context(0, 99, np.nan)).cap) == 24
    assert int(pol.plan(27, Context(0, 99, np.nan)).cap) == 25  # capped by k, state is not
    assert pol.update(1, Outcome(0, 1, 0, sig)) == 1  # never below 1
    assert pol.update(5, Outcome(0, 0, 0, take(sig, slice(0, 0)))) == 7  # 0 of 0: all matched
    assert stops(pol, [0.1, 0.1], p=[0.1, 0.1]) == [False, False]  # threshold 0: no stop
    assert stops(make("hf_heuristic", {"threshold": 0.4}), [0, 0], p=[0.5, 0.3]) == [False, True]


def test_hf_confidence_stops_below_threshold():
    pol = make("hf_confidence_static", {"threshold": 0.4})
    assert stops(pol, [0, 0, 0], p=[0.9, 0.4, 0.39]) == [False, False, True]  # p < threshold
    off = make("hf_confidence", {"threshold": 0.0})
    assert stops(off, [0, 0], state=off.initial_state(), p=[0.0, 0.01]) == [False, False]
    assert confidence_update(ConfidenceState(0.0), np.array([0.5, 0.5]), 1) == ConfidenceState(0.0)


def test_hf_confidence_roc_refit_on_a_hand_made_sample():
    pol = make("hf_confidence")
    state = pol.initial_state()
    assert state.threshold == 0.4
    # round 1: 4 drafted, 2 accepted -> pairs (0.9,1) (0.8,1) (0.7,0); the 4th draft is dropped
    state = pol.update(state, Outcome(0, 4, 2, {"entropy": np.zeros(4),
                                                "top1_prob": np.array([0.9, 0.8, 0.7, 0.65])}))
    assert state.probs == (0.9, 0.8, 0.7) and state.matches == (1, 1, 0)
    assert state.threshold == 0.4  # 3 samples: too few, kept
    # round 2: all 2 accepted -> 5 samples: still too few (HF needs > 5)
    state = pol.update(state, Outcome(0, 2, 2, {"entropy": np.zeros(2),
                                                "top1_prob": np.array([0.6, 0.55])}))
    assert len(state.probs) == 5 and state.threshold == 0.4
    # round 3: 1 drafted, rejected -> (0.4, 0): 6 samples, both labels -> refit.
    # ROC points (thr: fpr, tpr): .9: 0,.25  .8: 0,.5  .7: .5,.5  .6: .5,.75  .55: .5,1  .4: 1,1
    # cost fpr + 3 fnr: 2.25, 1.5, 2.0, 1.25, 0.5, 1.0 -> 0.55
    state = pol.update(state, Outcome(0, 1, 0, {"entropy": np.zeros(1),
                                                "top1_prob": np.array([0.4])}))
    assert state.matches == (1, 1, 0, 1, 1, 0)
    assert state.threshold == 0.55
    assert stops(pol, [0, 0], state=state, p=[0.6, 0.5]) == [False, True]
    static = make("hf_confidence", {"roc": False})
    assert static.update(static.initial_state(), Outcome(0, 1, 0, {
        "entropy": np.zeros(1), "top1_prob": np.array([0.1])})) == static.initial_state()


def test_hf_confidence_single_class_keeps_threshold():
    state = ConfidenceState(0.4)
    state = confidence_update(state, np.linspace(0.5, 0.9, 8), 8)  # 8 matched, no 0 label
    assert state.threshold == 0.4 and len(state.probs) == 8


def test_roc_curve_matches_sklearn_on_a_known_case():
    # sklearn.metrics.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]):
    # fpr [0, 0, .5, .5, 1], tpr [0, .5, .5, 1, 1], thresholds [inf, .8, .4, .35, .1]
    fpr, tpr, thr = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert np.allclose(fpr, [0, 0, 0.5, 0.5, 1]) and np.allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert np.array_equal(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), st.booleans()),
                min_size=2, max_size=30))
def test_roc_threshold_minimises_the_cost_over_every_cut(pairs):
    """Dropping collinear ROC points never changes the arg-min HF picks (first on ties)."""
    scores = np.array([s for s, _ in pairs])
    labels = np.array([int(y) for _, y in pairs])
    if labels.min() == labels.max():
        return
    pos, neg = labels.sum(), (1 - labels).sum()
    best, best_cost = np.inf, 3.0  # the +inf cut: fpr 0, tpr 0
    for t in np.unique(scores)[::-1]:  # decreasing, as roc_curve orders them
        fired = scores >= t
        cost = (fired & (labels == 0)).sum() / neg + 3 * (1 - (fired & (labels == 1)).sum() / pos)
        if cost < best_cost - 1e-12:
            best, best_cost = t, cost
    assert roc_threshold(labels, scores) == best


# ---- parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "params"), [
    ("stop_relative", {"rho": 0}), ("stop_relative", {"entropy": "bits"}),
    ("stop_window", {"w": 0}), ("stop_combined", {"theta": -1}),
    ("adaptive", {"target": 1.5}), ("adaptive", {"theta0": 9.0}),
    ("draft_moving_average", {"lam": 0}), ("draft_moving_average", {"beta": -1}),
    ("draft_cumulative", {"budget": -0.1}), ("dynamic_gamma", {"gamma_min": 5, "gamma_max": 4}),
    ("relaxed", {"rule": "typical"}), ("relaxed", {"tau": -1}), ("typical", {"k": -1}),
    ("esar", {"max_run": -2}), ("router", {"thresholds": "1.5,0.5"}),
    ("router", {"thresholds": "nan"}), ("min_entropy", {"theta": -1}),
    ("hf_confidence", {"threshold": 1.5}), ("hf_heuristic", {"k0": 0}),
    ("adaedl", {"lam": 1.2}), ("adaedl", {"gamma": 0}), ("adaedl", {"eta": -1}),
    ("hf_confidence_static", {"k": -3}),
])
def test_bad_parameters_are_rejected(name, params):
    with pytest.raises(PolicyError, match=name):
        make(name, params)


def test_string_parameters_convert():
    assert make("relaxed", {"stop_theta": "inf", "k": "3"}).params()["stop_theta"] == math.inf
    assert make("hf_confidence", {"roc": "false"}).roc is False
    assert make("router", {"thresholds": "0.25"}).thresholds == (0.25,)
    assert make("router", {"thresholds": [0.5, 1]}).thresholds == (0.5, 1.0)
