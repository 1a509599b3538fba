"""The fast engine: numpy over whole traces, for sweeps.

Memoryless policies (decisions depend only on a round's own signals and context): every
position of the trace is treated as a possible round start, and the policy's ``plan``, ``rules``
and ``stop`` are called once on (starts, steps) matrices. A compiled walk then follows
start -> start + accepted + 1 through each prompt. Policies with state across rounds are played
round by round (``play_round``: numpy over the steps of a round). Both paths price all rounds at
once. Metrics equal the reference replay's exactly (tests/simulator/test_engines_agree.py).

Caps come from each prompt's budget (``Trace.budget``), not its recorded length. A prompt shorter
than its budget ended with EOS at its last row: steps past that row are never teacher-forced
(they are marked rejected, so first_reject <= e + 1 for e the step at the last row), and a round
with first_reject > e drafted the EOS and stops after it, i.e. its cap becomes min(cap, e + 1).
The replay's one approximation (an EOS drafted inside a free-run is not seen, see ``replay``)
is the reference's too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..latency import LatencyModel
from ..policies import Context, Policy
from ..policies.base import VERIFIER_DECIDES
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


@njit(cache=True)
def walk_stops(stop: np.ndarray, cap: np.ndarray, first_reject: np.ndarray,
               missing: np.ndarray, offsets: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:  # pragma: no cover
    """Follow rounds through each prompt reading the (starts, steps) stop matrix.

    Returns the start rows of the rounds, tokens drafted and drafts accepted in each, and
    whether a drafted step lacked its free-run signal (``missing``).
    """
    gap = False
    n_rows = offsets[-1]
    starts = np.empty(n_rows, dtype=np.int64)
    drafted = np.empty(n_rows, dtype=np.int64)
    accepted = np.empty(n_rows, dtype=np.int64)
    k = 0
    for p in range(offsets.size - 1):
        r = offsets[p]
        while r < offsets[p + 1]:
            c = cap[r]
            n = c
            for j in range(c):
                if stop[r, j]:
                    n = j + 1
                    break
            a = min(n, first_reject[r])
            for j in range(n):
                gap |= missing[r, j]
            starts[k], drafted[k], accepted[k] = r, n, a
            k += 1
            r += a + 1
    return starts[:k], drafted[:k], accepted[:k], gap


def run_lengths(rp: Replay, d: int) -> np.ndarray:
    """(N,) standard-rule accepted drafts from each row, within its prompt (not its last row)."""
    tr = rp.trace
    ok = rp.u < rp.accept[0, d]
    ok[tr.offsets[1:] - 1] = False  # a prompt's last token is never drafted
    idx = np.arange(tr.n_positions)
    next_reject = np.minimum.accumulate(np.where(ok, tr.n_positions, idx)[::-1])[::-1]
    return next_reject - idx


@dataclass(frozen=True)
class StartMatrices:
    """Per (starts, steps) matrices of every possible round, independent of the stop rule."""

    at: np.ndarray  # (N, K) teacher-forced row of step j
    rules: np.ndarray  # (N, K) rule index of each step
    first_reject: np.ndarray  # (N,) first rejected step, K if none within K steps
    sig: dict[str, np.ndarray]  # (N, K) signals, free-run substituted after first_reject
    missing: np.ndarray  # (N, >=K) bool, C-contiguous: a step's free-run signal is missing
    relaxed: bool  # some step uses a non-standard acceptance rule


def start_matrices(rp: Replay, policy: Policy, d: np.ndarray, k: int) -> StartMatrices:
    """Build (or fetch from ``rp``'s cache) the matrices of drafter choice ``d`` and cap ``k``.

    Policies that only use the standard rule share one entry per (d, k, signals): a sweep pays
    for these gathers once, and per configuration only for its own stop rule.
    """
    tr = rp.trace
    names = rp.signal_names(policy)
    standard_only = policy.accept_rules() == ("standard",)
    key = (names, d.tobytes() if d.any() else 0) if standard_only else None
    if key is not None and key in rp.cache and rp.cache[key].at.shape[1] >= k:
        m = rp.cache[key]  # computed for a larger cap: steps are prefix-causal, so slice
        return StartMatrices(m.at[:, :k], m.rules[:, :k], np.minimum(m.first_reject, k),
                             {s: v[:, :k] for s, v in m.sig.items()}, m.missing, m.relaxed)
    n_pos = tr.n_positions
    rows = np.arange(n_pos)
    j = np.arange(k)
    at = np.minimum(rows[:, None] + j, rp.last_row[:, None])  # never the next prompt's rows
    dd = d[:, None]
    sig = {s: tr.signals[s][dd, at] for s in names}
    rules = np.zeros(at.shape, np.int64) if standard_only else \
        np.asarray(policy.rules(None, sig), dtype=np.int64)
    ok = rp.u[at] < rp.accept[rules, dd, at]
    ok[at != rows[:, None] + j] = False  # past the prompt's last row: never reached
    first = np.where(ok.all(axis=1), k, np.argmin(ok, axis=1))
    f = j - first[:, None] - 1  # free-run index of step j, valid where f >= 0
    after = f >= 0
    if after.any():
        src = np.minimum(rows + first, rp.last_row)[:, None]
        fc = np.clip(f, 0, tr.k_max - 1)
        for s in names:
            fr = tr.freerun.get(s)
            vals = fr[dd, src, fc] if fr is not None else np.full(f.shape, np.nan)
            sig[s] = np.where(after, np.where(f < tr.k_max, vals, np.nan), sig[s])
    missing = np.logical_or.reduce([np.isnan(v) for v in sig.values()])
    out = StartMatrices(at, rules, first, sig, np.ascontiguousarray(missing),
                        bool(rules.any()))
    if key is not None:
        rp.cache[key] = out
    return out


def all_starts(rp: Replay, policy: Policy) -> tuple[np.ndarray, ...]:
    """The rounds a memoryless policy plays: start rows, drafter, drafted, accepted,
    deviating, relaxed, bias (one entry per round), and the matrices the policy saw."""
    tr = rp.trace
    n_pos = tr.n_positions
    rows = np.arange(n_pos)
    if "context" not in rp.cache:
        position = rows - np.repeat(tr.offsets[:-1], tr.lengths)
        prev = np.concatenate([[np.nan], tr.verifier_entropy[:-1]])
        prev[tr.offsets[:-1]] = np.nan
        rp.cache["context"] = Context(
            position=position, remaining=np.repeat(tr.budget, tr.lengths) - position,
            prev_verifier_entropy=prev, first_entropy=tr.signals["entropy"],
            run_length=run_lengths(rp, 0))
    full = rp.cache["context"]
    ctx = Context(position=full.position, remaining=full.remaining,
                  prev_verifier_entropy=full.prev_verifier_entropy,
                  first_entropy=full.first_entropy if policy.probes_all_drafters else None,
                  run_length=full.run_length if policy.oracle else None)
    plan = policy.plan(policy.initial_state(), ctx)
    d = np.ascontiguousarray(np.broadcast_to(np.asarray(plan.drafter, dtype=np.int64), (n_pos,)))
    cap = np.clip(np.minimum(np.asarray(plan.cap, dtype=np.int64), full.remaining - 1), 0, None)
    k = int(cap.max(initial=0))
    if k == 0:
        s = walk(np.ones(n_pos, dtype=np.int64), tr.offsets)
        zero = np.zeros(s.size, dtype=np.int64)
        return s, d[s], zero, zero, zero, zero, np.zeros(s.size), None
    m = start_matrices(rp, policy, d, k)
    eos = rp.last_row - rows  # the step drafting at the prompt's last row
    cap = np.where(m.first_reject > eos, np.minimum(cap, eos + 1), cap)  # EOS drafted: stop
    stop = np.ascontiguousarray(policy.stop(None, m.sig), dtype=np.bool_)
    if not (m.relaxed or policy.lossy):  # only the visited rounds matter
        s, n, a, gap = walk_stops(stop, cap, m.first_reject, m.missing, tr.offsets)
        if gap:
            raise freerun_error(tr, policy)
        return s, d[s], n, a, np.zeros_like(s), np.zeros_like(s), np.zeros(s.size), m
    j = np.arange(k)
    live = j < cap[:, None]
    i = np.minimum(m.first_reject, cap)
    stop &= live
    n = np.where(stop.any(axis=1), np.argmax(stop, axis=1) + 1, cap)
    a = np.minimum(n, i)
    dd = d[:, None]
    decided = j < np.minimum(n, i + 1)[:, None]
    relaxed = ~np.isin(m.rules, VERIFIER_DECIDES) & decided
    std_ok = rp.u[m.at] < rp.accept[0, dd, m.at]
    deviating = np.sum(relaxed & (j < a[:, None]) & ~std_ok, axis=1)
    bias = np.sum(np.where(relaxed, rp.bias[m.rules, dd, m.at], 0.0), axis=1)
    s = walk(a + 1, tr.offsets)
    return s, d[s], n[s], a[s], deviating[s], relaxed.sum(axis=1)[s], bias[s], m


def check_freerun(rp: Replay, policy: Policy, m: StartMatrices | None, starts: np.ndarray,
                  drafted: np.ndarray) -> None:
    """Raise if a played round drafts a step whose free-run signal was not recorded."""
    if m is None or not drafted.any():
        return
    steps = np.arange(m.at.shape[1]) < drafted[:, None]
    if (m.missing[starts, : steps.shape[1]] & steps).any():
        raise freerun_error(rp.trace, policy)


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
        s, d, n, a, dev, rel, bias, m = all_starts(rp, policy)
        if policy.lossy or (m is not None and m.relaxed):
            check_freerun(rp, policy, m, s, n)
        zeros = np.zeros(s.size, dtype=np.int64)
        r = Rounds(prompt=rp.prompt_of[s], start=s - trace.offsets[rp.prompt_of[s]],
                   drafter=d, drafted=n, accepted=a,
                   probe=np.full(s.size, policy.probes_all_drafters, dtype=np.int64),
                   deviating=dev, relaxed=rel, bias=bias, draft_ns=zeros,
                   verify_ns=zeros, wall_ns=zeros, length=trace.lengths[rp.prompt_of[s]])
    else:
        rows = []
        for p in range(trace.n_prompts):
            state = policy.initial_state()
            t, length = 0, int(trace.lengths[p])
            while t < length:
                out, state = play_round(rp, policy, state, p, t)
                rows.append((p, t, *out, 0, 0, 0))
                t += out[2] + 1
        r = Rounds.from_rows(rows, trace.lengths)
    return price_rounds(pricer, trace, r)
