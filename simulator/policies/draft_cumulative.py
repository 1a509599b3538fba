"""Cumulative entropy budget (seed 002): stop once the round has spent its uncertainty budget.

sum_{i<=j} H_i upper-bounds -log P(all j+1 drafts accepted) only loosely, but it is monotone in
the round: a round of confident tokens runs long, one uncertain token ends it early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg, running_sum
from .base import Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class DraftCumulative(Policy):
    """Stop after step j when H_0 + ... + H_j > budget; at most k tokens.

    budget: nats (>= 0; default 3.0). k: most tokens drafted per round (default 8).
    entropy: "entropy" (Shannon), "renyi2" or "topk".
    """

    name = "draft_cumulative"
    budget: float = 3.0
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(budget=self.budget, k=self.k)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return running_sum(sig[self.entropy]) > self.budget
