"""Seed 000's hypotheses, tested over tasks pooled from every trace of the report.

A task is a prompt category (the trace's ``category`` column, e.g. a Spec-Bench category) or,
without one, the trace's dataset. Every task's statistics come from per-prompt times, and the
bootstrap resamples prompts within each task (re-selecting the best configurations in every
replicate), so each verdict carries a 95% interval:

  H1  the best seed-000 entropy stop beats the best fixed k by > 10% on >= 50% of tasks;
  H2  the best absolute threshold theta depends on task complexity (mean verifier entropy);
  H3  a relative threshold (stop_relative, rho) transfers across tasks better than an absolute
      one (stop_absolute, theta): lower regret when one configuration serves every task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from . import rules
from .common import Grids, TraceCtx, fmt
from .figures import Figures, na, table
from .stats import (
    BOOT,
    Verdict,
    ci,
    ratio_boot,
    resample_counts,
    rng_for,
    verdict_h1,
    verdict_h2,
    verdict_h3,
)

TITLE = "Seed 000 hypotheses H1-H3 (tasks pooled over traces)"
STATEMENTS = {
    "H1": "entropy stopping beats the best fixed k by > 10% on >= 50% of tasks",
    "H2": "the best entropy threshold depends on task complexity",
    "H3": "a relative threshold is more robust across tasks than an absolute one",
}


@dataclass
class TaskStats:
    """One task: point values and (B,) / (B, C) bootstrap replicates."""

    name: str
    prompts: int
    tokens: int
    gain: float
    gain_b: np.ndarray
    oracle_gain: float
    best_rule: str
    theta: float
    theta_b: np.ndarray
    complexity: float
    complexity_b: np.ndarray
    s_abs: np.ndarray  # (C_abs,) speedups of the absolute grid
    s_abs_b: np.ndarray  # (B, C_abs)
    s_rel: np.ndarray
    s_rel_b: np.ndarray


def _speedups(counts: np.ndarray, base: np.ndarray, times: np.ndarray) -> np.ndarray:
    return ratio_boot(counts, base, times)  # (B, C)


def task_stats(ctx: TraceCtx, g: Grids, trace_no: int, multi: bool, caps: list[int]
               ) -> list[TaskStats]:
    """Per task of one trace. H1 uses the trace's own grids; H2 and H3 the ``caps`` every
    trace replays, so that one configuration can serve every task."""
    fixed = np.stack([r.time_ns for r in ctx.fixed_runs()])
    entropy_runs = [r for f in rules.SEED000 for r in rules.runs(ctx, g, f)]
    ent = np.stack([r.time_ns for r in entropy_runs])
    cap = max(caps)
    abs_runs = [ctx.run("stop_absolute", theta=t, k=k) for k in caps for t in g.theta]
    abs_t = np.stack([r.time_ns for r in abs_runs])
    at_cap = np.array([r.policy.k == cap for r in abs_runs])  # type: ignore[attr-defined]
    thetas = np.array([r.policy.theta for r in abs_runs])  # type: ignore[attr-defined]
    rel_t = np.stack([ctx.run("stop_relative", rho=rho, k=k).time_ns for k in caps
                      for rho in g.rho])
    orc = ctx.oracle(ctx.k_max).time_ns
    ent_sum = np.add.reduceat(ctx.trace.verifier_entropy, ctx.trace.offsets[:-1])
    out = []
    for j, task in enumerate(ctx.task_names):
        idx = ctx.task_index(task)
        counts = np.vstack([np.ones((1, idx.size), np.int64),
                            resample_counts(rng_for(ctx.seed, 100 + trace_no, j), idx.size)])
        base = ctx.baseline[idx]
        s_fix = _speedups(counts, base, fixed[:, idx]).max(axis=1)
        s_ent = _speedups(counts, base, ent[:, idx])
        gain = s_ent.max(axis=1) / s_fix - 1
        s_abs = _speedups(counts, base, abs_t[:, idx])
        theta = thetas[at_cap][np.argmax(s_abs[:, at_cap], axis=1)]
        cplx = (counts @ ent_sum[idx]) / (counts @ ctx.trace.lengths[idx])
        s_rel = _speedups(counts, base, rel_t[:, idx])
        s_orc = ctx.speedup(orc, idx)
        name = f"{task} ({ctx.label})" if multi else task
        out.append(TaskStats(
            name, int(idx.size), int(ctx.trace.lengths[idx].sum()), float(gain[0]), gain[1:],
            s_orc / float(s_fix[0]) - 1, entropy_runs[int(np.argmax(s_ent[0]))].label,
            float(theta[0]), theta[1:], float(cplx[0]), cplx[1:], s_abs[0], s_abs[1:],
            s_rel[0], s_rel[1:]))
    return out


def regrets(s: np.ndarray) -> np.ndarray:
    """(..., T, C) speedups -> (..., T) regret of the configuration best on the task mean."""
    pick = np.argmax(s.mean(axis=-2), axis=-1)  # (...,)
    chosen = np.take_along_axis(s, pick[..., None, None].repeat(s.shape[-2], -2), -1)[..., 0]
    return 1.0 - chosen / s.max(axis=-1)


def verdicts(tasks: list[TaskStats], theta_grid: np.ndarray | None = None) -> list[Verdict]:
    """H1-H3 over ``tasks``; ``theta_grid``: the absolute thresholds searched (nats)."""
    if not tasks:
        return [verdict_h1(np.zeros(0), np.zeros((BOOT, 0)))]
    h1 = verdict_h1(np.array([t.gain for t in tasks]), np.stack([t.gain_b for t in tasks], 1))
    h2 = verdict_h2(np.array([t.theta for t in tasks]), np.array([t.complexity for t in tasks]),
                    np.stack([t.theta_b for t in tasks], 1),
                    np.stack([t.complexity_b for t in tasks], 1), grid=theta_grid)
    r_abs = regrets(np.stack([t.s_abs for t in tasks]))
    r_rel = regrets(np.stack([t.s_rel for t in tasks]))
    b_abs = regrets(np.stack([t.s_abs_b for t in tasks], 1))
    b_rel = regrets(np.stack([t.s_rel_b for t in tasks], 1))
    return [h1, h2, verdict_h3(r_abs, r_rel, b_abs, b_rel)]


def section(ctxs: list[TraceCtx], figs: Figures, g: Grids) -> list[str]:
    multi = len(ctxs) > 1
    caps = g.caps_upto(min(c.k_max for c in ctxs))
    tasks = [t for i, c in enumerate(ctxs) for t in task_stats(c, g, i, multi, caps)]
    vs = verdicts(tasks, np.asarray(g.theta, dtype=float))
    out = [f"## {TITLE}", "",
           "Tasks: each trace's `category` values, or its dataset when it has none. Best "
           "configurations are chosen per task on the same prompts (in-sample) and re-chosen "
           f"in each of {BOOT} bootstrap replicates (prompts resampled within each task); "
           "intervals are 95% percentile intervals.", ""]
    rows = [[v.name, STATEMENTS[v.name], v.statistic, fmt(v.value),
             f"[{fmt(v.lo)}, {fmt(v.hi)}]", f"**{v.status}**", v.reason] for v in vs]
    out += table(["", "hypothesis", "statistic", "value", "95% CI", "verdict", "because"],
                 rows, "lllrrll")
    for v in vs:
        if v.status == "not available":
            out += na(v.name, v.reason)
    r_abs = r_rel = None
    if vs[2].status != "not available":
        r_abs = regrets(np.stack([t.s_abs for t in tasks]))
        r_rel = regrets(np.stack([t.s_rel for t in tasks]))
    trows = []
    for i, t in enumerate(tasks):
        lo, hi = ci(t.gain_b)
        trows.append([t.name, t.prompts, t.tokens, fmt(t.complexity), t.best_rule,
                      f"{t.gain:+.1%}", f"[{lo:+.1%}, {hi:+.1%}]", f"{t.oracle_gain:+.1%}",
                      fmt(t.theta), fmt(r_abs[i]) if r_abs is not None else "",
                      fmt(r_rel[i]) if r_rel is not None else ""])
    out += ["### Per task", ""]
    out += table(["task", "prompts", "tokens", "complexity (nats)", "best entropy rule",
                  "gain vs best fixed k", "95% CI", "oracle gain", "best theta (nats)",
                  "regret abs", "regret rel"], trows, "lrrrlrrrrrr")
    cap = max(caps)
    out += ["Complexity = the verifier's mean entropy per token on the task (nats). Best theta "
            f"= the task's best stop_absolute threshold at the largest cap (k={cap}). Regret "
            "= 1 - speedup at the one configuration best on the mean over tasks / the task's "
            "own best (grids theta x k and rho x k).", ""]
    out += [figs.save(_gain_figure(figs, tasks), "h1-gain", "H1 gains per task", speed=True), ""]
    if vs[1].status != "not available":
        out += [figs.save(_theta_figure(figs, tasks), "h2-theta", "H2 best theta vs "
                          "complexity"), ""]
    if r_abs is not None and r_rel is not None:
        out += [figs.save(_regret_figure(figs, tasks, r_abs, r_rel), "h3-regret",
                          "H3 regret per task"), ""]
    return out


def _gain_figure(figs: Figures, tasks: list[TaskStats]) -> Figure:
    fig, ax = figs.new(size=(6.4, 4.8), bottom=1.0)
    x = np.arange(len(tasks))
    g = np.array([t.gain for t in tasks]) * 100
    lo, hi = (np.array(v) * 100 for v in zip(*(ci(t.gain_b) for t in tasks), strict=True))
    ax.bar(x, g, color="tab:blue", label="best entropy stop (95% CI)")
    ax.errorbar(x, g, yerr=[g - lo, hi - g], fmt="none", color="black", capsize=3)
    ax.scatter(x, [t.oracle_gain * 100 for t in tasks], marker="_", s=300, color="black",
               label="oracle bound (k max)")
    ax.axhline(10, color="tab:red", linestyle=":", label="H1 margin (10%)")
    ax.set_xticks(x, [t.name for t in tasks], rotation=30, ha="right", fontsize=7)
    ax.set(title="H1: gain over the best fixed k per task", xlabel="task",
           ylabel="speedup gain vs best fixed k (%)")
    ax.legend(fontsize=7)
    return fig


def _theta_figure(figs: Figures, tasks: list[TaskStats]) -> Figure:
    fig, ax = figs.new()
    ax.scatter([t.complexity for t in tasks], [t.theta for t in tasks], label="task")
    for t in tasks:
        ax.annotate(t.name, (t.complexity, t.theta), fontsize=6)
    ax.set(title="H2: best absolute threshold vs task complexity",
           xlabel="task complexity: mean verifier entropy (nats)",
           ylabel="best theta (nats)")
    ax.legend(fontsize=7)
    return fig


def _regret_figure(figs: Figures, tasks: list[TaskStats], r_abs: np.ndarray,
                   r_rel: np.ndarray) -> Figure:
    fig, ax = figs.new(size=(6.4, 4.8), bottom=1.0)
    x = np.arange(len(tasks))
    ax.bar(x - 0.2, r_abs * 100, 0.4, label="absolute (theta)")
    ax.bar(x + 0.2, r_rel * 100, 0.4, label="relative (rho)")
    ax.set_xticks(x, [t.name for t in tasks], rotation=30, ha="right", fontsize=7)
    ax.set(title="H3: regret of one configuration for all tasks", xlabel="task",
           ylabel="speedup lost vs the task's best (%)")
    ax.legend(fontsize=7)
    return fig
