"""Dynamic gamma (seed 001): keep drafting while the drafter is sure, within [gamma_min, gamma_max].

The draft length gamma of a round is the first step whose entropy exceeds tau (that token is
still proposed), but never fewer than gamma_min tokens and never more than gamma_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg, steps_of
from .base import Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class DynamicGamma(Policy):
    """Draft while H_j <= tau; at least gamma_min and at most gamma_max tokens a round.

    tau: nats (>= 0; default 1.0). gamma_min: tokens (>= 0; default 1). gamma_max: tokens
    (>= gamma_min; default 8). entropy: "entropy" (Shannon), "renyi2" or "topk".
    gamma_min is a floor on the plan, not on the prompt: the last rounds of a prompt draft fewer
    when fewer tokens remain.
    """

    name = "dynamic_gamma"
    tau: float = 1.0
    gamma_min: int = 1
    gamma_max: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(tau=self.tau, gamma_min=self.gamma_min, gamma_max=self.gamma_max)
        if self.gamma_min > self.gamma_max:
            raise ValueError(f"gamma_min={self.gamma_min} must be <= gamma_max={self.gamma_max}")

    @property
    def k(self) -> int:
        """The cap (gamma_max), under the name the oracle comparison looks for."""
        return int(self.gamma_max)

    def max_cap(self) -> int:
        return int(self.gamma_max)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        h = np.asarray(sig[self.entropy], dtype=np.float64)
        j = np.arange(steps_of(h))
        return (h > self.tau) & (j + 1 >= self.gamma_min)
