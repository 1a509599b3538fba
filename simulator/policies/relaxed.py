"""Relaxed acceptance (seed 001): accept confident drafts under a looser rule than standard.

Drafting is fixed-k (optionally stopped by stop_absolute's rule at ``stop_theta``). Each drafted
token whose drafter entropy is at most tau is judged by ``rule`` instead of the standard
speculative-sampling test:

  sqrt  accept with probability min(1, sqrt(p/q))  (trace column accept_prob_sqrt)
  all   accept unconditionally                      (probability 1)

Lossy: the output distribution moves by TV(pi, p) at every decided relaxed position (the trace's
tv_sqrt / tv_all), reported as quality_bias; deviating_tokens counts the accepted tokens the
standard rule would have rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import RULE_INDEX, Policy, Signals
from .stop_absolute import check_entropy_kind

RELAXED_RULES = ("sqrt", "all")


@register
@dataclass(frozen=True)
class Relaxed(Policy):
    """Draft k tokens; a token with H_j <= tau is accepted under ``rule``, others as standard.

    k: tokens drafted per round (default 4). tau: nats (>= 0; default 0.5). rule: "sqrt" or
    "all" (default "sqrt"). stop_theta: nats, stop after a token with H_j > stop_theta (default
    inf: never, fixed k). entropy: "entropy" (Shannon), "renyi2" or "topk".
    """

    name = "relaxed"
    lossy = True
    k: int = 4
    tau: float = 0.5
    rule: str = "sqrt"
    stop_theta: float = math.inf
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(k=self.k, tau=self.tau, stop_theta=self.stop_theta)
        if self.rule not in RELAXED_RULES:
            raise ValueError(f"rule={self.rule!r} must be one of {', '.join(RELAXED_RULES)}")

    def accept_rules(self) -> tuple[str, ...]:
        return ("standard", self.rule)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return np.asarray(sig[self.entropy], dtype=np.float64) > self.stop_theta

    def rules(self, state: Any, sig: Signals) -> np.ndarray:
        h = np.asarray(sig[self.entropy], dtype=np.float64)
        return np.where(h <= self.tau, RULE_INDEX[self.rule],
                        RULE_INDEX["standard"]).astype(np.int8)
