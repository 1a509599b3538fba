"""Small drafters for a Llama-architecture verifier (SmolLM2-135M here).

A drafter is an ordinary ``LlamaForCausalLM`` with ``n_layers`` decoder layers (initialised from
chosen verifier layers, by default the first n) and its own final RMSNorm. Its token embedding and
lm_head are the verifier's own module objects: shared, frozen, never copied, never saved. So the
drafter runs like any HF causal LM (``forward(cache=...)``, ``generate``) and costs
only its own layers plus the shared head.

On disk a drafter is a folder::

    drafter.safetensors   its own weights only (layers + final norm), fp16 by default
    drafter.json          n_layers, source layers, verifier identity, recipe, metrics

Caution: ``drafter.to(dtype)`` would also cast the shared verifier modules; cast
``drafter.model.layers`` / ``drafter.model.norm`` instead (``own_modules``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = "drafter.safetensors"
META = "drafter.json"
SHARED_PREFIXES = ("model.embed_tokens.", "lm_head.")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# A transformers LlamaForCausalLM; typed Any because nn.Module's attribute access
# (Tensor | Module) hides the submodules from a type checker.
Llama = Any


def own_modules(drafter: Llama) -> list[nn.Module]:
    """The drafter's own (trainable, saved) modules: its decoder layers and final norm."""
    return [drafter.model.layers, drafter.model.norm]


def own_parameters(drafter: Llama) -> list[nn.Parameter]:
    """Parameters of ``own_modules`` (what distillation trains)."""
    return [p for m in own_modules(drafter) for p in m.parameters()]


def own_state_dict(drafter: Llama) -> dict[str, torch.Tensor]:
    """State dict without the shared embedding / head tensors."""
    return {k: v for k, v in drafter.state_dict().items()
            if not k.startswith(SHARED_PREFIXES) and not k.endswith("rotary_emb.inv_freq")}


def build_drafter(verifier: Llama, n_layers: int,
                  source_layers: list[int] | None = None, init: bool = True) -> Llama:
    """A drafter sharing ``verifier``'s embedding and lm_head.

    source_layers: verifier layer indices copied into the drafter's layers (default
    ``range(n_layers)``); the final norm is copied from the verifier's. With ``init=False`` the
    own weights stay at their random init (they are about to be loaded from a file).
    """
    from transformers import LlamaForCausalLM

    src = list(range(n_layers)) if source_layers is None else list(source_layers)
    if len(src) != n_layers:
        raise ValueError(f"source_layers has {len(src)} entries, n_layers is {n_layers}")
    cfg = copy.deepcopy(verifier.config)
    cfg.num_hidden_layers = n_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in src]
    ref = verifier.model.embed_tokens.weight
    # Build on the meta device: no wasted 49k x 576 embedding/head allocations.
    with torch.device("meta"):
        drafter = LlamaForCausalLM(cfg)
    drafter.model.embed_tokens = verifier.model.embed_tokens
    drafter.lm_head = verifier.lm_head
    drafter.model.layers.to_empty(device=ref.device)
    drafter.model.norm.to_empty(device=ref.device)
    drafter.model.rotary_emb = copy.deepcopy(verifier.model.rotary_emb)
    drafter.model.layers.to(ref.dtype)
    drafter.model.norm.to(ref.dtype)
    if init:
        for i, j in enumerate(src):
            drafter.model.layers[i].load_state_dict(verifier.model.layers[j].state_dict())
        drafter.model.norm.load_state_dict(verifier.model.norm.state_dict())
    else:
        for m in own_modules(drafter):
            for p in m.parameters():
                nn.init.zeros_(p)
    if getattr(verifier, "generation_config", None) is not None:
        drafter.generation_config = copy.deepcopy(verifier.generation_config)
    drafter.source_layers = src  # type: ignore[assignment]  # recorded by save_drafter
    drafter.eval()
    return drafter


def round_own_weights(drafter: Llama, dtype: torch.dtype) -> None:
    """Round the drafter's own weights in place to ``dtype`` precision (keeping their dtype)."""
    with torch.no_grad():
        for p in own_parameters(drafter):
            p.copy_(p.to(dtype).to(p.dtype))


def save_drafter(drafter: Llama, folder: str | Path, meta: dict[str, Any],
                 dtype: torch.dtype = torch.float16, round_in_place: bool = True) -> Path:
    """Write the drafter's own weights (``dtype``) and ``meta`` + its shape to ``folder``.

    With ``round_in_place`` the in-memory drafter is rounded to ``dtype`` precision first, so it
    computes exactly what a reload computes (training passes False to keep full precision).
    Files are written to temp names and renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if round_in_place:
        round_own_weights(drafter, dtype)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in own_state_dict(drafter).items()}
    info = dict(meta)
    info.update({
        "format": "entrospec-drafter/1",
        "n_layers": int(drafter.config.num_hidden_layers),
        "source_layers": list(getattr(drafter, "source_layers", [])) or None,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "own_params": int(sum(t.numel() for t in tensors.values())),
        "shared_with_verifier": ["model.embed_tokens", "lm_head"],
    })
    tmp_w = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
    tmp_m = folder / (META + ".tmp")
    tmp_m.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_w, folder / WEIGHTS)
    os.replace(tmp_m, folder / META)
    return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The drafter's JSON metadata."""
    return dict(json.loads((Path(folder) / META).read_text()))


def update_metrics(folder: str | Path, key: str, value: Any) -> None:
    """Set ``metrics[key]`` in the drafter's JSON (atomic rewrite; weights untouched)."""
    path = Path(folder) / META
    meta = read_meta(folder)
    meta.setdefault("metrics", {})[key] = value
    tmp = path.with_name(META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def load_drafter(folder: str | Path, verifier: Llama) -> Llama:
    """Load a saved drafter onto ``verifier`` (sharing its embedding and head), eval mode.

    The own weights are cast to the verifier's dtype and device.
    """
    from safetensors.torch import load_file

    meta = read_meta(folder)
    drafter = build_drafter(verifier, int(meta["n_layers"]), meta.get("source_layers"), init=False)
    ref = verifier.model.embed_tokens.weight
    state = {k: v.to(device=ref.device, dtype=ref.dtype)
             for k, v in load_file(str(Path(folder) / WEIGHTS)).items()}
    expected = set(own_state_dict(drafter))
    if set(state) != expected:
        raise ValueError(f"{folder}: weight names differ from a {meta['n_layers']}-layer drafter: "
                         f"missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}")
    drafter.load_state_dict(state, strict=False)
    drafter.eval()
    drafter.requires_grad_(False)
    return drafter
