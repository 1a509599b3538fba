"""The draft-stopping rules the report compares, each with its parameter grid.

A family is one policy swept over a grid built from ``Grids`` (entropy quantiles of the traces):
the report shows each family at its best configuration on the trace (or on a task), next to the
best fixed k and the oracle. Stateful policies replay round by round (seconds per run), so
their grids are short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import Grids, Run, TraceCtx


@dataclass(frozen=True)
class Family:
    policy: str
    seed: str  # where it comes from
    entropy: bool  # decides on the drafter's entropy (H1's "entropy stopping rules")
    what: str


FAMILIES = (
    Family("stop_absolute", "000 / 002 static", True, "stop after a draft with H > theta"),
    Family("stop_relative", "000", True, "stop when H > rho x the round's running mean"),
    Family("stop_window", "000", True, "stop when the mean H of the last w drafts > theta"),
    Family("stop_combined", "000", True, "absolute or relative"),
    Family("adaptive", "000", True, "absolute, theta adapted toward a target acceptance"),
    Family("draft_cumulative", "002", True, "stop when the round's summed H > budget"),
    Family("draft_moving_average", "002", True, "stop when H > beta x moving average"),
    Family("dynamic_gamma", "001", True, "draft while H <= tau, gamma_min..gamma_max"),
    Family("adaedl_static", "AdaEDL", True, "stop when 1 - sqrt(gamma H) < lam"),
    Family("adaedl", "AdaEDL", True, "the same, lam adapted"),
    Family("hf_confidence_static", "HF", False, "stop when top-1 probability < threshold"),
    Family("hf_confidence", "HF", False, "the same with the ROC re-fit"),
    Family("hf_heuristic", "HF", False, "k +2 after a fully accepted round, else -1"),
)
SEED000 = ("stop_absolute", "stop_relative", "stop_window", "stop_combined", "adaptive")


def configs(family: str, g: Grids, k_max: int) -> list[dict[str, Any]]:
    """The grid of one family (parameters as policy fields)."""
    caps = g.caps_upto(k_max)
    mid = caps[len(caps) // 2]
    th = g.theta
    if family in ("stop_absolute", "draft_static"):
        return [{"theta": t, "k": k} for k in caps for t in th]
    if family == "stop_relative":
        return [{"rho": r, "k": k} for k in caps for r in g.rho]
    if family == "stop_window":
        return [{"theta": t, "w": w, "k": k} for k in caps for w in (2, 3) for t in th]
    if family == "stop_combined":
        return [{"theta": t, "rho": r, "k": k} for k in caps for r in (1.5, 2.0, 3.0)
                for t in th[len(th) // 3:]]
    if family == "adaptive":
        return [{"theta0": th[len(th) // 2], "target": t, "k": mid} for t in (0.5, 0.7, 0.9)]
    if family == "draft_cumulative":
        return [{"budget": b, "k": k} for k in caps for b in g.budget]
    if family == "draft_moving_average":
        return [{"beta": b, "theta0": th[len(th) // 2], "k": mid} for b in g.beta]
    if family == "dynamic_gamma":
        return [{"tau": t, "gamma_max": k} for k in caps for t in th]
    if family == "adaedl_static":
        return [{"lam": lam, "k": k} for k in caps for lam in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8,
                                                               0.9)]
    if family == "adaedl":
        return [{"k": mid}]
    if family == "hf_confidence_static":
        return [{"threshold": t, "k": min(20, k_max)} for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                                0.7, 0.8, 0.9)]
    if family == "hf_confidence":
        return [{"k": min(20, k_max)}]
    if family == "hf_heuristic":
        return [{"k0": min(20, k_max), "k": k_max}]
    raise ValueError(family)


def runs(ctx: TraceCtx, g: Grids, family: str) -> list[Run]:
    """Every configuration of the family that this trace supports, in grid order."""
    out = [ctx.try_run(family, **c) for c in configs(family, g, ctx.k_max)]
    return [r for r in out if r is not None]


def best_runs(ctx: TraceCtx, g: Grids, families: tuple[str, ...] | None = None
              ) -> dict[str, Run]:
    """family -> its fastest configuration on the whole trace (families with no run left out)."""
    out = {}
    for f in families or tuple(f.policy for f in FAMILIES):
        best = ctx.best(list(runs(ctx, g, f)))
        if best is not None:
            out[f] = best
    return out


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.policy == name)
