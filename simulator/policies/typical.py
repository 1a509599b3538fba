"""Typical acceptance (Medusa, Cai et al. 2024, section 3.3.1): fixed k, every draft judged typical.

A draft x is accepted when the verifier gives it probability above
min(epsilon, delta * exp(-H(p))). Which epsilon and delta were used is a property of the trace
(metadata ``relaxed_rules.typical``): the trace records, per position, the acceptance
probability (accept_prob_typical) and the bias TV(pi, p) (tv_typical) of the rule at those
values, so this policy has no epsilon/delta parameters of its own. Lossy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import RULE_INDEX, Policy, Signals


@register
@dataclass(frozen=True)
class Typical(Policy):
    """k: tokens drafted per round (>= 0; default 4), every one under the typical rule."""

    name = "typical"
    lossy = True
    k: int = 4

    def __post_init__(self) -> None:
        check_nonneg(k=self.k)

    def accept_rules(self) -> tuple[str, ...]:
        return ("typical",)

    def rules(self, state: Any, sig: Signals) -> np.ndarray:
        return np.full(np.shape(sig["entropy"]), RULE_INDEX["typical"], dtype=np.int8)
