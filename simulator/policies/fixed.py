"""Fixed k: draft k tokens every round, verify k+1 positions (vLLM ``num_speculative_tokens``)."""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import Policy


@register
@dataclass(frozen=True)
class Fixed(Policy):
    """k: tokens drafted per round (>= 0; 0 is verifier-only decoding)."""

    name = "fixed"
    k: int = 4

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k={self.k} must be >= 0")
