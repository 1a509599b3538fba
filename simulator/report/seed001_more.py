"""Seed 001, experiments 6-8: dynamic gamma, aggressive relaxation with a large gamma, and the
cross-task comparison over prompt categories (Spec-Bench's, when the trace has them).
"""

from __future__ import annotations

import numpy as np

from . import rules
from .common import Grids, Run, TraceCtx, fmt
from .figures import ORACLE_STYLE, Figures, na, oracle_line, table
from .seed001 import agreement, relaxed_runs

TITLE = "Seed 001: dynamic gamma, aggressive relaxation, cross-task comparison"


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    out = [f"### {TITLE}", ""]
    out += dynamic_gamma(ctx, figs, grids)
    out += aggressive(ctx, figs, grids)
    out += cross_task(ctx, figs, grids)
    return out


def dynamic_gamma(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    fig, ax = figs.new()
    rows = []
    fixed = ctx.best_fixed()
    for cap in (c for c in g.caps if c <= ctx.k_max):
        runs = [ctx.run("dynamic_gamma", tau=t, gamma_max=cap) for t in g.theta]
        line = ax.plot(g.theta, [r.speedup for r in runs], marker="o", ms=3,
                       label=f"gamma_max={cap}")[0]
        ax.axhline(ctx.oracle(cap).speedup, color=line.get_color(), linestyle="--",
                   label=f"oracle (k={cap})")
        best = ctx.best(list(runs))
        assert best is not None
        rows.append([cap, fmt(best.policy.tau), fmt(best.speedup),  # type: ignore[attr-defined]
                     f"{best.speedup / fixed.speedup - 1:+.1%}",
                     fmt(float(best.rounds.drafted.mean())), fmt(ctx.oracle(cap).speedup)])
    ax.axhline(fixed.speedup, color="tab:red", linestyle=":", label=f"best {fixed.label}")
    ax.set_xscale("log")
    ax.set(title=f"Dynamic gamma ({ctx.label})", xlabel="tau (nats, log scale)",
           ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=6)
    return ["#### Exp 6: dynamic gamma", "",
            "Draft while the drafter's entropy is <= tau (gamma_min = 1), at most gamma_max.",
            "", figs.save(fig, "001-dynamic-gamma", "dynamic gamma", speed=True), "",
            *table(["gamma_max", "best tau (nats)", "speedup", "vs best fixed k",
                    "mean draft length", "oracle"], rows)]


def aggressive(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    out = ["#### Exp 7: aggressive relaxation with a large gamma", "",
           f"Relaxed acceptance with k = {ctx.k_max} (the largest cap the trace replays) vs the "
           "best fixed k's cap: speed bought per deviating token.", ""]
    k_small = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    fig, ax = figs.new()
    rows = []
    for rule in ("sqrt", "all"):
        for k in sorted({k_small, ctx.k_max}):
            runs = relaxed_runs(ctx, g, rule, k)
            if not runs:
                continue
            dev = [100 * (1 - agreement(r)) for r in runs]
            ax.plot(dev, [r.speedup for r in runs], marker="o", ms=3, label=f"{rule}, k={k}")
            for r, d in zip(runs, dev, strict=True):
                rows.append([rule, k, fmt(r.policy.tau), fmt(r.speedup), f"{d:.2f}%",  # type: ignore[attr-defined]
                             fmt(r.metrics["acceptance_rate"])])
    if not rows:
        return out + na("aggressive relaxation", "; ".join(ctx.notes) or "no run")
    oracle_line(ax, ctx.oracle(ctx.k_max).speedup, ctx.k_max)
    ax.set(title=f"Relaxation: speed vs deviation ({ctx.label})",
           xlabel="deviating tokens (% of emitted)", ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=7)
    return out + [figs.save(fig, "001-aggressive", "aggressive relaxation", speed=True), "",
                  *table(["rule", "k", "tau (nats)", "speedup", "deviating", "acceptance"],
                         rows)]


def cross_task(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    out = ["#### Exp 8: cross-task comparison", ""]
    if len(ctx.task_names) < 2:
        return out + na("cross-task comparison", f"the trace has one task "
                        f"({ctx.task_names[0]!r}); it needs a `category` column with >= 2 "
                        "values, as Spec-Bench traces have")
    entries: list[tuple[str, Run]] = [("best fixed k", ctx.best_fixed())]
    best = rules.best_runs(ctx, g, ("stop_absolute", "dynamic_gamma"))
    entries += list(best.items())
    relaxed = ctx.best(list(relaxed_runs(ctx, g, "sqrt", int(entries[0][1].policy.k))))  # type: ignore[attr-defined]
    if relaxed is not None:
        entries.append(("relaxed sqrt (lossy)", relaxed))
    orc = ctx.oracle(ctx.k_max)
    fig, ax = figs.new(size=(8.0, 5.0), bottom=1.0)
    x = np.arange(len(ctx.task_names))
    width = 0.8 / len(entries)
    rows = []
    m0 = ctx.trace.match[0]
    h0 = ctx.trace.signals["entropy"][0]
    prompt_of = ctx.replay.prompt_of
    for i, (name, r) in enumerate(entries):
        vals = [ctx.speedup(r.time_ns, ctx.task_index(t)) for t in ctx.task_names]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, vals, width, label=f"{name}: {r.label}")
    o_vals = [ctx.speedup(orc.time_ns, ctx.task_index(t)) for t in ctx.task_names]
    ax.scatter(x, o_vals, marker="_", s=400, label=f"oracle (k={ctx.k_max})",
               color=ORACLE_STYLE["color"])
    for t in ctx.task_names:
        idx = ctx.task_index(t)
        rows_t = np.isin(prompt_of, idx)
        rows.append([t, idx.size, int(ctx.trace.lengths[idx].sum()),
                     fmt(float(m0[rows_t].mean())), fmt(float(h0[rows_t].mean())),
                     *(fmt(ctx.speedup(r.time_ns, idx)) for _, r in entries),
                     fmt(ctx.speedup(orc.time_ns, idx))])
    ax.set_xticks(x, list(ctx.task_names), rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1.35 * max(o_vals))  # headroom for the legend
    ax.set(title=f"Speedup per task, one configuration for all ({ctx.label})", xlabel="task",
           ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    return out + ["Each policy at its best configuration on the whole trace, then measured per "
                  "task (prompts' `category`).", "",
                  figs.save(fig, "001-cross-task", "cross-task comparison", speed=True), "",
                  *table(["task", "prompts", "tokens", "match rate", "mean H (nats)",
                          *(n for n, _ in entries), "oracle"], rows)]
