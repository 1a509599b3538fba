"""Grid sweeps: every combination of parameter values, on every trace, on all cores.

Grid syntax (``--grid``, repeatable): ``name=a:b:step`` (inclusive range) or ``name=v1,v2,...``.
Results are one row per (trace, configuration): the parameters as ``param_<name>`` columns and
the scalar metrics of ``simulator.metrics``.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .engines import Pricer, Replay, oracle_for, run_fast, simulate
from .errors import GridError
from .latency import LatencyModel
from .policies import make
from .trace import Trace, read_trace, write_parquet_atomic

SCALARS = ("speedup", "tokens_per_second", "oracle_speedup", "acceptance_rate",
           "mean_accepted_tokens", "wasted_draft_tokens", "verifier_calls", "drafter_calls",
           "deviating_tokens", "quality_bias")


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["k=1:8:1", "theta=0.5,1.0"]`` -> {"k": ["1", ..., "8"], "theta": ["0.5", "1.0"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise GridError(f"--grid {item!r}: expected name=a:b:step or name=v1,v2,...")
        if name in grid:
            raise GridError(f"--grid {item!r}: {name} given twice")
        if ":" in spec:
            parts = spec.split(":")
            try:
                a, b, step = (float(x) for x in parts)
            except ValueError:
                raise GridError(f"--grid {item!r}: a:b:step must be three numbers") from None
            if len(parts) != 3 or step <= 0 or b < a:
                raise GridError(f"--grid {item!r}: need a <= b and step > 0")
            count = int(math.floor((b - a) / step + 1e-9)) + 1
            values = [a + i * step for i in range(count)]
            integral = all(float(x).is_integer() for x in parts)
            grid[name] = [str(int(v)) if integral else f"{v:.10g}" for v in values]
        else:
            grid[name] = [v for v in spec.split(",") if v]
        if not grid[name]:
            raise GridError(f"--grid {item!r}: no values")
    return grid


def configs(grid: dict[str, list[str]]) -> Iterator[dict[str, str]]:
    names = list(grid)
    for combo in itertools.product(*(grid[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


@dataclass
class _Worker:
    """Per-process state: traces read once, replays and prices reused across configurations."""

    traces: dict[str, tuple[Trace, Replay, Pricer]]
    latency: LatencyModel
    policy: str
    seed: int
    oracle_cache: dict[tuple[str, int], float]

    def evaluate(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        trace, rp, pricer = self.traces[path]
        policy = make(self.policy, params)
        out = simulate(trace, policy, self.latency, seed=self.seed, with_oracle=False,
                       replay=rp, pricer=pricer)
        key = (path, int(getattr(policy, "k", trace.k_max)))  # the oracle's cap (oracle_for)
        if key not in self.oracle_cache:
            oracle = oracle_for(policy, trace)
            rounds = run_fast(trace, oracle, self.latency, self.seed, replay=rp, pricer=pricer)
            self.oracle_cache[key] = float(pricer.baseline_ns(trace).sum() /
                                           rounds.wall_ns.sum())
        out["oracle_speedup"] = self.oracle_cache[key]
        row: dict[str, Any] = {"trace": path, "drafters": ",".join(trace.drafters)}
        row.update({f"param_{k}": v for k, v in policy.params().items()})
        row.update({k: out.get(k) for k in SCALARS})
        row["latency_p50_ms"] = out["latency_ms"]["p50"]
        row["latency_p99_ms"] = out["latency_ms"]["p99"]
        row["pricing"] = out["pricing"]
        return row


_STATE: _Worker | None = None


def _init(paths: list[str], latency: LatencyModel, policy: str, seed: int,
          drafters: Sequence[str] | None = None) -> None:
    global _STATE
    traces = {}
    for p in paths:
        tr = read_trace(p, drafters)
        traces[p] = (tr, Replay(tr, seed), Pricer(latency, tr))
    _STATE = _Worker(traces, latency, policy, seed, {})


def _chunk(jobs: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    assert _STATE is not None
    collect = gc.isenabled()
    gc.disable()  # the rows are acyclic; cyclic collections would only walk the heap
    try:
        return [_STATE.evaluate(path, params) for path, params in jobs]
    finally:
        if collect:
            gc.enable()


def run_sweep(paths: Sequence[str], policy: str, grid: dict[str, list[str]],
              latency: LatencyModel, seed: int = 0, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None,
              drafters: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Evaluate every configuration of ``grid`` on every trace; rows in grid order.
    ``drafters``: keep those drafters, in that order (``read_trace``)."""
    all_configs = list(configs(grid))
    make(policy, all_configs[0])  # fail fast on a bad name or parameter, in this process
    for cfg in all_configs[1:2]:
        make(policy, cfg)
    jobs = [(p, c) for p in paths for c in all_configs]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    size = max(1, min(256, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    rows: list[dict[str, Any]] = []
    done = 0
    if workers == 1:
        _init(list(paths), latency, policy, seed, drafters)
        for c in chunks:
            rows.extend(_chunk(c))
            done += len(c)
            if progress:
                progress(done, len(jobs))
        return rows
    with ProcessPoolExecutor(workers, initializer=_init,
                             initargs=(list(paths), latency, policy, seed, drafters)) as pool:
        for c, result in zip(chunks, pool.map(_chunk, chunks), strict=True):
            rows.extend(result)
            done += len(c)
            if progress:
                progress(done, len(jobs))
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (higher speedup, lower quality_bias); lossless rows have bias 0."""
    pts = sorted(rows, key=lambda r: (-r["speedup"], r.get("quality_bias") or 0.0))
    front, best_bias = [], math.inf
    for r in pts:
        bias = r.get("quality_bias") or 0.0
        if bias < best_bias:
            front.append(r)
            best_bias = bias
    return front


def write_rows(rows: list[dict[str, Any]], out: str) -> None:
    """Parquet (default) or CSV by extension, written atomically."""
    table = pa.Table.from_pylist(rows)
    if out.endswith(".csv"):
        tmp = f"{out}.tmp"
        pacsv.write_csv(table, tmp)
        os.replace(tmp, out)
    else:
        write_parquet_atomic(table, out)


def best(rows: list[dict[str, Any]], n: int = 5) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: -r["speedup"])[:n]


def _np_default(o: Any) -> Any:  # for json dumps of numpy scalars
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError
