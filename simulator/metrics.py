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

from typing import Any

import numpy as np

from .engines.replay import Rounds
from .policies import Policy
from .trace import Trace


def _pct(values_ms: np.ndarray) -> dict[str, float]:
    if values_ms.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    q = np.percentile(values_ms, [50, 90, 99])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])}


def drafter_calls(trace: Trace, r: Rounds) -> int:
    n_d = len(trace.drafters)
    probe_extra = np.where(r.drafted > 0, n_d - 1, n_d)
    return int(r.drafted.sum() + np.sum(np.where(r.probe.astype(bool), probe_extra, 0)))


def summarize(trace: Trace, policy: Policy, r: Rounds, baseline_ns: np.ndarray,
              pricing: str, engine: str, seed: int) -> dict[str, Any]:
    """The metrics dict of a run (see the module docstring for each key)."""
    emitted = r.emitted
    tokens = int(emitted.sum())
    total_ns = int(r.wall_ns.sum())
    base_ns = int(baseline_ns.sum())
    drafted, accepted = int(r.drafted.sum()), int(r.accepted.sum())
    per_token_ms = np.repeat(r.wall_ns / np.maximum(emitted, 1) / 1e6, emitted)
    hist = np.bincount(r.drafted) if r.drafted.size else np.zeros(1, dtype=np.int64)
    out: dict[str, Any] = {
        "policy": policy.name,
        "params": policy.params(),
        "engine": engine,
        "pricing": pricing,
        "trace": trace.path,
        "synthetic": bool(trace.meta.get("synthetic", False)),
        "seed": seed,
        "prompts": trace.n_prompts,
        "tokens": tokens,
        "time_s": total_ns / 1e9,
        "tokens_per_second": tokens / (total_ns / 1e9) if total_ns else float("inf"),
        "baseline_tokens_per_second": tokens / (base_ns / 1e9) if base_ns else float("inf"),
        "speedup": base_ns / total_ns if total_ns else float("inf"),
        "acceptance_rate": accepted / drafted if drafted else None,
        "mean_accepted_tokens": tokens / r.prompt.size if r.prompt.size else None,
        "draft_length_hist": {str(i): int(c) for i, c in enumerate(hist) if c},
        "latency_ms": _pct(per_token_ms),
        "verifier_calls": int(r.prompt.size),
        "drafter_calls": drafter_calls(trace, r),
        "drafted_tokens": drafted,
        "accepted_tokens": accepted,
        "wasted_draft_tokens": drafted - accepted,
        "draft_time_share": float(r.draft_ns.sum() / total_ns) if total_ns else 0.0,
    }
    if len(trace.drafters) > 1:
        share = np.bincount(r.drafter[r.drafted > 0], minlength=len(trace.drafters))
        out["drafter_share"] = {name: float(c / max(share.sum(), 1))
                                for name, c in zip(trace.drafters, share, strict=True)}
    if policy.lossy:
        out["deviating_tokens"] = int(r.deviating.sum())
        out["relaxed_tokens"] = int(r.relaxed.sum())
        out["quality_bias"] = float(r.bias.sum())
    return out
