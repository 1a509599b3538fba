"""Why a verification pass costs ~2x a decode step on this CPU: PyTorch's GEMM for a few rows.

    python bench/bench_linear.py [--threads 2] [--rows 1,2,3,5,9,17] [--repeats 30]

For each linear layer shape of SmolLM2-135M (out x in: attention q/o 576 x 576, k/v 192 x 576,
MLP gate/up 1536 x 576, down 576 x 1536, and the 49,152 x 576 head) and each number of rows
(tokens in one forward pass), the median wall time in ms of ``F.linear(x, W)`` (what
``nn.Linear`` runs, in the decoder and in HF alike) and of ``(W @ x.T).T`` (the same product
with the big operand on the left), interleaved call by call so that machine drift hits both
alike, and their ratio. float32, random weights (the cost depends on shapes only).
"""

from __future__ import annotations

import argparse
import statistics
import time

SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "gate/up": (1536, 576), "down": (576, 1536),
          "head": (49152, 576)}


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,3,5,9,17")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]

    def once(fn) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} "
          "interleaved calls (ms)")
    print(f"{'layer':>8} {'out x in':>12} {'rows':>5} {'F.linear':>9} {'W @ x.T':>9} {'ratio':>6}")
    with torch.inference_mode():
        for name, (out, inp) in SHAPES.items():
            w = torch.randn(out, inp)
            for m in rows:
                x = torch.randn(m, inp)
                calls = (lambda: F.linear(x, w), lambda: (w @ x.T).T)  # noqa: B023
                for fn in calls:
                    fn()
                times: tuple[list[float], list[float]] = ([], [])
                for _ in range(args.repeats):
                    for fn, t in zip(calls, times, strict=True):
                        t.append(once(fn))
                a, b = (statistics.median(t) for t in times)
                print(f"{name:>8} {f'{out} x {inp}':>12} {m:>5} {a:9.3f} {b:9.3f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
