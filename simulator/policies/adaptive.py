"""Adaptive absolute stop (seed 000): stop_absolute whose threshold follows the acceptance rate.

After every round that drafted n > 0 tokens of which a were accepted,

    theta <- clip(theta * exp(eta * (a / n - target)), theta_min, theta_max)

so a prompt whose drafts are accepted more often than ``target`` earns a laxer threshold
(longer rounds), and one whose drafts are rejected gets a stricter one. The threshold restarts
at theta0 for every prompt. Registered twice: ``adaptive`` and ``stop_adaptive``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_finite, check_nonneg
from .base import Outcome, Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class Adaptive(Policy):
    """Stop after step j when H_j > theta; theta adapts across the rounds of a prompt.

    theta0: initial threshold, nats (default 1.0). eta: adaptation rate, 1/acceptance-rate
    (>= 0; 0 is stop_absolute; default 0.5). target: acceptance rate aimed at, in [0, 1]
    (default 0.7). theta_min, theta_max: bounds of theta, nats (default 0.05, 8.0).
    k: most tokens drafted per round (default 8). entropy: "entropy" (Shannon), "renyi2", "topk".
    State: the current theta (a float).
    """

    name = "adaptive"
    memoryless = False
    theta0: float = 1.0
    eta: float = 0.5
    target: float = 0.7
    theta_min: float = 0.05
    theta_max: float = 8.0
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(eta=self.eta, k=self.k, theta_min=self.theta_min)
        check_finite(eta=self.eta, theta0=self.theta0, theta_min=self.theta_min,
                     theta_max=self.theta_max)
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target={self.target!r} must be in [0, 1]")
        if not self.theta_min <= self.theta0 <= self.theta_max:
            raise ValueError(f"need theta_min <= theta0 <= theta_max, got {self.theta_min}, "
                             f"{self.theta0}, {self.theta_max}")

    def initial_state(self) -> float:
        return float(self.theta0)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        theta = self.theta0 if state is None else float(state)
        return np.asarray(sig[self.entropy], dtype=np.float64) > theta

    def update(self, state: Any, outcome: Outcome) -> float:
        theta = self.theta0 if state is None else float(state)
        if outcome.drafted <= 0:
            return theta
        rate = outcome.accepted / outcome.drafted
        theta *= math.exp(self.eta * (rate - self.target))
        return float(min(max(theta, self.theta_min), self.theta_max))


@register
@dataclass(frozen=True)
class StopAdaptive(Adaptive):
    """Seed 000's name for the same policy: identical to adaptive."""

    name = "stop_adaptive"
