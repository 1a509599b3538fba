"""The fast engine: numpy over whole traces, for sweeps.

Memoryless policies (decisions depend only on a round's own signals and context): every
position of the trace is treated as a possible round start, and the policy's ``plan``, ``rules``
and ``stop`` are called once on (starts, steps) matrices. A compiled walk then follows
start -> start + accepted + 1 through each prompt. Policies with state across rounds are played
round by round (``play_round``: numpy over the steps of a round). Both paths price all rounds at
once. Metrics equal the reference replay's exactly (tests/simulator/test_engines_agree.py).
"""

from __future__ import annotations

import numpy as np

from ..latency import LatencyModel
from ..policies import RULE_INDEX, Context, Policy
from ..trace import Trace
from .replay import Pricer, Replay, Rounds, freerun_error, play_round

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    def njit(*args, **kwargs):  # type: ignore[no-redef]
        return (lambda f: f) if not args or not callable(args[0]) else args[0]


@njit(cache=True)
def walk(advance: np.ndarray, offsets: np.ndarray) -> np.ndarray:  # pragma: no cover (jit)
    """Rows where rounds start: from each prompt's first row, row += advance[row]."""
    out = np.empty(offsets[-1], dtype=np.int64)
    k = 0
    for p in range(offsets.size - 1):
        r = offsets[p]
        while r < offsets[p + 1]:
            out[k] = r
            k += 1
            r += advance[r]
    return out[:k]


def run_lengths(rp: Replay, d: int) -> np.ndarray:
    """(N,) standard-rule accepted drafts from each row, within its prompt (not its last row)."""
    tr = rp.trace
    ok = rp.u < rp.accept[0, d]
    ok[tr.offsets[1:] - 1] = False  # a prompt's last token is never drafted
    idx = np.arange(tr.n_positions)
    next_reject = np.minimum.accumulate(np.where(ok, tr.n_positions, idx)[::-1])[::-1]
    return next_reject - idx


def all_starts(rp: Replay, policy: Policy) -> tuple[np.ndarray, ...]:
    """For every row as a round start: (drafter, drafted, accepted, deviating, relaxed, bias)."""
    tr = rp.trace
    n_pos = tr.n_positions
    rows = np.arange(n_pos)
    hi = np.repeat(tr.offsets[1:], tr.lengths)
    prev = np.concatenate([[np.nan], tr.verifier_entropy[:-1]])
    prev[tr.offsets[:-1]] = np.nan
    ctx = Context(position=rows - np.repeat(tr.offsets[:-1], tr.lengths), remaining=hi - rows,
                  prev_verifier_entropy=prev,
                  first_entropy=tr.signals["entropy"] if policy.probes_all_drafters else None,
                  run_length=run_lengths(rp, 0) if policy.oracle else None)
    plan = policy.plan(policy.initial_state(), ctx)
    d = np.broadcast_to(np.asarray(plan.drafter, dtype=np.int64), (n_pos,))
    cap = np.clip(np.minimum(np.asarray(plan.cap, dtype=np.int64), hi - rows - 1), 0, None)
    k = int(cap.max(initial=0))
    if k == 0:
        z = np.zeros(n_pos, dtype=np.int64)
        return d, z, z, z, z, np.zeros(n_pos)
    j = np.arange(k)
    live = j < cap[:, None]  # (N, K) steps within the cap
    at = np.minimum(rows[:, None] + j, n_pos - 1)  # teacher-forced row of step j
    dd = d[:, None]
    names = rp.signal_names(policy)
    sig = {s: tr.signals[s][dd, at] for s in names}
    rules = np.asarray(policy.rules(None, sig), dtype=np.int64)
    ok = (rp.u[at] < rp.accept[rules, dd, at]) & live
    i = np.where(ok.all(axis=1), k, np.argmin(ok, axis=1))  # first rejected step (or cap)
    f = j - i[:, None] - 1  # free-run index of step j, valid where f >= 0
    after = f >= 0
    if after.any():
        src = np.minimum(rows + i, n_pos - 1)[:, None]
        fc = np.clip(f, 0, tr.k_max - 1)
        for s in names:
            fr = tr.freerun.get(s)
            vals = fr[dd, src, fc] if fr is not None else np.full(f.shape, np.nan)
            vals = np.where(f < tr.k_max, vals, np.nan)
            sig[s] = np.where(after, vals, sig[s])
    stop = np.asarray(policy.stop(None, sig), dtype=bool) & live
    n = np.where(stop.any(axis=1), np.argmax(stop, axis=1) + 1, cap)
    drafted = j < n[:, None]
    if any(np.isnan(sig[s][drafted]).any() for s in names):
        bad = drafted & np.logical_or.reduce([np.isnan(sig[s]) for s in names])
        starts_bad = np.flatnonzero(bad.any(axis=1))
        # only a problem if such a start is actually visited by the walk
        visited = walk(np.minimum(n, i) + 1, tr.offsets)
        if np.intersect1d(starts_bad, visited).size:
            raise freerun_error(tr, policy)
    a = np.minimum(n, i)
    decided = j < np.minimum(n, i + 1)[:, None]
    relaxed = (rules != RULE_INDEX["standard"]) & decided
    std_ok = rp.u[at] < rp.accept[0, dd, at]
    deviating = np.sum(relaxed & (j < a[:, None]) & ~std_ok, axis=1)
    bias = np.sum(np.where(relaxed, rp.bias[rules, dd, at], 0.0), axis=1)
    return d, n, a, deviating, relaxed.sum(axis=1), bias


def price_rounds(pricer: Pricer, tr: Trace, r: Rounds) -> Rounds:
    """Fill draft_ns / verify_ns / wall_ns of every round (vectorized ``price_round``)."""
    length = tr.prompt_tokens[r.prompt] + r.start
    first = np.ones(r.prompt.size, dtype=bool)
    first[1:] = r.prompt[1:] != r.prompt[:-1]
    seen_v = np.where(first, 0, np.roll(length + r.accepted, 1))
    verify = pricer.ns(0, length - seen_v + r.drafted, seen_v)
    draft = np.zeros(r.prompt.size, dtype=np.int64)
    for x in range(len(tr.drafters)):
        chosen = r.drafter == x
        steps = np.where(r.probe, np.where(chosen, np.maximum(r.drafted, 1), 1),
                         np.where(chosen, r.drafted, 0))
        m = np.flatnonzero(steps > 0)
        if m.size == 0:
            continue
        after = length[m] + np.minimum(steps[m] - 1, np.where(chosen[m], r.accepted[m], 0))
        same = np.zeros(m.size, dtype=bool)
        same[1:] = r.prompt[m[1:]] == r.prompt[m[:-1]]
        before = np.where(same, np.roll(after, 1), 0)
        draft[m] += pricer.ns(1 + x, length[m] - before, before)
        draft[m] += pricer.steps_ns(1 + x, length[m], steps[m] - 1)
    r.draft_ns, r.verify_ns, r.wall_ns = draft, verify, draft + verify
    return r


def run_fast(trace: Trace, policy: Policy, latency: LatencyModel, seed: int = 0,
             replay: Replay | None = None, pricer: Pricer | None = None) -> Rounds:
    """Run ``policy`` over every prompt of ``trace``; pass ``replay``/``pricer`` to reuse them."""
    rp = replay or Replay(trace, seed)
    rp.check(policy)
    pricer = pricer or Pricer(latency, trace)
    if policy.memoryless:
        d, n, a, dev, rel, bias = all_starts(rp, policy)
        s = walk(a + 1, trace.offsets)
        zeros = np.zeros(s.size, dtype=np.int64)
        r = Rounds(prompt=rp.prompt_of[s], start=s - trace.offsets[rp.prompt_of[s]],
                   drafter=d[s], drafted=n[s], accepted=a[s],
                   probe=np.full(s.size, policy.probes_all_drafters, dtype=np.int64),
                   deviating=dev[s], relaxed=rel[s], bias=bias[s], draft_ns=zeros,
                   verify_ns=zeros, wall_ns=zeros)
    else:
        rows = []
        for p in range(trace.n_prompts):
            state = policy.initial_state()
            t, length = 0, int(trace.lengths[p])
            while t < length:
                out, state = play_round(rp, policy, state, p, t)
                rows.append((p, t, *out, 0, 0, 0))
                t += out[2] + 1
        r = Rounds.from_rows(rows)
    return price_rounds(pricer, trace, r)
