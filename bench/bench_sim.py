"""Simulator benchmark: a 10,000-configuration sweep vs the step-by-step reference, and the
event engine's simulated tokens per second. Prints a table with ratios.

    python bench/bench_sim.py [--trace F] [--configs 10000] [--reference-sample 20]

The reference replay of 10,000 configurations would take hours, so it is timed on a random
sample of the same grid in the same run and its per-configuration time scaled up; the table says
so. The sweep's CPU time (this process and its workers) is printed next to its wall time, with
the load average: on a shared machine the wall time follows the CPU share left to the sweep.
Targets (issue 2): sweep <= 10 s on 2 cores and >= 100x the reference; event engine
>= 200k simulated tokens/s single-stream.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import numpy as np

from simulator.engines import run_events, simulate
from simulator.latency import parse_latency
from simulator.policies import make
from simulator.sweep import configs, run_sweep
from simulator.synth import write_synth
from simulator.trace import read_trace


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its terminated children."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", help="trace to use (default: synthetic, 30k tokens, alpha 0.7)")
    ap.add_argument("--configs", type=int, default=10_000)
    ap.add_argument("--reference-sample", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    path = args.trace
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "bench.parquet")
        write_synth(path, [0.7], tokens=30_000, prompts=100, seed=0)
    trace = read_trace(path)
    lat = parse_latency("const:draft=0.1,verify=1")
    ks = 16
    n_theta = max(1, args.configs // ks)
    grid = {"theta": [f"{0.05 + 3.0 * i / n_theta:.6g}" for i in range(n_theta)],
            "k": [str(k) for k in range(1, ks + 1)]}
    n_cfg = n_theta * ks
    print(f"trace {path}: {trace.n_positions} tokens, {trace.n_prompts} prompts"
          f"{' (synthetic)' if trace.meta.get('synthetic') else ''}; policy stop_absolute, "
          f"grid theta x k = {n_theta} x {ks} = {n_cfg} configurations, {lat.source}")

    run_sweep([path], "stop_absolute", {"theta": grid["theta"][:2], "k": ["16"]}, lat,
              workers=1)  # compile and warm up outside the timing
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    rows = run_sweep([path], "stop_absolute", grid, lat, workers=args.workers)
    sweep_s = time.perf_counter() - t0
    sweep_cpu = _cpu_s() - cpu0  # this process and its (joined) workers
    load = os.getloadavg()
    assert len(rows) == n_cfg

    rng = np.random.default_rng(0)
    all_cfg = list(configs(grid))
    sample = [all_cfg[i] for i in rng.choice(len(all_cfg), args.reference_sample, replace=False)]
    t0 = time.perf_counter()
    for cfg in sample:
        ref = simulate(trace, make("stop_absolute", cfg), lat, engine="reference",
                       with_oracle=False)
        fast = next(r for r in rows if r["param_theta"] == float(cfg["theta"])
                    and r["param_k"] == int(cfg["k"]))
        assert ref["speedup"] == fast["speedup"], "engines disagree"
    ref_per_cfg = (time.perf_counter() - t0) / len(sample)
    ref_total = ref_per_cfg * n_cfg

    pol = make("stop_absolute", {"theta": "1.0", "k": "8"})
    run_events(trace, pol, lat)  # warm-up: lookup tables and compilation
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run_events(trace, pol, lat)
        times.append(time.perf_counter() - t0)
    ev_tps = trace.n_positions / statistics.median(times)

    print(f"\nload average after the sweep: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    print("| measurement | value | target | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| fast sweep, {n_cfg} configs, {args.workers} workers | {sweep_s:.2f} s | <= 10 s | "
          f"{10 / sweep_s:.2f}x of target |")
    print(f"| fast sweep per configuration | {sweep_s / n_cfg * 1e3:.3f} ms | | |")
    print(f"| fast sweep CPU time (user + system, all processes) | {sweep_cpu:.2f} s "
          f"({sweep_cpu / n_cfg * 1e3:.3f} ms/config) | | |")
    print(f"| reference replay per configuration ({len(sample)} sampled, 1 process) | "
          f"{ref_per_cfg * 1e3:.1f} ms | | |")
    print(f"| reference replay of the sweep (scaled from the sample) | {ref_total:.0f} s | | |")
    print(f"| fast sweep vs reference | {ref_total / sweep_s:.0f}x | >= 100x | "
          f"{ref_total / sweep_s / 100:.2f}x of target |")
    print(f"| event engine, single stream (median of 3) | {ev_tps / 1e3:.0f}k tokens/s | "
          f">= 200k | {ev_tps / 200e3:.2f}x of target |")


if __name__ == "__main__":
    main()
