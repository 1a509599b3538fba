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

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..kernels import clip_caps, locate, price_log, walk, walk_price
from ..latency import LatencyModel
from ..policies import Context, Policy
from ..policies.base import VERIFIER_DECIDES
from ..trace import Trace
from .replay import Pricer, Replay, Rounds, freerun_error, play_round


def run_lengths(rp: Replay, d: int) -> np.ndarray:
    """(N,) standard-rule accepted drafts from each row, within its prompt (not its last row)."""
    tr = rp.trace
    idx = np.arange(tr.n_positions)
    if tr.chain[d]:  # along the continuation from each row (replay.Replay.chain_ok)
        assert tr.chain_accept is not None
        j = np.arange(1, tr.k_max + 1)
        at = np.minimum(idx[:, None] + j, tr.n_positions - 1)
        ok2 = np.concatenate([(rp.u < rp.accept[0, d])[:, None],
                              rp.u[at] < tr.chain_accept[d]], axis=1)
        first = np.where(ok2.all(axis=1), ok2.shape[1], np.argmin(ok2, axis=1))
        return np.minimum(first, rp.last_row - idx)
    ok = rp.u < rp.accept[0, d]
    ok[tr.offsets[1:] - 1] = False  # a prompt's last token is never drafted
    next_reject = np.minimum.accumulate(np.where(ok, tr.n_positions, idx)[::-1])[::-1]
    return next_reject - idx


@dataclass(frozen=True)
class StartMatrices:
    """Per (starts, steps) matrices of every possible round, independent of the stop rule."""

    at: np.ndarray  # (N, K) teacher-forced row of step j
    rules: np.ndarray  # (N, K) rule index of each step
    first_reject: np.ndarray  # (N,) first rejected step, K if none within K steps
    sig: dict[str, np.ndarray]  # (N, K) signals, free-run substituted after first_reject;
    # Fortran order (steps-major), so that sig[:, :k] is contiguous
    missing: np.ndarray  # (N, >=K) bool, C-contiguous: a step's free-run signal is missing
    relaxed: bool  # some step uses a non-standard acceptance rule
    first_missing: np.ndarray  # (N,) first step of ``missing``, its width if none
    narrower: dict = field(default_factory=dict, compare=False, repr=False)  # k -> sliced
    wider: StartMatrices | None = field(default=None, compare=False, repr=False)  # sliced from
    key: object = field(default=None, compare=False, repr=False)  # in Replay.cache, if kept


def start_matrices(rp: Replay, policy: Policy, d: np.ndarray, k: int,
                   all_zero: bool = False) -> StartMatrices:
    """Build (or fetch from ``rp``'s cache) the matrices of drafter choice ``d`` and cap ``k``
    (``all_zero``: the caller knows ``d`` is all 0).

    Policies that only use the standard rule share one entry per (d, k, signals): a sweep pays
    for these gathers once, and per configuration only for its own stop rule.
    """
    tr = rp.trace
    names = rp.signal_names(policy)
    standard_only = policy.accept_rules() == ("standard",)
    if standard_only:
        key = (names, 0 if all_zero or not np.count_nonzero(d) else d.tobytes())
    else:
        key = None
    width = k
    if key is not None and key in rp.cache:
        m = rp.cache[key]
        if m.at.shape[1] >= k:
            return _narrow(m, k)
        # grow geometrically: a sweep over k = 1, 2, ... builds log2(k) times, not k times
        width = max(k, min(2 * m.at.shape[1], int(tr.budget.max())))
    m = _build_start_matrices(rp, policy, d, width, names, standard_only, key)
    if key is not None:
        rp.cache[key] = m
    return _narrow(m, k)


def _narrow(m: StartMatrices, k: int) -> StartMatrices:
    """``m`` for cap k <= its own: steps are prefix-causal, so its first k steps (cached)."""
    if m.at.shape[1] == k:
        return m
    if k not in m.narrower:
        m.narrower[k] = StartMatrices(
            m.at[:, :k], m.rules[:, :k], np.minimum(m.first_reject, k),
            {s: v[:, :k] for s, v in m.sig.items()}, m.missing, m.relaxed, m.first_missing,
            wider=m)
    return m.narrower[k]


@functools.cache
def _stop_owner(cls: type[Policy]) -> type[Policy] | None:
    """The class defining ``cls.stop``, if it declares ``stop_params`` too (else None)."""
    owner = next(c for c in cls.__mro__ if "stop" in c.__dict__)
    ok = "stop_params" in owner.__dict__ and owner.__dict__["stop_params"] is not None
    return owner if ok else None


def stop_matrix(rp: Replay, policy: Policy, m: StartMatrices) -> np.ndarray:
    """(N, k) bool: ``policy.stop`` on ``m``'s signals.

    Where the policy declares the parameters its stop rule reads (``Policy.stop_params``), the
    rule is evaluated on the widest cached matrices and kept: the next configuration with the
    same values of those (a sweep's other caps) slices it (stop is prefix-causal).
    """
    owner = _stop_owner(type(policy))  # type: ignore[arg-type]  # classes hash; mypy disagrees
    widest = m.wider or m
    if owner is None or rp.cache.get(widest.key) is not widest:  # not declared; not kept
        return np.asarray(policy.stop(None, m.sig), dtype=np.bool_)
    key = (owner, tuple(getattr(policy, name) for name in owner.stop_params or ()))
    kept = rp.cache.get("stop")
    if kept is None or kept[0] is not widest or kept[1] != key:
        kept = widest, key, np.asarray(policy.stop(None, widest.sig), dtype=np.bool_)
        rp.cache["stop"] = kept
    return kept[2][:, :m.at.shape[1]]


def _build_start_matrices(rp: Replay, policy: Policy, d: np.ndarray, k: int,
                          names: tuple[str, ...], standard_only: bool,
                          key: object) -> StartMatrices:
    tr = rp.trace
    n_pos = tr.n_positions
    rows = np.arange(n_pos)
    j = np.arange(k)
    at = np.minimum(rows[:, None] + j, rp.last_row[:, None])  # never the next prompt's rows
    dd = d[:, None]
    sig = {s: tr.signals[s][dd, at] for s in names}
    rules = np.zeros(at.shape, np.int64) if standard_only else \
        np.asarray(policy.rules(None, sig), dtype=np.int64)
    ok = rp.u[at] < rp.accept[rules, dd, at]
    chained = tr.chain[d] if tr.chain.any() else None
    if chained is not None and chained.any() and k > 1:
        # chain drafters: steps 1.. along the continuation recorded from the start row itself
        assert tr.chain_accept is not None
        c = np.nonzero(chained)[0]
        fc = np.minimum(j[1:] - 1, tr.k_max - 1)
        inside = j[1:] - 1 < tr.k_max
        dc = d[c][:, None]
        ok[c, 1:] = (rp.u[at[c, 1:]] < tr.chain_accept[dc, c[:, None], fc]) & inside
        for s in names:
            fr = tr.freerun.get(s)
            vals = fr[dc, c[:, None], fc] if fr is not None else np.full((c.size, k - 1), np.nan)
            sig[s][c, 1:] = np.where(inside, vals, np.nan)
    ok[at != rows[:, None] + j] = False  # past the prompt's last row: never reached
    first = np.where(ok.all(axis=1), k, np.argmin(ok, axis=1))
    f = j - first[:, None] - 1  # free-run index of step j, valid where f >= 0
    after = f >= 0
    if chained is not None:  # a chain drafter's continuation already holds every step
        after &= ~chained[:, None]
    if after.any():
        src = np.minimum(rows + first, rp.last_row)[:, None]
        fc = np.clip(f, 0, tr.k_max - 1)
        for s in names:
            fr = tr.freerun.get(s)
            vals = fr[dd, src, fc] if fr is not None else np.full(f.shape, np.nan)
            sig[s] = np.where(after, np.where(f < tr.k_max, vals, np.nan), sig[s])
    missing = np.logical_or.reduce([np.isnan(v) for v in sig.values()])
    # steps-major memory: the first k steps of every start (a narrower cap's slice) are then
    # one contiguous block, which the policies' elementwise stop rules read fastest
    sig = {s: np.asfortranarray(v) for s, v in sig.items()}
    first_missing = np.where(missing.any(axis=1), np.argmax(missing, axis=1), k)
    return StartMatrices(at, rules, first, sig, np.ascontiguousarray(missing),
                         bool(rules.any()), first_missing, key=key)


class Starts(NamedTuple):
    """The rounds a memoryless policy plays (one entry per round), and the matrices it saw."""

    rows: np.ndarray  # start row
    prompt: np.ndarray
    start: np.ndarray  # position in the prompt
    length: np.ndarray  # the prompt's length L_p
    drafter: np.ndarray
    drafted: np.ndarray
    accepted: np.ndarray
    deviating: np.ndarray
    relaxed: np.ndarray
    bias: np.ndarray
    m: StartMatrices | None


class Decisions(NamedTuple):
    """A memoryless policy's decisions at every possible round start (row)."""

    drafter: np.ndarray  # (N,)
    cap: np.ndarray  # (N,) most tokens to draft, within the budget
    k: int  # the largest cap
    m: StartMatrices | None  # the (starts, k steps) matrices, None where k == 0
    stop: np.ndarray | None  # (N, k) bool: the policy's stop after each step


def decide(rp: Replay, policy: Policy) -> Decisions:
    """Call the policy's ``plan`` and ``stop`` once over every possible round start."""
    tr = rp.trace
    n_pos = tr.n_positions
    if "context" not in rp.cache:
        rows = np.arange(n_pos)
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
    d = np.asarray(plan.drafter, dtype=np.int64)
    all_zero = d.ndim == 0 and int(d) == 0
    if d.ndim == 0:  # one drafter for every start: a shared constant array
        key = ("drafter", int(d))
        if key not in rp.cache:
            rp.cache[key] = np.full(n_pos, int(d), dtype=np.int64)
        d = rp.cache[key]
    else:
        d = np.ascontiguousarray(np.broadcast_to(d, (n_pos,)))
    cap = np.asarray(plan.cap, dtype=np.int64)
    if cap.ndim == 0:
        cap = cap.reshape(1)  # clip_caps reads a (1,) cap as every row's
    elif cap.shape not in ((1,), (n_pos,)):
        cap = np.broadcast_to(cap, (n_pos,))
    cap, k = clip_caps(cap, full.remaining)
    if tr.chain.any():  # the first round of a prompt is the verifier's prefill (replay)
        cap[tr.offsets[:-1]] = 0
        d = d.copy()
        d[tr.offsets[:-1]] = 0
    if k == 0:
        return Decisions(d, cap, 0, None, None)
    m = start_matrices(rp, policy, d, k, all_zero)
    return Decisions(d, cap, k, m, stop_matrix(rp, policy, m))


def all_starts(rp: Replay, policy: Policy) -> Starts:
    """The rounds a memoryless policy plays (see ``Starts``)."""
    tr = rp.trace
    d, cap, k, m, stop = decide(rp, policy)
    if m is None:
        s = walk(np.ones(tr.n_positions, dtype=np.int64), tr.offsets)
        zero = np.zeros(s.size, dtype=np.int64)
        return Starts(s, *locate(s, rp.prompt_of, tr.offsets), d[s],  # type: ignore[call-arg]
                      zero, zero, zero, zero, np.zeros(s.size), None)
    assert stop is not None  # decided wherever there are matrices
    if not (m.relaxed or policy.lossy):  # only the visited rounds matter
        none = np.zeros((1, 1, 1), dtype=np.int64)  # no prices wanted: tables never read
        cols, gap, *_ = walk_price(stop, cap, m.first_reject, m.first_missing, rp.eos, d,
                                   tr.offsets, False, True, False, False, tr.prompt_tokens, none,
                                   none[0], none[0], len(tr.drafters), tr.chain)
        if gap:
            raise freerun_error(tr, policy)
        zero = np.zeros(cols.shape[1], dtype=np.int64)
        return Starts(*cols[:7], zero, zero, np.zeros(cols.shape[1]), m)  # type: ignore[call-arg]
    eos = rp.eos  # the step drafting at the prompt's last row
    cap = np.where(m.first_reject > eos, np.minimum(cap, eos + 1), cap)  # EOS drafted: stop
    j = np.arange(k)
    live = j < cap[:, None]
    i = np.minimum(m.first_reject, cap)
    stop = stop & live  # not in place: the matrix may be kept for other caps
    n = np.where(stop.any(axis=1), np.argmax(stop, axis=1) + 1, cap)
    a = np.minimum(n, i)
    dd = d[:, None]
    decided = j < np.minimum(n, i + 1)[:, None]
    relaxed = ~np.isin(m.rules, VERIFIER_DECIDES) & decided
    std_ok = rp.u[m.at] < rp.accept[0, dd, m.at]
    deviating = np.sum(relaxed & (j < a[:, None]) & ~std_ok, axis=1)
    bias = np.sum(np.where(relaxed, rp.bias[m.rules, dd, m.at], 0.0), axis=1)
    s = walk(a + 1, tr.offsets)
    return Starts(s, *locate(s, rp.prompt_of, tr.offsets), d[s],  # type: ignore[call-arg]
                  n[s], a[s], deviating[s], relaxed.sum(axis=1)[s], bias[s], m)


def check_freerun(rp: Replay, policy: Policy, m: StartMatrices | None, starts: np.ndarray,
                  drafted: np.ndarray) -> None:
    """Raise if a played round drafts a step whose free-run signal was not recorded."""
    if m is None or not drafted.any():
        return
    steps = np.arange(m.at.shape[1]) < drafted[:, None]
    if (m.missing[starts, : steps.shape[1]] & steps).any():
        raise freerun_error(rp.trace, policy)


def probes(trace: Trace, start: np.ndarray, probe: bool) -> np.ndarray:
    """(R,) int64: whether each round probes every drafter (never a chain trace's prefill)."""
    out = np.full(start.size, probe, dtype=np.int64)
    if probe and trace.chain.any():
        out[start == 0] = 0
    return out


def price_rounds(pricer: Pricer, tr: Trace, r: Rounds) -> Rounds:
    """Fill draft_ns / verify_ns / wall_ns of every round (``price_round`` over the log):
    lookup tables in a compiled loop, the few large passes priced by the latency model."""
    draft, verify, todo = price_log(r.prompt, r.start, r.drafter, r.drafted, r.accepted,
                                    r.probe, tr.prompt_tokens, pricer.small_table(),
                                    pricer.fresh_table(), pricer.cum, tr.chain)
    r.draft_ns, r.verify_ns, r.wall_ns = _price_rest(pricer, draft, verify, todo)
    return r


def _price_rest(pricer: Pricer, draft: np.ndarray, verify: np.ndarray, todo: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the passes the kernels left to price (``todo`` rows: round, model, new, context);
    returns draft, verify and wall ns."""
    for m in np.unique(todo[:, 1]) if todo.size else ():
        rows = todo[todo[:, 1] == m]
        ns = pricer.ns(int(m), rows[:, 2], rows[:, 3])
        if m == 0:
            verify[rows[:, 0]] = ns  # one verifier pass a round
        else:
            np.add.at(draft, rows[:, 0], ns)
    return draft, verify, draft + verify


def run_fast(trace: Trace, policy: Policy, latency: LatencyModel, seed: int = 0,
             replay: Replay | None = None, pricer: Pricer | None = None) -> Rounds:
    """Run ``policy`` over every prompt of ``trace``; pass ``replay``/``pricer`` to reuse them."""
    rounds = run_fast_tallied(trace, policy, latency, seed, replay, pricer)[0]
    assert rounds is not None  # keep=True: the log is always made
    return rounds


def run_fast_tallied(trace: Trace, policy: Policy, latency: LatencyModel, seed: int = 0,
                     replay: Replay | None = None, pricer: Pricer | None = None,
                     keep: bool = True) -> tuple[Rounds | None, tuple | None]:
    """``run_fast``, and the round log's ``kernels.tally`` where it came out of the same pass
    (the common case: a memoryless policy with the standard rule; else None). ``keep=False``:
    the log is not wanted where the tallies come (then None in its place; ``summarize``
    needs no log for a trace with one drafter and a lossless policy)."""
    rp = replay or Replay(trace, seed)
    rp.check(policy)
    pricer = pricer or Pricer(latency, trace)
    probe = policy.probes_all_drafters
    if policy.memoryless:
        dec = decide(rp, policy)
        if dec.m is not None and dec.stop is not None and not (dec.m.relaxed or policy.lossy):
            tallies: tuple | None
            cols, gap, todo, stats, per_token_ms = walk_price(
                dec.stop, dec.cap, dec.m.first_reject, dec.m.first_missing, rp.eos,
                dec.drafter, trace.offsets, True, keep, probe, bool(trace.chain.any()),
                trace.prompt_tokens,
                pricer.small_table(), pricer.fresh_table(), pricer.cum, len(trace.drafters),
                trace.chain)
            if gap:
                raise freerun_error(trace, policy)
            if not todo.size:
                tallies = stats[:6], stats[6:], cols[10], per_token_ms
                if not keep:
                    return None, tallies
            elif not keep:  # some passes to price: the tallies need the log
                return run_fast_tallied(trace, policy, latency, seed, rp, pricer)
            draft, verify, wall = cols[7], cols[8], cols[9]
            if todo.size:
                draft, verify, wall = _price_rest(pricer, draft, verify, todo)
                tallies = None
            n = cols.shape[1]
            zero = np.zeros(n, dtype=np.int64)
            r = Rounds(prompt=cols[1], start=cols[2], drafter=cols[4], drafted=cols[5],
                       accepted=cols[6], probe=probes(trace, cols[2], probe),
                       deviating=zero, relaxed=zero, bias=np.zeros(n), draft_ns=draft,
                       verify_ns=verify, wall_ns=wall, length=cols[3])
            return r, tallies
        st = all_starts(rp, policy)
        if policy.lossy or (st.m is not None and st.m.relaxed):
            check_freerun(rp, policy, st.m, st.rows, st.drafted)
        zeros = np.zeros(st.rows.size, dtype=np.int64)
        r = Rounds(prompt=st.prompt, start=st.start, drafter=st.drafter, drafted=st.drafted,
                   accepted=st.accepted, probe=probes(trace, st.start, probe),
                   deviating=st.deviating, relaxed=st.relaxed, bias=st.bias, draft_ns=zeros,
                   verify_ns=zeros, wall_ns=zeros, length=st.length)
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
    return price_rounds(pricer, trace, r), None
