"""Drafter quality and cost: teacher-forced greedy agreement and per-token decode latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def pad_right(examples: list[dict[str, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, attention_mask)`` of a list of examples (``ids`` int tensors)."""
    width = max(len(e["ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e["ids"])
        ids[r, :n] = e["ids"].long()
        mask[r, :n] = 1
    return ids, mask


def pad_features(examples: list[dict[str, Any]], width: int) -> torch.Tensor | None:
    """(B, width, d) verifier features shifted to what each position reads (f_{p-1}), zero
    padded; None when the examples carry no ``feat``."""
    if "feat" not in examples[0]:
        return None
    from validator.drafter import shift_features

    d = int(examples[0]["feat"].shape[-1])
    out = torch.zeros((len(examples), width, d), dtype=torch.float32)
    for r, e in enumerate(examples):
        out[r, :len(e["feat"])] = e["feat"].float()
    return shift_features(out)


def answer_positions(examples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of the positions whose next-token prediction is an answer token."""
    rows, cols = [], []
    for r, e in enumerate(examples):
        s, n = int(e["answer_start"]), len(e["ids"])
        rows.append(torch.full((n - s,), r, dtype=torch.long))
        cols.append(torch.arange(s - 1, n - 1))
    return torch.cat(rows), torch.cat(cols)


@torch.no_grad()
def greedy_agreement(drafter: Any, examples: list[dict[str, Any]], pad_id: int,
                     batch: int = 8, verifier: Any = None) -> dict[str, float]:
    """Fraction of answer tokens where the drafter's argmax equals the verifier's greedy token.

    Teacher-forced on the verifier's own answers. The reference is the stored greedy token; with
    ``verifier`` given, the verifier's teacher-forced argmax is recomputed and also compared
    (``agree_tf``), plus how often that argmax equals the stored token (``verifier_self``); a
    feature drafter on examples without stored features then reads the verifier's states.
    """
    from validator.drafter import drafter_hidden, shift_features, uses_features

    hit = hit_tf = self_ok = total = 0
    for s in range(0, len(examples), batch):
        chunk = examples[s:s + batch]
        ids, mask = pad_right(chunk, pad_id)
        rows, cols = answer_positions(chunk)
        target = ids[rows, cols + 1]
        feats = pad_features(chunk, ids.shape[1])
        if verifier is not None:
            vh = verifier.model(input_ids=ids, attention_mask=mask).last_hidden_state
            if feats is None and uses_features(drafter):  # float32, as the decoder reads them
                feats = shift_features(vh)
        h = drafter_hidden(drafter, ids, feats, attention_mask=mask).last_hidden_state
        pred = drafter.lm_head(h[rows, cols]).argmax(-1)
        hit += int((pred == target).sum())
        total += int(target.numel())
        if verifier is not None:
            vpred = verifier.lm_head(vh[rows, cols]).argmax(-1)
            hit_tf += int((pred == vpred).sum())
            self_ok += int((vpred == target).sum())
    out = {"agreement": hit / max(total, 1), "tokens": float(total)}
    if verifier is not None:
        out["agree_tf"] = hit_tf / max(total, 1)
        out["verifier_self"] = self_ok / max(total, 1)
    return out


@torch.no_grad()
def decode_latency(model: Any, context: int = 300, repeats: int = 50, warmup: int = 5,
                   vocab: int | None = None, seed: int = 0) -> float:
    """Median seconds of one single-token decode step with a KV cache of ``context`` tokens.

    The cache is cropped back to ``context`` after every step so each repeat sees the same shape.
    """
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    v = vocab or int(model.config.vocab_size)
    ids = torch.randint(0, v, (1, context), generator=g)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, cache=cache, use_cache=True)
    tok = torch.randint(0, v, (1, 1), generator=g)
    pos = torch.tensor([[context]])
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        model(input_ids=tok, cache=cache, use_cache=True, position_ids=pos)
        dt = time.perf_counter() - t0
        cache.crop(-1)  # drop the step just added (transformers 5: negative = tokens to remove)
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


def latency_ratio(drafter: Any, verifier: Any, context: int = 300,
                  repeats: int = 50, rounds: int = 3) -> dict[str, float]:
    """Drafter / verifier per-token decode latency (interleaved rounds, median of medians)."""
    d, v = [], []
    for _ in range(rounds):
        v.append(decode_latency(verifier, context, repeats))
        d.append(decode_latency(drafter, context, repeats))
    dm, vm = statistics.median(d), statistics.median(v)
    return {"drafter_s": dm, "verifier_s": vm, "ratio": dm / vm}
