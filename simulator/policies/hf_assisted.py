"""Hugging Face transformers assisted generation (``assistant_model=...``), as in
``transformers/generation/candidate_generator.py`` (AssistedCandidateGenerator) and
``stopping_criteria.py`` (ConfidenceCriteria).

hf_confidence
    The assistant drafts at most ``num_assistant_tokens`` (k, HF default 20) and stops after a
    token whose probability is below ``assistant_confidence_threshold`` (HF default 0.4):
    ConfidenceCriteria tests ``p < threshold`` on the token just drafted, so that token is still
    proposed. Under greedy decoding that probability is the drafter's top-1 probability (trace
    signal ``top1_prob``). A threshold of 0 disables the stop, as in HF.
    With roc=True, after every round the (probability, matched) pairs seen so far in the prompt
    are extended as update_candidate_strategy does it: the a accepted drafts are labelled 1, the
    first rejected draft (if any) 0, drafts after it are dropped; when there are more than 5 pairs
    and both labels occur, the threshold becomes the ROC threshold minimising FPR + 3 * FNR
    (sklearn.metrics.roc_curve, re-implemented below in numpy), else it is kept.
hf_confidence_static
    The same stop at a fixed threshold (no refit): memoryless, so the fast engine runs it on
    every round at once.
hf_heuristic
    ``num_assistant_tokens_schedule="heuristic"``: the round drafts num_assistant_tokens tokens
    (starting at k0, HF default 20); +2 after a round whose drafts were all accepted
    (num_matches == candidates), else -1, never below 1.

Deviations from HF, all forced by the replay's contract or stated as choices:
  * State lives per prompt (initial_state() at every prompt): HF's "heuristic" schedule writes
    num_assistant_tokens back to the assistant's generation_config at the end of generate(), so
    it carries over to the next prompt; here every prompt starts at k0 (HF's
    "heuristic_transient").
  * HF's schedule is unbounded; ``k`` caps the drafts of a round (the trace's free-run horizon
    bounds what can be replayed) while the schedule value itself is kept unclipped, as in HF.
  * The refitted threshold is used from the next round on. In the transformers sources read for
    this (AssistedCandidateGenerator of 4.4x-4.5x and of current main), the refit is written to
    the assistant's generation config (a deep copy in current main) while the ConfidenceCriteria
    of the running generate() call was built from the candidate generator's own copy of the
    threshold, so within one prompt HF keeps stopping at the initial threshold. roc=False (or
    hf_confidence_static) reproduces that behaviour; roc=True models the evident intent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import register
from ._steps import check_nonneg
from .base import Context, Outcome, Plan, Policy, Signals

ROC_MIN_SAMPLES = 5  # HF refits only when len(probs) > 5
FN_COST = 3.0  # costs = fpr + 3 * fnr


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sklearn.metrics.roc_curve(labels, scores) with its defaults (drop_intermediate=True).

    Returns (fpr, tpr, thresholds); thresholds decrease, the first is +inf. Needs both labels.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    thresholds = s[idx]
    if fps.size > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold HF picks: argmin over the ROC points of FPR + 3 * (1 - TPR)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    return float(thresholds[int(np.argmin(fpr + FN_COST * (1.0 - tpr)))])


@dataclass(frozen=True)
class ConfidenceState:
    """hf_confidence's state: the current threshold and the (prob, matched) pairs so far."""

    threshold: float
    probs: tuple[float, ...] = field(default=())
    matches: tuple[int, ...] = field(default=())


def confidence_update(state: ConfidenceState, drafted_probs: np.ndarray,
                      accepted: int) -> ConfidenceState:
    """One call of AssistedCandidateGenerator.update_candidate_strategy's ROC part."""
    if not state.threshold:  # HF: `if ... assistant_confidence_threshold` (0 is off)
        return state
    probs = state.probs + tuple(float(p) for p in drafted_probs)
    matches = state.matches + (1,) * int(accepted)
    if len(probs) > len(matches):
        matches = matches + (0,)
    probs = probs[:len(matches)]
    threshold = state.threshold
    if len(probs) > ROC_MIN_SAMPLES and {0, 1}.issubset(matches):
        threshold = roc_threshold(np.asarray(matches), np.asarray(probs))
    return ConfidenceState(threshold, probs, matches)


@register
@dataclass(frozen=True)
class HFConfidenceStatic(Policy):
    """Stop after a drafted token with top-1 probability < threshold; at most k tokens.

    threshold: probability in [0, 1] (HF assistant_confidence_threshold, default 0.4; 0 is off).
    k: most tokens drafted per round (HF num_assistant_tokens, default 20).
    """

    name = "hf_confidence_static"
    threshold: float = 0.4
    k: int = 20

    def __post_init__(self) -> None:
        check_nonneg(k=self.k)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold!r} must be in [0, 1]")

    def signals(self) -> tuple[str, ...]:
        return ("top1_prob",)

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        return np.asarray(sig["top1_prob"], dtype=np.float64) < self.threshold


@register
@dataclass(frozen=True)
class HFConfidence(HFConfidenceStatic):
    """HF assistant confidence stop, threshold refitted by ROC after every round (roc=True).

    threshold: initial threshold, probability in [0, 1] (default 0.4; 0 is off, no refit).
    k: most tokens drafted per round (default 20). roc: refit the threshold (default True).
    State: ConfidenceState (threshold and the prompt's (probability, matched) pairs).
    """

    name = "hf_confidence"
    memoryless = False
    roc: bool = True

    def initial_state(self) -> ConfidenceState:
        return ConfidenceState(float(self.threshold))

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        threshold = self.threshold if state is None else state.threshold
        return np.asarray(sig["top1_prob"], dtype=np.float64) < threshold

    def update(self, state: Any, outcome: Outcome) -> ConfidenceState:
        state = self.initial_state() if state is None else state
        if not self.roc:
            return state
        probs = np.asarray(outcome.signals["top1_prob"], dtype=np.float64)[:outcome.drafted]
        return confidence_update(state, probs, outcome.accepted)


@register
@dataclass(frozen=True)
class HFHeuristic(Policy):
    """HF num_assistant_tokens_schedule="heuristic": +2 after an all-accepted round, else -1.

    k0: initial num_assistant_tokens (HF default 20). k: most tokens drafted per round, a cap
    on top of the schedule (default 64; HF has none). threshold: optional static confidence
    stop, top-1 probability (default 0: off; HF's own default assistant_confidence_threshold is
    0.4, so threshold=0.4 reproduces a default HF config with the heuristic schedule).
    State: the current num_assistant_tokens (an int, >= 1).
    """

    name = "hf_heuristic"
    memoryless = False
    k0: int = 20
    k: int = 64
    threshold: float = 0.0

    def __post_init__(self) -> None:
        check_nonneg(k=self.k)
        if not isinstance(self.k0, int) or self.k0 < 1:
            raise ValueError(f"k0={self.k0!r} must be an integer >= 1 (HF never drafts < 1)")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold!r} must be in [0, 1]")

    def signals(self) -> tuple[str, ...]:
        return ("top1_prob",) if self.threshold > 0 else ()

    def initial_state(self) -> int:
        return int(self.k0)

    def plan(self, state: Any, ctx: Context) -> Plan:
        tokens = self.k0 if state is None else int(state)
        shape = np.shape(ctx.position)
        return Plan(drafter=np.zeros(shape, dtype=np.int64),
                    cap=np.full(shape, min(tokens, self.k), dtype=np.int64))

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        if self.threshold <= 0:
            return np.zeros(np.shape(sig["entropy"]), dtype=bool)
        return np.asarray(sig["top1_prob"], dtype=np.float64) < self.threshold

    def update(self, state: Any, outcome: Outcome) -> int:
        tokens = self.k0 if state is None else int(state)
        if outcome.accepted == outcome.drafted:
            return tokens + 2
        return max(1, tokens - 1)
