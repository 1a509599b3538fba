"""The decoder's acceptance test: the (n, V) rule table then a gather, vs the drafted tokens only.

    python bench/bench_verify.py [--vocab 49152] [--repeats 200] [--threads 2]

Per verification of n drafts over a V-token vocabulary (float32, as the decoder runs), the
median wall time of ``acceptance(p, q, rules).gather(drafts)`` (what ``verify`` did before) and
of ``acceptance_at(p, q, drafts, rules)`` (what it does now), interleaved call by call so that
machine drift hits both alike, with their ratio. Rules: all "standard", and a mix that includes
"typical" (whose entropy bound needs one pass over each row).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from simulator.trace import RULE_NAMES
    from validator.signals import acceptance, acceptance_at

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"vocab {args.vocab}, float32, {args.threads} threads, median of {args.repeats} "
          "interleaved calls")
    print(f"{'rules':<10}{'greedy':>8}{'n':>4}{'table ms':>11}{'drafted ms':>12}{'ratio':>8}")
    for mix in ("standard", "mixed"):
        for greedy in (True, False):
            for n in (1, 4, 8, 16):
                p = torch.softmax(torch.randn(n, args.vocab, generator=gen), -1)
                q = torch.softmax(torch.randn(n, args.vocab, generator=gen), -1)
                drafts = torch.randint(args.vocab, (n,), generator=gen)
                names = ["standard"] * n if mix == "standard" else \
                    [("standard", "sqrt", "typical", "all")[i % 4] for i in range(n)]
                rules = torch.tensor([RULE_NAMES.index(r) for r in names])
                old: list[float] = []
                new: list[float] = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    a = acceptance(p, q, rules, greedy).gather(1, drafts[:, None])[:, 0]
                    t1 = time.perf_counter()
                    b = acceptance_at(p, q, drafts, rules, greedy)
                    t2 = time.perf_counter()
                    old.append(t1 - t0)
                    new.append(t2 - t1)
                    assert torch.equal(a, b)
                mo, mn = statistics.median(old) * 1e3, statistics.median(new) * 1e3
                print(f"{mix:<10}{str(greedy):>8}{n:>4}{mo:>11.3f}{mn:>12.3f}{mo / mn:>7.1f}x")


if __name__ == "__main__":
    main()
