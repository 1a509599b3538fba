"""Small drafters for a Llama-architecture verifier (SmolLM2-135M here).

A drafter is an ordinary ``LlamaForCausalLM`` with ``n_layers`` decoder layers (initialised from
chosen verifier layers, by default the first n) and its own final RMSNorm. Its token embedding and
lm_head are the verifier's own module objects: shared, frozen, never copied, never saved. So the
drafter runs like any HF causal LM (``forward(cache=...)``, ``generate``) and costs
only its own layers plus the shared head.

A drafter may instead carry a *subset head* (``SubsetHead``): the verifier's head restricted to a
frequency-ranked set of m token ids, so its cost is m/V of the full head's (the 49,152 x 576 head
is ~3/4 of a 3-layer drafter's multiply-adds). It still returns full-vocabulary logits (-inf off
the subset), so the drafter's law q is exactly zero there and every consumer stays unchanged;
speculative sampling stays exact for any q.

On disk a drafter is a folder::

    drafter.safetensors   its own weights only (layers + final norm), fp16 by default, and
                          ``head.token_ids`` (int32) when it has a subset head
    drafter.json          n_layers, source layers, head_tokens, verifier identity, recipe, metrics

A drafter may take weights from another folder instead of copying them: its drafter.json names
``layers_from`` (a relative path) and its own file's tensors override that folder's. A drafter
that only changes another's head (``distill shrink``, ``save_shrunk``) holds only
``head.token_ids``; one grown on a frozen shallower drafter (``distill train --init D
--freeze-init``) holds only its new layers and norm (``shared_layers`` = D's depth).

A *feature drafter* (``features=True``, after EAGLE, Li et al. 2024) also reads the verifier's
own top-layer state: the input at position p is the token embedding of x_p plus
``feature_proj(f_{p-1})``, where f_i is the verifier's final-norm hidden state at position i (the
vector its head reads) and f_{-1} = 0. When drafting past the verified prefix it feeds back its
own output hidden state in place of f. ``feature_proj`` (d x d) starts at zero, so a feature
drafter initialised from a plain one computes exactly what that one computes.

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
OWN_PREFIXES = ("model.layers.", "model.norm.", "model.feature_proj.")
HEAD_IDS = "head.token_ids"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# A transformers LlamaForCausalLM; typed Any because nn.Module's attribute access
# (Tensor | Module) hides the submodules from a type checker.
Llama = Any


class SubsetHead(nn.Module):
    """The verifier's ``lm_head`` restricted to ``token_ids`` (m of V rows).

    forward(h) -> full-vocabulary logits: h @ W[token_ids].T at the subset's columns, -inf
    elsewhere. The m rows are copied from the verifier's head at build time (derived, never
    saved: m x d floats, 18 MiB at m = 8192, d = 576, float32).
    """

    token_ids: torch.Tensor
    weight: torch.Tensor

    def __init__(self, full: nn.Linear, token_ids: torch.Tensor) -> None:
        super().__init__()
        weight = full.weight.detach()
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=weight.device)
        if ids.ndim != 1 or ids.numel() == 0 or bool((ids[1:] <= ids[:-1]).any()):
            raise ValueError("token_ids must be a non-empty, strictly increasing 1-D list")
        if int(ids[0]) < 0 or int(ids[-1]) >= weight.shape[0]:
            raise ValueError(f"token_ids must lie in [0, {weight.shape[0]})")
        self.vocab = int(weight.shape[0])
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("weight", weight[ids].clone(), persistent=False)

    def subset_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., m) logits of the subset's tokens, in ``token_ids`` order."""
        return nn.functional.linear(h, self.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        sub = self.subset_logits(h)
        out = sub.new_full((*sub.shape[:-1], self.vocab), float("-inf"))
        return out.index_copy_(-1, self.token_ids, sub)


def head_token_ids(drafter: Llama) -> torch.Tensor | None:
    """The subset head's token ids (sorted, long), or None for the verifier's full head."""
    head = drafter.lm_head
    return head.token_ids if isinstance(head, SubsetHead) else None


def set_subset_head(drafter: Llama, verifier: Llama, token_ids: torch.Tensor | None) -> Llama:
    """Give ``drafter`` a subset head over ``token_ids`` (None: the verifier's shared head)."""
    drafter.lm_head = verifier.lm_head if token_ids is None else SubsetHead(verifier.lm_head,
                                                                          token_ids)
    return drafter


def frequency_ranked(counts: torch.Tensor, m: int, always: list[int] | tuple[int, ...] = ()
                     ) -> torch.Tensor:
    """The ``m`` most frequent token ids by ``counts`` (V,) plus ``always`` (special tokens),
    sorted; ties go to the lower id. Raises if m is not in [len(always), V]."""
    v = int(counts.numel())
    always_t = torch.as_tensor(sorted(set(int(a) for a in always)), dtype=torch.long)
    if not len(always_t) <= m <= v:
        raise ValueError(f"head size {m} must lie in [{len(always_t)}, {v}]")
    score = counts.to(torch.float64).clone()
    score[always_t] = float("inf")
    # stable sort on -score keeps ties in id order
    order = torch.sort(-score, stable=True).indices[:m]
    return torch.sort(order).values


def own_modules(drafter: Llama) -> list[nn.Module]:
    """The drafter's own (trainable, saved) modules: its decoder layers and final norm (and the
    feature projection of a feature drafter)."""
    extra = [drafter.model.feature_proj] if uses_features(drafter) else []
    return [drafter.model.layers, drafter.model.norm, *extra]


def uses_features(drafter: Llama) -> bool:
    """Whether ``drafter`` is a feature drafter (reads the verifier's hidden states)."""
    inner = getattr(drafter, "model", None)  # wrappers (tests' spies) have none
    return isinstance(getattr(inner, "feature_proj", None), nn.Linear)


def shift_features(features: torch.Tensor) -> torch.Tensor:
    """(..., T, d) features f_0..f_{T-1} -> what positions 0..T-1 read: 0, f_0, ..., f_{T-2}."""
    out = torch.zeros_like(features)
    out[..., 1:, :] = features[..., :-1, :]
    return out


def input_embeds(drafter: Llama, input_ids: torch.Tensor,
                 prev_features: torch.Tensor | None) -> torch.Tensor:
    """A feature drafter's input vectors: embed(x_p) + feature_proj(f_{p-1}); ``prev_features``
    is already shifted (``shift_features``), shape (..., T, d)."""
    emb = drafter.model.embed_tokens(input_ids)
    if prev_features is None:
        raise ValueError("a feature drafter needs the verifier's hidden states")
    return emb + drafter.model.feature_proj(prev_features.to(emb.dtype))


def drafter_hidden(drafter: Llama, input_ids: torch.Tensor, prev_features: torch.Tensor | None
                   = None, **kw: Any) -> Any:
    """The drafter's ``model`` output (``last_hidden_state``, cache) for ``input_ids``; a feature
    drafter reads ``prev_features`` (shifted), a plain one ignores it."""
    if uses_features(drafter):
        return drafter.model(inputs_embeds=input_embeds(drafter, input_ids, prev_features), **kw)
    return drafter.model(input_ids=input_ids, **kw)


def own_parameters(drafter: Llama) -> list[nn.Parameter]:
    """Parameters of ``own_modules`` (what distillation trains)."""
    return [p for m in own_modules(drafter) for p in m.parameters()]


def own_state_dict(drafter: Llama) -> dict[str, torch.Tensor]:
    """State dict without the shared embedding / head tensors."""
    return {k: v for k, v in drafter.state_dict().items()
            if not k.startswith(SHARED_PREFIXES) and not k.endswith("rotary_emb.inv_freq")}


def build_drafter(verifier: Llama, n_layers: int,
                  source_layers: list[int] | None = None, init: bool = True,
                  features: bool = False) -> Llama:
    """A drafter sharing ``verifier``'s embedding and lm_head.

    source_layers: verifier layer indices copied into the drafter's layers (default
    ``range(n_layers)``); the final norm is copied from the verifier's. With ``init=False`` the
    own weights stay at their random init (they are about to be loaded from a file).
    features: a feature drafter (module docstring), its ``feature_proj`` zero.
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
    if features:
        d = int(cfg.hidden_size)
        drafter.model.feature_proj = nn.Linear(d, d, bias=False, device=ref.device,
                                               dtype=ref.dtype)
        nn.init.zeros_(drafter.model.feature_proj.weight)
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


def silence_layers(drafter: Llama, layers: Any) -> None:
    """Zero the attention and MLP output projections of ``layers`` (indices): each becomes the
    identity on the residual stream, so a drafter grown from a shallower one starts out computing
    exactly what that one computes, and training moves on from there."""
    with torch.no_grad():
        for i in layers:
            drafter.model.layers[i].self_attn.o_proj.weight.zero_()
            drafter.model.layers[i].mlp.down_proj.weight.zero_()


def round_own_weights(drafter: Llama, dtype: torch.dtype) -> None:
    """Round the drafter's own weights in place to ``dtype`` precision (keeping their dtype)."""
    with torch.no_grad():
        for p in own_parameters(drafter):
            p.copy_(p.to(dtype).to(p.dtype))


def save_drafter(drafter: Llama, folder: str | Path, meta: dict[str, Any],
                 dtype: torch.dtype = torch.float16, round_in_place: bool = True,
                 layers_from: tuple[str | Path, int] | None = None) -> Path:
    """Write the drafter's own weights (``dtype``) and ``meta`` + its shape to ``folder``.

    With ``round_in_place`` the in-memory drafter is rounded to ``dtype`` precision first, so it
    computes exactly what a reload computes (training passes False to keep full precision).
    ``layers_from=(source, n)``: its first n layers are ``source``'s drafter's, unchanged (a
    drafter grown on a frozen one); they are not written, the file names ``source`` instead.
    Files are written to temp names and renamed into place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if round_in_place:
        round_own_weights(drafter, dtype)
    shared = () if layers_from is None else tuple(f"model.layers.{i}."
                                                  for i in range(layers_from[1]))
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in own_state_dict(drafter).items()
               if not (shared and k.startswith(shared))}
    ids = head_token_ids(drafter)
    info = dict(meta)
    if layers_from is not None:
        info["layers_from"] = os.path.relpath(layers_from[0], folder)
        info["shared_layers"] = int(layers_from[1])
    info.update({
        "format": "entrospec-drafter/1",
        "n_layers": int(drafter.config.num_hidden_layers),
        "source_layers": list(getattr(drafter, "source_layers", [])) or None,
        "weights_dtype": str(dtype).removeprefix("torch."),
        "own_params": int(sum(t.numel() for t in tensors.values())),
        "head_tokens": None if ids is None else int(ids.numel()),
        "features": uses_features(drafter),
        "shared_with_verifier": ["model.embed_tokens", "lm_head" if ids is None
                                 else "lm_head rows at head.token_ids"],
    })
    if ids is not None:
        tensors[HEAD_IDS] = ids.to(device="cpu", dtype=torch.int32).contiguous()
    return _write_folder(folder, tensors, info)


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``info`` as a drafter folder's two files (temp names, then renamed)."""
    from safetensors.torch import save_file

    tmp_w, tmp_m = folder / (WEIGHTS + ".tmp"), folder / (META + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt"})
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


def weight_files(folder: str | Path) -> list[Path]:
    """The files a drafter's weights come from: its ``layers_from`` chain's, then its own."""
    folder = Path(folder)
    src = read_meta(folder).get("layers_from")
    return (weight_files(Path(os.path.normpath(folder / src))) if src else []) + [folder / WEIGHTS]


def _stored_state(folder: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(weights by name, head token ids or None) of a drafter folder: its ``layers_from``
    source's weights overridden by its own file's (which may hold only the head ids)."""
    from safetensors.torch import load_file

    meta = read_meta(folder)
    own = load_file(str(folder / WEIGHTS))
    ids = own.pop(HEAD_IDS, None)
    if (ids is None) != (meta.get("head_tokens") is None):
        raise ValueError(f"{folder}: head_tokens in {META} and {HEAD_IDS} in {WEIGHTS} disagree")
    if not meta.get("layers_from"):
        return own, ids
    state, _ = _stored_state(folder / meta["layers_from"])
    return {**state, **own}, ids


def save_shrunk(folder: str | Path, source: str | Path, token_ids: torch.Tensor,
                meta: dict[str, Any]) -> Path:
    """A drafter that is ``source``'s layers with a subset head over ``token_ids``, stored
    without copying them: ``drafter.json`` names ``layers_from`` (a path relative to ``folder``)
    and ``drafter.safetensors`` holds only ``head.token_ids``. Written atomically."""
    folder, source = Path(folder), Path(source)
    src_meta = read_meta(source)
    folder.mkdir(parents=True, exist_ok=True)
    ids = torch.as_tensor(token_ids).to(torch.int32).contiguous()
    info = {**meta, "format": "entrospec-drafter/1",
            "layers_from": os.path.relpath(source, folder),
            "n_layers": src_meta["n_layers"], "source_layers": src_meta.get("source_layers"),
            "weights_dtype": src_meta.get("weights_dtype"),
            "own_params": src_meta.get("own_params"),
            "head_tokens": int(ids.numel()), "verifier": src_meta.get("verifier"),
            "features": bool(src_meta.get("features", False)),
            "shared_with_verifier": ["model.embed_tokens", "lm_head rows at head.token_ids"]}
    return _write_folder(folder, {HEAD_IDS: ids}, info)


def load_drafter(folder: str | Path, verifier: Llama) -> Llama:
    """Load a saved drafter onto ``verifier`` (sharing its embedding and head), eval mode.

    The own weights are cast to the verifier's dtype and device; a ``layers_from`` drafter takes
    what its own file lacks from that folder (recursively).
    """
    meta = read_meta(folder)
    drafter = build_drafter(verifier, int(meta["n_layers"]), meta.get("source_layers"), init=False,
                            features=bool(meta.get("features", False)))
    ref = verifier.model.embed_tokens.weight
    state, ids = _stored_state(Path(folder))
    state = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in state.items()}
    expected = set(own_state_dict(drafter))
    if set(state) != expected:
        raise ValueError(f"{folder}: weight names differ from a {meta['n_layers']}-layer drafter: "
                         f"missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}")
    drafter.load_state_dict(state, strict=False)
    set_subset_head(drafter, verifier, ids)
    drafter.eval()
    drafter.requires_grad_(False)
    return drafter
