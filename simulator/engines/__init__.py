"""Engines: ``simulate`` runs one policy on one trace and returns its metrics.

  reference  step-by-step replay, the executable specification (slow)
  fast       numpy over whole traces, for sweeps (default)
  events     simpy processes and resources: concurrency and device placement
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..latency import LatencyModel
from ..metrics import summarize
from ..policies import Policy, make
from ..trace import Trace
from .events import PLACEMENTS, run_events
from .fast import run_fast, run_fast_tallied
from .reference import run_reference
from .replay import Pricer, Replay, Rounds

ENGINES = ("fast", "events", "reference")

__all__ = ["ENGINES", "PLACEMENTS", "Pricer", "Replay", "Rounds", "oracle_for", "run_events",
           "run_fast", "run_reference", "simulate"]


def oracle_for(policy: Policy, trace: Trace) -> Policy:
    """The oracle at the same cap as ``policy`` (its ``k``, else the trace's free-run k_max)."""
    return make("oracle", {"k": int(getattr(policy, "k", trace.k_max))})


def simulate(trace: Trace, policy: Policy, latency: LatencyModel, engine: str = "fast",
             seed: int = 0, concurrency: int = 1, placement: str = "shared",
             with_oracle: bool = True, replay: Replay | None = None,
             pricer: Pricer | None = None) -> dict[str, Any]:
    """Metrics of ``policy`` on ``trace`` priced by ``latency`` (see simulator.metrics)."""
    pricer = pricer or Pricer(latency, trace)
    served, tallies = None, None
    if engine == "fast":
        rounds, tallies = run_fast_tallied(  # the metrics need no log where the tallies do
            trace, policy, latency, seed, replay=replay, pricer=pricer,
            keep=(len(trace.drafters) > 1 and policy.routes()) or policy.lossy)
    elif engine == "reference":
        rounds = run_reference(trace, policy, latency, seed)
    elif engine == "events":
        served = run_events(trace, policy, latency, seed, concurrency, placement)
        rounds = served.rounds
    else:
        raise ValueError(f"engine {engine!r} not in {ENGINES}")
    baseline = pricer.baseline_ns(trace)
    out = summarize(trace, policy, rounds, baseline, latency.source, engine, seed, tallies)
    if served is not None and concurrency > 1:
        span = served.makespan_ns / 1e9
        req = (served.request_end_ns - served.request_start_ns) / 1e9
        out["serving"] = {
            "concurrency": concurrency, "placement": placement, "makespan_s": span,
            "throughput_tokens_per_second": out["tokens"] / span,
            "request_latency_s": {f"p{q}": float(np.percentile(req, q)) for q in (50, 90, 99)},
        }
    if with_oracle:
        oracle = oracle_for(policy, trace)
        o_rounds = run_fast(trace, oracle, latency, seed, pricer=pricer)
        out["oracle_speedup"] = float(baseline.sum() / o_rounds.wall_ns.sum())
        out["oracle_params"] = oracle.params()
    return out
