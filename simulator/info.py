"""What a trace is: provenance from its metadata, status, size and per-drafter / per-task
aggregates of its rows. Pure: reads the file, returns a JSON-ready dict (``sim info`` prints it).

Units: sizes in MiB (2**20 bytes), positions and lengths in tokens, entropies in nats,
agreement and acceptance as fractions in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .trace import Trace, read_trace

MIB = 2**20


def _name(entry: Any) -> Any:
    """A model's name from a metadata entry ({"name": ...} or a bare string)."""
    return entry.get("name") if isinstance(entry, Mapping) else entry


def trace_status(meta: Mapping[str, Any], n_prompts: int) -> str:
    """"complete", or "partial: n of N prompts" for the leading groups of an unfinished
    recording (``validate record --partial``: metadata ``partial``, total in record_args)."""
    if not isinstance(meta.get("partial"), Mapping):
        return "complete"
    args = meta.get("record_args")
    total = args.get("n_prompts") if isinstance(args, Mapping) else None
    return f"partial: {n_prompts} of {total} prompts" if total is not None \
        else f"partial: {n_prompts} prompts of an unknown total"


def provenance(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Who recorded the trace, how and where (metadata only; None where a key is absent)."""
    return {
        "pair": meta.get("pair"),
        "verifier": _name(meta.get("verifier")),
        "drafters": [_name(d) for d in meta.get("drafters", [])],
        "dataset": meta.get("dataset"),
        "decoding": meta.get("decoding"),
        "temperature": meta.get("temperature"),
        "k_max": meta.get("k_max"),
        "max_new_tokens": meta.get("max_new_tokens"),
        "hardware": meta.get("hardware"),
        "recorded": meta.get("recorded"),
        "command": meta.get("command"),
        "synthetic": bool(meta.get("synthetic")),
    }


def _mean(x: np.ndarray, axis: int = -1) -> Any:
    """Mean over ``axis`` as Python float(s); NaN-free input assumed (the reader checks)."""
    m = np.asarray(x, dtype=np.float64).mean(axis=axis)
    return m.tolist()


def task_table(tr: Trace) -> list[dict[str, Any]]:
    """Per task (the ``category`` prompt column, sorted by name): prompts, positions, and each
    drafter's mean draft_match over the task's positions. [] when the column is absent."""
    if "category" not in tr.prompt_columns:
        return []
    names, of_prompt = np.unique(tr.prompt_columns["category"].astype(str), return_inverse=True)
    n_t = len(names)
    prompts = np.bincount(of_prompt, minlength=n_t)
    of_position = np.repeat(of_prompt, tr.lengths)  # (N,) task of each position
    positions = np.bincount(of_position, minlength=n_t)
    hits = np.stack([np.bincount(of_position, weights=m, minlength=n_t)
                     for m in tr.match.astype(np.float64)])  # (D, T): one bincount per drafter
    agree = hits / np.maximum(positions, 1)
    return [{"name": str(name), "prompts": int(prompts[t]), "positions": int(positions[t]),
             "agreement": {d: float(agree[i, t]) for i, d in enumerate(tr.drafters)}}
            for t, name in enumerate(names)]


def trace_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``sim info`` shows about the trace at ``path`` (read and validated in full).

    Keys: trace, status, provenance{...}, size_mib (MiB on disk), prompts, positions (tokens,
    per drafter), mean_tokens (per prompt), budget_hits (prompts that generated
    max_new_tokens; None without that metadata key), accuracy ({correct, prompts, rate} from
    the ``correct`` column; None without it), drafters [{name, agreement (mean draft_match),
    accept_prob (mean), mean_entropy (nats, mean draft_entropy)}], tasks (``task_table``).
    """
    tr = read_trace(path)
    meta = tr.meta
    budget_hits = int(np.count_nonzero(tr.lengths >= tr.budget)) \
        if "max_new_tokens" in meta else None
    accuracy = None
    if "correct" in tr.prompt_columns:
        n_correct = int(np.count_nonzero(tr.prompt_columns["correct"].astype(bool)))
        accuracy = {"correct": n_correct, "prompts": tr.n_prompts,
                    "rate": n_correct / tr.n_prompts}
    agreement = _mean(tr.match)
    accept = _mean(tr.accept["standard"])
    entropy = _mean(tr.signals["entropy"])
    return {
        "trace": str(path),
        "status": trace_status(meta, tr.n_prompts),
        "provenance": provenance(meta),
        "size_mib": os.path.getsize(path) / MIB,
        "prompts": tr.n_prompts,
        "positions": tr.n_positions,
        "mean_tokens": float(tr.lengths.mean()),
        "budget_hits": budget_hits,
        "accuracy": accuracy,
        "drafters": [{"name": d, "agreement": agreement[i], "accept_prob": accept[i],
                      "mean_entropy": entropy[i]} for i, d in enumerate(tr.drafters)],
        "tasks": task_table(tr),
    }
