"""Subset drafter heads: what a head over the m most frequent tokens costs and keeps.

For each shipped SmolLM2 drafter and head size m (full = the verifier's 49,152-token head):

- coverage: fraction of the verifier's own tokens in the shipped traces that the head can
  propose at all (GSM8K test, Spec-Bench), a ceiling on agreement;
- agreement: teacher-forced greedy agreement with the verifier's tokens on the first N prompts
  of the GSM8K trace (the trace's ``draft_match`` definition; the full-head row is checked
  against the trace's own column, position by position);
- cost: single-token decode latency with a 300-token KV cache, drafter / verifier, interleaved
  rounds (validator.distill_eval.latency_ratio: the measure behind the drafters' "cost").

No training: the subset heads reuse the drafters' trained layers (``distill shrink`` ships one).
``--depths 6,8`` adds untrained drafters of those depths (the verifier's first n layers: their
agreement is the untrained one, their cost is what a trained drafter of that shape pays) and
``--drafter FOLDER`` any saved drafter (e.g. a run's ``best/``).

    python bench/bench_drafter_head.py --threads 2 --prompts 40 --depths 6,8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def verifier_tokens(path: Path, drafter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         list[str]]:
    """(prompt_id, token_id, draft_match) of one drafter's rows, and each prompt's text."""
    t = pq.read_table(path, columns=["prompt_id", "drafter", "token_id", "draft_match",
                                     "prompt_text"]).to_pandas()
    t = t[t["drafter"] == drafter]
    texts = t.groupby("prompt_id", sort=False)["prompt_text"].first().tolist()
    pid = t["prompt_id"].astype("category").cat.codes.to_numpy()
    return pid, t["token_id"].to_numpy(), t["draft_match"].to_numpy(), texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsm8k", default=str(REPO / "traces" / "gsm8k.parquet"))
    ap.add_argument("--specbench", default=str(REPO / "traces" / "specbench.parquet"))
    ap.add_argument("--prompts", type=int, default=40, help="GSM8K prompts for agreement")
    ap.add_argument("--heads", default="2048,4096,8192,16384", help="head sizes m (comma list)")
    ap.add_argument("--depths", default="", help="untrained drafters of these depths (comma list)")
    ap.add_argument("--drafter", action="append", default=[], help="extra drafter folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from validator.distill import subset_ids
    from validator.distill_eval import latency_ratio
    from validator.drafter import build_drafter, head_token_ids, load_drafter, set_subset_head
    from validator.pairs import load_pair

    torch.set_num_threads(args.threads)
    loaded = load_pair("smollm2-135m", progress=False)
    verifier, tok = loaded.models.verifier, loaded.tokenizer
    heads: list[int | None] = [None] + [int(m) for m in args.heads.split(",")]
    ids = {m: subset_ids(tok, verifier, m) for m in heads if m is not None}
    vocab = int(verifier.lm_head.weight.shape[0])

    coverage: dict[tuple[str, int], float] = {}
    first = next(iter(loaded.models.drafters))
    for name, path in (("gsm8k", args.gsm8k), ("specbench", args.specbench)):
        _, tokens, _, _ = verifier_tokens(Path(path), first)
        for m, sub in ids.items():
            member = np.zeros(vocab, bool)
            member[sub.numpy()] = True
            coverage[(name, m)] = float(member[tokens].mean())

    drafters = dict(loaded.models.drafters)
    for n in [int(x) for x in args.depths.split(",") if x]:
        drafters[f"untrained-{n}L"] = build_drafter(verifier, n)
    for folder in args.drafter:
        drafters[Path(folder).name] = load_drafter(Path(folder), verifier)
    pid, tokens, _, texts = verifier_tokens(Path(args.gsm8k), first)  # the same for every drafter
    n = min(args.prompts, len(texts))
    seqs = [(loaded.encode(texts[p]), tokens[pid == p]) for p in range(n)]
    rows = []
    t0 = time.time()
    for dname, drafter in drafters.items():
        own_head = head_token_ids(drafter)
        # the trace's own draft_match column for its drafters (others: compared with nothing)
        match = verifier_tokens(Path(args.gsm8k), dname)[2] if dname in loaded.models.drafters \
            else np.zeros(len(tokens), bool)
        stored = [match[pid == p] for p in range(n)]
        for m in (heads if own_head is None else [len(own_head)]):
            if own_head is None:
                set_subset_head(drafter, verifier, None if m is None else ids[m])
            hits = total = same = 0
            with torch.no_grad():
                for (prompt, y), ref in zip(seqs, stored, strict=True):
                    x = torch.tensor([list(prompt) + y.tolist()])
                    logits = drafter(input_ids=x).logits[0, len(prompt) - 1:-1]
                    pred = logits.argmax(-1).numpy()
                    hits += int((pred == y).sum())
                    total += len(y)
                    same += int(((pred == y) == ref.astype(bool)).sum())
            cost = latency_ratio(drafter, verifier, args.context, args.repeats, args.rounds)
            rows.append((dname, m, hits / total, same, total, cost))
            print(f"  {dname} head {m or 'full'}: agreement {hits / total:.4f}, "
                  f"{cost['drafter_s'] * 1e3:.2f} ms, ratio {cost['ratio']:.3f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        if own_head is None:
            set_subset_head(drafter, verifier, None)

    print(f"\nsubset drafter heads: smollm2-135m, {args.threads} thread(s), float32 CPU; "
          f"agreement over the first {args.prompts} prompts of {Path(args.gsm8k).name} "
          f"({rows[0][4]} positions); "
          f"cost = decode latency ratio at {args.context} context")
    head = (f"{'drafter':<18}{'head':>7}{'cov gsm8k':>11}{'cov spec':>10}{'agreement':>11}"
            f"{'ms/token':>10}{'cost':>7}{'agree x':>9}{'cost x':>8}")
    print(head)
    print("-" * len(head))
    base: dict[str, tuple[float, float]] = {}
    for dname, m, agree, same, total, cost in rows:
        if m is None or dname not in base:
            base[dname] = (agree, cost["ratio"])
        if m is None and dname in loaded.models.drafters:
            if same != total:
                print(f"  note: {dname} full head differs from the trace's draft_match at "
                      f"{total - same} of {total} positions (argmax near-ties)")
        cov = ("1.000", "1.000") if m is None else (
            f"{coverage.get(('gsm8k', m), float('nan')):.3f}",
            f"{coverage.get(('specbench', m), float('nan')):.3f}")
        a0, c0 = base[dname]
        print(f"{dname:<18}{m or 'full':>7}{cov[0]:>11}{cov[1]:>10}{agree:>11.4f}"
              f"{cost['drafter_s'] * 1e3:>10.2f}{cost['ratio']:>7.3f}{agree / a0:>9.3f}"
              f"{cost['ratio'] / c0:>8.3f}")
    print(f"verifier: {rows[0][5]['verifier_s'] * 1e3:.2f} ms/token (median of rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
