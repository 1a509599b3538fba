"""Seed 001, experiments 6-8: dynamic gamma, aggressive relaxation with a large gamma, and the
cross-task comparison over prompt categories (Spec-Bench's, when the trace has them).
"""

from __future__ import annotations

import math

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
    for cap in g.caps_upto(ctx.k_max):
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
    k_small = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    stop = rules.best_runs(ctx, g, ("stop_absolute",)).get("stop_absolute")
    theta = float(stop.policy.theta) if stop is not None else math.inf  # type: ignore[attr-defined]
    out = ["#### Exp 7: aggressive relaxation with a large gamma", "",
           f"Relaxed acceptance at the best fixed k ({k_small}) and at a large gamma k = "
           f"{ctx.k_max} (the largest cap the trace replays), the latter also with the best "
           f"entropy stop (stop_theta = {fmt(theta)} nats): speed bought per deviating token. "
           "Table: the best speedup within each deviation budget.", ""]
    fig, ax = figs.new()
    rows = []
    budgets = (0.01, 0.05, 0.10)
    for rule in ("sqrt", "all"):
        for k, st in ((k_small, math.inf), (ctx.k_max, math.inf), (ctx.k_max, theta)):
            if st == math.inf and k == ctx.k_max and k == k_small:
                continue
            runs = [r for r in (ctx.try_run("relaxed", k=k, tau=t, rule=rule, stop_theta=st)
                                for t in g.theta) if r is not None]
            if not runs:
                continue
            dev = np.array([1 - agreement(r) for r in runs])
            sp = np.array([r.speedup for r in runs])
            name = f"{rule}, k={k}" + (f", stop at {fmt(st)}" if math.isfinite(st) else "")
            ax.plot(100 * dev, sp, marker="o", ms=3, label=name)
            within = [fmt(float(sp[dev <= b].max())) if (dev <= b).any() else "-"
                      for b in budgets]
            top = int(np.argmax(sp))
            rows.append([name, *within, f"{fmt(sp[top])} at {dev[top]:.1%}"])
    if not rows:
        return out + na("aggressive relaxation", "; ".join(ctx.notes) or "no run")
    oracle_line(ax, ctx.oracle(ctx.k_max).speedup, ctx.k_max)
    ax.set(title=f"Relaxation: speed vs deviation ({ctx.label})",
           xlabel="deviating tokens (% of emitted)", ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=6)
    return out + [figs.save(fig, "001-aggressive", "aggressive relaxation", speed=True), "",
                  *table(["configuration", *(f"deviating <= {b:.0%}" for b in budgets),
                          "fastest"], rows)]


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
