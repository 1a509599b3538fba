"""ESAR, entropy-selective autoregression (seed 001): no speculation, the small model just writes.

The small model emits its own tokens, unchecked, while its entropy stays at most tau; the first
token with entropy above tau is not emitted but handed to the big model, which produces that
position itself. In the replay's terms, one round is: draft until (and including) the first step
with H > tau, at most max_run; every step with H <= tau is accepted unconditionally (rule
"all", bias TV(q, p) = tv_all), the step with H > tau gets rule "none" (never accepted) and the
verifier's token replaces it. Lossy.

Timing caveat: the replay prices the big model's call as a verification of all n drafted
tokens, which is what a batched implementation of ESAR does (it must still extend the big
model's KV cache over the small model's tokens); the emitted tokens are exactly ESAR's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import RULE_INDEX, Policy, Signals
from .stop_absolute import check_entropy_kind


@register
@dataclass(frozen=True)
class Esar(Policy):
    """Small model emits while H_j <= tau; the first H_j > tau defers to the big model.

    tau: nats (>= 0; default 1.0). max_run: most small-model tokens in a row (default 64).
    entropy: "entropy" (Shannon), "renyi2" or "topk".
    """

    name = "esar"
    lossy = True
    tau: float = 1.0
    max_run: int = 64
    entropy: str = "entropy"

    def __post_init__(self) -> None:
        check_entropy_kind(self.entropy)
        check_nonneg(tau=self.tau, max_run=self.max_run)

    @property
    def k(self) -> int:
        """The cap (max_run), under the name the oracle comparison looks for."""
        return int(self.max_run)

    def max_cap(self) -> int:
        return int(self.max_run)

    def accept_rules(self) -> tuple[str, ...]:
        return ("all", "none")

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return np.asarray(sig[self.entropy], dtype=np.float64) > self.tau

    def rules(self, state: Any, sig: Signals) -> np.ndarray:
        h = np.asarray(sig[self.entropy], dtype=np.float64)
        return np.where(h <= self.tau, RULE_INDEX["all"], RULE_INDEX["none"]).astype(np.int8)
