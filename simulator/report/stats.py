"""Statistics of the report: entropy-acceptance association, bootstrap over prompts, verdicts.

Everything takes explicit weights or an explicit ``np.random.Generator``: a bootstrap replicate
is a vector of per-prompt counts (prompts drawn with replacement), so a statistic built from
per-prompt sums is recomputed for B replicates as one (B, P) @ (P, ...) product.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

BOOT = 1000  # replicates of statistics built from per-prompt sums
BOOT_POSITIONS = 200  # replicates of statistics that need every position (ROC AUC)
LEVEL = 0.95


def rng_for(seed: int, *purpose: int) -> np.random.Generator:
    """An independent, reproducible stream per (seed, purpose): section order does not matter."""
    return np.random.default_rng([seed, *purpose])


def resample_counts(rng: np.random.Generator, n: int, b: int = BOOT) -> np.ndarray:
    """(b, n) int64: how many times each of n prompts is drawn in each replicate."""
    draws = rng.integers(0, n, size=(b, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.int64)


def ci(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval at LEVEL, NaN replicates ignored."""
    a = (1.0 - LEVEL) / 2.0
    with warnings.catch_warnings():  # all-NaN slices give NaN, which is the right answer
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanpercentile(samples, 100 * a, axis=axis)
        hi = np.nanpercentile(samples, 100 * (1 - a), axis=axis)
    return lo, hi


def ratio_boot(counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) in each replicate: counts (B, P), num (P,), den (P,) or (C, P)
    -> (B,) or (B, C). Integer inputs are summed exactly."""
    n = counts @ num
    d = counts @ (den.T if den.ndim == 2 else den)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (n[:, None] / d) if den.ndim == 2 else n / d


# ---- entropy vs acceptance ------------------------------------------------------------------

def point_biserial(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Point-biserial correlation of continuous x and binary y (Pearson's r), with weights.

    Equals (M1 - M0) / s * sqrt(p (1 - p)), s the population std of x, p = mean(y)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=np.float64)
    return float(point_biserial_sums(np.array([w.sum(), w @ x, w @ (x * x), w @ y, w @ (x * y)])))


def moment_sums(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(5, G) per-group sums [n, x, x^2, y, x y]: point_biserial_sums of any reweighting."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return np.stack([np.bincount(group, v, n_groups) for v in
                     (np.ones_like(x), x, x * x, y, x * y)])


def point_biserial_sums(s: np.ndarray) -> np.ndarray:
    """r from summed moments [n, x, x^2, y, x y] (leading axis 5; y binary so y^2 = y)."""
    n, sx, sxx, sy, sxy = s
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sxy / n - (sx / n) * (sy / n)
        vx = sxx / n - (sx / n) ** 2
        vy = sy / n - (sy / n) ** 2
        return cov / np.sqrt(vx * vy)


@dataclass(frozen=True)
class RocData:
    """Positions sorted once by entropy, for weighted ROC AUC of "low entropy => match"."""

    group: np.ndarray  # (N,) tie group of each position, groups in increasing entropy
    y: np.ndarray  # (N,) float 0/1 match
    values: np.ndarray  # (G,) the entropy of each group

    @classmethod
    def of(cls, entropy: np.ndarray, match: np.ndarray) -> RocData:
        values, group = np.unique(np.asarray(entropy, dtype=np.float64), return_inverse=True)
        return cls(group, np.asarray(match, dtype=np.float64), values)

    def _by_group(self, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        w = np.ones_like(self.y) if w is None else w
        g = self.values.size
        return np.bincount(self.group, w * self.y, g), np.bincount(self.group, w * (1 - self.y), g)

    def auc(self, w: np.ndarray | None = None) -> float:
        """P(H_match < H_mismatch) + P(tie) / 2 (Mann-Whitney), weighted; NaN if a class is
        empty. 1 = entropy separates perfectly, 0.5 = no information."""
        pos, neg = self._by_group(w)
        tp, tn = pos.sum(), neg.sum()
        if tp <= 0 or tn <= 0:
            return float("nan")
        above = tn - np.cumsum(neg)  # mismatches with strictly higher entropy
        return float(pos @ (above + 0.5 * neg) / (tp * tn))

    def curve(self, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """(FPR, TPR) of the rule "predict match iff H <= t" over every threshold t."""
        pos, neg = self._by_group(None)
        tpr = np.r_[0.0, np.cumsum(pos) / max(pos.sum(), 1e-300)]
        fpr = np.r_[0.0, np.cumsum(neg) / max(neg.sum(), 1e-300)]
        keep = np.unique(np.linspace(0, fpr.size - 1, min(points, fpr.size)).round().astype(int))
        return fpr[keep], tpr[keep]


def auc_pairs(entropy: np.ndarray, match: np.ndarray) -> float:
    """ROC AUC by counting every (match, mismatch) pair: the O(n^2) closed form, for tests."""
    h = np.asarray(entropy, dtype=np.float64)
    m = np.asarray(match, dtype=bool)
    a, b = h[m][:, None], h[~m][None, :]
    return float(((a < b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks on ties); NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ---- verdicts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """A hypothesis test's outcome: status, the statistic with its bootstrap CI, and why."""

    name: str
    status: str  # supported | not supported | inconclusive | not available
    statistic: str
    value: float
    lo: float
    hi: float
    reason: str


NA = "not available"


def verdict_h1(gain: np.ndarray, boot_gain: np.ndarray, margin: float = 0.10,
               share: float = 0.5) -> Verdict:
    """H1: the best entropy stop beats the best fixed k by > margin on >= share of tasks.

    gain (T,): per task, best-entropy-rule speedup / best-fixed-k speedup - 1; boot_gain
    (B, T): the same, re-selected in each bootstrap replicate. Supported when the CI of the
    share of tasks above the margin lies at or above ``share``; not supported when it lies
    below; inconclusive otherwise."""
    stat = f"share of tasks with gain > {margin:.0%}"
    if gain.size == 0:
        return Verdict("H1", NA, stat, np.nan, np.nan, np.nan, "no tasks")
    frac = float(np.mean(gain > margin))
    boot = np.mean(boot_gain > margin, axis=1)
    lo, hi = (float(v) for v in ci(boot))
    if lo >= share:
        status, why = "supported", f"the CI of the share lies at or above {share:.0%}"
    elif hi < share:
        status, why = "not supported", f"the CI of the share lies below {share:.0%}"
    else:
        status, why = "inconclusive", f"the CI of the share straddles {share:.0%}"
    return Verdict("H1", status, stat, frac, lo, hi, why)


def verdict_h2(theta: np.ndarray, complexity: np.ndarray, boot_theta: np.ndarray,
               boot_complexity: np.ndarray, negligible: float = 0.3,
               grid: np.ndarray | None = None) -> Verdict:
    """H2: the best threshold depends on task complexity (Spearman rank correlation).

    Needs >= 3 tasks. Inconclusive when every task's best threshold is an edge of the searched
    ``grid`` (the optimum may lie outside it, so the ranks say nothing). Otherwise supported
    when the CI excludes 0; not supported when it lies within (-negligible, negligible) or the
    best threshold is the same on every task; else inconclusive."""
    stat = "Spearman rho(best theta, task complexity)"
    if theta.size < 3:
        return Verdict("H2", NA, stat, np.nan, np.nan, np.nan,
                       f"needs >= 3 tasks; the inputs have {theta.size}")
    rho = spearman(theta, complexity)
    if grid is not None and grid.size > 1:
        lo_edge, hi_edge = float(np.min(grid)), float(np.max(grid))
        at_lo, at_hi = np.isclose(theta, lo_edge), np.isclose(theta, hi_edge)
        if np.all(at_lo | at_hi):
            edges = [f"{e:.3g}" for e, hit in ((lo_edge, at_lo), (hi_edge, at_hi)) if hit.any()]
            return Verdict("H2", "inconclusive", stat, rho, np.nan, np.nan,
                           f"every task's best theta is the searched grid's edge "
                           f"({' or '.join(edges)} nats): the optimum may lie beyond it")
    if np.isnan(rho):
        return Verdict("H2", "not supported", stat, rho, np.nan, np.nan,
                       "the best threshold is the same on every task")
    boot = np.array([spearman(a, b) for a, b in zip(boot_theta, boot_complexity, strict=True)])
    lo, hi = (float(v) for v in ci(boot))
    if lo > 0 or hi < 0:
        status, why = "supported", "the CI excludes 0"
    elif -negligible < lo and hi < negligible:
        status, why = "not supported", f"the CI lies within +-{negligible}"
    else:
        status, why = "inconclusive", "the CI includes 0"
    return Verdict("H2", status, stat, rho, lo, hi, why)


def verdict_h3(regret_abs: np.ndarray, regret_rel: np.ndarray, boot_abs: np.ndarray,
               boot_rel: np.ndarray) -> Verdict:
    """H3: a relative threshold transfers across tasks better than an absolute one.

    regret (T,): per task, 1 - speedup at the one configuration chosen for all tasks / speedup
    at the task's own best configuration. Statistic: mean regret (absolute) - mean regret
    (relative); > 0 means the relative rule is more robust. Needs >= 2 tasks. Supported when
    the CI lies above 0, not supported when at or below 0, else inconclusive."""
    stat = "mean regret absolute - mean regret relative"
    if regret_abs.size < 2:
        return Verdict("H3", NA, stat, np.nan, np.nan, np.nan,
                       f"needs >= 2 tasks; the inputs have {regret_abs.size}")
    d = float(regret_abs.mean() - regret_rel.mean())
    lo, hi = (float(v) for v in ci(boot_abs.mean(axis=1) - boot_rel.mean(axis=1)))
    if lo > 0:
        status, why = "supported", "the CI lies above 0"
    elif hi <= 0:
        status, why = "not supported", "the CI lies at or below 0"
    else:
        status, why = "inconclusive", "the CI includes 0"
    return Verdict("H3", status, stat, d, lo, hi, why)
