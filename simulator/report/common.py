"""What every report section shares: one ``TraceCtx`` per trace, runs cached by configuration.

A ``TraceCtx`` holds the trace, its latency model, one ``Replay`` and one ``Pricer`` shared by
every policy run on it (the fast engine's per-trace matrices are built once), and the per-prompt
view of each run: a ``Run`` aggregates the fast engine's round log by prompt, so any subset of
prompts (a task, a bootstrap resample) gets its speedup as sum(baseline ns) / sum(time ns).

Units: times in integer nanoseconds, entropies in nats, lengths in tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engines import Pricer, Replay, Rounds, run_fast
from ..errors import EntrospecError
from ..latency import LatencyModel
from ..metrics import summarize
from ..policies import Policy, make
from ..trace import Trace

MAX_K = 16  # the largest fixed k / cap the report tries (bounded by the free-run horizon)


@dataclass(frozen=True)
class Run:
    """One policy on one trace: its metrics (simulator.metrics) and per-prompt sums (P,)."""

    policy: Policy
    metrics: dict[str, Any]
    rounds: Rounds
    time_ns: np.ndarray  # (P,) int64, prefill included
    tokens: np.ndarray  # (P,) emitted tokens
    calls: np.ndarray  # (P,) verifier calls (rounds)
    drafted: np.ndarray  # (P,)
    accepted: np.ndarray  # (P,)
    deviating: np.ndarray  # (P,) accepted tokens the standard rule would have rejected
    relaxed: np.ndarray  # (P,) tokens decided by a relaxed rule
    bias: np.ndarray  # (P,) sum of TV(pi, p)

    @property
    def speedup(self) -> float:
        return float(self.metrics["speedup"])

    @property
    def label(self) -> str:
        return label_of(self.policy)


def label_of(policy: Policy) -> str:
    """``name(p=v, ...)`` with the parameters that differ from the defaults."""
    cls = type(policy)
    parts = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(policy, f.name)
        if f.default is not dataclasses.MISSING and v == f.default and f.name != "k":
            continue
        parts.append(f"{f.name}={fmt(v)}")
    return f"{policy.name}({', '.join(parts)})"


def fmt(v: Any, digits: int = 4) -> str:
    """Deterministic short text of a number (or tuple of numbers)."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return "nan" if np.isnan(v) else f"{float(v):.{digits}g}"
    if isinstance(v, tuple):
        return "(" + ",".join(fmt(x, digits) for x in v) + ")"
    return str(v)


def per_prompt(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Sums of a round-indexed array per prompt (rounds are in prompt order)."""
    return np.add.reduceat(values, first) if values.size else np.zeros(first.size, values.dtype)


class TraceCtx:
    """A trace with its latency model, shared replay state and a cache of runs."""

    def __init__(self, trace: Trace, latency: LatencyModel, seed: int, label: str,
                 k_cap: int | None = None) -> None:
        self.trace = trace
        self.latency = latency
        self.seed = seed
        self.label = label
        self.replay = Replay(trace, seed)
        self.pricer = Pricer(latency, trace)
        self.baseline = self.pricer.baseline_ns(trace).astype(np.int64)  # (P,)
        self.tasks = task_labels(trace)  # (P,)
        self.task_names = tuple(sorted(set(self.tasks.tolist())))
        self._runs: dict[tuple, Run] = {}
        self._subs: dict[str, TraceCtx] = {}
        self.notes: list[str] = []  # runs that could not be made, with the reason
        # the largest cap the trace replays: a fixed k reads the most free-run signals of any
        # policy at that cap, so every policy capped at k_max replays too
        k = min(MAX_K, trace.k_max + 1, k_cap or MAX_K)
        while k > 1 and self.try_run("fixed", k=k) is None:
            k -= 1
        self.k_max = k

    def sub(self, key: str, make_trace: Any) -> TraceCtx:
        """A derived context (a truncation, one drafter), built once by ``make_trace()``."""
        if key not in self._subs:
            self._subs[key] = TraceCtx(make_trace(), self.latency, self.seed,
                                       f"{self.label} {key}", self.k_max)
        return self._subs[key]

    def drafter_ctx(self, d: int) -> TraceCtx:
        """The context of drafter d alone (this context itself when it is the only one)."""
        if len(self.trace.drafters) == 1:
            return self
        return self.sub(f"drafter {self.trace.drafters[d]}", lambda: single_drafter(self.trace, d))

    # ---- runs ----
    def run(self, name: str, **params: Any) -> Run:
        key = (name, tuple(sorted(params.items())))
        if key not in self._runs:
            policy = make(name, params)
            rounds = run_fast(self.trace, policy, self.latency, self.seed, replay=self.replay,
                              pricer=self.pricer)
            metrics = summarize(self.trace, policy, rounds, self.baseline, self.latency.source,
                                "fast", self.seed)
            first = np.flatnonzero(np.r_[True, rounds.prompt[1:] != rounds.prompt[:-1]])
            self._runs[key] = Run(
                policy, metrics, rounds,
                time_ns=per_prompt(rounds.wall_ns, first),
                tokens=per_prompt(rounds.emitted, first),
                calls=np.diff(np.r_[first, rounds.prompt.size]),
                drafted=per_prompt(rounds.drafted, first),
                accepted=per_prompt(rounds.accepted, first),
                deviating=per_prompt(rounds.deviating, first),
                relaxed=per_prompt(rounds.relaxed, first),
                bias=per_prompt(rounds.bias, first))
        return self._runs[key]

    def try_run(self, name: str, **params: Any) -> Run | None:
        """``run``, or None (with a note) when the trace cannot support this configuration."""
        try:
            return self.run(name, **params)
        except EntrospecError as exc:
            args = ", ".join(f"{k}={fmt(v)}" for k, v in params.items())
            note = f"{name}({args}): {exc}"
            if note not in self.notes:
                self.notes.append(note)
            return None

    def oracle(self, k: int) -> Run:
        """The oracle at cap k: the upper bound of every policy drafting at most k tokens."""
        return self.run("oracle", k=int(k))

    def oracle_for(self, run: Run) -> Run:
        return self.oracle(int(getattr(run.policy, "k", self.k_max)))

    def speedup(self, time_ns: np.ndarray, idx: np.ndarray | None = None) -> float:
        """sum(baseline) / sum(time) over prompts ``idx`` (all if None)."""
        if idx is None:
            return float(self.baseline.sum() / time_ns.sum())
        return float(self.baseline[idx].sum() / time_ns[idx].sum())

    def best(self, runs: list[Run | None]) -> Run | None:
        """The fastest run (first on ties, so the grid order decides)."""
        ok = [r for r in runs if r is not None]
        return max(ok, key=lambda r: r.speedup) if ok else None

    def fixed_runs(self) -> list[Run]:
        return [self.run("fixed", k=k) for k in range(1, self.k_max + 1)]

    def best_fixed(self) -> Run:
        best = self.best(list(self.fixed_runs()))
        assert best is not None
        return best

    def task_index(self, task: str) -> np.ndarray:
        return np.flatnonzero(self.tasks == task)

    @property
    def synthetic(self) -> bool:
        return bool(self.trace.meta.get("synthetic", False))


def task_labels(trace: Trace) -> np.ndarray:
    """(P,) the task of each prompt: its ``category``, else the trace's dataset."""
    cat = trace.prompt_columns.get("category")
    if cat is not None:
        return np.asarray([str(c) for c in cat], dtype=object)
    return np.full(trace.n_prompts, str(trace.meta.get("dataset", "unknown")), dtype=object)


# ---- trace slices ---------------------------------------------------------------------------

def _take(trace: Trace, idx: np.ndarray, offsets: np.ndarray, path: str) -> Trace:
    """The trace's rows ``idx`` (prompts re-cut by ``offsets``), every drafter."""
    return dataclasses.replace(
        trace, offsets=offsets, token_id=trace.token_id[idx],
        verifier_entropy=trace.verifier_entropy[idx], path=path,
        **trace.map_drafter_arrays(lambda v: v[:, idx]))


def truncate(trace: Trace, max_new: int) -> Trace:
    """The trace as if generation stopped after ``max_new`` tokens per prompt.

    A recorded budget (metadata max_new_tokens) becomes min(budget, ``max_new``): a prompt cut
    here is cut by the budget, one shorter still ended with EOS.
    """
    lengths = np.minimum(trace.lengths, max_new)
    pos = np.arange(trace.n_positions) - np.repeat(trace.offsets[:-1], trace.lengths)
    idx = np.flatnonzero(pos < max_new)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    out = _take(trace, idx, offsets, f"{trace.path}[:{max_new}]")
    if "max_new_tokens" in trace.meta:
        budget = min(int(trace.meta["max_new_tokens"]), int(max_new))
        out = dataclasses.replace(out, meta={**trace.meta, "max_new_tokens": budget})
    return out


def single_drafter(trace: Trace, d: int) -> Trace:
    """The trace with drafter ``d`` only (its name kept, so pricing is unchanged)."""
    return dataclasses.replace(trace.select_drafters([trace.drafters[d]]),
                               path=f"{trace.path}[{trace.drafters[d]}]")


# ---- parameter grids ------------------------------------------------------------------------

def entropy_grid(entropies: np.ndarray, n: int = 12, lo: float = 0.05, hi: float = 0.95
                 ) -> list[float]:
    """Thresholds (nats) at ``n`` evenly spaced quantiles of the entropies, 3 significant
    digits, strictly increasing: a grid that adapts to any trace."""
    q = np.quantile(np.asarray(entropies, dtype=np.float64), np.linspace(lo, hi, n))
    vals = sorted({float(f"{v:.3g}") for v in q})
    return vals


@dataclass(frozen=True)
class Grids:
    """Parameter grids shared by every trace of a report (so tasks can be pooled).

    theta: nats, quantiles 5%..95% of the first drafter's entropy over all traces (stop and
    relaxation thresholds). vtheta: nats, quantiles of the verifier's entropy (router
    thresholds). budget: nats, cumulative-entropy budgets. rho, beta: dimensionless ratios.
    caps: draft caps k for the entropy rules (each trace clips them to what it replays).
    """

    theta: tuple[float, ...]
    vtheta: tuple[float, ...]
    budget: tuple[float, ...]
    rho: tuple[float, ...] = (1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
    beta: tuple[float, ...] = (0.75, 1.0, 1.5, 2.0)
    caps: tuple[int, ...] = (4, 8, 16)

    @classmethod
    def of(cls, traces: list[Trace]) -> Grids:
        ent = np.concatenate([t.signals["entropy"][0] for t in traces])
        ver = np.concatenate([t.verifier_entropy for t in traces])
        theta = entropy_grid(ent)
        mean = float(np.mean(ent))
        budget = sorted({float(f"{mean * m:.3g}") for m in (0.5, 1, 1.5, 2, 3, 4, 6, 8)})
        return cls(tuple(theta), tuple(entropy_grid(ver, 9, 0.1, 0.9)), tuple(budget))

    def caps_upto(self, k_max: int) -> list[int]:
        """The caps clipped to k_max (the largest cap a trace replays), increasing."""
        return sorted({min(c, k_max) for c in self.caps})
