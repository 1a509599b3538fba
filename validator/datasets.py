"""Prompt sets for recording, read from the repository's data/ folder, and GSM8K scoring.

``gsm8k``: data/gsm8k/test.jsonl in file order; prompt ``gsm8k-<row>`` (0-based row), category
"gsm8k", reference = the dataset answer (worked solution ending in ``#### <number>``).

``specbench[:category]``: data/spec_bench/question.jsonl, first turn only; prompt
``specbench-<question_id>``, the row's category, reference = the first turn's reference if the
row has one, else "". With ``:category`` only that category's rows are kept, in file order.
The whole set comes in stratified order (``stratified``): the file lists its 13 categories one
block after another, so its first N rows would hold only the first few; instead the i-th of a
category's n rows gets the key (i + 1/2) / n and rows are sorted by key (file order breaks
ties). Every prefix is then a proportional sample (each category within two prompts of its
share; the first 48 hold all 13 categories), so a recording stopped part-way still covers
every category in proportion.

Scoring rule for GSM8K (``gsm8k_correct``): the reference number is the text after the last
``#### `` of the answer; the prediction is the last number in the generated text (optional sign,
digits with optional thousands commas, optional decimals). Both have commas removed and are
compared as exact decimals (``18`` equals ``18.00``); no number in the output counts as wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from simulator.errors import EntrospecError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
FILES = {"gsm8k": Path("gsm8k") / "test.jsonl", "specbench": Path("spec_bench") / "question.jsonl"}
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class DatasetError(EntrospecError):
    """Unknown dataset or category, missing data file, or an impossible prompt count."""


@dataclass(frozen=True)
class Prompt:
    """One user prompt (before any chat template) and what the trace stores about it."""

    prompt_id: str
    text: str
    category: str
    reference: str


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"specbench:qa"`` -> ("specbench", "qa"); ``"gsm8k"`` -> ("gsm8k", None)."""
    name, sep, category = spec.partition(":")
    if name not in FILES:
        raise DatasetError(f"--dataset {spec!r}: unknown; use gsm8k or specbench[:category]")
    if sep and name != "specbench":
        raise DatasetError(f"--dataset {spec!r}: only specbench has categories")
    if sep and not category:
        raise DatasetError(f"--dataset {spec!r}: empty category")
    return name, (category or None)


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} is missing")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def stratified(categories: Sequence[str]) -> list[int]:
    """Indices of ``categories`` interleaved so every prefix is proportional (module docstring)."""
    seen: dict[str, int] = {}
    rank = []
    for c in categories:
        rank.append(seen.get(c, 0))
        seen[c] = rank[-1] + 1
    keys = [((r + 0.5) / seen[c], i) for i, (c, r) in enumerate(zip(categories, rank, strict=True))]
    return [i for _, i in sorted(keys)]


def load_prompts(spec: str, limit: int | None = None, data_dir: Path = DATA) -> list[Prompt]:
    """The first ``limit`` prompts (all if None) of a dataset spec, in the order stated above."""
    name, category = parse_spec(spec)
    rows = _rows(data_dir / FILES[name])
    if name == "gsm8k":
        prompts = [Prompt(f"gsm8k-{i:04d}", r["question"], "gsm8k", r["answer"])
                   for i, r in enumerate(rows)]
    else:
        cats = sorted({r["category"] for r in rows})
        if category is not None and category not in cats:
            raise DatasetError(f"--dataset {spec!r}: unknown category; known: {', '.join(cats)}")
        prompts = [Prompt(f"specbench-{r['question_id']}", r["turns"][0], r["category"],
                          str((r.get("reference") or [""])[0]))
                   for r in rows if category is None or r["category"] == category]
        if category is None:
            prompts = [prompts[i] for i in stratified([p.category for p in prompts])]
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--prompts {limit}: must be >= 1")
        if limit > len(prompts):
            raise DatasetError(f"--prompts {limit}: {spec} has only {len(prompts)} prompts")
        prompts = prompts[:limit]
    return prompts


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def reference_number(reference: str) -> Decimal | None:
    """The number after the last ``#### `` of a GSM8K answer (None if absent)."""
    head, sep, tail = reference.rpartition("#### ")
    if not sep:
        return None
    m = NUMBER.search(tail)
    return _decimal(m.group()) if m else None


def last_number(text: str) -> Decimal | None:
    """The last number in ``text`` (commas removed), None if there is none."""
    found = NUMBER.findall(text)
    return _decimal(found[-1]) if found else None


def gsm8k_correct(generated: str, reference: str) -> bool:
    """Exact match of the last number of ``generated`` with the reference's ``####`` number."""
    want, got = reference_number(reference), last_number(generated)
    return want is not None and got is not None and want == got
