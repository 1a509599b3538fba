"""Minimum-entropy expert routing (seed 001): every drafter proposes step 0, the surest drafts on.

Each round starts with one step of every drafter at the current position (paid for: the
probe); the drafter whose Shannon entropy there is lowest (the first on ties, in metadata
order) keeps drafting, its probe step counting as its step 0, up to k tokens. An optional
absolute stop ends the round after a token with entropy above theta. Needs >= 2 drafters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import Context, Plan, Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class MinEntropy(Policy):
    """Drafter = argmin over drafters of the step-0 Shannon entropy; at most k tokens.

    k: most tokens drafted per round (>= 0; default 8). theta: nats, stop after a token of the
    chosen drafter with H_j > theta (default inf: never). entropy: the signal the stop reads,
    "entropy" (Shannon), "renyi2" or "topk" (the choice itself always uses Shannon entropy).
    """

    name = "min_entropy"
    probes_all_drafters = True
    k: int = 8
    theta: float = math.inf
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(k=self.k, theta=self.theta)

    def plan(self, state: Any, ctx: Context) -> Plan:
        first = np.asarray(ctx.first_entropy, dtype=np.float64)  # (D,) or (D, starts)
        d = np.argmin(first, axis=0).astype(np.int64)
        shape = np.broadcast_shapes(np.shape(d), np.shape(ctx.position))
        return Plan(drafter=np.broadcast_to(d, shape), cap=np.full(shape, self.k, dtype=np.int64))

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return np.asarray(sig[self.entropy], dtype=np.float64) > self.theta
