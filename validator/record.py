"""Record a trace from real models: verifier generation, teacher-forced drafters, free-runs.

Per group of prompts (see "Crash safety"): (1) the verifier generates y_0..y_{T-1} in one
left-padded batch with a KV cache, keeping its logits at every step; (2) every drafter runs
teacher-forced over prompt + y in one batched pass; (3) each drafter free-runs K_max steps from
every position where a rejection can happen, batched across positions on its teacher-forced KV
cache (the prefix y_<t is kept by masking the later cache columns, not by recomputing it).

Distributions. Greedy (temperature 0): entropies, top-1 and the relaxed rules use the
temperature-1 softmax p (verifier) and q (drafter). Sampled (temperature t): everything uses the
temperature-t softmax, the distributions the decoder samples from. Margins are top-1 minus top-2
of the raw logits. Entropies are in nats.

Acceptance and bias. Greedy: x = argmax q, y = the verifier's token; accept_prob = draft_match.
A relaxed rule with acceptance a(x) accepts x != y with probability a(x) (sqrt: min(1,
sqrt(p(x)/q(x))); typical: 1[p(x) > min(eps, delta exp(-H(p)))]; all: 1) and is 1 where x == y.
Greedy decoding emits y on rejection, so the emitted law is a delta_x + (1-a) delta_y and its
bias against the greedy point mass is TV = a where x != y, else 0 (tv_all = 1 - draft_match).
Sampled: accept_prob = sum_x min(p, q); for each rule pi = q a + (1 - sum q a) r with the
residual r = max(p - q a, 0) normalised (r = p if that is all zero, where sum q a = 1 anyway),
and the trace holds sum q a and TV(pi, p). For the standard rule a = min(1, p/q) this pi is p.
Typical acceptance uses Medusa's defaults posterior_threshold epsilon = 0.09 and posterior_alpha
delta = 0.3 with the exact entropy H(p) (Medusa adds 1e-5 inside its log).

Free-runs (K_max steps): under greedy from the drafter's own argmax x at each mismatch; under
sampling from a rejected draft x ~ max(q - p, 0) normalised (the law of a draft given that it was
rejected), then the drafter's own argmax (greedy) or samples (sampled). Entry j holds the
drafter's signals after feeding j + 1 own tokens, as simulator/engines/replay.py reads them.
Sampling draws come from torch.Generators seeded by (seed, prompt id, stream), so they do not
depend on batch composition, group or device.

Crash safety. Prompts are processed in fixed groups g = [g*B, (g+1)*B); each finished group is
written atomically to ``<out>.parts/group-NNNNN.parquet`` with the recording's arguments. A
re-run of the same command skips finished groups ("in flight" = the one group being computed when
the process died: the only work redone), refuses parts recorded with other arguments, and
assembles ``out`` atomically before deleting the parts. A group's numbers depend only on its own
prompts, so a resumed file equals an uninterrupted one (the metadata's date aside).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import socket
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from transformers.cache_utils import Cache, DynamicLayer

from simulator.errors import EntrospecError
from simulator.trace import META_KEY, OPTIONAL, REQUIRED, build_table, write_parquet_atomic

from .datasets import Prompt
from .drafter import drafter_hidden, head_token_ids, shift_features, uses_features

STATS = ("entropy", "top1_prob", "renyi2_entropy", "topk_entropy", "margin")
FREERUN = {"entropy": "freerun_entropy", "top1_prob": "freerun_top1_prob",
           "renyi2_entropy": "freerun_renyi2_entropy", "topk_entropy": "freerun_topk_entropy"}


class RecordError(EntrospecError):
    """Bad recording arguments, or parts / an output left by a run with other arguments."""


@dataclass(frozen=True)
class RecordConfig:
    """What a recording computes. Lengths in tokens; temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    k_max: int = 16
    topk: int = 10
    batch: int = 8  # prompts per group (and per generation batch)
    freerun_batch: int = 64  # free-run rows per drafter forward
    typical_epsilon: float = 0.09  # Medusa posterior_threshold
    typical_delta: float = 0.3  # Medusa posterior_alpha

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check(self) -> None:
        for name in ("max_new_tokens", "k_max", "topk", "batch", "freerun_batch"):
            if getattr(self, name) < 1:
                raise RecordError(f"--{name.replace('_', '-')} must be >= 1")
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise RecordError(f"--temperature {self.temperature}: must be finite and >= 0")
        if self.seed < 0:
            raise RecordError(f"--seed {self.seed}: must be >= 0")

    def relaxed_rules(self) -> dict[str, Any]:
        basis = ("temperature-1 p, q at the drafter's argmax x; 1 where x == y; TV against "
                 "the greedy point mass" if self.greedy else
                 "temperature-t p, q; pi = q a + (1 - sum q a) max(p - q a, 0)/Z; TV(pi, p)")
        return {"basis": basis,
                "sqrt": {"accept": "min(1, sqrt(p(x) / q(x)))"},
                "all": {"accept": "1", "bias": "TV(q, p)"},
                "typical": {"accept": "p(x) > min(epsilon, delta * exp(-H(p)))",
                            "epsilon": self.typical_epsilon, "delta": self.typical_delta,
                            "source": "Medusa defaults posterior_threshold, posterior_alpha"}}


@dataclass
class Models:
    """Loaded models: a verifier, drafters by trace name (metadata order), special tokens."""

    verifier: Any
    drafters: dict[str, Any]
    eos_ids: tuple[int, ...]
    pad_id: int


@dataclass(frozen=True)
class RecordResult:
    path: Path
    prompts: int
    groups_done: int  # recorded by this call (the rest were resumed from parts)
    tokens: int  # verifier tokens generated by this call
    seconds: float  # wall time of the groups recorded by this call
    stage_seconds: dict[str, float]
    pending: list[int] = field(default_factory=list)  # groups other recorders still hold

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def generator_for(seed: int, *keys: str) -> torch.Generator:
    """A CPU generator seeded from (seed, keys): same keys, same draws, whatever the batch."""
    words = [seed, *(zlib.crc32(k.encode()) for k in keys)]
    state = int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(state)


def sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row of ``probs`` (N, V) with uniforms ``u`` (N,) in [0, 1)."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp(max=probs.shape[-1] - 1)


def dist_stats(logits: torch.Tensor, temperature: float, topk: int
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per row of (N, V) logits: STATS (nats, probabilities, raw-logit margin) and the softmax."""
    logits = logits.float()
    logp = torch.log_softmax(logits / temperature if temperature > 0 else logits, -1)
    p = logp.exp()
    top = logits.topk(2, -1).values
    lk = logp.topk(min(topk, logp.shape[-1]), -1).values
    lk = lk - torch.logsumexp(lk, -1, keepdim=True)
    return {"entropy": torch.special.entr(p).sum(-1), "top1_prob": p.max(-1).values,
            "renyi2_entropy": -torch.log((p * p).sum(-1)),
            "topk_entropy": torch.special.entr(lk.exp()).sum(-1),
            "margin": top[:, 0] - top[:, 1]}, p


def rule_accept(rule: str, p: torch.Tensor, q: torch.Tensor, h_p: torch.Tensor,
                cfg: RecordConfig) -> torch.Tensor:
    """a(x) of an acceptance rule over the vocabulary, (N, V): standard, sqrt, typical, all."""
    if rule == "standard":
        return torch.where(q > 0, (p / q).clamp(max=1.0), torch.ones_like(p))
    if rule == "sqrt":
        return torch.where(q > 0, (p / q).sqrt().clamp(max=1.0), torch.ones_like(p))
    if rule == "typical":
        thr = torch.clamp(cfg.typical_delta * torch.exp(-h_p), max=cfg.typical_epsilon)
        return (p > thr[:, None]).to(p.dtype)
    if rule == "all":
        return torch.ones_like(p)
    raise ValueError(rule)


def emitted(p: torch.Tensor, q: torch.Tensor, a: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_x q a, pi) for a rule a: pi = q a + (1 - sum q a) r, r = max(p - q a, 0) / Z."""
    qa = q * a
    acc = qa.sum(-1, keepdim=True)
    resid = (p - qa).clamp(min=0)
    z = resid.sum(-1, keepdim=True)
    r = torch.where(z > 0, resid / z.clamp(min=1e-30), p)
    return acc[:, 0], qa + (1 - acc).clamp(min=0) * r


def tv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total variation distance per row, 0.5 * sum |a - b|."""
    return 0.5 * (a - b).abs().sum(-1)


def acceptance_columns(p_logits: torch.Tensor, q_logits: torch.Tensor, y: torch.Tensor,
                       cfg: RecordConfig) -> dict[str, torch.Tensor]:
    """accept_prob, draft_match, relaxed acceptance and TV(pi, p) per position (see docstring)."""
    t = cfg.temperature
    _, p = dist_stats(p_logits, t, 1)
    _, q = dist_stats(q_logits, t, 1)
    h_p = torch.special.entr(p).sum(-1)
    x = q_logits.float().argmax(-1)
    match = x == y
    out: dict[str, torch.Tensor] = {"draft_match": match}
    if cfg.greedy:
        one, zero = torch.ones_like(h_p), torch.zeros_like(h_p)
        for rule in ("sqrt", "typical"):
            a_x = rule_accept(rule, p, q, h_p, cfg).gather(-1, x[:, None])[:, 0]
            out[f"accept_prob_{rule}"] = torch.where(match, one, a_x)
            out[f"tv_{rule}"] = torch.where(match, zero, a_x)
        out["accept_prob"] = match.to(p.dtype)
        out["tv_all"] = (~match).to(p.dtype)
        return out
    out["accept_prob"] = torch.minimum(p, q).sum(-1).clamp(0, 1)
    for rule in ("sqrt", "typical"):
        acc, pi = emitted(p, q, rule_accept(rule, p, q, h_p, cfg))
        out[f"accept_prob_{rule}"], out[f"tv_{rule}"] = acc.clamp(0, 1), tv(pi, p).clamp(0, 1)
    out["tv_all"] = tv(q, p).clamp(0, 1)
    out["reject_law"] = (q - p).clamp(min=0)  # law of a rejected draft, unnormalised
    return out


def _align(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the narrower vocabulary with -inf logits (pairs whose heads differ in size)."""
    va, vb = a.shape[-1], b.shape[-1]
    if va < vb:
        a = torch.nn.functional.pad(a.float(), (0, vb - va), value=-torch.inf)
    elif vb < va:
        b = torch.nn.functional.pad(b.float(), (0, va - vb), value=-torch.inf)
    return a, b


def left_pad(prompts: Sequence[Sequence[int]], pad: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, L): prompts right-aligned, pads on the left."""
    length = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, length - len(x):] = torch.as_tensor(list(x), dtype=torch.long)
        mask[i, length - len(x):] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


class RoomyLayer(DynamicLayer):
    """A DynamicLayer over a buffer with ``room`` spare columns: ``update`` writes the new keys
    and values in place instead of concatenating. Generation and free-runs append one column per
    step to caches of up to thousands (long prompts): DynamicLayer's torch.cat copied all of it
    at every step, ~40% of the free-runs' and ~16% of generation's time on Spec-Bench prompts
    (py-spy). Attention sees the same values in the same shapes (bit-identical: tests)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        b, h, n, d = keys.shape
        self.buf_k = keys.new_empty((b, h, n + room, d))
        self.buf_v = values.new_empty((b, h, n + room, values.shape[-1]))
        self.buf_k[:, :, :n], self.buf_v[:, :, :n] = keys, values
        self.dtype, self.device, self.is_initialized, self.n = keys.dtype, keys.device, True, 0
        self._advance(n)

    def _advance(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.n += n
        keys, values = self.buf_k[:, :, :self.n], self.buf_v[:, :, :self.n]
        self.keys, self.values = keys, values
        return keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.n + n > self.buf_k.shape[-2]:
            raise RuntimeError(f"RoomyLayer: {n} new columns overflow its room")
        self.buf_k[:, :, self.n:self.n + n] = key_states
        self.buf_v[:, :, self.n:self.n + n] = value_states
        return self._advance(n)


def roomy(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], room: int) -> Cache:
    """A cache of RoomyLayers holding (keys, values) per layer, with ``room`` spare columns."""
    return Cache(layers=[RoomyLayer(k, v, room) for k, v in layers])


@torch.inference_mode()
def generate(model: Any, prompts: Sequence[Sequence[int]], cfg: RecordConfig, models: Models,
             uniforms: torch.Tensor | None, on_step: Callable[[int], None] | None = None,
             states: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Verifier generation: (tokens (B, T) padded, lengths (B,) incl. EOS, logits (B, T, V),
    and with ``states`` its final-norm hidden states over the layout of ``_layout`` (B, L + T -
    1, d): the prompt columns from the prefill, column L + t from the step that fed y_t; else
    None). A feature drafter reads those (``verifier_features``) without another verifier pass
    over prompt + answer."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, models.pad_id, device)
    eos = torch.tensor(models.eos_ids, device=device)
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                      use_cache=True)
    n, steps = len(prompts), cfg.max_new_tokens
    hid: list[torch.Tensor] = [out.last_hidden_state] if states else []
    logits_last = model.lm_head(out.last_hidden_state[:, -1:])
    cache = roomy([(layer.keys, layer.values) for layer in out.cache.layers], steps)
    nxt = mask.sum(-1, keepdim=True)
    tokens = torch.full((n, steps), models.pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    buf: torch.Tensor | None = None
    for s in range(steps):
        logit = logits_last[:, -1]
        if buf is None:
            buf = torch.empty((n, steps, logit.shape[-1]), dtype=logit.dtype, device=device)
        buf[:, s] = logit
        if cfg.greedy:
            tok = logit.float().argmax(-1)
        else:
            probs = torch.softmax(logit.float() / cfg.temperature, -1)
            tok = sample(probs, uniforms[:, s].to(device))  # type: ignore[index]
        tok = torch.where(done, models.pad_id, tok)
        tokens[:, s] = tok
        lengths += (~done).long()
        if on_step is not None:
            on_step(int((~done).sum()))
        done |= torch.isin(tok, eos)
        if s == steps - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model.model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt,
                          cache=cache, use_cache=True)
        logits_last = model.lm_head(out.last_hidden_state)
        if states:
            hid.append(out.last_hidden_state)
        nxt = nxt + 1
    width = int(lengths.max())
    assert buf is not None
    kept = torch.cat(hid, 1)[:, :ids.shape[1] + width - 1] if states else None
    return tokens[:, :width], lengths, buf[:, :width], kept


def _layout(prompts: Sequence[Sequence[int]], tokens: torch.Tensor, lengths: torch.Tensor,
            pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of left-padded prompts (width L) then y_0..y_{T-2}: column L-1+t predicts y_t."""
    ids, mask = left_pad(prompts, pad, device)
    width = tokens.shape[1]
    gen_mask = (torch.arange(width - 1, device=device)[None] < (lengths[:, None] - 1)).long()
    return torch.cat([ids, tokens[:, :width - 1]], 1), torch.cat([mask, gen_mask], 1)


def verifier_features(states: torch.Tensor, prompts: Sequence[Sequence[int]],
                      tokens: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """What a feature drafter reads at each column of the teacher-forced layout: the verifier's
    final-norm hidden state of the column before (zero before a prompt's first token and on
    padding), (B, C, d); ``states`` as ``generate`` keeps them."""
    _, mask = _layout(prompts, tokens, lengths, pad, states.device)
    return shift_features(states * mask[..., None].to(states.dtype))


@torch.inference_mode()
def teacher_force(model: Any, prompts: Sequence[Sequence[int]], tokens: torch.Tensor,
                  lengths: torch.Tensor, pad: int, features: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor | None]:
    """Drafter over prompt + y: (logits (B, T, V) at the positions predicting y_t, cache, mask,
    and for a feature drafter its hidden states (B, T, d) there; else None).

    Layout: left-padded prompts (width L), then y_0..y_{T-2}; column L-1+t predicts y_t. A
    feature drafter reads ``features`` (``verifier_features``).
    """
    device = next(model.parameters()).device
    ids, mask = _layout(prompts, tokens, lengths, pad, device)
    width = tokens.shape[1]
    res = drafter_hidden(model, ids, features, attention_mask=mask, position_ids=positions(mask),
                         use_cache=True)
    h = res.last_hidden_state[:, -width:]
    return model.lm_head(h), res.cache, mask, h if uses_features(model) else None


@torch.inference_mode()
def freerun(model: Any, cache: Any, mask: torch.Tensor, width_prompt: int,
            prompt_lens: torch.Tensor, rows_b: torch.Tensor, rows_t: torch.Tensor,
            first: torch.Tensor, uniforms: torch.Tensor | None, cfg: RecordConfig,
            hidden: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Drafter continuations of K_max own tokens from rows (b, t), starting with token ``first``.

    The cache of teacher_force holds prompt + y; row (b, t) keeps prompt + y_<t by masking the
    cache columns from L + t on. A feature drafter (``hidden``: its teacher-forced hidden states
    (B, T, d)) feeds ``first`` on its own state at (b, t), then each step on the step before's,
    as the decoder drafts past the verified prefix. Returns each of FREERUN's signals as
    (R, K_max) on the CPU.

    A subset head's law is zero off its m tokens, so the signals and draws are computed over
    its m logits (the same values as over the full row up to float rounding; the draws pick the
    same tokens: the inverse CDF has the same steps): the full-vocabulary statistics were ~25%
    of a feature-drafter recording (py-spy).
    """
    device = mask.device
    subset = head_token_ids(model)
    rows_b, rows_t, first = rows_b.cpu(), rows_t.cpu(), first.cpu()
    r, k = rows_b.numel(), cfg.k_max
    res = {s: torch.empty((r, k), dtype=torch.float32) for s in FREERUN}
    res["draft"] = torch.empty((r, k), dtype=torch.long)  # step j's argmax: drafts t + 1 + j
    order = torch.argsort(rows_t, stable=True)
    for lo in range(0, r, cfg.freerun_batch):
        idx = order[lo:lo + cfg.freerun_batch]
        b, t = rows_b[idx].to(device), rows_t[idx].to(device)
        cols = width_prompt + int(t.max())
        sub = roomy([(layer.keys[b, :, :cols], layer.values[b, :, :cols])
                     for layer in cache.layers], k)
        m = mask[b, :cols] * (torch.arange(cols, device=device)[None] < (width_prompt + t)[:, None])
        pos = (prompt_lens[b] + t)[:, None]
        tok = first[idx].to(device)
        prev = None if hidden is None else hidden[b, t]
        for j in range(k):
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
            h = drafter_hidden(model, tok[:, None], None if prev is None else prev[:, None],
                               attention_mask=m, position_ids=pos + j, cache=sub,
                               use_cache=True).last_hidden_state[:, -1]
            logits = model.lm_head(h) if subset is None else model.lm_head.subset_logits(h)
            prev = None if prev is None else h
            stats, q = dist_stats(logits, cfg.temperature, cfg.topk)
            for s in FREERUN:
                res[s][idx, j] = stats[s].cpu()
            top = q.argmax(-1)
            res["draft"][idx, j] = (top if subset is None else subset[top]).cpu()
            if j < k - 1:
                tok = top if cfg.greedy else \
                    sample(q, uniforms[idx, j + 1].to(device))  # type: ignore[index]
                tok = tok if subset is None else subset[tok]
    return res


def _list_column(values: np.ndarray, has: np.ndarray) -> pa.Array:
    """(N, K) float32 and (N,) bool -> list<float32> with K values where ``has``, else null."""
    k = values.shape[1]
    offsets = np.concatenate([[0], np.cumsum(np.where(has, k, 0))]).astype(np.int32)
    flat = pa.array(values[has].reshape(-1).astype(np.float32), pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pa.array(~has))


def _uniforms(cfg: RecordConfig, prompt_id: str, shape: tuple[int, ...], *stream: str
              ) -> torch.Tensor:
    return torch.rand(shape, generator=generator_for(cfg.seed, prompt_id, *stream),
                      dtype=torch.float64)


def record_group(models: Models, prompts: Sequence[Prompt], ids: Sequence[Sequence[int]],
                 cfg: RecordConfig, decode: Callable[[list[int]], str],
                 score: Callable[[str, str], bool] | None = None,
                 on_step: Callable[[int], None] | None = None,
                 clock: dict[str, float] | None = None) -> dict[str, Any]:
    """Trace columns of one group: rows drafter-major, then prompt, then position."""
    clock = {} if clock is None else clock
    tick = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        clock[stage] = clock.get(stage, 0.0) + now - tick
        tick = now

    uv = None if cfg.greedy else torch.stack(
        [_uniforms(cfg, p.prompt_id, (cfg.max_new_tokens,), "verifier") for p in prompts])
    any_chain = any(uses_features(d) for d in models.drafters.values())
    tokens, lengths, p_logits, states = generate(models.verifier, ids, cfg, models, uv, on_step,
                                                 states=any_chain)
    lap("generate")
    lens = lengths.cpu().numpy()
    tok_np = tokens.cpu().numpy()
    off = np.concatenate([[0], np.cumsum(lens)])
    n = int(off[-1])
    plens = torch.tensor([len(x) for x in ids], device=tokens.device)
    width = max(len(x) for x in ids)
    texts = [decode(tok_np[b, :lens[b]].tolist()) for b in range(len(prompts))]
    base: dict[str, Any] = {
        "prompt_id": np.repeat([p.prompt_id for p in prompts], lens),
        "position": np.concatenate([np.arange(m) for m in lens]).astype(np.int32),
        "token_id": np.concatenate([tok_np[b, :m] for b, m in enumerate(lens)]).astype(np.int32),
        "prompt_tokens": np.repeat([len(x) for x in ids], lens).astype(np.int32),
        "category": np.repeat([p.category for p in prompts], lens),
        "prompt_text": np.repeat([p.text for p in prompts], lens),
        "generated_text": np.repeat(texts, lens),
        "reference_answer": np.repeat([p.reference for p in prompts], lens),
    }
    if score is not None:
        base["correct"] = np.repeat([score(t, p.reference) for t, p in zip(texts, prompts,
                                                                           strict=True)], lens)
    vstats = [dist_stats(p_logits[b, :m], cfg.temperature, cfg.topk)[0]
              for b, m in enumerate(lens)]
    base["verifier_entropy"] = torch.cat([s["entropy"] for s in vstats]).cpu().numpy()
    base["verifier_margin"] = torch.cat([s["margin"] for s in vstats]).cpu().numpy()
    blocks: list[dict[str, Any]] = []
    feats = None
    if states is not None:
        feats = verifier_features(states, ids, tokens, lengths, models.pad_id)
        del states
    for name, drafter in models.drafters.items():
        q_logits, cache, mask, hid = teacher_force(drafter, ids, tokens, lengths, models.pad_id,
                                                   feats)
        lap("teacher_force")
        cols: dict[str, list[torch.Tensor]] = {}
        rows_b, rows_t, first, ufr = [], [], [], []
        chain = hid is not None  # a feature drafter: its continuation from every row
        for b, m in enumerate(lens):
            pl, ql = _align(p_logits[b, :m], q_logits[b, :m])
            stats, _ = dist_stats(ql, cfg.temperature, cfg.topk)
            acc = acceptance_columns(pl, ql, tokens[b, :m], cfg)
            law = acc.pop("reject_law", None)
            for key, val in [*((f"draft_{s}", v) for s, v in stats.items()), *acc.items()]:
                cols.setdefault(key, []).append(val.cpu())
            has = ~acc["draft_match"] if cfg.greedy else acc["accept_prob"] < 1
            if chain:
                has = torch.ones_like(has)
            t_idx = torch.nonzero(has)[:, 0]
            rows_b.append(torch.full_like(t_idx, b))
            rows_t.append(t_idx)
            if cfg.greedy:
                first.append(ql[t_idx].float().argmax(-1))
                continue
            u = _uniforms(cfg, prompts[b].prompt_id, (int(m), cfg.k_max), "freerun", name)
            w = law[t_idx]  # type: ignore[index]
            w = torch.where(w.sum(-1, keepdim=True) > 0, w,
                            torch.softmax(ql[t_idx].float() / cfg.temperature, -1))
            first.append(sample(w, u[t_idx.cpu(), 0].to(w.device)))
            ufr.append(u[t_idx.cpu()])
        lap("columns")
        rb, rt = torch.cat(rows_b), torch.cat(rows_t)
        fr = freerun(drafter, cache, mask, width, plens, rb, rt, torch.cat(first),
                     None if cfg.greedy else torch.cat(ufr), cfg, hid)
        del cache, q_logits, hid
        lap("freerun")
        flat = (torch.as_tensor(off[:-1])[rb.cpu()] + rt.cpu()).numpy()
        has_np = np.zeros(n, dtype=bool)
        has_np[flat] = True
        block = {**base, "drafter": np.full(n, name)}
        block.update({k: torch.cat(v).numpy() for k, v in cols.items()})
        for s, col in FREERUN.items():
            full = np.zeros((n, cfg.k_max), dtype=np.float32)
            full[flat] = fr[s].numpy()
            block[col] = _list_column(full, has_np)
        if any_chain:  # 1 where the continuation's draft at row + 1 + j is the verifier's
            ok = np.zeros((n, cfg.k_max), dtype=np.float32)
            if chain:
                tgt = flat[:, None] + 1 + np.arange(cfg.k_max)
                inside = tgt < np.repeat(off[1:], lens)[flat][:, None]
                tok_flat = base["token_id"]
                ok[flat] = (inside & (fr["draft"].numpy() ==
                                      tok_flat[np.minimum(tgt, n - 1)])).astype(np.float32)
            block["freerun_accept_prob"] = _list_column(ok, np.full(n, chain))
        blocks.append(block)
    return {k: pa.concat_arrays([pa.array(b[k]) if not isinstance(b[k], pa.Array) else b[k]
                                 for b in blocks]) for k in blocks[0]}


def hardware(device: torch.device) -> str:
    """GPU name, or CPU model and torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()} ({torch.get_num_threads()} threads)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("entrospec")
    except PackageNotFoundError:
        return "unknown"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def file_args(path: Path) -> Any:
    """The ``record_args`` a trace or part file was recorded with (None if not ours)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
        return json.loads(raw).get("record_args") if raw else None
    except Exception:  # not Parquet, not JSON: not ours
        return None


def _diff(old: Any, new: Mapping[str, Any]) -> str:
    if not isinstance(old, Mapping):
        return "no recorded arguments"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in keys[:3])


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def group_file(parts: Path, g: int) -> Path:
    """Group ``g``'s file in the recording's ``parts`` folder."""
    return parts / f"group-{g:05d}.parquet"


def finished_groups(parts: Path, args: Mapping[str, Any]) -> set[int]:
    """Groups already in ``parts``; RecordError if any was recorded with other arguments."""
    done: set[int] = set()
    for f in sorted(parts.glob("group-*.parquet")) if parts.is_dir() else []:
        if (got := file_args(f)) != args:
            raise RecordError(f"{parts} holds groups recorded with other arguments "
                              f"({_diff(got, args)}); rerun that command or delete {parts}")
        done.add(int(f.stem.split("-")[1]))
    return done


def record(models: Models, prompts: Sequence[Prompt], token_ids: Sequence[Sequence[int]],
           cfg: RecordConfig, out: str | Path, meta: Mapping[str, Any], *,
           decode: Callable[[list[int]], str], score: Callable[[str, str], bool] | None = None,
           args: Mapping[str, Any] | None = None, overwrite: bool = False,
           progress: bool = False, on_group_done: Callable[[int], None] | None = None
           ) -> RecordResult:
    """Record ``prompts`` (tokenised as ``token_ids``) to the trace ``out``; resumable.

    meta: verifier, drafters, pair, dataset, chat_template, command (decoding, temperature,
    k_max, topk, relaxed_rules, hardware, recorded ... are added here). args: whatever else
    fixes the numbers (model fingerprints, dtype, device); compared on resume. An existing
    ``out`` recorded with the same arguments is left as is unless ``overwrite``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    cfg.check()
    feature = [n for n, d in models.drafters.items() if uses_features(d)]
    if feature and not cfg.greedy:
        raise RecordError(f"drafters {feature} draft on their own hidden states: their traces "
                          "are recorded greedy only (--temperature 0)")
    out, parts = Path(out), parts_dir(Path(out))
    if not prompts or len(prompts) != len(token_ids) or any(len(x) == 0 for x in token_ids):
        raise RecordError("need one non-empty token sequence per prompt, and some prompts")
    full_args = json.loads(json.dumps(
        {**asdict(cfg), **(args or {}), "prompt_ids": _digest([p.prompt_id for p in prompts]),
         "prompt_tokens": _digest([list(x) for x in token_ids])}, sort_keys=True))
    if out.exists() and not parts.exists() and not overwrite:
        if file_args(out) == full_args:
            return RecordResult(out, len(prompts), 0, 0, 0.0, {})
        raise RecordError(f"{out} exists (recorded with other arguments: "
                          f"{_diff(file_args(out), full_args)}); pass --overwrite or choose "
                          "another --out")
    done = finished_groups(parts, full_args)
    full_meta = {**meta, "decoding": "greedy" if cfg.greedy else "sampled",
                 "temperature": cfg.temperature, "k_max": cfg.k_max, "topk": cfg.topk,
                 "relaxed_rules": cfg.relaxed_rules(), "max_new_tokens": cfg.max_new_tokens,
                 "seed": cfg.seed, "hardware": hardware(next(models.verifier.parameters()).device),
                 "synthetic": False, "entrospec_version": _version(), "record_args": full_args,
                 "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    n_groups, tokens, recorded = -(-len(prompts) // cfg.batch), [0], 0
    clock: dict[str, float] = {}
    bar = Progress(TextColumn("recording"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("prompts, {task.fields[tps]:.1f} tokens/s"),
                   console=Console(stderr=True), disable=not progress)
    start = time.perf_counter()
    with bar:
        task = bar.add_task("record", total=len(prompts), tps=0.0)

        def on_step(k: int) -> None:
            tokens[0] += k
            bar.update(task, tps=tokens[0] / max(time.perf_counter() - start, 1e-9))

        for g in range(n_groups):
            lo, hi = g * cfg.batch, min((g + 1) * cfg.batch, len(prompts))
            part = group_file(parts, g)
            # another recorder of the same command may share ``parts``: a group is taken by
            # claiming it, and one finished meanwhile is skipped
            if g not in done and not part.exists() and claim(part):
                try:
                    if not part.exists():  # else: finished between the check and the claim
                        cols = record_group(models, prompts[lo:hi], token_ids[lo:hi], cfg,
                                            decode, score, on_step, clock)
                        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
                        write_parquet_atomic(build_table(cols, {**full_meta, "group": g,
                                                                "recorded": now}), part)
                        recorded += 1
                        if on_group_done is not None:
                            on_group_done(g)
                finally:
                    release(part)
            bar.update(task, advance=hi - lo,
                       tps=tokens[0] / max(time.perf_counter() - start, 1e-9))
    seconds = time.perf_counter() - start
    missing = [g for g in range(n_groups) if not (group_file(parts, g)).exists()]
    if not parts.is_dir() and out.exists():  # another recorder assembled it meanwhile
        missing = []
    if missing or not parts.is_dir() or not claim(parts / "assemble"):
        # groups still in another recorder's hands: the last recorder to finish assembles
        return RecordResult(out, len(prompts), recorded, tokens[0], seconds, clock,
                            pending=missing)
    assemble(parts, range(n_groups), list(models.drafters), full_meta, out)
    shutil.rmtree(parts)
    return RecordResult(out, len(prompts), recorded, tokens[0], seconds, clock)


def _claim_path(part: Path) -> Path:
    return part.with_name(part.name.split(".")[0] + ".claim")


def claim(part: Path) -> bool:
    """Take ``part`` (a group file to write, or a task name) for this process: True if taken.

    The claim is a file made with O_EXCL holding host and pid; a claim left by a dead process
    on this host is taken over. Claims let several recorders (processes, or machines sharing
    the folder) run one command's groups in parallel without doing any group twice.
    """
    path = _claim_path(part)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
            except (OSError, ValueError):
                return False  # being written, or foreign: leave it
            if host != socket.gethostname() or _alive(int(pid)):
                return False
            path.unlink(missing_ok=True)  # its owner died: take over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return True
    return False


def release(part: Path) -> None:
    """Drop this process's claim on ``part``."""
    _claim_path(part).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def assemble(parts: Path, groups: Sequence[int], drafters: Sequence[str],
             meta: Mapping[str, Any], out: Path) -> None:
    """Write the trace ``out`` from the given group files of ``parts`` (drafter-major rows).

    A recording resumed across sessions may span machines: the metadata keeps each group's
    ``hardware`` and ``recorded`` time under ``groups``, and ``hardware`` names every machine.
    """
    tables = [pq.read_table(group_file(parts, g)) for g in groups]
    where = []
    for g, t in zip(groups, tables, strict=True):
        m = json.loads((t.schema.metadata or {}).get(META_KEY, b"{}"))
        where.append({"group": g, "hardware": m.get("hardware"), "recorded": m.get("recorded")})
    machines = list(dict.fromkeys(w["hardware"] for w in where if w["hardware"]))
    meta = {**meta, "groups": where, **({"hardware": "; ".join(machines)} if machines else {})}
    big = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    big = pa.concat_tables([big.filter(pc.equal(big["drafter"], d)) for d in drafters])
    names = [c for c in (*REQUIRED, *OPTIONAL) if c in big.column_names]
    write_parquet_atomic(build_table({c: big.column(c) for c in names}, meta), out)


def assemble_partial(out: str | Path) -> tuple[int, int]:
    """Write ``out`` from the leading finished groups of an unfinished recording, keeping its
    parts (the same record command still resumes and then replaces ``out`` with the whole
    trace). Metadata says ``partial``. Returns (prompts written, groups written)."""
    out = Path(out)
    parts = parts_dir(out)
    files = sorted(parts.glob("group-*.parquet")) if parts.is_dir() else []
    done = {int(f.stem.split("-")[1]) for f in files}
    lead = 0
    while lead in done:
        lead += 1
    if lead == 0:
        raise RecordError(f"{parts}: no finished leading group to assemble")
    first = pq.read_schema(parts / "group-00000.parquet").metadata or {}
    meta = json.loads(first[META_KEY])
    meta.pop("group", None)
    table = pa.concat_tables([pq.read_table(group_file(parts, g), columns=[
        "prompt_id"]) for g in range(lead)])
    n = len(set(table.column("prompt_id").to_pylist()))
    meta["partial"] = {"prompts": n, "groups": lead,
                       "note": "leading groups of an unfinished recording; the same record "
                               "command resumes it and replaces this file with the whole trace"}
    assemble(parts, range(lead), [d["name"] for d in meta["drafters"]], meta, out)
    return n, lead
