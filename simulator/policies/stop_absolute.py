"""Entropy stop, absolute (seed 000): stop drafting once the drafter's entropy exceeds theta.

Registered twice: ``stop_absolute`` and seed 002's ``draft_static`` are the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..trace import ENTROPY_SIGNALS
from . import register
from .base import Policy, Signals


def check_entropy_kind(kind: str) -> None:
    if kind not in ENTROPY_SIGNALS:
        raise ValueError(f"entropy={kind!r} must be one of {', '.join(ENTROPY_SIGNALS)}")


@register
@dataclass(frozen=True)
class StopAbsolute(Policy):
    """Draft until H_j > theta (that token is still proposed), at most k tokens.

    theta: nats. k: cap. entropy: shannon ("entropy"), "renyi2" or "topk".
    """

    name = "stop_absolute"
    stop_params = ("theta", "entropy")
    theta: float = 1.0
    k: int = 8
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        if self.k < 0 or self.theta < 0:
            raise ValueError("k and theta must be >= 0")

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return sig[self.entropy] > self.theta


@register
@dataclass(frozen=True)
class DraftStatic(StopAbsolute):
    """Seed 002's static threshold: identical to stop_absolute."""

    name = "draft_static"
