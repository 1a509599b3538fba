"""Synthetic greedy traces with i.i.d. acceptance: the closed-form test bed.

Each drafter matches the verifier independently at every position with probability alpha.
Entropies are drawn so that they correlate with acceptance (low when the draft matches), which is
what entropy-aware policies exploit; the numbers are illustrative, not a model of any real pair.
Every synthetic trace says so in its metadata (``synthetic: true``).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .errors import TraceError
from .trace import write_trace

TOPK = 10


def _entropies(rng: np.random.Generator, match: np.ndarray) -> np.ndarray:
    """nats: Gamma with mean 0.5 where the draft matches, 1.8 where it does not.

    Rounded to 1e-3 nats so that synthetic files compress (random float32 does not)."""
    ent = np.where(match, rng.gamma(2.0, 0.25, match.shape), rng.gamma(3.0, 0.6, match.shape))
    return np.round(ent, 3)


def synth_columns(alphas: Sequence[float], tokens: int, prompts: int, seed: int,
                  k_max: int = 16, prompt_tokens: int = 128) -> dict[str, pa.Array]:
    """Columns of a synthetic trace: ``tokens`` positions split over ``prompts`` prompts."""
    if not alphas or any(not 0.0 <= a < 1.0 for a in alphas):
        raise TraceError(f"--alpha must be in [0, 1), got {list(alphas)}")
    if prompts < 1 or tokens < prompts:
        raise TraceError(f"--tokens ({tokens}) must be >= --prompts ({prompts}) >= 1")
    rng = np.random.default_rng(seed)
    base = tokens // prompts
    lengths = np.full(prompts, base)
    lengths[: tokens - base * prompts] += 1
    pid = np.repeat([f"synth-{i:04d}" for i in range(prompts)], lengths)
    pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    token_id = rng.integers(0, 32000, tokens).astype(np.int32)
    ptoks = np.repeat(rng.integers(prompt_tokens // 2, prompt_tokens * 3 // 2 + 1, prompts),
                      lengths).astype(np.int32)
    v_ent = np.round(rng.gamma(2.0, 0.4, tokens), 3).astype(np.float32)

    blocks: dict[str, list[np.ndarray | list]] = {}
    for d, alpha in enumerate(alphas):
        match = rng.random(tokens) < alpha
        ent = _entropies(rng, match)
        top1 = np.round(np.clip(np.exp(-0.8 * ent) * rng.uniform(0.9, 1.0, tokens), 1e-3, 1), 3)
        renyi = np.round(ent * rng.uniform(0.55, 0.95, tokens), 3)
        topk = np.round(np.minimum(ent, np.log(TOPK)) * rng.uniform(0.8, 1.0, tokens), 3)
        # free-run: the drafter continues on its own wrong token; it is less sure of itself there
        fr_match = rng.random((tokens, k_max)) < alpha * 0.6
        fr_ent = _entropies(rng, fr_match)
        fr_top1 = np.round(np.clip(np.exp(-0.8 * fr_ent), 1e-3, 1.0), 3)
        a_sqrt = np.where(match, 1.0, np.round(rng.uniform(0.0, 0.6, tokens), 3))
        a_typ = np.where(match, 1.0, (rng.random(tokens) < 0.3).astype(float))
        cols = {
            "drafter": np.full(tokens, f"synth-d{d}"),
            "draft_entropy": ent, "draft_top1_prob": top1, "draft_match": match,
            "accept_prob": match.astype(float),
            "draft_renyi2_entropy": renyi, "draft_topk_entropy": topk,
            "accept_prob_sqrt": a_sqrt, "tv_sqrt": np.where(match, 0.0, a_sqrt),
            "accept_prob_typical": a_typ, "tv_typical": np.where(match, 0.0, a_typ),
            "tv_all": (~match).astype(float),
        }
        for name, val in cols.items():
            blocks.setdefault(name, []).append(val)
        for name, val in (("freerun_entropy", fr_ent), ("freerun_top1_prob", fr_top1),
                          ("freerun_renyi2_entropy", np.round(fr_ent * 0.75, 3)),
                          ("freerun_topk_entropy", np.minimum(fr_ent, np.log(TOPK)))):
            lists: list = [None if m else row for m, row in zip(match, val.astype(np.float32),
                                                                  strict=True)]
            blocks.setdefault(name, []).append(lists)

    n_d = len(alphas)
    out: dict[str, pa.Array] = {
        "prompt_id": pa.array(np.tile(pid, n_d)),
        "position": pa.array(np.tile(pos, n_d)),
        "token_id": pa.array(np.tile(token_id, n_d)),
        "prompt_tokens": pa.array(np.tile(ptoks, n_d)),
        "verifier_entropy": pa.array(np.tile(v_ent, n_d)),
        "category": pa.array(np.full(tokens * n_d, "synthetic")),
    }
    for name, parts in blocks.items():
        if name.startswith("freerun_"):
            flat = [x for part in parts for x in part]
            out[name] = pa.array(flat, type=pa.list_(pa.float32()))
        else:
            out[name] = pa.array(np.concatenate(parts))
    return out


def write_synth(out: str | os.PathLike[str], alphas: Sequence[float], tokens: int,
                prompts: int = 25, seed: int = 0, k_max: int = 16) -> None:
    """Write a synthetic trace to ``out`` (atomically). Same arguments, same bytes."""
    cols = synth_columns(alphas, tokens, prompts, seed, k_max)
    meta = {
        "verifier": {"name": "synthetic-verifier", "parameters": None, "source": "synthetic"},
        "drafters": [{"name": f"synth-d{d}", "parameters": None, "source": "synthetic",
                      "alpha": a} for d, a in enumerate(alphas)],
        "dataset": "synthetic",
        "decoding": "greedy",
        "temperature": 0.0,
        "k_max": k_max,
        "topk": TOPK,
        "hardware": None,
        # a fixed date keeps the bytes reproducible from the arguments alone
        "recorded": _dt.date(1970, 1, 1).isoformat(),
        "synthetic": True,
        "generator": {"alpha": list(alphas), "tokens": tokens, "prompts": prompts,
                      "seed": seed},
        "relaxed_rules": {"typical": {"note": "synthetic: accepted with probability 0.3 at "
                                              "mismatches"}},
    }
    write_trace(out, cols, meta)
