"""AdaEDL (Agrawal, Jeon, Lee 2024, arXiv:2410.18351): early draft stopping on an entropy-based
lower bound of the acceptance probability.

The drafter's entropy H (nats, Shannon) bounds the probability that its token is accepted from
below, approximately by 1 - sqrt(gamma * H) (a Pinsker-type bound; the paper's entropy scale
gamma is 0.2). Drafting stops after the first token whose bound falls below lam:

    1 - sqrt(gamma * H_j) < lam    <=>    H_j > (1 - lam)^2 / gamma    (for lam <= 1)

``adaedl`` adapts lam across the rounds of a prompt from the observed acceptance rate, as the
paper's "Ada" does; ``adaedl_static`` keeps it fixed (memoryless, fast path).

The adaptation rule: the stored copies of the paper available when this was written gave the
criterion and gamma but not the exact update, so this one is a documented stand-in of the same
shape as seed 000's ``adaptive``: after each round with n > 0 drafts and a accepted,

    lam <- clip(lam + eta * (target - a / n), 0, 1)

(drafts accepted more often than target lower lam, so rounds run longer; eta = 0 is static).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_finite, check_nonneg
from .base import Outcome, Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class AdaEDLStatic(Policy):
    """Stop after step j when 1 - sqrt(gamma * H_j) < lam; at most k tokens.

    gamma: entropy scale, 1/nats (> 0; paper default 0.2). lam: threshold on the acceptance
    lower bound, in [0, 1] (default 0.5, i.e. stop on H > 1.25 nats at gamma 0.2).
    k: most tokens drafted per round (default 8). entropy: "entropy" (Shannon, as in the paper),
    "renyi2" or "topk".
    """

    name = "adaedl_static"
    gamma: float = 0.2
    lam: float = 0.5
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(k=self.k)
        check_finite(gamma=self.gamma, lam=self.lam)
        if self.gamma <= 0:
            raise ValueError(f"gamma={self.gamma!r} must be > 0")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam={self.lam!r} must be in [0, 1]")

    def bound(self, h: np.ndarray) -> np.ndarray:
        """The acceptance-probability lower bound 1 - sqrt(gamma * H) (may be negative)."""
        return 1.0 - np.sqrt(self.gamma * np.asarray(h, dtype=np.float64))

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return self.bound(sig[self.entropy]) < self.lam


@register
@dataclass(frozen=True)
class AdaEDL(AdaEDLStatic):
    """AdaEDL with lam adapted per round: lam <- clip(lam + eta * (target - a/n), 0, 1).

    lam: initial threshold, in [0, 1] (default 0.5). eta: adaptation step, per unit of
    acceptance rate (>= 0; default 0.05). target: acceptance rate aimed at, in [0, 1]
    (default 0.7). gamma, k, entropy: as adaedl_static. State: the current lam (a float).
    """

    name = "adaedl"
    memoryless = False
    eta: float = 0.05
    target: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonneg(eta=self.eta)
        check_finite(eta=self.eta)
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target={self.target!r} must be in [0, 1]")

    def initial_state(self) -> float:
        return float(self.lam)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        lam = self.lam if state is None else float(state)
        return self.bound(sig[self.entropy]) < lam

    def update(self, state: Any, outcome: Outcome) -> float:
        lam = self.lam if state is None else float(state)
        if outcome.drafted <= 0:
            return lam
        lam += self.eta * (self.target - outcome.accepted / outcome.drafted)
        return float(min(max(lam, 0.0), 1.0))
