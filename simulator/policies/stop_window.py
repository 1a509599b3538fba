"""Entropy stop on a sliding window: stop once the recent drafts were, on average, uncertain.

Smooths stop_absolute: one noisy high-entropy token does not end the round, a run of them does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg, window_mean
from .base import Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class StopWindow(Policy):
    """Stop after step j when mean(H_{j-w+1}..H_j) > theta (fewer than w steps at the start).

    theta: nats (>= 0; default 1.0). w: window in draft steps (>= 1; default 3; w = 1 is
    stop_absolute). k: most tokens drafted per round (default 8).
    entropy: "entropy" (Shannon), "renyi2" or "topk".
    """

    name = "stop_window"
    theta: float = 1.0
    w: int = 3
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(theta=self.theta, k=self.k)
        if not isinstance(self.w, int) or self.w < 1:
            raise ValueError(f"w={self.w!r} must be an integer >= 1")

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return window_mean(sig[self.entropy], self.w) > self.theta
