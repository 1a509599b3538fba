"""Task accuracy (GSM8K) of lossy policies, from the trace's per-prompt ``correct`` column.

The replay knows, per prompt, whether a lossy policy emitted the verifier's output unchanged
(no deviating token): there the answer, and so its correctness, is the recorded one. Where it
changed a token, the replay cannot say what the lossy decoder would have written next (it
continues along the verifier's trajectory), so the accuracy is an interval: changed prompts
counted wrong (lower bound) or right (upper bound).
"""

from __future__ import annotations

import numpy as np

from .common import Grids, TraceCtx, fmt
from .figures import Figures, na, note, table
from .seed001 import accuracy_bounds, relaxed_runs

TITLE = "GSM8K accuracy of lossy policies"
CAVEAT = ("exact only on prompts whose output the policy left unchanged; after a deviating "
          "token the replay follows the verifier's trajectory, not the lossy decoder's, so a "
          "changed prompt's answer is unknown and the accuracy is reported as an interval "
          "[changed prompts wrong, changed prompts right]. Under sampled decoding the "
          "correctness is that of the one recorded sample.")


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    out = [f"### {TITLE}", ""]
    correct = ctx.trace.prompt_columns.get("correct")
    if correct is None:
        return out + na("accuracy", "the trace has no per-prompt `correct` column (only GSM8K "
                        "traces recorded with reference answers have one)")
    ok = np.asarray(correct, dtype=bool)
    base = float(ok.mean())
    k = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    picks = list(grids.theta[2::3])
    runs = [r for rule in ("sqrt", "all") for r in relaxed_runs(ctx, grids, rule, k)
            if r.policy.tau in picks]  # type: ignore[attr-defined]
    runs += [r for r in (ctx.try_run("typical", k=k),) if r is not None]
    runs += [r for r in (ctx.try_run("esar", tau=t) for t in picks) if r is not None]
    out += note(f"Caveat: {CAVEAT}")
    rows = [["verifier (lossless, any lossless policy)", fmt(ctx.best_fixed().speedup),
             "0%", f"{base:.1%}", f"[{base:.1%}, {base:.1%}]"]]
    fig, ax = figs.new()
    for i, r in enumerate(runs):
        lo, hi = accuracy_bounds(r, ok)
        changed = float(np.mean(r.deviating > 0))
        rows.append([r.label, fmt(r.speedup), f"{changed:.0%}", "", f"[{lo:.1%}, {hi:.1%}]"])
        ax.errorbar([r.speedup], [(lo + hi) * 50], yerr=[[(hi - lo) * 50], [(hi - lo) * 50]],
                    fmt="o", ms=3, capsize=2, color="tab:blue",
                    label="lossy policy (accuracy bounds)" if i == 0 else None)
    ax.scatter([ctx.best_fixed().speedup], [100 * base], marker="s", color="tab:red",
               label="best fixed k (verifier's accuracy)")
    ax.scatter([ctx.oracle(ctx.k_max).speedup], [100 * base], marker="*", s=80, color="black",
               label=f"oracle (k={ctx.k_max})")
    ax.set(title=f"Accuracy bounds vs speedup ({ctx.label})",
           xlabel="speedup (x, vs verifier only)", ylabel="task accuracy (%)")
    ax.legend(fontsize=7)
    return out + [f"Verifier accuracy on the trace's {ok.size} prompts: {base:.1%}.", "",
                  figs.save(fig, "accuracy", "accuracy bounds vs speedup", speed=True), "",
                  *table(["policy", "speedup", "prompts changed", "accuracy",
                          "accuracy bounds"], rows, "lrrrr")]
