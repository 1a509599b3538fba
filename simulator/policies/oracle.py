"""Oracle: knows in advance how many drafts will be accepted and drafts exactly those.

The upper bound that every result is reported next to: no policy that sees only the drafter's
signals can draft fewer wasted tokens or miss fewer accepted ones at the same cap ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from .base import Context, Plan, Policy


@register
@dataclass(frozen=True)
class Oracle(Policy):
    """k: most tokens drafted per round; it drafts min(k, tokens that will be accepted)."""

    name = "oracle"
    oracle = True
    k: int = 16

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k={self.k} must be >= 0")

    def plan(self, state: Any, ctx: Context) -> Plan:
        run = np.asarray(ctx.run_length)
        return Plan(drafter=np.zeros_like(run), cap=np.minimum(run, self.k))
