"""Seed 002: three threshold strategies for entropy-driven draft length. Static (a fixed
threshold, = stop_absolute), moving average (beta x an EMA of past entropies; stateful) and
cumulative (a per-round entropy budget), each swept and compared with the best fixed k.
"""

from __future__ import annotations

from . import rules
from .common import Grids, Run, TraceCtx, fmt
from .figures import Figures, oracle_line, table

TITLE = "Seed 002: static, moving-average and cumulative thresholds"
STRATEGIES = (("static", "stop_absolute", "theta", "threshold theta (nats)"),
              ("moving average", "draft_moving_average", "beta", "beta (x moving average)"),
              ("cumulative", "draft_cumulative", "budget", "budget (nats per round)"))


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    fixed = ctx.best_fixed()
    fig, axes = figs.new(3, (12.0, 4.0))
    rows = []
    for ax, (label, policy, param, xlabel) in zip(axes, STRATEGIES, strict=True):
        runs = [ctx.try_run(policy, **c) for c in rules.configs(policy, grids, ctx.k_max)]
        ok = [r for r in runs if r is not None]
        by_cap: dict[int, list[Run]] = {}
        for r in ok:
            by_cap.setdefault(int(r.policy.k), []).append(r)  # type: ignore[attr-defined]
        for cap, rs in sorted(by_cap.items()):
            ax.plot([getattr(r.policy, param) for r in rs], [r.speedup for r in rs], marker="o",
                    ms=3, label=f"k={cap}")
        top = max(by_cap) if by_cap else ctx.k_max
        oracle_line(ax, ctx.oracle(top).speedup, top)
        ax.axhline(fixed.speedup, color="tab:red", linestyle=":",
                   label=f"best fixed k={fixed.policy.k}")  # type: ignore[attr-defined]
        ax.set(title=f"{label} ({ctx.label})", xlabel=xlabel,
               ylabel="speedup (x, vs verifier only)")
        ax.legend(fontsize=6)
        best = ctx.best(list(ok))
        if best is not None:
            rows.append([label, best.label, fmt(best.speedup),
                         f"{best.speedup / fixed.speedup - 1:+.1%}",
                         fmt(best.metrics["acceptance_rate"]),
                         fmt(float(best.rounds.drafted.mean())),
                         fmt(best.metrics["latency_ms"]["p99"]),
                         fmt(ctx.oracle_for(best).speedup)])
    return [f"### {TITLE}", "",
            "Static (`draft_static`, the same rule as `stop_absolute`): stop after a draft "
            "with entropy > theta. Moving average: stop when "
            "entropy > beta x an exponential moving average (lam = 0.1) of every earlier "
            "draft's entropy in the prompt. Cumulative: stop when the round's summed entropy "
            "exceeds the budget.", "",
            figs.save(fig, "002-thresholds", "static, moving-average, cumulative", speed=True),
            "",
            *table(["strategy", "best configuration", "speedup", "vs best fixed k",
                    "acceptance", "mean draft length", "P99 ms/token", "oracle"], rows,
                   "llrrrrrr")]
