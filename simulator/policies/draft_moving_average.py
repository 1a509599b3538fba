"""Moving-average threshold (seed 002): stop on a token much less certain than the recent ones.

The threshold is beta times an exponential moving average of the drafter's entropies over every
token drafted before this one in the prompt (earlier rounds and earlier steps of this round,
accepted or not). The average starts at theta0 for every prompt and folds in each drafted token
in order: m <- (1 - lam) * m + lam * H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_finite, check_nonneg, ema_before
from .base import Outcome, Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class DraftMovingAverage(Policy):
    """Stop after step j when H_j > beta * EMA(entropies of all tokens drafted before j).

    beta: dimensionless multiplier (> 0; default 1.5). lam: weight of the newest token in the
    average, in (0, 1] (default 0.1). theta0: initial value of the average, nats (default 1.0).
    k: most tokens drafted per round (default 8). entropy: "entropy" (Shannon), "renyi2", "topk".
    State: the current average (a float, nats).
    """

    name = "draft_moving_average"
    memoryless = False
    beta: float = 1.5
    lam: float = 0.1
    theta0: float = 1.0
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(k=self.k, theta0=self.theta0)
        check_finite(beta=self.beta, lam=self.lam, theta0=self.theta0)
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta!r} must be > 0")
        if not 0.0 < self.lam <= 1.0:
            raise ValueError(f"lam={self.lam!r} must be in (0, 1]")

    def initial_state(self) -> float:
        return float(self.theta0)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        m0 = self.theta0 if state is None else float(state)
        h = np.asarray(sig[self.entropy], dtype=np.float64)
        before, _ = ema_before(m0, h, self.lam)
        return h > self.beta * before

    def update(self, state: Any, outcome: Outcome) -> float:
        m0 = self.theta0 if state is None else float(state)
        h = np.asarray(outcome.signals[self.entropy], dtype=np.float64)[:outcome.drafted]
        _, after = ema_before(m0, h, self.lam)
        return float(after)
