"""Shared builders: small random traces written through the real writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulator.latency import Profile
from simulator.trace import Trace, read_trace, write_trace


def random_trace(path: Path, rng: np.random.Generator, lengths: list[int], n_drafters: int = 1,
                 sampled: bool = False, k_max: int = 4, freerun_gaps: bool = False,
                 max_new_tokens: int | None = None, chain: tuple[int, ...] = ()) -> Trace:
    """A trace with random signals; greedy (0/1 acceptance) or sampled (fractional).

    max_new_tokens: recorded in the metadata when given (prompts shorter than it ended with
    EOS at their last row); None: no such key, each prompt's budget is its length.
    chain: drafters recorded as chain drafters (greedy): a full free-run on every row and a
    random 0/1 ``freerun_accept_prob``.
    """
    n = sum(lengths)
    pid = np.concatenate([[f"p{i}"] * m for i, m in enumerate(lengths)])
    pos = np.concatenate([np.arange(m) for m in lengths]).astype(np.int32)
    cols: dict[str, list] = {}
    for d in range(n_drafters):
        match = rng.random(n) < rng.uniform(0.3, 0.9)
        ent = rng.gamma(2.0, 0.5, n)
        acc = np.where(match, 1.0, 0.0) if not sampled else np.clip(
            rng.beta(2, 2, n) + 0.3 * match, 0, 1)
        fr = []
        for m, a in zip(match, acc, strict=True):
            if d in chain:
                fr.append(list(rng.gamma(2.0, 0.7, k_max).astype(np.float32)))
            elif (m if not sampled else a >= 1.0):
                fr.append(None)
            else:
                size = int(rng.integers(1, k_max + 1)) if freerun_gaps else k_max
                fr.append(list(rng.gamma(2.0, 0.7, size).astype(np.float32)))
        a_sqrt = np.maximum(acc, rng.random(n))
        block = {
            "prompt_id": pid, "position": pos, "drafter": np.full(n, f"d{d}"),
            "token_id": np.arange(n, dtype=np.int32),
            "prompt_tokens": np.repeat(rng.integers(1, 50, len(lengths)), lengths).astype(np.int32),
            "draft_entropy": ent, "draft_top1_prob": np.exp(-ent),
            "draft_renyi2_entropy": ent * 0.8, "draft_topk_entropy": np.minimum(ent, 2.0),
            "draft_match": match, "accept_prob": acc, "verifier_entropy": rng.gamma(2, 0.4, n),
            "freerun_entropy": fr,
            "freerun_top1_prob": [None if x is None else list(np.exp(-np.array(x))) for x in fr],
            "freerun_renyi2_entropy": [None if x is None else [v * 0.8 for v in x] for x in fr],
            "freerun_topk_entropy": [None if x is None else [min(v, 2.0) for v in x] for x in fr],
            "accept_prob_sqrt": a_sqrt, "tv_sqrt": (a_sqrt - acc) * 0.5,
            "accept_prob_typical": np.maximum(acc, (rng.random(n) < 0.3).astype(float)),
            "tv_typical": rng.random(n) * 0.2, "tv_all": 1.0 - acc,
        }
        if chain:
            p_ok = rng.uniform(0.3, 0.9)
            block["freerun_accept_prob"] = [
                list((rng.random(k_max) < p_ok).astype(np.float32)) if d in chain else None
                for _ in range(n)]
        for k, v in block.items():
            cols.setdefault(k, []).extend(list(v))
    # prompt-level columns must agree across drafters: reuse drafter 0's values
    for name in ("prompt_tokens", "verifier_entropy", "token_id"):
        cols[name] = cols[name][:n] * n_drafters
    meta = {"verifier": {"name": "test"},
            "drafters": [{"name": f"d{d}"} for d in range(n_drafters)],
            "dataset": "test", "decoding": "sampled" if sampled else "greedy", "k_max": k_max,
            "hardware": None, "recorded": "1970-01-01", "synthetic": True}
    if max_new_tokens is not None:
        meta["max_new_tokens"] = int(max_new_tokens)
    write_trace(path, cols, meta)
    return read_trace(path)


@pytest.fixture
def profile_latency() -> Profile:
    """A shape-dependent latency model, so pricing bugs show up (a const model hides them)."""
    coef = {"verifier": [1e-2, 1e-4, 1e-6, 1e-8]}
    for d in range(4):
        coef[f"d{d}"] = [1e-3 * (d + 1), 1e-5, 1e-7, 1e-9]
    return Profile("test", {k: np.asarray(v) for k, v in coef.items()})
