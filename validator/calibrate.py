"""Time forward passes over a grid and fit the simulator's latency profile.

    validate calibrate --pair smollm2-135m --out profiles/smollm2-135m-cpu.json --threads 2

Each role of a pair ("verifier" and each drafter, named by its model-config name) is built with
its real weights where a local loader exists (SmolLM2-135M and its layer drafters), else from
``simulator/configs/models/NAME.json`` with random weights (``--random-weights``: latency
depends on shapes, not values). A sweep pre-fills a KV cache to the largest context once, then
crops it to each context (descending); at each (new, context) point one warm-up call and
``repeats`` timed calls of the role's *step* run, the cache cropped back after each (CUDA:
synchronised around each call). A point's time is the median of its calls over all sweeps. A
step is what the real decoder (validator/decoder.py) pays: ``verify_step`` for the verifier,
``draft_step`` for drafters and for the long (prefill / catch-up) points of every role.

Fits (NNLS on relative residuals: no negative coefficient, so a pass never gets cheaper with
more tokens or context; every third point held out):
  coef    t = a + b*new + c*context + d*new*context over the grid (new <= K+1), the form
          simulator/latency.py prices with; "heldout", "fit_error" and "prefill_check" (its
          error on the long points, which it never sees) describe it.
  pieces  that form fitted separately for new = 1, 2..K+1 and the long points (PIECES_FORM,
          ``piece_plan``): on CPU one token runs matrix-vector kernels and skips the attention
          mask, so the cost jumps between new = 1 and 2; "pieces_heldout" gives its held-out
          errors. A grid piece may carry a knee (``fit_knee``): beyond context K each context
          token costs (e + f*new) more, where that cuts its squared error by >= KNEE_GAIN (the
          verifier's multi-token passes at 4096 here).
  new_factors  per grid value of new, a factor on the pieces' price where the CPU's kernels
          make that width consistently dearer or cheaper than the line through its neighbours
          (3 new tokens cost ~24% more than the verifier's piece, and more than 4 do): the
          median ratio measured / piece over the training contexts, kept only where every one
          of them (>= 5) lies on the same side of 1 and the median is >= FACTOR_MIN away from 1
          (smaller effects are within the machine's noise). Values of new off the grid get
          none. "pieces_heldout" includes them.
Other batch sizes (GPU) get their own fits under "by_batch"; the top level is the smallest.

Probe: after every (point, sweep) the verifier's one-token ``verify_step`` at context
PROBE_CONTEXT is timed once (``Probe``). Shared machines drift by 10-20% within minutes, and roles
are timed one after another, so drift would otherwise distort the drafters' cost relative to the
verifier's: each (point, sweep) is rescaled by median(all probe timings) / median(the
PROBE_WINDOW probe timings around it) before the fit (``normalize_by_probe``; raw medians kept).
The profile's "probe" block holds the overall median; ``validate`` re-times the probe around
each real run, so a prediction can be rescaled to the machine's speed at that moment (reported
beside the raw one).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from simulator.errors import EntrospecError, LatencyError
from simulator.latency import CONFIG_DIR, PROFILE_SCHEMA, linear_form, load_model_config

FORM = "a + b*new + c*context + d*new*context"
PIECES_FORM = ("piecewise in new: 'pieces' = [{'new': [lo, hi], 'coef': [a, b, c, d], "
               "'knee': {'context': K, 'coef': [e, f]}}, ...] (hi null = no bound; knee "
               "optional); seconds = linear form with the piece holding new, plus (e + f*new) * "
               "max(0, context - K), times 'new_factors'[str(new)] where the role has one")
DTYPES = ("float32", "float16", "bfloat16")
PREFILL_CHUNK = 512  # tokens per pre-fill forward (bounds attention memory)
LONG_NEW = (32, 96, 256)  # prefill / catch-up lengths (fitted as their own piece only)
LONG_CONTEXT = (0, 512, 2048)
FACTOR_MIN = 0.1  # smallest per-new correction applied (relative; the machine's noise is ~10%)
FACTOR_POINTS = 5  # training contexts a per-new correction needs, all on one side of 1
KNEE_GAIN = 0.25  # least relative cut in a piece's squared error that keeps a knee (fit_knee)
QUIET_CORES = 0.1  # other processes may keep at most this many cores busy during a point
PROBE_CONTEXT = 256  # tokens in the probe's KV cache (Probe)
TOPK = 10  # k of the decoder's "topk" signal (validator.decoder default)


class CalibrationError(LatencyError):
    """Unknown pair or model config, no local weights, bad grid or device (one-line message)."""


# ---- pairs and models ----------------------------------------------------------------------

def pair_roles(pair: str) -> dict[str, dict[str, Any]]:
    """Role -> model config for a pair in configs/pairs.json ("verifier", then drafter names)."""
    pairs = json.loads((CONFIG_DIR / "pairs.json").read_text())["pairs"]
    if pair not in pairs:
        raise CalibrationError(f"--pair {pair!r}: unknown; known: {', '.join(sorted(pairs))}")
    names = {"verifier": pairs[pair]["verifier"], **{d: d for d in pairs[pair]["drafters"]}}
    return {role: load_model_config(name) for role, name in names.items()}


def hf_config(cfg: dict[str, Any]) -> Any:
    """A transformers config with the shapes of one of our model-config dicts."""
    from transformers import LlamaConfig, OPTConfig, Qwen2Config

    arch, name = cfg.get("architecture", "llama"), cfg.get("name")
    common = dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                  num_hidden_layers=cfg["num_hidden_layers"],
                  num_attention_heads=cfg["num_attention_heads"],
                  max_position_embeddings=cfg.get("max_position_embeddings", 8192),
                  tie_word_embeddings=cfg.get("tie_word_embeddings", False),
                  pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if arch == "opt":
        return OPTConfig(ffn_dim=cfg["intermediate_size"], word_embed_proj_dim=cfg["hidden_size"],
                         do_layer_norm_before=True, **common)
    if arch not in ("llama", "qwen2"):
        raise CalibrationError(f"model {name!r}: unknown architecture {arch!r} (llama, qwen2, opt)")
    rope = {"rope_type": "default", **(cfg.get("rope_scaling") or {}),
            "rope_theta": cfg.get("rope_theta", 10000.0)}
    kw = dict(intermediate_size=cfg["intermediate_size"], rope_parameters=rope,
              num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
              rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), **common)
    try:
        return Qwen2Config(**kw) if arch == "qwen2" else LlamaConfig(head_dim=cfg.get("head_dim"),
                                                                     **kw)
    except Exception as exc:  # transformers' validators raise several unrelated types
        raise CalibrationError(f"model {name!r}: {str(exc).splitlines()[-1]}") from exc


def build_random(cfg: dict[str, Any], dtype: str, device: str) -> Any:
    """The architecture of ``cfg`` with random weights, eval mode, on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(cfg), dtype=getattr(torch, dtype))
    model = model.eval().requires_grad_(False)
    if not cfg.get("features"):
        return with_head(model, model, cfg)
    from validator.drafter import build_drafter

    drafter = build_drafter(model, int(cfg["num_hidden_layers"]), features=True)
    return FeatureStep(with_head(drafter, model, cfg))


def with_head(model: Any, verifier: Any, cfg: dict[str, Any]) -> Any:
    """``model`` with the subset head ``cfg`` names (``head_tokens``: its first that many rows of
    ``verifier``'s head; timing depends on how many, not which), else unchanged."""
    if not cfg.get("head_tokens"):
        return model
    import torch

    from validator.drafter import set_subset_head

    ids = torch.arange(int(cfg["head_tokens"]), device=verifier.lm_head.weight.device)
    return set_subset_head(model, verifier, ids)


class FeatureStep:
    """A feature drafter as the calibration's steps call models (``model(input_ids=..., cache=,
    use_cache=, logits_to_keep=)`` -> ``.logits``), paying what the decoder pays per call: the
    previous hidden states (here zeros of the same shape) through ``feature_proj`` into the
    input, the layers, the head over the kept positions."""

    def __init__(self, drafter: Any) -> None:
        self.drafter, self.config = drafter, drafter.config

    def __call__(self, input_ids: Any, cache: Any = None, use_cache: bool = True,
                 logits_to_keep: int = 0, **kw: Any) -> Any:
        from types import SimpleNamespace

        import torch

        from validator.drafter import drafter_hidden

        ref = self.drafter.model.embed_tokens.weight
        prev = torch.zeros((*input_ids.shape, ref.shape[1]), dtype=ref.dtype, device=ref.device)
        h = drafter_hidden(self.drafter, input_ids, prev, cache=cache,
                           use_cache=use_cache).last_hidden_state
        keep = logits_to_keep or h.shape[1]
        return SimpleNamespace(logits=self.drafter.lm_head(h[:, -keep:]))


def build_real(roles: dict[str, dict[str, Any]], dtype: str, device: str) -> dict[str, Any]:
    """Role -> model with real weights: only SmolLM2-135M (and its layer drafters) load here."""
    import torch

    verifier_name = roles["verifier"]["name"]
    if verifier_name != "smollm2-135m" or any(c.get("drafter_of") != verifier_name
                                              for r, c in roles.items() if r != "verifier"):
        raise CalibrationError(f"no local weights for pair of {verifier_name!r}; pass "
                               "--random-weights (latency depends on shapes, not weights)")
    from validator.drafter import build_drafter
    from validator.smollm2 import load_verifier

    verifier, _ = load_verifier(dtype=getattr(torch, dtype), device=device)
    out: dict[str, Any] = {}
    for role, cfg in roles.items():
        if role == "verifier":
            out[role] = verifier
            continue
        d = with_head(build_drafter(verifier, int(cfg["num_hidden_layers"]),
                                    features=bool(cfg.get("features"))), verifier, cfg)
        out[role] = FeatureStep(d) if cfg.get("features") else d
    return out


# ---- steps and timing ----------------------------------------------------------------------

def draft_step(model: Any, ids: Any, cache: Any) -> tuple[list[Any], list[int]]:
    """The decoder's drafter step (validator/decoder.py): a forward keeping the last position's
    logits, their signals (validator.signals.draft_signals, top-k 10) and argmax, on the host."""
    from validator.signals import as_float, draft_signals

    rows = as_float(model(input_ids=ids, cache=cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1])
    return draft_signals(rows, TOPK).tolist(), rows.argmax(-1).tolist()


def step_of(role: str) -> Callable[..., Any]:
    """The step a role is timed by: ``verify_step`` for the verifier, else ``draft_step``."""
    return verify_step if role == "verifier" else draft_step


def verify_step(model: Any, ids: Any, cache: Any) -> tuple[int, int, float]:
    """The decoder's verification of ``new - 1`` drafts (greedy, standard rule): a forward
    keeping every new position's logits, softmax, the drafter rows' softmax (stood in for by
    the first ``new - 1`` rows: same shape), validator.decoder.verify, the emitted position's
    entropy. Batch > 1 (GPU) runs the forward on the batch and the decision on row 0."""
    import torch

    from validator.decoder import TorchDraws, verify
    from validator.signals import as_float, entropy

    v = as_float(model(input_ids=ids, cache=cache, use_cache=True,
                       logits_to_keep=ids.shape[1]).logits[0])
    n = v.shape[0] - 1
    rules = torch.zeros(n, dtype=torch.long, device=v.device)
    a, tok = verify(torch.softmax(v, -1), torch.softmax(v[:n], -1), ids[0, 1:], rules, True,
                    TorchDraws(None))
    return a, tok, float(entropy(v[a]))


def time_calls(model: Any, fn: Callable[..., Any], cache: Any, context: int, new: int,
               batch: int, calls: int, gen: Any, device: str) -> list[float]:
    """Seconds of ``calls`` calls ``fn(model, ids, cache)`` on fresh random ``ids`` (batch, new),
    the cache cropped back to ``context`` after each (CUDA: synchronised around each call)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(calls):
        ids = torch.randint(model.config.vocab_size, (batch, new), generator=gen).to(device)
        sync()
        t0 = time.perf_counter()
        fn(model, ids, cache)
        sync()
        times.append(time.perf_counter() - t0)
        cache.crop(context - cache.get_seq_length())  # crop(-k) drops the last k tokens
    return times


class Probe:
    """The machine-speed probe: seconds of the verifier's ``verify_step`` (one new token) at
    ``context`` tokens of KV cache, on its own cache (cropped back after each call)."""

    def __init__(self, model: Any, device: str, context: int = PROBE_CONTEXT) -> None:
        import torch
        from transformers import DynamicCache

        self.model, self.context, self.device = model, context, device
        self.gen = torch.Generator().manual_seed(1)
        self.cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            ids = torch.randint(model.config.vocab_size, (1, context),
                                generator=self.gen).to(device)
            model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.measure(1)  # warm-up

    def measure(self, calls: int) -> list[float]:
        """``calls`` timings (seconds), each a fresh random token."""
        import torch

        with torch.inference_mode():
            return time_calls(self.model, verify_step, self.cache, self.context, 1, 1, calls,
                              self.gen, self.device)


def probe_block(times: Sequence[float], context: int = PROBE_CONTEXT) -> dict[str, Any]:
    """The profile's "probe" entry for these timings (seconds)."""
    return {"step": "verify_step", "model": "verifier", "new": 1, "context": context,
            "calls": len(times), "median_s": statistics.median(times),
            "statistic": "median of one call after each (point, sweep) of every role"}


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU-seconds all processes were busy, CPU-seconds this process used). The busy
    total is Linux /proc/stat (1/USER_HZ resolution); elsewhere the others' share reads 0."""
    own = time.process_time()
    try:
        vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return time.perf_counter(), own, own
    return time.perf_counter(), (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK"), own


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """CPU cores other processes kept busy between two snapshots (on average), less the
    counter's resolution (2 ticks), so short windows do not read as contended."""
    others = (after[1] - before[1]) - (after[2] - before[2]) - 2 / os.sysconf("SC_CLK_TCK")
    return max(0.0, others) / max(after[0] - before[0], 1e-9)


def time_points(model: Any, plan: Sequence[tuple[int, int, str]], steps: dict[str, Any],
                batch: int, repeats: int, device: str, tick: Callable[[], None] = lambda: None,
                quiet: float = QUIET_CORES, sweeps: int = 1, tries: int = 6,
                after_point: Callable[[], int | None] = lambda: None) -> list[dict[str, Any]]:
    """Median seconds of ``steps[piece]`` at each (context, new, piece) of ``plan``.

    ``sweeps`` sweeps (module docstring) give each point ``sweeps * repeats`` calls, their
    median "median_s", and "spread" = (max - min) / median of the per-sweep medians: noise no
    form can fit. A (point, sweep) measured while other processes kept more than ``quiet``
    cores busy is measured again after a pause (at most ``tries`` attempts; the least disturbed
    is kept; "others_cores" is the worst kept): contention inflates eager CPU timings many-fold.
    ``after_point`` runs after each (point, sweep): the machine-speed probe, returning the
    index of its timing (kept per sweep as "probe_at", for ``normalize_by_probe``).
    """
    import torch
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    order = sorted(plan, key=lambda x: (-x[0], x[2], x[1]))

    def attempt(cache: Any, new: int, context: int, fn: Callable[..., Any]) -> list[float]:
        # call 0 is the warm-up
        return time_calls(model, fn, cache, context, new, batch, repeats + 1, gen, device)[1:]

    runs: dict[tuple[int, int, str], list[dict[str, Any]]] = {pt: [] for pt in order}
    with torch.inference_mode():
        for _ in range(sweeps):
            cache = DynamicCache(config=model.config)
            ids = torch.randint(vocab, (batch, order[0][0]), generator=gen)
            for s in range(0, ids.shape[1], PREFILL_CHUNK):
                model(input_ids=ids[:, s:s + PREFILL_CHUNK].to(device), cache=cache,
                      use_cache=True, logits_to_keep=1)
            for context, new, piece in order:
                cache.crop(context - cache.get_seq_length())
                best: dict[str, Any] = {}
                for k in range(tries):
                    time.sleep(min(0.5 * k, 2.0))
                    before = cpu_snapshot()
                    times = attempt(cache, new, context, steps[piece])
                    others = others_cores(before, cpu_snapshot())
                    if not best or others < best["others"]:
                        best = {"times": times, "others": others, "tries": k + 1}
                    if others <= quiet:
                        break
                best["probe_at"] = after_point()
                runs[(context, new, piece)].append(best)
                tick()
            del cache
    points = []
    for (context, new, piece), got in runs.items():
        points.append({"new": new, "context": context, "batch": batch, "piece": piece,
                       **_medians([g["times"] for g in got]),
                       "sweep_times_s": [g["times"] for g in got],
                       "others_cores": round(max(g["others"] for g in got), 3),
                       "tries": sum(g["tries"] for g in got)})
        if all(g["probe_at"] is not None for g in got):
            points[-1]["probe_at"] = [g["probe_at"] for g in got]
    return points


def _medians(sweep_times: Sequence[Sequence[float]]) -> dict[str, Any]:
    meds = [statistics.median(t) for t in sweep_times]
    return {"median_s": statistics.median(t for ts in sweep_times for t in ts),
            "sweep_medians_s": meds, "spread": (max(meds) - min(meds)) / statistics.median(meds)}


PROBE_WINDOW = 9  # probe timings around a (point, sweep) whose median says the machine's speed


def normalize_by_probe(points: list[dict[str, Any]], probe_times: Sequence[float],
                       window: int = PROBE_WINDOW) -> None:
    """Rescale each (point, sweep)'s timings, in place, to the machine's median speed over the
    calibration: times x median(all probe timings) / median(the ``window`` probe timings
    around it). Drift over minutes then moves every role alike instead of whichever role was
    being timed. Keeps the raw "raw_median_s" and "raw_spread"; "median_s", "sweep_medians_s"
    and "spread" become the normalised ones (what the fit sees)."""
    ref = statistics.median(probe_times)
    half = window // 2
    for p in points:
        if "probe_at" not in p:
            continue
        local = [statistics.median(probe_times[max(0, i - half):i + half + 1])
                 for i in p["probe_at"]]
        scaled = [[t * ref / f for t in ts] for ts, f in zip(p["sweep_times_s"], local,
                                                            strict=True)]
        p["raw_median_s"], p["raw_spread"] = p["median_s"], p["spread"]
        p.update(_medians(scaled))
        p["probe_local_s"] = local


# ---- fit -----------------------------------------------------------------------------------

def fit_linear(new: np.ndarray, context: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative [a, b, c, d] of ``linear_form`` minimising the relative squared error
    (b = d = 0 when every point has the same ``new``: they are not identifiable then)."""
    from scipy.optimize import nnls

    n, c, t = (np.asarray(x, dtype=np.float64) for x in (new, context, seconds))
    if len(t) < 2 or (t <= 0).any():
        raise CalibrationError(f"fit needs >= 2 positive timings, got {len(t)}")
    design = np.column_stack([np.ones_like(n), n, c, n * c])
    if np.ptp(n) == 0:
        design[:, [1, 3]] = 0.0
    scale = np.where(design.max(axis=0) > 0, design.max(axis=0), 1.0)
    return nnls(design / scale / t[:, None], np.ones_like(t))[0] / scale


def fit_knee(new: np.ndarray, context: np.ndarray, seconds: np.ndarray
             ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """``fit_linear``, plus where it pays a knee: ([a, b, c, d], None or {"context": K,
    "coef": [e, f]}) adding (e + f*new) * max(0, context - K) seconds (``knee_seconds``).

    Beyond some context the attention's KV cache outgrows the CPU's caches and each context
    token costs more (here the verifier's multi-token passes at 4096: 1.3x the line through the
    shorter contexts, which then misprices those too). K, one of the points' contexts below the
    largest, minimises the relative squared error; the knee is kept only where that error falls
    by at least KNEE_GAIN (a smaller gain is the machine's noise)."""
    from scipy.optimize import nnls

    coef = fit_linear(new, context, seconds)
    n, c, t = (np.asarray(x, dtype=np.float64) for x in (new, context, seconds))

    def sse(pred: np.ndarray) -> float:
        return float((((pred - t) / t) ** 2).sum())

    best, knee = sse(linear_form(coef, n, c)), None
    limit = best * (1 - KNEE_GAIN)
    for k in sorted(set(c.tolist()))[:-1]:
        h = np.maximum(0.0, c - k)
        design = np.column_stack([np.ones_like(n), n, c, n * c, h, n * h])
        if np.ptp(n) == 0:
            design[:, [1, 3, 5]] = 0.0
        scale = np.where(design.max(axis=0) > 0, design.max(axis=0), 1.0)
        x = nnls(design / scale / t[:, None], np.ones_like(t))[0] / scale
        err = sse(design @ x)
        if err < min(best, limit):
            best, coef, knee = err, x[:4], {"context": int(k), "coef": [float(v) for v in x[4:]]}
    return coef, knee


def knee_seconds(knee: dict[str, Any] | None, new: np.ndarray, context: np.ndarray
                 ) -> np.ndarray:
    """A piece's extra seconds beyond its knee: (e + f*new) * max(0, context - K); 0 if none."""
    if not knee:
        return np.zeros(np.broadcast(np.asarray(new), np.asarray(context)).shape)
    e, f = knee["coef"]
    beyond = np.maximum(0.0, np.asarray(context, dtype=np.float64) - knee["context"])
    return (e + f * np.asarray(new, dtype=np.float64)) * beyond


def piecewise_seconds(pieces: list[dict[str, Any]], new: np.ndarray,
                      context: np.ndarray) -> np.ndarray:
    """``linear_form`` (plus its knee) with the coefficients of the piece whose [lo, hi] holds
    ``new``."""
    n = np.asarray(new, dtype=np.float64)
    out = np.full(np.broadcast(n, np.asarray(context)).shape, np.nan)
    for pc in pieces:
        lo, hi = pc["new"]
        inside = (n >= lo) & (n <= (np.inf if hi is None else hi))
        price = linear_form(np.asarray(pc["coef"]), n, context) + \
            knee_seconds(pc.get("knee"), n, context)
        out = np.where(inside, price, out)
    return out


def piece_plan(news: Sequence[int]) -> list[tuple[int, int | None, tuple[int, ...]]]:
    """(lo, hi, grid news fitted) per piece: new = 1; 2..the largest grid new; beyond it the
    long points (data () = every point with new >= lo). A piece per interval between grid news
    follows the CPU's odd small-matrix kernels (3 new tokens cost more than 4 here) but fits
    worse on held-out points (verifier median 4.8% -> 6.9% on the shipped profile's timings),
    so it is not used."""
    top = max(news)
    inner = tuple(n for n in news if n >= 2)
    return [(1, 1, (1,)), *([(2, top, inner)] if inner else []), (top + 1, None, ())]


def new_factors(pieces: list[dict[str, Any]], points: list[dict[str, Any]]) -> dict[str, float]:
    """{str(new): factor} for the grid values of new whose timings sit consistently off the
    pieces (module docstring: FACTOR_MIN, FACTOR_POINTS); ``points`` are training grid points."""
    out = {}
    for n in sorted({p["new"] for p in points}):
        at = [p for p in points if p["new"] == n]
        ratio = np.array([p["median_s"] for p in at]) / piecewise_seconds(
            pieces, np.array([n] * len(at)), np.array([p["context"] for p in at]))
        r = float(np.median(ratio))
        if len(at) >= FACTOR_POINTS and ((ratio > 1).all() or (ratio < 1).all()) \
                and abs(r - 1) >= FACTOR_MIN:
            out[str(n)] = r
    return out


def factored_seconds(pieces: list[dict[str, Any]], factors: dict[str, float], new: np.ndarray,
                     context: np.ndarray) -> np.ndarray:
    """``piecewise_seconds`` times the factor of each value of new that has one."""
    n = np.asarray(new, dtype=np.float64)
    f = np.ones_like(n)
    for key, value in factors.items():
        f = np.where(n == int(key), value, f)
    return piecewise_seconds(pieces, n, context) * f


def fit_points(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit one role's points (every third grid and every third long point held out): the linear
    form over the grid ("coef"), the pieces of ``piece_plan`` ("pieces") and their per-new
    corrections ("new_factors")."""
    def cols(pts: list[dict[str, Any]]) -> list[np.ndarray]:
        return [np.array([p[k] for p in pts], dtype=np.float64)
                for k in ("new", "context", "median_s")]

    def errors(fn: Callable[..., np.ndarray], pts: list[dict[str, Any]]) -> dict[str, Any]:
        if not pts:
            return {"points": 0}
        n, c, t = cols(pts)
        err = np.abs(fn(n, c) - t) / t
        out = {"points": len(pts), "median_rel_err": float(np.median(err)),
               "max_rel_err": float(err.max())}
        if all("spread" in p for p in pts):  # the point's own repeat: the floor of any fit
            out["within_spread"] = int(np.sum(err <= [p["spread"] for p in pts]))
        return out

    parts = {k: [p for p in points if (p["piece"] == "long") == (k == "long")]
             for k in ("grid", "long")}
    for group in parts.values():
        for i, p in enumerate(group):
            p["heldout"] = i % 3 == 2
    train = {k: [p for p in v if not p["heldout"]] for k, v in parts.items()}
    held = {k: [p for p in v if p["heldout"]] for k, v in parts.items()}
    coef = fit_linear(*cols(train["grid"]))
    pieces = []
    for lo, hi, data in piece_plan(sorted({p["new"] for p in parts["grid"]})):
        inside = [p for p in train["grid"] + train["long"]
                  if (p["new"] in data if data else p["new"] >= lo)]
        if not inside:
            continue
        if data:  # grid pieces span the contexts a knee needs; the long points do not
            piece_coef, knee = fit_knee(*cols(inside))
        else:
            piece_coef, knee = fit_linear(*cols(inside)), None
        pieces.append({"new": [lo, hi], "coef": [float(x) for x in piece_coef],
                       **({"knee": knee} if knee else {})})

    def lin(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        return linear_form(coef, n, c)

    factors = new_factors(pieces, train["grid"])

    def pw(n: np.ndarray, c: np.ndarray) -> np.ndarray:
        return factored_seconds(pieces, factors, n, c)

    return {"coef": [float(x) for x in coef], "heldout": errors(lin, held["grid"]),
            "fit_error": errors(lin, train["grid"]), "prefill_check": errors(lin, parts["long"]),
            "pieces": pieces, "new_factors": factors,
            "pieces_heldout": {k: errors(pw, v) for k, v in held.items()}}


# ---- driver --------------------------------------------------------------------------------

def role_plan(cfg: dict[str, Any], news: Sequence[int], contexts: Sequence[int] | None,
              max_context: int, long_new: Sequence[int], long_context: Sequence[int]
              ) -> list[tuple[int, int, str]]:
    """(context, new, piece) points of one model: the grid (contexts 16, 32, 64, ... up to
    ``max_context`` by default, within the model's positions), then the long points."""
    limit = cfg.get("max_position_embeddings", 1 << 30) - 1
    top = min(max_context, limit - max(news))
    auto = [c for c in (16 * 2 ** i for i in range(20)) if c <= top]
    grid = sorted(set(contexts or auto + ([top] if top not in auto and top > 16 else [])))
    plan = [(c, n, "grid") for c in grid for n in news if c + n <= limit]
    return plan + [(c, n, "long") for c in long_context for n in long_new if c + n <= limit]


def host_info(device: str) -> dict[str, Any]:
    """The machine and libraries the timings come from: CPU model, logical CPUs and torch
    threads, and on CUDA the GPU's name and the number of visible GPUs (``validate`` picks the
    profile whose machine is this one by these: validator.validate.machine_key)."""
    import scipy
    import torch
    import transformers

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                if ln.startswith("model name")), platform.processor() or platform.machine())
    hw: dict[str, Any] = {"device": device, "cpu": cpu, "logical_cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "os": platform.platform()}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        hw.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                  gpu_memory_GiB=round(props.total_memory / 2 ** 30, 1))
    libs = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__}
    return {"hardware": hw, "libraries": libs}


def measure_host(threads: int = 2, repeats: int = 5) -> dict[str, float]:
    """Roofline inputs of this CPU (best of ``repeats``): memory bandwidth (B/s, numpy copy of
    512 MiB float32, read + write bytes), float32 matmul FLOP/s (torch, 4096^2, ``threads``),
    per-layer step overhead (s: draft_step of a tiny Llama, (9 layers - 1 layer) / 8)."""
    import torch

    def best(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    torch.set_num_threads(threads)
    before = cpu_snapshot()
    src = np.ones(2 ** 27, dtype=np.float32)
    dst = np.empty_like(src)
    bw = 2 * src.nbytes / best(lambda: np.copyto(dst, src))
    mat = torch.randn(4096, 4096)
    flops = 2 * 4096 ** 3 / best(lambda: mat @ mat)
    others = others_cores(before, cpu_snapshot())
    tiny = {"name": "tiny", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "vocab_size": 128, "max_position_embeddings": 256}
    step = {}
    for layers in (1, 9):
        model = build_random({**tiny, "num_hidden_layers": layers}, "float32", "cpu")
        pt = time_points(model, [(16, 1, "grid")], {"grid": draft_step}, 1, 50 * repeats,
                         "cpu")[0]
        step[layers], others = pt["median_s"], max(others, pt["others_cores"])
    return {"bandwidth_Bps": bw, "peak_flops": flops, "others_cores": round(others, 3),
            "overhead_s_per_layer": (step[9] - step[1]) / 8, "step_1_layer_s": step[1]}


def calibrate_roles(roles: dict[str, dict[str, Any]], *, device: str = "cpu",
                    dtype: str = "float32", random_weights: bool = False,
                    out: str | Path | None = None, news: Sequence[int] | None = None,
                    max_new: int = 16, contexts: Sequence[int] | None = None,
                    max_context: int = 4096, batch_sizes: Sequence[int] = (1,),
                    repeats: int = 5, long_new: Sequence[int] = LONG_NEW,
                    long_context: Sequence[int] = LONG_CONTEXT, threads: int | None = None,
                    progress: bool = True, quiet: float = QUIET_CORES, sweeps: int = 1,
                    meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time and fit every role of ``roles`` (role -> model config); write ``out`` if given.
    ``quiet`` and ``sweeps``: see time_points."""
    import torch

    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise CalibrationError(f"--device {device!r}: expected cpu or cuda[:N] (CUDA available: "
                               f"{torch.cuda.is_available()})")
    if dtype not in DTYPES:
        raise CalibrationError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    # every width a round can verify (1..K+1): CPU kernels are not monotone in width (the
    # verifier's 3-token pass measured slower than its 4-token pass), so no width is
    # interpolated
    news = sorted(set(news or range(1, max_new + 2)))
    if news[0] < 1 or min(repeats, sweeps, *batch_sizes) < 1 or max_context < 16:
        raise CalibrationError("grid: new, repeats, sweeps, batch >= 1; max context >= 16")
    if long_new and min(long_new) <= max(news):
        raise CalibrationError(f"long (prefill) new {min(long_new)} must exceed {max(news)}")
    if out is not None:
        _check_out(Path(out))
    if threads is not None:
        torch.set_num_threads(threads)
    plans = {r: role_plan(c, news, contexts, max_context, long_new, long_context)
             for r, c in roles.items()}
    bar = _progress(sum(map(len, plans.values())) * len(batch_sizes) * sweeps, progress)
    started, models_out = time.strftime("%Y-%m-%dT%H:%M:%S%z"), {}
    try:
        real = None if random_weights else build_real(roles, dtype, device)
        ref = (real["verifier"] if real else build_random(roles["verifier"], dtype, device)) \
            if "verifier" in roles else None
        probe = Probe(ref, device) if ref is not None else None
        probe_times: list[float] = []

        def after_point() -> int | None:
            if probe is None:
                return None
            probe_times.extend(probe.measure(1))
            return len(probe_times) - 1

        timed: dict[str, dict[int, list[dict[str, Any]]]] = {}

        for role, cfg in roles.items():
            model = real[role] if real else \
                ref if role == "verifier" else build_random(cfg, dtype, device)
            step = step_of(role)
            timed[role] = {b: time_points(model, plans[role], {"grid": step, "long": draft_step},
                                          b, repeats, device, bar, quiet, sweeps,
                                          after_point=after_point)
                           for b in sorted(batch_sizes)}
            del model
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    except (ValueError, RuntimeError, OSError) as exc:  # bad config values, weights unavailable
        raise CalibrationError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        bar(stop=True)
    if probe_times:
        normalize_by_probe([p for by in timed.values() for pts in by.values() for p in pts],
                           probe_times)
    for role, by_batch in timed.items():
        fits = {b: {**fit_points(pts), "points": pts} for b, pts in by_batch.items()}
        first = fits.pop(min(fits))
        cfg = roles[role]
        models_out[role] = {"model": cfg["name"], "n_layers": cfg["num_hidden_layers"],
                            "weights": "random" if random_weights else "real",
                            "step": step_of(role).__name__,
                            **first, "by_batch": {str(b): v for b, v in fits.items()}}
    pts = [p for m in models_out.values() for f in [m, *m["by_batch"].values()]
           for p in f["points"]]
    contention = {"quiet_cores": quiet, "max_others_cores": max(p["others_cores"] for p in pts),
                  "extra_attempts": sum(p["tries"] for p in pts) - len(pts) * sweeps,
                  "median_spread": statistics.median(p["spread"] for p in pts),
                  "max_spread": max(p["spread"] for p in pts),
                  **({"median_raw_spread": statistics.median(p["raw_spread"] for p in pts),
                      "max_raw_spread": max(p["raw_spread"] for p in pts)}
                     if all("raw_spread" in p for p in pts) else {})}
    doc = {"schema": PROFILE_SCHEMA, **(meta or {}), "form": FORM, "pieces_form": PIECES_FORM,
           "fit": "non-negative least squares on relative residuals; every third grid point "
                  "and every third long point (plan order: context desc, new asc) held out",
           **host_info(device), "dtype": dtype,
           "grid": {"new": news, "context": sorted({c for p in plans.values() for c, _, k in p
                                                    if k == "grid"}),
                    "long_new": list(long_new), "long_context": list(long_context),
                    "batch": sorted(batch_sizes), "repeats": repeats, "sweeps": sweeps,
                    "statistic": "median of sweeps x repeats calls, each after a warm-up call"},
           "contention": contention,
           **({"probe": {**probe_block(probe_times), "normalized": True,
                         "window": PROBE_WINDOW}} if probe_times else {}),
           "started": started,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": models_out}
    if out is not None:
        write_profile(Path(out), doc)
    return doc


def write_profile(path: Path, doc: dict[str, Any]) -> None:
    """Write a profile JSON via a temporary file and rename (a crash leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def _check_out(path: Path) -> None:
    """Refuse to overwrite a file that is not a profile of our schema."""
    try:
        schema = json.loads(path.read_text()).get("schema") if path.exists() else PROFILE_SCHEMA
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        schema = None
    if schema != PROFILE_SCHEMA:
        raise CalibrationError(f"--out {path}: exists and is not an {PROFILE_SCHEMA} profile "
                               f"(schema {schema!r}); refusing to overwrite")


def _progress(total: int, show: bool) -> Callable[..., None]:
    """A tick function advancing a progress bar (stderr) of ``total`` points; stop=True ends."""
    if not show:
        return lambda stop=False: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("calibrate", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True))
    task = bar.add_task("points", total=total)
    bar.start()
    return lambda stop=False: bar.stop() if stop else bar.advance(task)


def refit_profile(path: str | Path) -> dict[str, Any]:
    """Re-fit a profile's stored points with this version's fits (no new timing) and rewrite
    it atomically; "refit" records when and which pieces."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a readable profile ({exc})") from None
    if doc.get("schema") != PROFILE_SCHEMA:
        raise CalibrationError(f"{path}: schema {doc.get('schema')!r}, expected {PROFILE_SCHEMA}")
    for m in doc["models"].values():
        m.update(fit_points(m["points"]))
        for b, fit in m.get("by_batch", {}).items():
            m["by_batch"][b] = {**fit_points(fit["points"]), "points": fit["points"]}
    doc["refit"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pieces": PIECES_FORM,
                    "plan": "validator.calibrate.piece_plan",
                    "knee": "validator.calibrate.fit_knee",
                    "new_factors": "validator.calibrate.new_factors"}
    write_profile(path, doc)
    return doc


def calibrate(pair: str, device: str = "cpu", dtype: str = "float32",
              random_weights: bool = False, out: str | Path | None = None, max_new: int = 16,
              max_context: int = 4096, batch_sizes: Sequence[int] = (1,), repeats: int = 5,
              threads: int | None = None, progress: bool = True, **grid: Any) -> dict[str, Any]:
    """Calibrate every role of ``pair`` (configs/pairs.json); write the profile to ``out``.
    ``grid``: news, contexts, long_new, long_context, quiet, sweeps (see calibrate_roles)."""
    meta = {"pair": pair, "random_weights": random_weights, "command": " ".join(sys.argv)}
    return calibrate_roles(pair_roles(pair), device=device, dtype=dtype,
                           random_weights=random_weights, out=out, max_new=max_new,
                           max_context=max_context, batch_sizes=batch_sizes, repeats=repeats,
                           threads=threads, progress=progress, meta=meta, **grid)


# ---- CLI -----------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, help="Fit latency profiles from timed forward passes.")


def _ints(text: str | None) -> list[int] | None:
    try:
        return None if text is None else [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CalibrationError(f"expected a comma list of integers, got {text!r}") from None


Opt = typer.Option


@app.command("calibrate")
def calibrate_cmd(
    pair: Annotated[str, Opt(help="pair name in simulator/configs/pairs.json")],
    out: Annotated[Path, Opt(help="profile JSON to write")],
    device: Annotated[str, Opt(help="cpu or cuda[:N]")] = "cpu",
    dtype: Annotated[str, Opt(help="float32, float16 or bfloat16")] = "float32",
    random_weights: Annotated[bool, Opt("--random-weights",
                                        help="models from their configs, random weights")] = False,
    max_new: Annotated[int, Opt(help="K: new tokens go up to K+1")] = 16,
    max_context: Annotated[int, Opt(help="largest context (tokens)")] = 4096,
    new: Annotated[str | None, Opt(help="explicit new-token list, e.g. 1,2,4,17")] = None,
    contexts: Annotated[str | None, Opt(help="explicit context list")] = None,
    batch: Annotated[str, Opt(help="batch sizes, e.g. 1,4,16 (GPU)")] = "1",
    long_new: Annotated[str, Opt(help="prefill/catch-up lengths ('' for none)")] = "32,96,256",
    long_context: Annotated[str, Opt(help="contexts of the long points")] = "0,512,2048",
    repeats: Annotated[int, Opt(help="timed calls per point and sweep")] = 5,
    sweeps: Annotated[int, Opt(help="passes over the whole grid (noise estimate)")] = 1,
    threads: Annotated[int | None, Opt(help="torch CPU threads")] = None,
    quiet_cores: Annotated[float, Opt(help="re-measure while others keep more cores busy")] =
        QUIET_CORES,
    no_progress: Annotated[bool, Opt("--no-progress")] = False,
    refit: Annotated[bool, Opt("--refit", help="re-fit --out's stored timings (no timing)")]
    = False,
) -> None:
    """Time each model of a pair over (new, context) and write a fitted latency profile."""
    try:
        doc = refit_profile(out) if refit else calibrate(
            pair, device, dtype, random_weights, out, max_new, max_context, _ints(batch) or [1],
            repeats, threads, not no_progress, news=_ints(new), contexts=_ints(contexts),
            long_new=_ints(long_new) or [], long_context=_ints(long_context) or [],
            quiet=quiet_cores, sweeps=sweeps)
    except EntrospecError as exc:
        typer.echo(f"validate calibrate: error: {exc}", err=True)
        raise typer.Exit(2) from None
    for role, m in doc["models"].items():
        h, g = m["heldout"], m["pieces_heldout"]["grid"]
        typer.echo(f"{role}: held-out error, linear form: median {h['median_rel_err']:.1%} max "
                   f"{h['max_rel_err']:.1%}; pieces: median {g['median_rel_err']:.1%} max "
                   f"{g['max_rel_err']:.1%}" + (f"; {g['within_spread']} of {g['points']} within "
                   "their sweep-to-sweep spread" if "within_spread" in g else ""))
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
