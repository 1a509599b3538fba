"""Prefix-causal helpers over the draft-step axis (the LAST axis of a round's signals).

Every helper computes step j from steps 0..j only, with the same elementwise operations in the
same order whatever the leading shape, so a (steps,) round, a growing prefix of it and a
(starts, steps) matrix row give bit-identical answers. (A sequential loop over the steps, not
np.cumsum, so no summation order ever depends on the array's shape.)

Not a policy: ``simulator.policies`` imports it like every module here, and it registers nothing.
"""

from __future__ import annotations

import math

import numpy as np


def steps_of(x: np.ndarray) -> int:
    return int(np.shape(x)[-1])


def running_sum(x: np.ndarray) -> np.ndarray:
    """out[..., j] = x[..., 0] + ... + x[..., j], accumulated left to right."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    if steps_of(x) == 0:
        return out
    acc = x[..., 0].copy()
    out[..., 0] = acc
    for j in range(1, steps_of(x)):
        acc = acc + x[..., j]
        out[..., j] = acc
    return out


def mean_before(x: np.ndarray) -> np.ndarray:
    """out[..., j] = mean(x[..., :j]) for j >= 1; NaN at j = 0 (nothing before)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full_like(x, np.nan)
    if steps_of(x) > 1:
        out[..., 1:] = running_sum(x)[..., :-1] / np.arange(1, steps_of(x), dtype=np.float64)
    return out


def window_mean(x: np.ndarray, w: int) -> np.ndarray:
    """out[..., j] = mean(x[..., max(0, j-w+1) : j+1]): the last w steps, fewer at the start."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for j in range(steps_of(x)):
        lo = max(0, j - w + 1)
        acc = x[..., lo].copy()
        for i in range(lo + 1, j + 1):
            acc = acc + x[..., i]
        out[..., j] = acc / float(j + 1 - lo)
    return out


def ema_before(m0: float, x: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Exponential moving average m <- (1 - lam) * m + lam * x_j, started at m0.

    Returns (m before each step (..., steps), m after the last step (...)).
    """
    x = np.asarray(x, dtype=np.float64)
    before = np.empty_like(x)
    m = np.full(x.shape[:-1], float(m0))
    for j in range(steps_of(x)):
        before[..., j] = m
        m = (1.0 - lam) * m + lam * x[..., j]
    return before, m


def check_nonneg(**values: float) -> None:
    """ValueError unless every value is a number >= 0 (inf allowed, NaN not)."""
    for name, v in values.items():
        if not isinstance(v, int | float) or math.isnan(v) or v < 0:
            raise ValueError(f"{name}={v!r} must be >= 0")


def check_finite(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name}={v!r} must be a finite number")
