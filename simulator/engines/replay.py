"""What every engine shares: acceptance draws, a round's signals, and pricing in nanoseconds.

Acceptance: position t of a prompt is tested at most once (in the round where it is the first
rejection or an accepted draft), so one uniform u[t] per position decides it: a draft tested
under rule R is accepted iff u[t] < accept_R[t]. Under greedy, accept_prob is 0 or 1 and the
draw is irrelevant; under sampling it is a Monte-Carlo replay along the recorded trajectory
with common random numbers across policies (same seed, same draws).

Signals at draft step j of a round starting at t: teacher-forced (the trace row t+j) while every
earlier draft of the round was accepted; after the first rejection at step i, the drafter is on
its own continuation, and step j reads the free-run entry j-i-1 recorded at row t+i.

Chain drafters (``Trace.chain``: feature drafters, which draft on their own hidden states past
the verified prefix, so a draft depends on where its round began): step 0 of a round at t reads
row t as above; step j >= 1 reads the continuation recorded from t itself, freerun[d, t, j-1],
and is accepted iff chain_accept[d, t, j-1] (greedy: the draft is the verifier's token), before
and after any rejection alike. When a run's trace has a chain drafter, the first round of every
prompt is the verifier's prefill alone (a feature drafter has no hidden states to read before
it): drafter 0, nothing drafted or probed, the policy neither asked nor told. A chain drafter
keeps in its cache only the positions it computed on the verifier's states, so the next round
feeds it the a + 1 tokens since again (``price_round``).

Budget and EOS: prompt p may emit up to B_p tokens (``Trace.budget``: the recorded
max_new_tokens, else its length L_p). A round at position t sees ``remaining = B_p - t`` and
drafts at most ``min(plan.cap, B_p - t - 1)`` tokens, as the real decoder does. A prompt with
L_p < B_p ended with EOS at its last row; a round that reaches the step drafting at that row
(e = L_p - 1 - t) with every step 0..e accepted has drafted the EOS and stops there: drafted and
accepted e + 1, emitted L_p - t (no bonus token after EOS). A round with a rejection at or
before e goes on along the free-run as any other. Known approximation: the trace does not say
whether the drafter drafts EOS inside a free-run or as a rejected draft; the real decoder stops
drafting there, the replay does not, so only wasted (rejected) draft steps can differ; accepted
and emitted tokens are exact under greedy decoding.

Time: every forward pass is priced by the latency model and rounded to integer nanoseconds, so
sums are exact and every engine's totals agree to the nanosecond whatever the summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..errors import TraceError
from ..latency import LatencyModel
from ..policies import RULE_INDEX, Context, Outcome, Policy
from ..policies.base import VERIFIER_DECIDES
from ..trace import RULE_NAMES, Trace

ROUND_FIELDS = ("prompt", "start", "drafter", "drafted", "accepted", "probe", "deviating",
                "relaxed", "bias", "draft_ns", "verify_ns", "wall_ns")


@dataclass
class Rounds:
    """The log of a run: one entry per round, as parallel arrays (see ROUND_FIELDS), plus
    ``length``: the length L_p of the round's prompt's output (what ``emitted`` needs)."""

    prompt: np.ndarray
    start: np.ndarray
    drafter: np.ndarray
    drafted: np.ndarray
    accepted: np.ndarray
    probe: np.ndarray
    deviating: np.ndarray
    relaxed: np.ndarray
    bias: np.ndarray
    draft_ns: np.ndarray
    verify_ns: np.ndarray
    wall_ns: np.ndarray
    length: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[tuple], lengths: np.ndarray) -> Rounds:
        """Rounds from tuples in ROUND_FIELDS order; ``lengths``: (P,) the trace's lengths."""
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(ROUND_FIELDS)
        types = (np.int64,) * 6 + (np.int64, np.int64, np.float64) + (np.int64,) * 3
        arrays = [np.asarray(c, dtype=t) for c, t in zip(cols, types, strict=True)]
        return cls(*arrays, length=np.asarray(lengths, dtype=np.int64)[arrays[0]])  # type: ignore[misc]

    @property
    def emitted(self) -> np.ndarray:
        """Tokens each round emits: the accepted drafts plus one, except that nothing follows
        the prompt's last token (an EOS drafted and accepted: no bonus token)."""
        return np.minimum(self.accepted + 1, self.length - self.start)


@dataclass
class Replay:
    """Arrays prepared once per (trace, seed) and shared by all policies run on it."""

    trace: Trace
    seed: int = 0
    u: np.ndarray = field(init=False)
    accept: np.ndarray = field(init=False)  # (R, D, N) acceptance probability per rule
    bias: np.ndarray = field(init=False)  # (R, D, N) TV(pi, p) per rule
    prompt_of: np.ndarray = field(init=False)  # (N,) prompt index of each row
    last_row: np.ndarray = field(init=False)  # (N,) the last row of each row's prompt
    eos: np.ndarray = field(init=False)  # (N,) last_row - row: the step drafting at last_row
    cache: dict = field(init=False, default_factory=dict)  # the fast engine's shared matrices

    def __post_init__(self) -> None:
        tr = self.trace
        self.u = np.random.default_rng(self.seed).random(tr.n_positions)
        shape = (len(RULE_NAMES), len(tr.drafters), tr.n_positions)
        self.accept = np.full(shape, np.nan)
        self.bias = np.full(shape, np.nan)
        for rule, i in RULE_INDEX.items():
            if rule in tr.accept:
                self.accept[i], self.bias[i] = tr.accept[rule], tr.bias[rule]
        self.prompt_of = np.repeat(np.arange(tr.n_prompts), tr.lengths)
        self.last_row = np.repeat(tr.offsets[1:] - 1, tr.lengths)
        self.eos = self.last_row - np.arange(tr.n_positions)

    def check(self, policy: Policy) -> None:
        """Raise TraceError if the trace lacks what ``policy`` reads."""
        self.trace.require(f"policy {policy.name}", policy.signals() + policy.accept_rules())
        self.check_chain(policy)
        need, have = policy.drafters_needed(), len(self.trace.drafters)
        if have < need:
            raise TraceError(f"{self.trace.path}: policy {policy.name} with these parameters "
                             f"needs {need} drafters; the trace has {have}")

    def signal_names(self, policy: Policy) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("entropy", *policy.signals())))

    def accepted(self, rules: np.ndarray, d: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return self.u[rows] < self.accept[rules, d, rows]

    def chain_ok(self, d: int, row: int, steps: int) -> np.ndarray:
        """(steps,) bool: a chain drafter's drafts 0..steps-1 of a round at ``row`` accepted
        (standard rule; rows past the trace's end are never reached by the caller)."""
        ca = self.trace.chain_accept
        assert ca is not None
        ok = np.empty(steps, dtype=bool)
        if steps:
            ok[0] = self.u[row] < self.accept[0, d, row]
            j = np.arange(1, steps)
            kk = np.minimum(j - 1, self.trace.k_max - 1)
            rr = np.minimum(row + j, self.trace.n_positions - 1)
            ok[1:] = (self.u[rr] < ca[d, row, kk]) & (j - 1 < self.trace.k_max)
        return ok

    def run_length(self, d: int, row: int, end: int) -> int:
        """Consecutive drafts of drafter d accepted under the standard rule from ``row``."""
        if self.trace.chain[d]:
            ok = self.chain_ok(d, row, end - row)
        else:
            ok = self.u[row:end] < self.accept[0, d, row:end]
        return int(np.argmin(ok)) if not ok.all() else end - row

    def check_chain(self, policy: Policy) -> None:
        """Chain drafters replay the standard rule only (their continuation's acceptance under
        other rules is not recorded)."""
        tr = self.trace
        if tr.chain.any() and set(policy.accept_rules()) - {"standard", "none"}:
            chained = [n for n, c in zip(tr.drafters, tr.chain, strict=True) if c]
            raise TraceError(f"{tr.path}: policy {policy.name} uses acceptance rules "
                             f"{list(policy.accept_rules())}; the trace's chain drafters "
                             f"{chained} record the standard rule only")

    def context(self, policy: Policy, p: int, t: int) -> Context:
        """The Context of a round of prompt p starting at position t (scalars)."""
        tr = self.trace
        lo, hi = tr.offsets[p], tr.offsets[p + 1]
        row = lo + t
        prev = tr.verifier_entropy[row - 1] if t > 0 else np.nan
        first = tr.signals["entropy"][:, row] if policy.probes_all_drafters else None
        run = self.run_length(0, row, hi - 1) if policy.oracle else None
        return Context(position=t, remaining=int(tr.budget[p]) - t, prev_verifier_entropy=prev,
                       first_entropy=first, run_length=run)


def freerun_error(trace: Trace, policy: Policy) -> TraceError:
    return TraceError(f"{trace.path}: policy {policy.name} drafts past the trace's free-run "
                      f"horizon (k_max={trace.k_max}); lower its cap to <= {trace.k_max + 1}")


def play_round(rp: Replay, policy: Policy, state: object, p: int, t: int
               ) -> tuple[tuple, object]:
    """Decide one round of prompt p at position t, the whole round's steps at once.

    Returns ((drafter, drafted, accepted, probe, deviating, relaxed, bias), new state).
    """
    tr = rp.trace
    lo, hi = int(tr.offsets[p]), int(tr.offsets[p + 1])
    row = lo + t
    if t == 0 and tr.chain.any():  # the verifier's prefill alone (module docstring)
        return (0, 0, 0, False, 0, 0, 0.0), state
    plan = policy.plan(state, rp.context(policy, p, t))
    d = int(plan.drafter)
    cap = min(int(plan.cap), int(tr.budget[p]) - t - 1)
    probe = policy.probes_all_drafters
    names = rp.signal_names(policy)
    if cap <= 0:
        out = (d, 0, 0, probe, 0, 0, 0.0)
        return out, policy.update(state, Outcome(d, 0, 0, {s: np.zeros(0) for s in names}))
    eos = hi - 1 - row  # the step drafting at the prompt's last row
    steps = np.arange(cap)
    rows = np.minimum(row + steps, hi - 1)  # never the next prompt's rows
    sig = {s: tr.signals[s][d, rows].copy() for s in names}
    chain = bool(tr.chain[d])
    if chain:  # steps 1.. along the continuation recorded from this row
        for s in names:
            fr = tr.freerun.get(s)
            vals = np.full(cap - 1, np.nan)
            inside = np.arange(cap - 1) < tr.k_max
            if fr is not None:
                vals[inside] = fr[d, row, np.arange(cap - 1)[inside]]
            sig[s][1:] = vals
    rules = np.asarray(policy.rules(state, sig), dtype=np.int64)
    ok = (rp.chain_ok(d, row, cap) if chain else rp.accepted(rules, np.full(cap, d), rows)) \
        & (steps <= eos)
    i = int(np.argmin(ok)) if not ok.all() else cap  # first rejected step
    if i > eos:  # every step up to the last row accepted: the EOS is drafted, drafting stops
        cap = eos + 1
        rows, rules = rows[:cap], rules[:cap]
        sig = {s: v[:cap] for s, v in sig.items()}
    if i < cap - 1 and not chain:  # steps after the first rejection: the free-run at row+i
        j = np.arange(i + 1, cap) - i - 1
        inside = j < tr.k_max
        for s in names:
            fr = tr.freerun.get(s)
            vals = np.full(j.size, np.nan)
            if fr is not None:
                vals[inside] = fr[d, row + i, j[inside]]
            sig[s][i + 1:] = vals
    stop = np.asarray(policy.stop(state, sig), dtype=bool)
    n = int(np.argmax(stop)) + 1 if stop.any() else cap
    if any(np.isnan(sig[s][:n]).any() for s in names):
        raise freerun_error(tr, policy)
    a = min(n, i)
    decided = min(n, i + 1)  # positions whose token this round's rules decided
    relaxed = ~np.isin(rules[:decided], VERIFIER_DECIDES)
    std_ok = rp.u[rows[:a]] < rp.accept[0, d, rows[:a]]
    deviating = int(np.sum(relaxed[:a] & ~std_ok))
    bias = float(np.sum(rp.bias[rules[:decided], d, rows[:decided]]))
    out = (d, n, a, probe, deviating, int(relaxed.sum()), bias)
    return out, policy.update(state, Outcome(d, n, a, {s: v[:n] for s, v in sig.items()}))


class Pricer:
    """Integer-nanosecond prices of forward passes for one (latency model, trace)."""

    SMALL = 24  # passes over at most this many new tokens are looked up, not computed

    def __init__(self, latency: LatencyModel, trace: Trace) -> None:
        self.latency = latency
        self.models = ("verifier", *trace.drafters)
        self.max_context = int(trace.prompt_tokens.max() + trace.budget.max() + 2)
        self.small: np.ndarray | None = None  # (models, SMALL+1, contexts) lazily
        self.fresh: np.ndarray | None = None  # (models, new tokens) at context 0, lazily
        self._baseline: np.ndarray | None = None
        ctx = np.arange(self.max_context + 1)
        # one-token steps at every context, and their prefix sums, for O(1) range sums
        self.step = np.stack([self.ns(m, np.ones_like(ctx), ctx) for m in range(len(self.models))])
        self.cum = np.concatenate([np.zeros((len(self.models), 1), np.int64),
                                   np.cumsum(self.step, axis=1)], axis=1)

    def small_table(self) -> np.ndarray:
        """(models, SMALL + 1, max_context + 1): ``ns`` of every pass over at most SMALL new
        tokens (built on first use; the same elementwise prices as ``ns``)."""
        if self.small is None:
            ctx = np.arange(self.max_context + 1)
            self.small = np.stack([np.stack([self.ns(m, np.full_like(ctx, k), ctx)
                                             for k in range(self.SMALL + 1)])
                                   for m in range(len(self.models))])
        return self.small

    def fresh_table(self) -> np.ndarray:
        """(models, max_context + 1): ``ns`` of every pass into an empty KV cache (context 0:
        a prompt's prefill), by number of new tokens."""
        if self.fresh is None:
            new = np.arange(self.max_context + 1)
            self.fresh = np.stack([self.ns(m, new, np.zeros_like(new))
                                   for m in range(len(self.models))])
        return self.fresh

    def one(self, model: int, new: int, context: int) -> int:
        """``ns`` of a single pass, from a lookup table for the common small ``new``."""
        if new <= self.SMALL and context <= self.max_context:
            small = self.small if self.small is not None else self.small_table()
            return int(small[model, new, context])
        return int(self.ns(model, np.int64(new), np.int64(context)))

    def ns(self, model: int, new: npt.ArrayLike, context: npt.ArrayLike) -> np.ndarray:
        """Nanoseconds of a pass of model index ``model`` (0 = verifier, 1+d = drafter d)."""
        sec = self.latency.seconds(self.models[model], np.asarray(new), np.asarray(context))
        return np.rint(np.asarray(sec, dtype=np.float64) * 1e9).astype(np.int64)

    def steps_ns(self, model: int, c0: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Sum of one-token passes at contexts c0, c0+1, ..., c0+count-1."""
        return self.cum[model, c0 + count] - self.cum[model, c0]

    def baseline_ns(self, trace: Trace) -> np.ndarray:
        """Per prompt: verifier-only decoding (prefill emits token 0, then one call a token)."""
        if self._baseline is None:
            ptok, length = trace.prompt_tokens, trace.lengths
            prefill = self.ns(0, ptok, np.zeros_like(ptok))
            self._baseline = prefill + self.steps_ns(0, ptok, length - 1)
        return self._baseline


def price_round(pricer: Pricer, seen: list[int], length: int, d: int, n: int, a: int,
                probe: bool, chain: np.ndarray | None = None) -> tuple[int, int]:
    """(draft ns, verify ns) of one round; updates ``seen`` (tokens in each model's KV cache).

    ``seen[0]`` is the verifier's, ``seen[1+x]`` drafter x's. ``length`` is the sequence
    length (prompt + emitted) when the round starts. A model fed for the first time in a while
    first catches up on every token it has not seen, in that same call. A chain drafter
    (``chain[x]``) keeps only the first ``length`` tokens: the rest read its own states.
    """
    draft = 0
    for x in range(len(seen) - 1):
        steps = max(n, 1) if (probe and x == d) else (1 if probe else (n if x == d else 0))
        if steps == 0:
            continue
        m = 1 + x
        draft += pricer.one(m, length - seen[m], seen[m])
        draft += int(pricer.cum[m, length + steps - 1] - pricer.cum[m, length])
        seen[m] = length + min(steps - 1, a if x == d else 0)
        if chain is not None and chain[x]:
            seen[m] = length
    verify = pricer.one(0, length - seen[0] + n, seen[0])
    seen[0] = length + a
    return draft, verify
