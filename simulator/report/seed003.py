"""Seed 003: the drafter router. Each round's drafter is chosen by the verifier's entropy at the
previous token (thresholds from the verifier-entropy quantiles); the report gives each drafter's
share of the rounds and the router's speed and latency against every single drafter at the same
k, plus seed 001's minimum-entropy routing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .common import Grids, Run, TraceCtx, fmt
from .figures import Figures, na, table

TITLE = "Seed 003: the drafter router vs each single drafter"
MAX_SETS = 12


def threshold_sets(g: Grids, n: int) -> list[tuple[float, ...]]:
    """Up to MAX_SETS increasing n-tuples of verifier-entropy thresholds (nats)."""
    combos = list(itertools.combinations(g.vtheta, n))
    step = max(1, len(combos) // MAX_SETS)
    return combos[::step][:MAX_SETS]


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    out = [f"### {TITLE}", ""]
    names = ctx.trace.drafters
    if len(names) < 2:
        return out + na("routing", f"the trace has one drafter ({names[0]}); the router "
                        "needs two or more")
    singles = {d: ctx.drafter_ctx(d).best_fixed() for d in range(len(names))}
    ks = sorted({int(r.policy.k) for r in singles.values()})  # type: ignore[attr-defined]
    routers: list[Run] = []
    for k in ks:
        for th in threshold_sets(grids, len(names) - 1):
            r = ctx.try_run("router", thresholds=th, k=k)
            if r is not None:
                routers.append(r)
    if not routers:
        return out + na("routing", "; ".join(ctx.notes) or "no run")
    best = ctx.best(list(routers))
    assert best is not None
    k = int(best.policy.k)  # type: ignore[attr-defined]
    single_k = [ctx.drafter_ctx(d).run("fixed", k=k) for d in range(len(names))]
    oracles = [ctx.drafter_ctx(d).oracle(k) for d in range(len(names))]
    min_ent = ctx.try_run("min_entropy", k=k)

    fig, (ax, ax_sh) = figs.new(2, (11.0, 4.8), bottom=1.2)
    at_k = [r for r in routers if r.policy.k == k]  # type: ignore[attr-defined]
    x = np.arange(len(at_k))
    ax.plot(x, [r.speedup for r in at_k], marker="o", label=f"router, k={k}")
    for d, r in enumerate(single_k):
        ax.axhline(r.speedup, color=f"C{d + 1}", linestyle=":", label=f"only {names[d]}, k={k}")
    if min_ent is not None:
        ax.axhline(min_ent.speedup, color="tab:purple", linestyle="-.",
                   label=f"min-entropy routing, k={k}")
    top = max(range(len(names)), key=lambda d: oracles[d].speedup)
    ax.axhline(oracles[top].speedup, label=f"oracle (k={k}, {names[top]})", color="black",
               linestyle="--")
    labels = [fmt(r.policy.thresholds, 3) for r in at_k]  # type: ignore[attr-defined]
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=6)
    ax.set(title=f"Router speedup by thresholds ({ctx.label})",
           xlabel="thresholds on the verifier's previous-token entropy (nats)",
           ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=6)
    bottom = np.zeros(len(at_k))
    for name in names:
        share = np.array([r.metrics["drafter_share"][name] for r in at_k])
        ax_sh.bar(x, share, bottom=bottom, label=name)
        bottom += share
    ax_sh.set_xticks(x, labels, rotation=40, ha="right", fontsize=6)
    ax_sh.set(title="Share of drafting rounds per drafter", xlabel="thresholds (nats)",
              ylabel="share of rounds")
    ax_sh.legend(fontsize=7)

    rows = [[best.label, fmt(best.speedup), *_lat(best),
             ", ".join(f"{n} {best.metrics['drafter_share'][n]:.0%}" for n in names)]]
    for d, r in enumerate(single_k):
        rows.append([f"only {names[d]}: {r.label}", fmt(r.speedup), *_lat(r), ""])
    for d, r in singles.items():
        if int(r.policy.k) != k:  # type: ignore[attr-defined]
            rows.append([f"only {names[d]} at its best k: {r.label}", fmt(r.speedup), *_lat(r),
                         ""])
    if min_ent is not None:
        rows.append([min_ent.label, fmt(min_ent.speedup), *_lat(min_ent),
                     ", ".join(f"{n} {min_ent.metrics['drafter_share'][n]:.0%}"
                               for n in names)])
    for d, r in enumerate(oracles):
        rows.append([f"oracle, {names[d]} (k={k})", fmt(r.speedup), *_lat(r), ""])

    fig_l, ax_l = figs.new()
    lat_rows = [("router", best)] + [(f"only {names[d]}", r) for d, r in enumerate(single_k)] + \
        [(f"oracle ({names[top]})", oracles[top])]
    width = 0.8 / len(lat_rows)
    for i, (name, r) in enumerate(lat_rows):
        style = {"color": "black", "hatch": "//", "fill": False} if name.startswith("oracle") \
            else {}
        ax_l.bar(np.arange(3) + i * width, [r.metrics["latency_ms"][q] for q in
                                            ("p50", "p90", "p99")], width, label=name, **style)
    ax_l.set_xticks(np.arange(3) + width * (len(lat_rows) - 1) / 2, ["P50", "P90", "P99"])
    ax_l.set(title=f"Router vs single drafters, k={k} ({ctx.label})", xlabel="percentile",
             ylabel="latency per token (ms)")
    ax_l.legend(fontsize=7)
    return out + [
        "Drafter = number of thresholds the verifier's entropy at the previous token exceeds "
        f"(drafters in metadata order: {', '.join(names)}). Priced by `{ctx.latency.source}`"
        + _prices(ctx.latency, names), "",
        figs.save(fig, "003-router", "router speedup and drafter share", speed=True), "",
        figs.save(fig_l, "003-router-latency", "router vs single drafters latency",
                  speed=True), "",
        *table(["configuration", "speedup", "P50 ms", "P90 ms", "P99 ms", "drafter share"],
               rows, "lrrrrl")]


def _lat(r: Run) -> list[str]:
    return [fmt(r.metrics["latency_ms"][q]) for q in ("p50", "p90", "p99")]


def _prices(latency: Any, names: Sequence[str]) -> str:
    """How the pricing ranks the drafters: one draft step at context 300, ms."""
    one, ctx300 = np.ones(1, dtype=np.int64), np.full(1, 300, dtype=np.int64)
    ms = [float(latency.seconds(n, one, ctx300)[0]) * 1e3 for n in names]
    if max(ms) - min(ms) <= 1e-9 * max(max(ms), 1e-12):
        return ": with one price for every drafter, routing can only win on acceptance."
    return "; one draft step at context 300 costs " + ", ".join(
        f"{n} {v:.3g} ms" for n, v in zip(names, ms, strict=True)) + "."
