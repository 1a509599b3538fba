"""Metrics: one function turns a round log into every number a run reports.

Definitions (units in the names):
  tokens                 tokens emitted (all prompts)
  time_s                 seconds of decoding, prefill included (the first round of a prompt
                         feeds the prompt), summed over prompts run one at a time
  tokens_per_second      tokens / time_s
  speedup                verifier-only decoding time / time_s, same latency model and prompts
  acceptance_rate        accepted drafts / drafted tokens
  mean_accepted_tokens   tokens per verifier call, bonus token included (Spec-Bench's tau)
  draft_length_hist      rounds per number of drafted tokens
  latency_ms             per-token latency percentiles: a round's wall time divided evenly
                         among the tokens it emitted (time per output token)
  verifier_calls         verifier forward passes (= rounds)
  drafter_calls          drafter forward passes (steps, probes included)
  wasted_draft_tokens    drafted tokens that were not accepted
  deviating_tokens       lossy policies: accepted tokens the standard rule would have rejected
  quality_bias           lossy policies: sum over decided positions of TV(pi, p)
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from .kernels import percentile_parts, tally

if TYPE_CHECKING:
    from .engines.replay import Rounds
    from .policies import Policy
    from .trace import Trace

PERCENTILES = (50, 90, 99)


@functools.lru_cache(maxsize=64)
def _quantiles(q: tuple[float, ...]) -> np.ndarray:
    """q / 100 as numpy's percentile computes it (float64), read-only."""
    out = np.array([x / 100 for x in q], dtype=np.float64)
    out.flags.writeable = False
    return out


def repeated_percentiles(values: np.ndarray, counts: np.ndarray,
                         q: tuple[float, ...] = PERCENTILES) -> np.ndarray:
    """``np.percentile(np.repeat(values, counts), q)`` (method "linear"), bit for bit, without
    building the repeated array: the two entries numpy interpolates between, for each q, are
    selected by count (``kernels.percentile_parts``), then combined with numpy's ``_lerp``.
    NaN where a counted value is NaN or nothing is counted (numpy raises on an empty array)."""
    a, b, gamma = percentile_parts(np.ascontiguousarray(values, dtype=np.float64),
                                   np.ascontiguousarray(counts, dtype=np.int64),
                                   _quantiles(tuple(q))).tolist()
    out = []
    for lo, hi, t in zip(a, b, gamma, strict=True):
        diff = hi - lo  # numpy's _lerp, in the same float64 operations
        out.append(hi - diff * (1 - t) if t >= 0.5 else lo + diff * t)
    return np.asarray(out, dtype=np.float64)


def _pct(values_ms: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    q = repeated_percentiles(values_ms, counts)
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}


def drafter_calls(trace: Trace, r: Rounds) -> int:
    n_d = len(trace.drafters)
    probe_extra = np.where(r.drafted > 0, n_d - 1, n_d)
    return int(r.drafted.sum() + np.sum(np.where(r.probe.astype(bool), probe_extra, 0)))


def summarize(trace: Trace, policy: Policy, r: Rounds | None, baseline_ns: np.ndarray,
              pricing: str, engine: str, seed: int, tallies: tuple | None = None
              ) -> dict[str, Any]:
    """The metrics dict of a run (see the module docstring for each key). ``tallies``: what
    ``kernels.tally`` gives on the round log ``r``, where the engine computed it already;
    then ``r`` may be None for a trace with one drafter and a lossless policy."""
    if tallies is None:
        assert r is not None
        tallies = tally(r.drafted, r.accepted, r.start, r.length, r.probe, r.wall_ns,
                        r.draft_ns, len(trace.drafters))
    sums, hist, emitted, per_token_ms = tallies
    n_rounds = emitted.size
    tokens, total_ns, drafted, accepted, draft_ns, n_drafter_calls = sums.tolist()
    base_ns = int(baseline_ns.sum())
    out: dict[str, Any] = {
        "policy": policy.name,
        "params": policy.params(),
        "engine": engine,
        "pricing": pricing,
        "trace": trace.path,
        "drafters": list(trace.drafters),
        "synthetic": bool(trace.meta.get("synthetic", False)),
        "seed": seed,
        "prompts": trace.n_prompts,
        "tokens": tokens,
        "time_s": total_ns / 1e9,
        "tokens_per_second": tokens / (total_ns / 1e9) if total_ns else float("inf"),
        "baseline_tokens_per_second": tokens / (base_ns / 1e9) if base_ns else float("inf"),
        "speedup": base_ns / total_ns if total_ns else float("inf"),
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_tokens": tokens / n_rounds if n_rounds else None,
        "draft_length_hist": {str(i): c for i, c in enumerate(hist.tolist()) if c},
        "latency_ms": _pct(per_token_ms, emitted),
        "verifier_calls": n_rounds,
        "drafter_calls": n_drafter_calls,
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "wasted_draft_tokens": drafted - accepted,
        "draft_time_share": float(np.int64(draft_ns) / total_ns) if total_ns else 0.0,
    }
    if len(trace.drafters) > 1 and policy.routes():
        assert r is not None
        share = np.bincount(r.drafter[r.drafted > 0], minlength=len(trace.drafters))
        out["drafter_share"] = {name: float(c / max(share.sum(), 1))
                                for name, c in zip(trace.drafters, share, strict=True)}
    if policy.lossy:
        assert r is not None
        out["deviating_tokens"] = int(r.deviating.sum())
        out["relaxed_tokens"] = int(r.relaxed.sum())
        out["quality_bias"] = float(r.bias.sum())
    return out
