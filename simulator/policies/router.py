"""Entropy router (seed 003): choose the drafter of a round from the verifier's last entropy.

Drafters are indexed in the trace's metadata order (``Trace.drafters``), cheapest / smallest
first by convention. With thresholds t_0 < t_1 < ... the round's drafter is the number of
thresholds the verifier's entropy at the previous token exceeds (strictly): below t_0 drafter
0, in (t_0, t_1] drafter 1, ..., above the last drafter len(thresholds). At a prompt's first
position nothing has been emitted (entropy NaN): drafter 0.

The trace must hold len(thresholds) + 1 drafters; the index is clipped to
[0, len(thresholds)] and the engine reads that drafter's rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import Context, Plan, Policy


@register
@dataclass(frozen=True)
class Router(Policy):
    """Drafter = #thresholds exceeded by the previous token's verifier entropy; k per round.

    thresholds: nats, strictly increasing (CLI: "0.5,1.5"; default (1.0,): two drafters).
    k: tokens drafted per round (>= 0; default 4).
    """

    name = "router"
    thresholds: tuple[float, ...] = (1.0,)
    k: int = 4

    def drafters_needed(self) -> int:
        return len(self.thresholds) + 1

    def __post_init__(self) -> None:
        th = tuple(float(x) for x in self.thresholds)
        object.__setattr__(self, "thresholds", th)
        check_nonneg(k=self.k)
        if any(math.isnan(x) for x in th):
            raise ValueError("thresholds must not be NaN")
        if any(b <= a for a, b in zip(th, th[1:], strict=False)):
            raise ValueError(f"thresholds={th} must be strictly increasing")

    def drafter(self, prev_verifier_entropy: Any) -> np.ndarray:
        x = np.asarray(prev_verifier_entropy, dtype=np.float64)
        idx = np.searchsorted(np.asarray(self.thresholds, dtype=np.float64), x, side="left")
        idx = np.where(np.isnan(x), 0, idx)
        return np.clip(idx, 0, len(self.thresholds)).astype(np.int64)

    def plan(self, state: Any, ctx: Context) -> Plan:
        d = self.drafter(ctx.prev_verifier_entropy)
        shape = np.broadcast_shapes(np.shape(d), np.shape(ctx.position))
        return Plan(drafter=np.broadcast_to(d, shape), cap=np.full(shape, self.k, dtype=np.int64))
