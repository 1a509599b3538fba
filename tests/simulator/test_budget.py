"""Budgets and EOS, worked by hand: the replay caps rounds at the decoder's max_new_tokens and
stops drafting after a drafted (accepted) EOS, exactly as the real decoder does.

The trace: greedy, one drafter, k_max = 4, prompts (draft_match per row, the last row is EOS when
the prompt is shorter than the budget 10):

  a  T T T T T T T      length 7
  b  T T F              length 3, the EOS draft rejected (free-run recorded there)
  c  T F T T T          length 5, a rejection before the EOS
  d  T T T T T T T T T T  length 10 = the budget: cut by the budget, no EOS
  e  T                  length 1: EOS at position 0

Fixed k = 4, budget 10 (max_new_tokens in the metadata), rounds (start: drafted, accepted,
emitted):
  a  0: 4 4 5    5: cap min(4, 10-5-1) = 4, the EOS step e = 1 is accepted: 2 2 2 (no bonus)
  b  0: cap 4, e = 2 rejected, step 3 reads the free-run at row 2: 4 2 3
  c  0: 4 1 2 (steps 2, 3 on the free-run of row 1)    2: e = 2 accepted: 3 3 3
  d  0: 4 4 5    5: cap min(4, 10-5-1) = 4, e = 4 not reached: 4 4 5
  e  0: e = 0 accepted: 1 1 1
Without max_new_tokens (budget = length: the behaviour before budgets), the cap is
min(4, L - t - 1) and the last token always comes as a bonus token:
  a  0: 4 4 5    5: 1 1 2
  b  0: 2 2 3
  c  0: 4 1 2    2: 2 2 3
  d  0: 4 4 5    5: 4 4 5
  e  0: 0 0 1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from simulator.engines import run_events, run_fast, run_reference, simulate
from simulator.latency import Const
from simulator.policies import make
from simulator.policies.fixed import Fixed
from simulator.report.common import truncate
from simulator.trace import read_trace, write_trace

from .conftest import random_trace

K_MAX = 4
MATCH = {"a": "TTTTTTT", "b": "TTF", "c": "TFTTT", "d": "TTTTTTTTTT", "e": "T"}
LAT = Const(draft=0.1, verify=1.0)

# (prompt, start, drafted, accepted, emitted)
WITH_BUDGET = [("a", 0, 4, 4, 5), ("a", 5, 2, 2, 2), ("b", 0, 4, 2, 3), ("c", 0, 4, 1, 2),
               ("c", 2, 3, 3, 3), ("d", 0, 4, 4, 5), ("d", 5, 4, 4, 5), ("e", 0, 1, 1, 1)]
NO_BUDGET = [("a", 0, 4, 4, 5), ("a", 5, 1, 1, 2), ("b", 0, 2, 2, 3), ("c", 0, 4, 1, 2),
             ("c", 2, 2, 2, 3), ("d", 0, 4, 4, 5), ("d", 5, 4, 4, 5), ("e", 0, 0, 0, 1)]


def hand_trace(path, max_new_tokens):
    match = np.array([c == "T" for m in MATCH.values() for c in m])
    n = match.size
    meta = {"verifier": {"name": "v"}, "drafters": [{"name": "d0"}], "dataset": "hand",
            "decoding": "greedy", "k_max": K_MAX, "hardware": None, "recorded": "1970-01-01",
            "synthetic": True}
    if max_new_tokens is not None:
        meta["max_new_tokens"] = max_new_tokens
    cols = {
        "prompt_id": [p for p, m in MATCH.items() for _ in m],
        "position": [i for m in MATCH.values() for i in range(len(m))],
        "drafter": ["d0"] * n, "token_id": list(range(n)), "prompt_tokens": [3] * n,
        "draft_entropy": np.full(n, 0.5), "draft_top1_prob": np.full(n, 0.6),
        "draft_match": match, "accept_prob": match.astype(float),
        "verifier_entropy": np.full(n, 0.4),
        "freerun_entropy": [None if m else [0.7] * K_MAX for m in match],
    }
    write_trace(path, cols, meta)
    return read_trace(path)


def table(trace, rounds):
    pid = np.array(trace.prompt_ids)[rounds.prompt]
    return [(str(p), int(s), int(n), int(a), int(e)) for p, s, n, a, e in zip(
        pid, rounds.start, rounds.drafted, rounds.accepted, rounds.emitted, strict=True)]


@pytest.mark.parametrize("budget, expected", [(10, WITH_BUDGET), (None, NO_BUDGET)])
def test_fixed_k_rounds_by_hand(tmp_path, budget, expected):
    trace = hand_trace(tmp_path / "hand.parquet", budget)
    pol = make("fixed", {"k": 4})
    runs = {"reference": run_reference(trace, pol, LAT), "fast": run_fast(trace, pol, LAT),
            "events": run_events(trace, pol, LAT).rounds}
    for name, rounds in runs.items():
        assert table(trace, rounds) == expected, name
    r = simulate(trace, pol, LAT, engine="reference")
    drafted = sum(x[2] for x in expected)
    assert r["tokens"] == sum(len(m) for m in MATCH.values()) == sum(x[4] for x in expected)
    assert r["verifier_calls"] == len(expected) and r["drafted_tokens"] == drafted
    assert r["accepted_tokens"] == sum(x[3] for x in expected)
    # const pricing: 1 s per verifier call, 0.1 s per drafter step
    assert r["time_s"] == pytest.approx(len(expected) + 0.1 * drafted)
    for engine in ("fast", "events"):
        other = simulate(trace, pol, LAT, engine=engine)
        assert {**other, "engine": "reference"} == r


@pytest.mark.parametrize("sampled", [False, True])
def test_budget_equal_to_lengths_changes_nothing(tmp_path, profile_latency, sampled):
    """max_new_tokens equal to every prompt's length: the same replay as no budget at all."""
    runs = []
    for budget in (None, 12):
        rng = np.random.default_rng(5)
        path = tmp_path / f"{budget}.parquet"
        trace = random_trace(path, rng, [12, 12, 12], n_drafters=3, sampled=sampled,
                             max_new_tokens=budget)
        out = []
        for name, params in (("fixed", {"k": 5}), ("stop_absolute", {"k": 5}),
                             ("hf_confidence", {"k": 4}), ("oracle", {"k": 5}),
                             ("relaxed", {"k": 4}), ("router", {"k": 3})):
            for engine in ("reference", "fast", "events"):
                r = simulate(trace, make(name, params), profile_latency, engine, seed=2)
                out.append({**r, "trace": None})
        runs.append(out)
    assert runs[0] == runs[1]


@dataclass(frozen=True)
class Spy(Fixed):
    """Fixed k that records (position, remaining) of every plan; stateful, not registered."""

    name = "spy"
    memoryless = False
    seen: list = field(default_factory=list, compare=False)

    def plan(self, state, ctx):
        self.seen.append((int(ctx.position), int(ctx.remaining)))
        return super().plan(state, ctx)


@pytest.mark.parametrize("budget", [10, None])
def test_policies_see_the_budget_as_remaining(tmp_path, budget):
    trace = hand_trace(tmp_path / "hand.parquet", budget)
    expected = WITH_BUDGET if budget else NO_BUDGET
    for run in (run_reference, run_fast, lambda *a: run_events(*a).rounds):
        spy = Spy(k=4)
        rounds = run(trace, spy, LAT)
        assert table(trace, rounds) == expected
        ends = {p: budget or len(m) for p, m in MATCH.items()}
        assert spy.seen == [(s, ends[p] - s) for p, s, *_ in expected]


def test_truncation_keeps_eos_and_cuts_the_budget(tmp_path):
    """The report's max-new-tokens cut: a cut prompt is budget-ended, a shorter one EOS-ended."""
    trace = hand_trace(tmp_path / "hand.parquet", 10)
    cut = truncate(trace, 4)
    assert cut.lengths.tolist() == [4, 3, 4, 4, 1] and cut.budget.tolist() == [4] * 5
    rounds = run_reference(cut, make("fixed", {"k": 4}), LAT)
    # cut at 4: a, d draft min(4, 4 - 0 - 1) = 3; c's second round is budget-capped at 1 and
    # emits its bonus token; b and e still end with EOS (b's EOS draft rejected, e's accepted)
    assert table(cut, rounds) == [("a", 0, 3, 3, 4), ("b", 0, 3, 2, 3), ("c", 0, 3, 1, 2),
                                  ("c", 2, 1, 1, 2), ("d", 0, 3, 3, 4), ("e", 0, 1, 1, 1)]
    plain = truncate(hand_trace(tmp_path / "plain.parquet", None), 4)
    assert "max_new_tokens" not in plain.meta and plain.budget.tolist() == [4, 3, 4, 4, 1]
