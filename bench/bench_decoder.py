"""Real decoder vs Hugging Face assisted generation vs verifier-only, side by side in one run.

    python bench/bench_decoder.py [--pair smollm2-135m] [--drafter NAME] [--k 4] [--prompts 4]
                                  [--max-new-tokens 128] [--threads 2] [--repeats 1]

Greedy, batch 1, the same pair, prompts (GSM8K test, chat template) and k for all three:
  verifier-only   HF ``generate`` of the verifier alone (KV cache, one token per call)
  HF assisted     HF ``generate(assistant_model=drafter)`` with ``num_assistant_tokens=k``, the
                  constant schedule and no confidence threshold (so k drafts every round)
  entrospec       validator.decoder.speculative_generate with policy ``fixed k``
Prompts run in the outer loop and methods in the inner one (drift spreads evenly); one untimed
warm-up of each method first. Hooks on the verifier and the drafter clock the time spent inside
their forward passes; the rest of a method's time ("other") is its own work per token: sampling,
signals, acceptance, cache handling, Python. Both speculative methods run the same forwards, so
"other" is where one can beat the other. Outputs are checked token-identical to verifier-only
(greedy speculative decoding is lossless). Target (issue 5): entrospec >= 1.2x HF assisted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


class ForwardClock:
    """Seconds spent inside the forward passes of ``modules`` (forward pre/post hooks)."""

    def __init__(self, modules: list[Any]) -> None:
        self.seconds = 0.0
        self._starts: list[float] = []
        for m in modules:
            m.register_forward_pre_hook(lambda *_: self._starts.append(time.perf_counter()))
            m.register_forward_hook(lambda *_: self._stop())

    def _stop(self) -> None:
        self.seconds += time.perf_counter() - self._starts.pop()


def hf_assisted(verifier: Any, drafter: Any, ids: Any, k: int, max_new: int, eos: Any) -> Any:
    cfg = drafter.generation_config
    cfg.num_assistant_tokens, cfg.num_assistant_tokens_schedule = k, "constant"
    cfg.assistant_confidence_threshold = 0.0
    return verifier.generate(ids, assistant_model=drafter, do_sample=False,
                             max_new_tokens=max_new, eos_token_id=eos, pad_token_id=eos[0])


def main() -> None:
    import torch

    from simulator.policies import make
    from validator.datasets import load_prompts
    from validator.decoder import speculative_generate
    from validator.pairs import load_pair

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", default="smollm2-135m")
    ap.add_argument("--drafter", default=None, help="drafter name (default: the largest)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the prompts")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_pair(args.pair)
    models = loaded.models
    name = args.drafter or list(models.drafters)[-1]
    drafter = models.drafters[name]
    eos = list(models.eos_ids)
    prompts = [torch.tensor([loaded.encode(p.text)]) for p in load_prompts("gsm8k", args.prompts)]

    def run(method: str, ids: Any) -> list[int]:
        with torch.inference_mode():
            if method == "verifier-only":
                out = models.verifier.generate(ids, do_sample=False,
                                               max_new_tokens=args.max_new_tokens,
                                               eos_token_id=eos, pad_token_id=eos[0])
                return out[0, ids.shape[1]:].tolist()
            if method == "HF assisted":
                out = hf_assisted(models.verifier, drafter, ids, args.k, args.max_new_tokens,
                                  eos)
                return out[0, ids.shape[1]:].tolist()
            res = speculative_generate(models.verifier, [drafter], ids[0],
                                       make("fixed", {"k": args.k}), args.max_new_tokens,
                                       eos_token_id=eos)
            return list(res.tokens)

    methods = ("verifier-only", "HF assisted", "entrospec")
    for m in methods:  # warm-up
        run(m, prompts[0][:, :16])
    clock = ForwardClock([models.verifier, drafter])
    seconds = dict.fromkeys(methods, 0.0)
    inside = dict.fromkeys(methods, 0.0)
    tokens = dict.fromkeys(methods, 0)
    mismatched = dict.fromkeys(methods, 0)
    for _ in range(args.repeats):
        for ids in prompts:
            ref = None
            for m in methods:
                t0, f0 = time.perf_counter(), clock.seconds
                out = run(m, ids)
                seconds[m] += time.perf_counter() - t0
                inside[m] += clock.seconds - f0
                tokens[m] += len(out)
                ref = out if ref is None else ref
                mismatched[m] += int(out != ref)
    tps = {m: tokens[m] / seconds[m] for m in methods}
    print(f"pair {args.pair}, drafter {name}, k={args.k}, {args.prompts} GSM8K prompts x "
          f"{args.repeats}, up to {args.max_new_tokens} new tokens, greedy, batch 1, "
          f"{args.threads} threads")
    print(f"{'method':<15}{'tokens':>8}{'seconds':>10}{'forwards s':>12}{'other ms/tok':>14}"
          f"{'tok/s':>9}{'vs verifier':>13}{'vs HF assisted':>16}{'outputs != verifier':>21}")
    for m in methods:
        other = 1e3 * (seconds[m] - inside[m]) / tokens[m]
        print(f"{m:<15}{tokens[m]:>8}{seconds[m]:>10.2f}{inside[m]:>12.2f}{other:>14.2f}"
              f"{tps[m]:>9.2f}{tps[m] / tps['verifier-only']:>12.2f}x"
              f"{tps[m] / tps['HF assisted']:>15.2f}x{mismatched[m]:>21}")
    ratio = tps["entrospec"] / tps["HF assisted"]
    print(f"entrospec / HF assisted = {ratio:.2f}x (target >= 1.2x: "
          f"{'met' if ratio >= 1.2 else 'MISSED'})")


if __name__ == "__main__":
    main()
