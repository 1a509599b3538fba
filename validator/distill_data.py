"""Distillation data: the verifier's top-k logits over answers to GSM8K-train questions, in shards.

Two kinds of answer, same shard format:
  own   the verifier's own greedy answers (sequential generation: ~60 tokens/s on 2 CPU cores)
  gold  the dataset's reference answers (calculator ``<<...>>`` notes removed), teacher-forced
        through the verifier in one batched forward pass (several times faster per token); the
        drafter learns the verifier's next-token law on prefixes close to, but not exactly, its
        own. Held-out agreement is always measured on ``own`` answers.

Each shard holds one generation batch and is written atomically (tmp file, then os.replace), so a
kill loses at most the batch in flight and re-running the same command resumes at the first
missing shard. A shard is a ``torch.save`` dict::

    {"meta": {...}, "examples": [{"qid": int, "ids": int32[L], "answer_start": int,
                                  "finished": bool, "topk_idx": int32[T, k],
                                  "topk_logit": float16[T, k]}, ...]}

``ids`` is prompt + answer (no padding); the answer occupies ``ids[answer_start:]`` and ends with
``<|im_end|>`` when ``finished``. Row t of ``topk_*`` is the verifier's top-k over the vocabulary
when it chose token ``ids[answer_start + t]`` (captured inside ``generate``, so it costs nothing).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
GSM8K_TRAIN = REPO / "data" / "gsm8k" / "train.jsonl"
GSM8K_TEST = REPO / "data" / "gsm8k" / "test.jsonl"


def load_questions(path: Path, limit: int | None = None, field: str = "question") -> list[str]:
    """One field (``question`` or ``answer``) of a GSM8K-style jsonl file, in file order."""
    out: list[str] = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)[field])
            if limit is not None and len(out) >= limit:
                break
    return out


def clean_gold(answer: str) -> str:
    """A GSM8K reference answer without its calculator annotations ``<<48/2=24>>``."""
    return re.sub(r"<<[^>]*>>", "", answer)


@torch.no_grad()
def teacher_forced_batch(model: Any, tok: Any, qids: list[int], questions: list[str],
                         answers: list[str], topk: int) -> list[dict[str, Any]]:
    """The verifier's top-k logits at every position of given answers (one padded forward)."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    seqs = []
    for q, a in zip(questions, answers, strict=True):
        p = chat_prompt_ids(tok, q)
        seqs.append((p, list(tok(a, add_special_tokens=False).input_ids) + [end]))
    width = max(len(p) + len(a) for p, a in seqs)
    input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (p, ans) in enumerate(seqs):
        input_ids[r, :len(p) + len(ans)] = torch.tensor(p + ans)
        mask[r, :len(p) + len(ans)] = 1
    hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    examples = []
    for r, (p, ans) in enumerate(seqs):
        logits = model.lm_head(hidden[r, len(p) - 1:len(p) + len(ans) - 1]).float()
        v, i = torch.topk(logits, topk, dim=-1)
        examples.append({"qid": qids[r], "ids": torch.tensor(p + ans, dtype=torch.int32),
                         "answer_start": len(p), "finished": True,
                         "topk_idx": i.to(torch.int32), "topk_logit": v.to(torch.float16)})
    return examples


def chat_prompt_ids(tok: Any, question: str) -> list[int]:
    """Token ids of the chat-templated single-turn prompt, ending with the assistant header."""
    msgs = [{"role": "user", "content": question}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False).input_ids)


class TopKCapture:
    """Logits processor that records the top-k of each step's scores and changes nothing."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.idx: list[torch.Tensor] = []
        self.val: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        v, i = torch.topk(scores.float(), self.k, dim=-1)
        self.idx.append(i.to(torch.int32))
        self.val.append(v.to(torch.float16))
        return scores


@torch.no_grad()
def generate_batch(model: Any, tok: Any, qids: list[int], questions: list[str],
                   max_new_tokens: int, topk: int) -> list[dict[str, Any]]:
    """Greedy answers of the verifier for one batch (left padding), with its top-k logits."""
    from transformers import LogitsProcessorList

    prompts = [chat_prompt_ids(tok, q) for q in questions]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    cap = TopKCapture(topk)
    out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=max_new_tokens, logits_processor=LogitsProcessorList([cap]),
                         pad_token_id=pad, eos_token_id=tok.eos_token_id)
    gen = out[:, width:]
    idx = torch.stack(cap.idx, dim=1)  # (B, steps, k)
    val = torch.stack(cap.val, dim=1)
    eos = tok.eos_token_id
    examples = []
    for r, p in enumerate(prompts):
        row = gen[r].tolist()
        finished = eos in row
        n = row.index(eos) + 1 if finished else len(row)
        examples.append({
            "qid": qids[r],
            "ids": torch.tensor(p + row[:n], dtype=torch.int32),
            "answer_start": len(p),
            "finished": finished,
            "topk_idx": idx[r, :n].clone(),
            "topk_logit": val[r, :n].clone(),
        })
    return examples


def token_counts(tok: Any, vocab: int, path: Path = GSM8K_TRAIN,
                 limit: int | None = None) -> torch.Tensor:
    """(vocab,) int64 occurrences of each token id in the answers (cleaned of calculator notes)
    of a GSM8K-style jsonl file, tokenized as the assistant's text: the frequency ranking a
    subset drafter head keeps (validator.drafter.frequency_ranked)."""
    texts = [clean_gold(a) for a in load_questions(path, limit, "answer")]
    ids = [i for row in tok(texts, add_special_tokens=False)["input_ids"] for i in row]
    return torch.bincount(torch.as_tensor(ids, dtype=torch.long), minlength=vocab)[:vocab]


def shard_path(out_dir: Path, start: int) -> Path:
    return out_dir / f"shard_{start:05d}.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temp file and os.replace (never a half-written file)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def generate_shards(model: Any, tok: Any, questions: list[str], out_dir: Path, batch_size: int,
                    max_new_tokens: int, topk: int, log: Any = print,
                    source: str = "", answers: list[str] | None = None) -> int:
    """Write every missing shard of ``questions`` into ``out_dir``; return shards written.
    ``answers`` given: teacher-forced over them (gold), else the verifier's own greedy answers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for start in range(0, len(questions), batch_size):
        path = shard_path(out_dir, start)
        if path.exists():
            continue
        qids = list(range(start, min(start + batch_size, len(questions))))
        t0 = time.time()
        qs = [questions[i] for i in qids]
        ex = (generate_batch(model, tok, qids, qs, max_new_tokens, topk) if answers is None else
              teacher_forced_batch(model, tok, qids, qs, [answers[i] for i in qids], topk))
        meta = {"source": source, "answers": "own" if answers is None else "gold",
                "start": start, "max_new_tokens": max_new_tokens, "topk": topk,
                "seconds": round(time.time() - t0, 1)}
        atomic_torch_save({"meta": meta, "examples": ex}, path)
        written += 1
        ntok = sum(len(e["ids"]) - e["answer_start"] for e in ex)
        log(f"shard {start:05d}: {len(ex)} answers, {ntok} tokens, {meta['seconds']} s "
            f"({ntok / max(meta['seconds'], 1e-9):.1f} tok/s), "
            f"{sum(not e['finished'] for e in ex)} hit max_new_tokens")
    return written


def list_shards(out_dir: Path) -> list[Path]:
    """Complete shards in ``out_dir``, sorted by start index."""
    return sorted(out_dir.glob("shard_*.pt"))


def load_examples(paths: list[Path], features: bool = False) -> list[dict[str, Any]]:
    """All examples of the given shards, in order; ``features``: each also gets ``feat``, the
    verifier's hidden states from the shard's sidecar (``feature_path``)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        ex = torch.load(p, weights_only=True)["examples"]
        if features:
            side = feature_path(p)
            if not side.exists():
                raise FileNotFoundError(f"{side}: no verifier features for {p} (run "
                                        "`python -m validator.distill features` first)")
            feats = torch.load(side, weights_only=True)["features"]
            if len(feats) != len(ex) or any(len(f) != len(e["ids"])
                                            for f, e in zip(feats, ex, strict=True)):
                raise ValueError(f"{side}: features do not match the examples of {p}")
            ex = [{**e, "feat": f} for e, f in zip(ex, feats, strict=True)]
        out.extend(ex)
    return out


def feature_path(shard: Path) -> Path:
    """Where a shard's verifier features live: ``<data dir>_features/<shard name>``."""
    return shard.parent.with_name(shard.parent.name + "_features") / shard.name


@torch.no_grad()
def write_features(model: Any, shard: Path, pad_id: int, batch: int = 8) -> int:
    """Store the verifier's final-norm hidden states (float16, every position of ``ids``) for one
    shard in its sidecar (atomic); returns tokens processed. Examples go through in length order
    to keep padding small."""
    ex = torch.load(shard, weights_only=True)["examples"]
    feats: list[torch.Tensor | None] = [None] * len(ex)
    order = sorted(range(len(ex)), key=lambda i: len(ex[i]["ids"]))
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(ex[i]["ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(ex[i]["ids"])
            ids[r, :n] = ex[i]["ids"].long()
            mask[r, :n] = 1
        h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        for r, i in enumerate(idx):
            feats[i] = h[r, :len(ex[i]["ids"])].to(torch.float16).clone()
    out = feature_path(shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"features": feats, "kind": "final-norm hidden state, float16"}, out)
    return sum(len(e["ids"]) for e in ex)


def iter_batches(examples: list[dict[str, Any]], batch: int, seed: int,
                 skip: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Shuffled batches of ``batch`` examples (one epoch, deterministic in seed), skipping the
    first ``skip`` batches (resume position)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    for b, s in enumerate(range(0, len(order) - batch + 1, batch)):
        if b >= skip:
            yield [examples[i] for i in order[s:s + batch]]
