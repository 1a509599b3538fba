"""``validate --pair``: run policies for real and compare with the simulator's prediction.

For one pair and a few prompts: use this machine's latency profile (``resolve_profile``: the
profile whose recorded CPU model, logical CPUs and torch threads, or GPU name and count, are this
machine's; calibrate first if there is none), record the trace of those prompts, run the real
decoder (validator.decoder) for every policy, replay the same trace through the simulator (fast
engine) priced by that profile, and compare per policy:

  tokens_per_second      generated tokens / wall seconds, prefill included (prompts one at a
                         time, batch 1): measured with time.perf_counter around the decoder;
                         predicted = simulator ``tokens_per_second``
  acceptance_rate        accepted drafts / drafted tokens
  mean_accepted_tokens   tokens per verifier call (bonus included)
  error                  predicted / measured - 1 for each of the three

"verifier-only" (policy ``fixed`` with k = 0: one verifier call per token) runs beside the
policies, so measured and predicted speedups can be compared too. Prompts run in the outer loop
and policies in the inner one, so slow drift of the machine spreads evenly over policies.

Greedy: the decoder's output for a prompt is the trace's ``token_id`` sequence unless the
batched recording and the batch-1 decoder round a near-tie differently; on prompts whose output
is identical, the accepted-token counts of the decoder and the simulator must be equal, and
``greedy_counts_equal`` says whether they were (per prompt, per policy).

Machine speed: where the profile holds a "probe" (validator.calibrate.Probe: the verifier's
one-token step at context 256, median over the calibration), the probe is timed PROBE_CALLS
times before every real run and once more after the last. A run's speed factor is the median
of the probe timings just before and just after it over the profile's median; "adjusted"
predictions price each (prompt, policy) run at its factor. Raw and adjusted errors are both
reported: the raw one says how far a profile carries across time on this machine, the adjusted
one how good the cost model is at the machine's speed of the moment.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.errors import EntrospecError, PolicyError
from simulator.policies import Policy, make

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
METRICS = ("tokens_per_second", "acceptance_rate", "mean_accepted_tokens")
BASELINE = "verifier-only"
PROBE_CALLS = 5  # probe timings before each real run (validator.calibrate.Probe)

# The issue-5 target set: fixed k 1..8, three entropy stops, HF confidence (12 configurations).
TARGET_SUITE = (*(f"fixed:k={k}" for k in range(1, 9)), "stop_absolute:theta=1.0,k=8",
                "stop_relative:rho=1.5,k=8", "stop_adaptive:k=8", "hf_confidence:k=8")


class ValidateError(EntrospecError):
    """Bad policy spec, suite or output folder (one-line message)."""


@dataclass(frozen=True)
class PolicySpec:
    """A policy by registry name and parameters, with the label it is reported under."""

    label: str
    name: str
    params: dict[str, str]

    def make(self) -> Policy:
        return make(self.name, self.params)


def parse_policy(spec: str, extra: dict[str, str] | None = None) -> PolicySpec:
    """``"NAME"`` or ``"NAME:key=value,key=value"`` (plus ``extra`` params) -> PolicySpec."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidateError(f"--policy {spec!r}: expected NAME or NAME:key=value,...")
        params[key.strip()] = value.strip()
    params.update(extra or {})
    try:
        policy = make(name, params)
    except PolicyError as exc:
        raise ValidateError(f"--policy {spec!r}: {exc}") from None
    label = name + "".join(f" {k}={v}" for k, v in policy.params().items()
                           if k in params)
    return PolicySpec(label, name, params)


def policy_specs(specs: Sequence[str], params: dict[str, str] | None = None,
                 suite: str | None = None) -> list[PolicySpec]:
    """The policies to validate: ``specs`` (each with ``params``), else the named suite."""
    if not specs and suite in (None, "target"):
        specs = TARGET_SUITE
    elif not specs:
        raise ValidateError(f"--suite {suite!r}: known suites: target")
    out = [parse_policy(s, params) for s in specs]
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise ValidateError(f"--policy: the same policy twice ({', '.join(labels)})")
    return out


# ---- measured --------------------------------------------------------------------------------

def run_real(models: Any, drafter_names: Sequence[str], ids: Sequence[Sequence[int]],
             specs: Sequence[PolicySpec], max_new_tokens: int, temperature: float, seed: int,
             topk: int = 10, tick: Callable[[], None] | None = None,
             probe: Any = None, probes: dict[str, list[list[float]]] | None = None
             ) -> dict[str, list[Any]]:
    """Run the real decoder: label -> one DecodeResult per prompt (baseline included).

    One untimed warm-up generation first (lazy initialisation, allocator). Prompts outer,
    policies inner; sampling seed ``seed + prompt index`` for every policy. With ``probe``
    (validator.calibrate.Probe), ``probes[label]`` gets, per prompt, the probe timings just
    before and just after that run (seconds).
    """
    import torch

    from .decoder import speculative_generate

    drafters = [models.drafters[n] for n in drafter_names]
    device = next(models.verifier.parameters()).device
    runs = [PolicySpec(BASELINE, "fixed", {"k": "0"}), *specs]
    first = torch.tensor(ids[0], dtype=torch.long, device=device)
    speculative_generate(models.verifier, drafters, first, make("fixed", {"k": "2"}),
                         max_new_tokens=min(8, max_new_tokens), temperature=temperature,
                         eos_token_id=models.eos_ids, topk=topk)
    out: dict[str, list[Any]] = {s.label: [] for s in runs}
    before: list[float] = probe.measure(PROBE_CALLS) if probe is not None else []
    for i, prompt in enumerate(ids):
        x = torch.tensor(prompt, dtype=torch.long, device=device)
        for spec in runs:
            gen = torch.Generator(device=device).manual_seed(seed + i)
            out[spec.label].append(speculative_generate(
                models.verifier, drafters, x, spec.make(), max_new_tokens=max_new_tokens,
                temperature=temperature, generator=gen, eos_token_id=models.eos_ids, topk=topk))
            if probe is not None and probes is not None:
                after = probe.measure(PROBE_CALLS)
                probes.setdefault(spec.label, []).append(before + after)
                before = after
            if tick is not None:
                tick()
    return out


def measured_metrics(results: Sequence[Any]) -> dict[str, Any]:
    """The compared metrics of one policy's DecodeResults (all prompts)."""
    tokens = sum(len(r.tokens) for r in results)
    seconds = sum(r.seconds for r in results)
    drafted = sum(x.drafted for r in results for x in r.rounds)
    accepted = sum(x.accepted for r in results for x in r.rounds)
    calls = sum(len(r.rounds) for r in results)
    return {"tokens": tokens, "time_s": seconds, "tokens_per_second": tokens / seconds,
            "acceptance_rate": accepted / drafted if drafted else None,
            "mean_accepted_tokens": tokens / calls if calls else None,
            "drafted_tokens": drafted, "accepted_tokens": accepted, "verifier_calls": calls}


# ---- predicted -------------------------------------------------------------------------------

def predict(trace: Any, specs: Sequence[PolicySpec], latency: Any,
            seed: int) -> dict[str, tuple[dict[str, Any], Any]]:
    """label -> (simulator metrics, Rounds) on ``trace`` priced by ``latency`` (baseline too)."""
    from simulator.engines import Pricer, simulate
    from simulator.engines.fast import run_fast

    pricer = Pricer(latency, trace)
    out = {}
    for spec in [PolicySpec(BASELINE, "fixed", {"k": "0"}), *specs]:
        policy = spec.make()
        metrics = simulate(trace, policy, latency, "fast", seed, with_oracle=False,
                           pricer=pricer)
        out[spec.label] = (metrics, run_fast(trace, policy, latency, seed, pricer=pricer))
    return out


# ---- comparison ------------------------------------------------------------------------------

def rel_error(predicted: float | None, measured: float | None) -> float | None:
    """predicted / measured - 1 (None where either is missing or measured is 0)."""
    if predicted is None or measured is None or measured == 0:
        return None
    return predicted / measured - 1


def greedy_check(trace: Any, results: Sequence[Any], rounds: Any) -> dict[str, Any]:
    """Prompts whose decoder output is the trace's; on those, accepted counts per prompt."""
    same, equal, diverged = 0, 0, []
    for i, res in enumerate(results):
        lo, hi = trace.offsets[i], trace.offsets[i + 1]
        recorded = trace.token_id[lo:hi].tolist()
        if list(res.tokens) != recorded:
            diverged.append(trace.prompt_ids[i])
            continue
        same += 1
        real = sum(x.accepted for x in res.rounds)
        sim = int(rounds.accepted[rounds.prompt == i].sum())
        equal += int(real == sim)
    return {"identical_prompts": same, "counts_equal_prompts": equal,
            "greedy_counts_equal": same > 0 and equal == same, "diverged": diverged}


def speed_factors(probes: Sequence[Sequence[float]], reference_s: float) -> np.ndarray:
    """Per run: median probe timing around it / the profile's probe median (> 1: slower now)."""
    return np.array([statistics.median(t) / reference_s for t in probes])


def adjusted_tokens_per_second(trace: Any, rounds: Any, factors: np.ndarray) -> float:
    """Predicted tokens/s with prompt i's predicted time scaled by ``factors[i]``."""
    per_prompt_s = np.bincount(rounds.prompt, weights=rounds.wall_ns,
                               minlength=trace.n_prompts) / 1e9
    return float(trace.lengths.sum() / (per_prompt_s * factors).sum())


def compare(trace: Any, specs: Sequence[PolicySpec], real: dict[str, list[Any]],
            predicted: dict[str, tuple[dict[str, Any], Any]], greedy: bool,
            probes: dict[str, list[list[float]]] | None = None,
            probe_reference_s: float | None = None) -> dict[str, Any]:
    """Per policy: measured, predicted, error (and the greedy count check); plus a summary.
    With ``probes`` (run_real) and the profile's probe median: the speed-adjusted prediction
    and its error too (module docstring)."""
    labels = [BASELINE, *(s.label for s in specs)]
    factors: dict[str, np.ndarray] = {}
    if probes and probe_reference_s is not None:
        factors = {label: speed_factors(probes[label], probe_reference_s) for label in labels}
    checks = {label: greedy_check(trace, real[label], predicted[label][1])
              for label in labels} if greedy else None
    return compare_metrics(trace, specs, {label: measured_metrics(real[label]) for label in labels},
                           predicted, checks, factors, probe_reference_s)


def compare_metrics(trace: Any, specs: Sequence[PolicySpec], measured: dict[str, dict[str, Any]],
                    predicted: dict[str, tuple[dict[str, Any], Any]],
                    checks: dict[str, dict[str, Any]] | None, factors: dict[str, np.ndarray],
                    probe_reference_s: float | None = None) -> dict[str, Any]:
    """``compare`` from measured metrics (``measured_metrics``), greedy checks and per-run speed
    factors already at hand: what ``reprice`` re-runs with another latency model."""
    policies: dict[str, Any] = {}
    base_m = measured[BASELINE]
    base_p = predicted[BASELINE][0]
    adj = {label: adjusted_tokens_per_second(trace, predicted[label][1], f)
           for label, f in factors.items()}
    for spec in [PolicySpec(BASELINE, "fixed", {"k": "0"}), *specs]:
        m = dict(measured[spec.label])
        p_full, rounds = predicted[spec.label]
        p = {k: p_full[k] for k in ("tokens", "time_s", *METRICS, "drafted_tokens",
                                    "accepted_tokens", "verifier_calls")}
        m["speedup"] = m["tokens_per_second"] / base_m["tokens_per_second"]
        p["speedup"] = p["tokens_per_second"] / base_p["tokens_per_second"]
        entry: dict[str, Any] = {
            "policy": spec.name, "params": spec.make().params(), "measured": m, "predicted": p,
            "error": {k: rel_error(p[k], m[k]) for k in (*METRICS, "speedup")}}
        if factors:
            tps, f = adj[spec.label], factors[spec.label]
            entry["adjusted"] = {
                "speed_factor_mean": float(f.mean()), "speed_factor_min": float(f.min()),
                "speed_factor_max": float(f.max()), "speed_factors": f.tolist(),
                "tokens_per_second": tps, "speedup": tps / adj[BASELINE],
                "error_tokens_per_second": rel_error(tps, m["tokens_per_second"]),
                "error_speedup": rel_error(tps / adj[BASELINE], m["speedup"])}
        if checks is not None:
            entry["greedy"] = checks[spec.label]
        policies[spec.label] = entry
    errs = [abs(e["error"]["tokens_per_second"]) for e in policies.values()]
    summary: dict[str, Any] = {"configurations": len(policies),
                               "median_abs_error_tokens_per_second": statistics.median(errs),
                               "max_abs_error_tokens_per_second": max(errs)}
    if factors:
        adj_errs = [abs(e["adjusted"]["error_tokens_per_second"]) for e in policies.values()]
        summary["adjusted_median_abs_error_tokens_per_second"] = statistics.median(adj_errs)
        summary["adjusted_max_abs_error_tokens_per_second"] = max(adj_errs)
        summary["probe_reference_s"] = probe_reference_s
        every = np.concatenate(list(factors.values()))
        summary["speed_factor_range"] = [float(every.min()), float(every.max())]
    if checks is not None:
        summary["greedy_counts_equal"] = all(e["greedy"]["greedy_counts_equal"]
                                             for e in policies.values())
    return {"policies": policies, "summary": summary}


def reprice(source: Path, profile: Path, out: Path, command: str = "") -> dict[str, Any]:
    """Re-price a ``validate --pair`` result with another latency profile: the same trace and
    policies through the simulator, compared with the measurements stored in ``source``
    (validate.json); nothing runs on the models. Speed-adjusted errors are recomputed where the
    result stores its per-run speed factors. Writes validate.json, report.md and the plot to
    ``out``."""
    from simulator.trace import read_trace

    try:
        doc = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise ValidateError(f"{source}: not a readable validate.json ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("policies"), dict) \
            or BASELINE not in doc["policies"] or "trace" not in doc:
        raise ValidateError(f"{source}: not a validate.json of `validate --pair`")
    if doc.get("timing_only"):
        raise ValidateError(f"{source}: a --timing-only result; re-run it to re-price")
    trace_path = Path(doc["trace"])
    if not trace_path.is_file():
        raise ValidateError(f"{source}: its trace {trace_path} is missing")
    if not profile.is_file():
        raise ValidateError(f"--profile {profile}: no such file")
    trace = read_trace(str(trace_path), doc.get("drafters"))
    entries = {k: v for k, v in doc["policies"].items() if k != BASELINE}
    specs = [PolicySpec(label, e["policy"], {k: str(v) for k, v in e["params"].items()})
             for label, e in entries.items()]
    latency = _load_profile(profile)
    predicted = predict(trace, specs, latency, int(doc.get("seed", 0)))
    every = doc["policies"]
    stored = [e.get("adjusted", {}).get("speed_factors") for e in every.values()]
    factors = {label: np.asarray(f) for label, f in zip(every, stored, strict=True)} \
        if all(f is not None for f in stored) else {}
    checks = {label: e["greedy"] for label, e in every.items()} \
        if all("greedy" in e for e in every.values()) else None
    reference = doc.get("summary", {}).get("probe_reference_s")
    measured = {label: {k: v for k, v in e["measured"].items() if k != "speedup"}
                for label, e in every.items()}
    result = compare_metrics(trace, specs, measured, predicted, checks, factors,
                             reference if factors else None)
    note = profile_note(profile, hardware_of(read_profile(profile) or {}), hardware_of(doc)) \
        if hardware_of(doc) else None
    new = {**{k: v for k, v in doc.items() if k != "profile_note"}, "pricing": latency.source,
           **({"profile_note": note} if note else {}), **result,
           "repriced": {"at": now(), "from": str(source), "pricing_before": doc.get("pricing"),
                        "command": command,
                        "note": "predictions re-priced with this profile; measurements are "
                                "those of the original run" + ("" if factors else
                                "; no per-run speed factors stored, so no adjusted errors")}}
    write_report(new, out)
    return new


# ---- report ----------------------------------------------------------------------------------

def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed and Markdown tables (policy, tok/s, acceptance, tau, errors)."""
    rows = []
    for label, e in result["policies"].items():
        m, p, err = e["measured"], e["predicted"], e["error"]
        rows.append([label, _fmt(m["tokens_per_second"], ".2f"),
                     _fmt(p["tokens_per_second"], ".2f"), _fmt(err["tokens_per_second"], "+.1%"),
                     _fmt(m["acceptance_rate"], ".3f"), _fmt(p["acceptance_rate"], ".3f"),
                     _fmt(m["mean_accepted_tokens"], ".3f"),
                     _fmt(p["mean_accepted_tokens"], ".3f"), _fmt(m["speedup"], ".2f"),
                     _fmt(p["speedup"], ".2f")])
        if "adjusted" in e:
            a = e["adjusted"]
            rows[-1] += [_fmt(a["tokens_per_second"], ".2f"),
                         _fmt(a["error_tokens_per_second"], "+.1%"),
                         f"{a['speed_factor_min']:.2f}-{a['speed_factor_max']:.2f}"]
    return rows


HEADER = ["policy", "measured tok/s", "predicted tok/s", "error", "measured accept",
          "predicted accept", "measured tau", "predicted tau", "measured speedup",
          "predicted speedup"]
ADJUSTED_HEADER = ["adjusted predicted tok/s", "adjusted error", "speed factors"]


def write_report(doc: dict[str, Any], folder: Path) -> Path:
    """``folder``/report.md, validate.json and predicted_vs_measured.png (atomic writes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    labels = list(doc["policies"])
    meas = np.array([doc["policies"][k]["measured"]["tokens_per_second"] for k in labels])
    pred = np.array([doc["policies"][k]["predicted"]["tokens_per_second"] for k in labels])
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    lo, hi = 0.9 * min(meas.min(), pred.min()), 1.1 * max(meas.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, label="prediction = measurement")
    ax.fill_between([lo, hi], [0.95 * lo, 0.95 * hi], [1.05 * lo, 1.05 * hi], color="grey",
                    alpha=0.15, label="±5%")
    ax.scatter(meas, pred, s=18, zorder=3)
    for x, y, name in zip(meas, pred, labels, strict=True):
        ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured tokens/s (real decoder)",
           ylabel="predicted tokens/s (simulator, profile)",
           title=f"{doc['pair']}: predicted vs measured ({doc['device']})")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    png = folder / "predicted_vs_measured.png"
    tmp = folder / f".{png.name}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, png)
    s = doc["summary"]
    t = doc["temperature"]
    decoding = "greedy" if t == 0 else f"temperature {t}"
    med, mx = s["median_abs_error_tokens_per_second"], s["max_abs_error_tokens_per_second"]
    lines = [f"# validate: {doc['pair']} on {doc['device']}", "",
             f"Command: `{doc['command']}`", "",
             f"- prompts: {doc['prompts']} from `{doc['dataset']}`, up to {doc['max_new_tokens']} "
             f"new tokens, {decoding}",
             f"- trace: `{doc['trace']}` (recorded here, same prompts)",
             f"- pricing: `{doc['pricing']}`",
             *([f"- **profile from another machine**: {doc['profile_note']}"]
               if doc.get("profile_note") else []),
             f"- hardware: {doc['hardware']}",
             f"- measured {doc['measured_at']}"]
    if "repriced" in doc:
        r = doc["repriced"]
        lines.append(f"- re-priced {r['at']} by `{r['command']}` (pricing before: "
                     f"`{r['pricing_before']}`): {r['note']}")
    lines += ["", f"Median |error| of predicted tokens/s: **{med:.1%}**, max **{mx:.1%}** over "
             f"{s['configurations']} "
             "configurations (verifier-only included)."]
    if "greedy_counts_equal" in s:
        lines.append(f"Greedy accepted-token counts equal between decoder and simulator on "
                     f"every prompt with identical output: **{s['greedy_counts_equal']}**.")
    if "adjusted_median_abs_error_tokens_per_second" in s:
        lo, hi = s["speed_factor_range"]
        lines.append(
            f"Speed-adjusted (each run priced at the machine's speed of the moment, from the "
            f"probe timed around it; factors {lo:.2f}-{hi:.2f}): median |error| "
            f"**{s['adjusted_median_abs_error_tokens_per_second']:.1%}**, max "
            f"**{s['adjusted_max_abs_error_tokens_per_second']:.1%}**.")
    header = HEADER + (ADJUSTED_HEADER if "adjusted_median_abs_error_tokens_per_second" in s
                       else [])
    lines += ["", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(doc)]
    if "greedy_counts_equal" in s:
        lines += ["", "| policy | prompts with identical output | accepted counts equal |",
                  "| --- | --- | --- |"]
        for label, e in doc["policies"].items():
            g = e["greedy"]
            lines.append(f"| {label} | {g['identical_prompts']}/{doc['prompts']} | "
                         f"{g['counts_equal_prompts']}/{g['identical_prompts']} |")
    lines += ["", "![predicted vs measured](predicted_vs_measured.png)", "",
              "Error = predicted / measured − 1. Measured: wall clock of the real decoder "
              "(validator/decoder.py), batch 1, prefill included. Predicted: `sim` fast engine "
              "on the trace of the same prompts, priced by the profile above. Adjusted: the "
              "same, each (prompt, policy) run's predicted time times its speed factor = "
              "median probe timing around the run / the profile's probe median "
              f"({_fmt(s.get('probe_reference_s'), '.4g')} s; the verifier's one-token step "
              "at context 256).", ""]
    md = folder / "report.md"
    for path, text in ((md, "\n".join(lines)), (folder / "validate.json",
                                                 json.dumps(doc, indent=1, default=str) + "\n")):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---- the whole job ---------------------------------------------------------------------------

CPU_KEY = ("cpu", "logical_cpus", "torch_threads")  # what prices a CPU machine
CUDA_KEY = ("gpu", "gpu_count")  # ... and a CUDA one


def machine_key(hardware: dict[str, Any]) -> dict[str, Any]:
    """What identifies a machine for pricing, from a "hardware" block (calibrate.host_info):
    device kind, then CPU model, logical CPUs and torch threads (CPU) or GPU name and count
    (CUDA). Fields the block does not record are left out; names are whitespace-normalised."""
    kind = str(hardware.get("device") or "").split(":")[0]
    key: dict[str, Any] = {"device": kind or None}
    for name in CUDA_KEY if kind == "cuda" else CPU_KEY:
        value = hardware.get(name)
        if value is not None:
            key[name] = " ".join(value.split()) if isinstance(value, str) else value
    return key


def machine_diff(profile: dict[str, Any], here: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fields whose values differ, fields ``profile`` does not record) of two machine_keys."""
    differ = [k for k in here if k in profile and profile[k] != here[k]]
    return differ, [k for k in here if k not in profile]


def same_machine(profile: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether a profile's machine_key prices ``here``: no recorded field differs and the device
    kind and CPU / GPU name are recorded (another missing field: matched on the rest)."""
    differ, missing = machine_diff(profile, here)
    name = "gpu" if here.get("device") == "cuda" else "cpu"
    return not differ and "device" not in missing and name not in missing


def describe_machine(hardware: dict[str, Any]) -> str:
    """A machine in words: "AMD EPYC (2 logical CPUs, 2 torch threads)", "NVIDIA H100 x 1"."""
    key = machine_key(hardware)
    if key["device"] is None:
        return "an unrecorded machine"
    if key["device"] == "cuda":
        return f"{key.get('gpu', 'an unnamed GPU')} x {key.get('gpu_count', '?')}"
    return (f"{key.get('cpu', 'an unnamed CPU')} ({key.get('logical_cpus', '?')} logical CPUs, "
            f"{key.get('torch_threads', '?')} torch threads)")


def machine_slug(hardware: dict[str, Any]) -> str:
    """A file-name tag of a machine: "intel-xeon-platinum-8375c-2t" (CPU model, logical CPUs
    where they differ from the threads, threads), "h100-80gb-hbm3" (GPU, "-xN" for N > 1)."""
    key = machine_key(hardware)

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"

    if key["device"] == "cuda":
        n = key.get("gpu_count", 1)
        return slug(re.sub(r"(?i)\bnvidia\b", " ", str(key.get("gpu", "gpu")))) + \
            (f"-x{n}" if n != 1 else "")
    cpu = re.sub(r"(?i)\((r|tm)\)|\bcpu\b|\bprocessor\b|\b\d+-core\b|@.*$", " ",
                 str(key.get("cpu", "cpu")))
    cpus, threads = key.get("logical_cpus"), key.get("torch_threads")
    return slug(cpu) + (f"-{cpus}cpu" if cpus != threads else "") + f"-{threads}t"


def this_machine(device: str, threads: int = 0) -> dict[str, Any]:
    """This machine's "hardware" block (calibrate.host_info), with the torch threads validate
    runs at (``threads`` > 0, else torch's current number)."""
    from .calibrate import host_info

    hardware = dict(host_info(device)["hardware"])
    if threads > 0:
        hardware["torch_threads"] = threads
    return hardware


def read_profile(path: Path) -> dict[str, Any] | None:
    """A profile's document; None where ``path`` is not a readable profile of our schema."""
    from simulator.latency import PROFILE_SCHEMA

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == PROFILE_SCHEMA else None


def hardware_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The "hardware" block of a profile or validate result ({} where it has none)."""
    hardware = doc.get("hardware")
    return hardware if isinstance(hardware, dict) else {}


def profile_note(path: Path, profile_hw: dict[str, Any], here_hw: dict[str, Any]) -> str | None:
    """The warning for a profile measured on another machine than ``here_hw`` (None if same)."""
    if same_machine(machine_key(profile_hw), machine_key(here_hw)):
        return None
    return (f"profile {_shown(path)} was measured on {describe_machine(profile_hw)}; this "
            f"machine is {describe_machine(here_hw)}: predictions may be off by the machines' "
            "speed ratio")


def resolve_profile(pair: str, device: str, threads: int, explicit: Path | None,
                    log: Callable[[str], None], *, progress: bool = True,
                    **calibrate_kw: Any) -> tuple[Path, str | None]:
    """The latency profile validate prices with, and the note for the report (or None).

    ``explicit`` (--profile): that file; the note says so where its machine is not this one.
    Otherwise the profiles/PAIR-cpu*.json (PAIR-cuda*.json) measured on this machine
    (machine_key; a full match before one on an older profile lacking a field, then by name),
    else a calibration of ``pair`` (``calibrate_kw``: dtype, random_weights) into
    profiles/PAIR-KIND-SLUG.json (machine_slug). Which file and why goes to ``log``."""
    from simulator.latency import load_profile

    here_hw = this_machine(device, threads)
    here = machine_key(here_hw)

    def matched(path: Path, key: dict[str, Any]) -> str:
        missing = machine_diff(key, here)[1]
        return (f"profile {_shown(path)}: measured on this machine ({describe_machine(here_hw)})"
                + (f"; it records no {', '.join(missing)}, matched on the rest" if missing
                   else ""))

    if explicit is not None:
        if not explicit.is_file():
            raise ValidateError(f"--profile {explicit}: no such file")
        load_profile(str(explicit))  # a bad profile fails here, with its reason
        hardware = hardware_of(read_profile(explicit) or {})
        note = profile_note(explicit, hardware, here_hw)
        log(f"note: {note}" if note else matched(explicit, machine_key(hardware)))
        return explicit, note
    kind = "cuda" if device.startswith("cuda") else "cpu"
    seen, found = [], []
    for path in sorted(PROFILES.glob(f"{glob.escape(pair)}-{kind}*.json")):
        doc = read_profile(path)
        if doc is None or doc.get("pair") not in (None, pair):
            continue
        seen.append(f"{path.name} ({describe_machine(hardware_of(doc))})")
        key = machine_key(hardware_of(doc))
        if same_machine(key, here):
            found.append((len(machine_diff(key, here)[1]), path.name, path, key))
    if found:
        _, _, path, key = min(found)
        log(matched(path, key))
        return path, None
    slug = machine_slug(here_hw)
    out = PROFILES / f"{pair}-{kind}-{slug}.json"
    for i in range(2, 1000):  # never overwrite another machine's profile
        if not out.exists():
            break
        out = PROFILES / f"{pair}-{kind}-{slug}-{i}.json"
    from .calibrate import calibrate

    weights = " (random weights)" if calibrate_kw.get("random_weights") else ""
    log(f"no profile of {pair} measured on this machine ({describe_machine(here_hw)}; have: "
        f"{'; '.join(seen) or 'none'}): calibrating {pair}{weights} on {device} into "
        f"{_shown(out)} first")
    calibrate(pair, device=device, out=out, threads=threads or None, progress=progress,
              **calibrate_kw)
    return out, None


def validate_pair(pair: str, dataset: str, n_prompts: int, specs: Sequence[PolicySpec], *,
                  out: Path, profile: Path | None = None, max_new_tokens: int = 128,
                  temperature: float = 0.0, seed: int = 0, device: str = "cpu",
                  dtype: Any = None, threads: int = 0, drafters_dir: Path | None = None,
                  command: str = "", progress: bool = True,
                  log: Callable[[str], None] = print,
                  drafters: Sequence[str] | None = None) -> dict[str, Any]:
    """Profile (resolve_profile: this machine's, calibrating if none), trace, real runs,
    prediction, comparison, report.
    ``drafters``: the pair's drafters to decode with, in order (as ``sim --drafter``)."""
    import torch

    from simulator.trace import read_trace

    from . import pairs
    from .datasets import gsm8k_correct, load_prompts, parse_spec
    from .record import RecordConfig, record

    if out.exists() and not out.is_dir():
        raise ValidateError(f"--out {out}: exists and is not a folder")
    if threads > 0:
        torch.set_num_threads(threads)
    selected = load_prompts(dataset, n_prompts)
    pair_spec = pairs.get_pair(pair)
    pairs.check_available(pair_spec, drafters_dir)
    have = [d.name for d in pair_spec.drafters] if pair_spec.verifier is not None else \
        [f.name for f in pairs.drafter_folders(pair_spec, drafters_dir)]
    for name in drafters or []:
        if name not in have:
            raise ValidateError(f"--drafter {name!r}: pair {pair} has drafters {have}")
    prof, note = resolve_profile(pair, device, threads, profile, log, progress=progress)
    latency = _load_profile(prof)
    loaded = pairs.load_pair(pair, device, dtype, drafters_dir, progress=progress)
    ids = [loaded.encode(p.text) for p in selected]
    cfg = RecordConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    cfg.check()
    out.mkdir(parents=True, exist_ok=True)
    trace_path = out / "trace.parquet"
    meta = {**loaded.meta, "dataset": dataset, "command": command}
    score = gsm8k_correct if parse_spec(dataset)[0] == "gsm8k" else None
    args = {"pair": pair, "dataset": dataset, "n_prompts": len(selected), "device": device,
            "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
            "models": loaded.fingerprints}
    log(f"recording the trace of {len(selected)} prompts -> {trace_path}")
    record(loaded.models, selected, ids, cfg, trace_path, meta, decode=loaded.decode,
           score=score, args=args, progress=progress)
    trace = read_trace(str(trace_path), drafters)
    reference = json.loads(Path(prof).read_text()).get("probe")
    probe: Any = None
    probes: dict[str, list[list[float]]] = {}
    if reference is not None:
        from .calibrate import Probe

        probe = Probe(loaded.models.verifier, device, int(reference["context"]))
    bar, tick = _bar(len(selected) * (len(specs) + 1), progress)
    try:
        real = run_real(loaded.models, trace.drafters, ids, specs, max_new_tokens, temperature,
                        seed, cfg.topk, tick, probe=probe, probes=probes)
    finally:
        bar()
    predicted = predict(trace, specs, latency, seed)
    result = compare(trace, specs, real, predicted, temperature == 0, probes,
                     reference["median_s"] if reference is not None else None)
    from .calibrate import host_info

    doc = {"pair": pair, "device": device, "dataset": dataset, "prompts": len(selected),
           "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
           "trace": _shown(trace_path), "drafters": list(trace.drafters),
           "pricing": latency.source, **({"profile_note": note} if note else {}),
           **host_info(device), "measured_at": now(), "command": command, **result}
    write_report(doc, out)
    return doc


def _load_profile(path: Path) -> Any:
    """The profile at ``path`` (from any working directory), named as reports show it."""
    from dataclasses import replace

    from simulator.latency import load_profile
    return replace(load_profile(str(path)), path=_shown(path))


def _shown(path: Path) -> str:
    """A path as reports show it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def _bar(total: int, show: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """(stop, tick) of a rich progress bar over ``total`` (prompt, policy) runs."""
    if not show:
        return (lambda: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("decode", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True))
    task = bar.add_task("runs", total=total)
    bar.start()
    return bar.stop, (lambda: bar.advance(task))


# ---- timing only: random weights, decisions forced from a trace --------------------------------

@dataclass(frozen=True)
class Forced(Policy):
    """Replays one prompt's simulated rounds: round i drafts ``drafted[i]`` tokens with drafter
    ``drafter[i]`` (no early stop); ``cursor`` tells ForcedDraws which round is being verified."""

    drafter: tuple[int, ...] = ()
    drafted: tuple[int, ...] = ()
    cursor: list[int] | None = None
    name = "forced"
    memoryless = False

    def initial_state(self) -> int:
        return 0

    def max_cap(self) -> int:
        return max(self.drafted, default=0)

    def drafters_needed(self) -> int:
        return max(self.drafter, default=0) + 1

    def plan(self, state: int, ctx: Any) -> Any:
        from simulator.policies import Plan

        assert self.cursor is not None
        self.cursor[0] = state
        i = min(state, len(self.drafted) - 1)
        return Plan(drafter=self.drafter[i], cap=self.drafted[i])

    def stop(self, state: int, sig: Any) -> np.ndarray:
        return np.zeros(len(next(iter(sig.values()))), dtype=bool)

    def rules(self, state: int, sig: Any) -> np.ndarray:
        return np.zeros(len(next(iter(sig.values()))), dtype=np.int64)

    def update(self, state: int, outcome: Any) -> int:
        return state + 1


class ForcedDraws:
    """Draws that accept exactly the simulated number of drafts of the current round."""

    def __init__(self, accepted: Sequence[int], cursor: list[int]) -> None:
        self.accepted, self.cursor = accepted, cursor

    def categorical(self, probs: Any) -> int:
        return int(probs.argmax())

    def first_rejection(self, accept: Any) -> int:
        i = min(self.cursor[0], len(self.accepted) - 1)
        return min(int(self.accepted[i]), int(accept.shape[0]))


def run_forced(verifier: Any, drafters: Sequence[Any], trace: Any, rounds: Any,
               prompts: int, seed: int = 0) -> list[Any]:
    """Run the real decoder's code path on (random-weight) models with the rounds the
    simulator played: per prompt a DecodeResult whose seconds are the measurement."""
    import torch

    from .decoder import speculative_generate

    device = next(verifier.parameters()).device
    vocab = int(verifier.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in range(prompts):
        sel = rounds.prompt == p
        cursor = [0]
        policy = Forced(tuple(int(x) for x in rounds.drafter[sel]),
                        tuple(int(x) for x in rounds.drafted[sel]), cursor)
        ids = torch.randint(0, vocab, (int(trace.prompt_tokens[p]),), generator=g).to(device)
        res = speculative_generate(
            verifier, drafters, ids, policy, int(trace.budget[p]), temperature=0.0,
            eos_token_id=None, draws=ForcedDraws(rounds.accepted[sel].tolist(), cursor),
            max_rounds=int(sel.sum()))
        # random weights emit no EOS: an EOS round's bonus token is not the trace's
        out.append(dataclasses.replace(res, tokens=res.tokens[:int(trace.lengths[p])]))
    return out


def validate_timing_only(pair: str, trace_path: Path, n_prompts: int,
                         specs: Sequence[PolicySpec], *, out: Path, profile: Path | None = None,
                         device: str = "cpu", dtype: str = "float32", threads: int = 0,
                         seed: int = 0, command: str = "", progress: bool = True,
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Random-weight models of ``pair``'s shapes, decisions forced from ``trace_path``: measured
    vs predicted time of the same rounds (acceptance equal by construction)."""
    import torch

    from simulator.latency import load_profile
    from simulator.trace import read_trace

    from .calibrate import build_random, host_info, pair_roles

    if out.exists() and not out.is_dir():
        raise ValidateError(f"--out {out}: exists and is not a folder")
    if threads > 0:
        torch.set_num_threads(threads)
    roles = pair_roles(pair)
    trace = read_trace(str(trace_path))
    if len(trace.drafters) > len(roles) - 1:
        raise ValidateError(f"--trace {trace_path}: {len(trace.drafters)} drafters, pair {pair} "
                            f"has {len(roles) - 1}")
    n_prompts = min(n_prompts, trace.n_prompts)
    prof, note = resolve_profile(pair, device, threads, profile, log, progress=progress,
                                 dtype=dtype, random_weights=True)
    latency = load_profile(str(prof))
    names = list(roles)[1:1 + len(trace.drafters)]
    models = {r: build_random(roles[r], dtype, device) for r in ["verifier", *names]}
    # the simulator prices the trace's drafters by name: the profile's roles are config names
    from simulator.trace import Trace

    sub = Trace(**{**trace.__dict__, "drafters": tuple(names)})
    sub = _first_prompts(sub, n_prompts)
    predicted = predict(sub, specs, latency, seed)
    real: dict[str, list[Any]] = {}
    bar, tick = _bar(len(predicted), progress)
    try:
        run_forced(models["verifier"], [models[n] for n in names], sub,
                   predicted[BASELINE][1], 1, seed)  # warm-up
        for label, (_, rounds) in predicted.items():
            real[label] = run_forced(models["verifier"], [models[n] for n in names], sub,
                                     rounds, n_prompts, seed)
            tick()
    finally:
        bar()
    result = compare(sub, specs, real, predicted, greedy=False)
    doc = {"pair": pair, "device": device, "dataset": f"forced from {trace_path}",
           "prompts": n_prompts, "max_new_tokens": int(sub.lengths.max()), "temperature": 0.0,
           "seed": seed, "trace": str(trace_path), "pricing": latency.source,
           **({"profile_note": note} if note else {}), "timing_only": True, "weights": "random",
           **host_info(device), "measured_at": now(), "command": command, **result}
    write_report(doc, out)
    return doc


def _first_prompts(trace: Any, n: int) -> Any:
    """The trace restricted to its first ``n`` prompts (arrays sliced, not copied)."""
    from simulator.trace import Trace

    end = int(trace.offsets[n])

    def cut(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        if isinstance(x, np.ndarray) and x.ndim >= 1 and x.shape[-1] == trace.n_positions \
                and x.ndim <= 2:
            return x[..., :end]
        return x

    fields = dict(trace.__dict__)
    fields.pop("lengths", None)
    out = {k: cut(v) for k, v in fields.items()}
    out["freerun"] = {k: v[:, :end] for k, v in trace.freerun.items()}
    out["prompt_ids"], out["offsets"] = trace.prompt_ids[:n], trace.offsets[:n + 1]
    out["prompt_tokens"] = trace.prompt_tokens[:n]
    out["prompt_columns"] = {k: v[:n] for k, v in trace.prompt_columns.items()}
    return Trace(**{k: v for k, v in out.items() if k in Trace.__dataclass_fields__})
