"""Entropy stop, relative (seed 000): stop once the entropy jumps above the round's own mean.

``stop_relative`` stops after step j (j >= 1) when H_j > rho * mean(H_0..H_{j-1}): a token much
less certain than the ones drafted before it in the same round. ``stop_combined`` also stops on
the absolute rule H_j > theta (stop_absolute), whichever fires first. Both draft at most k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg, mean_before
from .base import Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class StopRelative(Policy):
    """Stop after step j >= 1 when H_j > rho * mean(H_0..H_{j-1}); at most k tokens.

    rho: dimensionless ratio (> 0; default 1.5). k: most tokens drafted per round (default 8).
    entropy: which drafter entropy, "entropy" (Shannon), "renyi2" or "topk" (nats).
    """

    name = "stop_relative"
    rho: float = 1.5
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(k=self.k)
        if not isinstance(self.rho, int | float) or math.isnan(self.rho) or self.rho <= 0:
            raise ValueError(f"rho={self.rho!r} must be > 0")

    def relative(self, h: np.ndarray) -> np.ndarray:
        return h > self.rho * mean_before(h)  # NaN at j = 0 compares False

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return self.relative(np.asarray(sig[self.entropy], dtype=np.float64))


@register
@dataclass(frozen=True)
class StopCombined(StopRelative):
    """Stop when H_j > theta (absolute) OR H_j > rho * mean(H_0..H_{j-1}) (relative).

    theta: nats (>= 0; default 2.0). rho: ratio (> 0; default 1.5). k: cap (default 8).
    entropy: "entropy" (Shannon), "renyi2" or "topk".
    """

    name = "stop_combined"
    theta: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonneg(theta=self.theta)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        h = np.asarray(sig[self.entropy], dtype=np.float64)
        return (h > self.theta) | self.relative(h)
