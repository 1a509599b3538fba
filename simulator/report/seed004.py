"""Seed 004: fixed-k speculative decoding. Speedup, acceptance and n_effect vs k (every
drafter, oracle at each k), and how prompt length and the generation budget change the speedup.
"""

from __future__ import annotations

import numpy as np

from .common import Grids, TraceCtx, fmt, truncate
from .figures import ORACLE_STYLE, Figures, na, table

TITLE = "Seed 004: speedup and acceptance vs k"


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    out = [f"### {TITLE}", ""]
    out += vs_k(ctx, figs)
    out += prompt_length(ctx, figs)
    out += max_new_tokens(ctx, figs)
    return out


def vs_k(ctx: TraceCtx, figs: Figures) -> list[str]:
    ks = np.arange(1, ctx.k_max + 1)
    out = ["#### Fixed k, every drafter", "",
           "n_effect = tokens per verifier call (accepted drafts + 1, Spec-Bench's tau); "
           "acceptance rate = accepted / drafted; speedup = verifier-only time / time, same "
           "pricing. The oracle drafts exactly the tokens that will be accepted, at most k.", ""]
    fig_s, ax_s = figs.new()
    fig_a, (ax_a, ax_n) = figs.new(2, (9.6, 4.0))
    rows = []
    for d, name in enumerate(ctx.trace.drafters):
        sub = ctx.drafter_ctx(d)
        runs = sub.fixed_runs()
        orc = [sub.oracle(int(k)) for k in ks]
        sp = [r.speedup for r in runs]
        acc = [r.metrics["acceptance_rate"] or 0.0 for r in runs]
        neff = [r.metrics["mean_accepted_tokens"] for r in runs]
        line = ax_s.plot(ks, sp, marker="o", ms=3, label=f"fixed k, {name}")[0]
        ax_s.plot(ks, [o.speedup for o in orc], color=line.get_color(), linestyle="--",
                  label=f"oracle at k, {name}")
        ax_a.plot(ks, acc, marker="o", ms=3, label=name)
        ax_n.plot(ks, neff, marker="o", ms=3, label=name, color=line.get_color())
        best = int(np.argmax(sp))
        for i, k in enumerate(ks):
            rows.append([name, int(k), fmt(neff[i]), fmt(acc[i]), fmt(sp[i]),
                         fmt(orc[i].speedup), "best" if i == best else ""])
    ax_s.set(title=f"Speedup vs k ({ctx.label})", xlabel="k (tokens drafted per round)",
             ylabel="speedup (x, vs verifier only)")
    ax_s.legend(fontsize=7)
    ax_a.set(title="Acceptance rate vs k", xlabel="k (tokens drafted per round)",
             ylabel="acceptance rate (accepted / drafted)")
    ax_n.set(title="n_effect vs k", xlabel="k (tokens drafted per round)",
             ylabel="tokens per verifier call")
    ax_a.legend(fontsize=7)
    ax_n.legend(fontsize=7)
    out.append(figs.save(fig_s, "004-speedup-vs-k", "speedup vs k", speed=True))
    out.append("")
    out.append(figs.save(fig_a, "004-acceptance-vs-k", "acceptance and n_effect vs k"))
    out.append("")
    out.append("The oracle's n_effect at k equals fixed k's (it accepts the same tokens and "
               "only skips the wasted drafts), so it is not drawn twice.")
    out.append("")
    out += table(["drafter", "k", "n_effect", "acceptance", "speedup", "oracle speedup", ""],
                 rows, "lrrrrrl")
    return out


def prompt_length(ctx: TraceCtx, figs: Figures) -> list[str]:
    out = ["#### Effect of prompt length", ""]
    ptok = ctx.trace.prompt_tokens
    if np.unique(ptok).size < 2:
        return out + na("prompt-length effect", "every prompt has the same length")
    best = ctx.best_fixed()
    k = int(best.policy.k)  # type: ignore[attr-defined]
    orc = ctx.oracle(k)
    per = ctx.baseline / best.time_ns
    per_o = ctx.baseline / orc.time_ns
    n_bins = min(4, np.unique(ptok).size)
    edges = np.unique(np.quantile(ptok, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, ptok, side="right") - 1, 0, edges.size - 2)
    rows, mids, sb, so = [], [], [], []
    for i in range(edges.size - 1):
        idx = np.flatnonzero(b == i)
        if idx.size == 0:
            continue
        mids.append(float(ptok[idx].mean()))
        sb.append(ctx.speedup(best.time_ns, idx))
        so.append(ctx.speedup(orc.time_ns, idx))
        rows.append([f"{int(edges[i])}-{int(edges[i + 1])}", idx.size, fmt(mids[-1]),
                     fmt(sb[-1]), fmt(so[-1])])
    fig, ax = figs.new()
    ax.scatter(ptok, per, s=8, alpha=0.5, label=f"per prompt, fixed k={k}")
    ax.plot(mids, sb, marker="o", label=f"per length bin, fixed k={k}")
    ax.plot(mids, so, marker="s", label=f"oracle (k={k}), per bin", **ORACLE_STYLE)
    ax.scatter(ptok, per_o, s=6, marker="x", color="black", alpha=0.3,
               label="oracle per prompt")
    ax.set(title=f"Speedup vs prompt length ({ctx.label})", xlabel="prompt length (tokens)",
           ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=7)
    out.append(f"Best fixed k on the whole trace (k={k}), prompts binned by length "
               "(quantiles). Prompt length also stands for what a prompt asks: this is an "
               "association, not a controlled effect.")
    out.append("")
    out.append(figs.save(fig, "004-prompt-length", "speedup vs prompt length", speed=True))
    out.append("")
    return out + table(["prompt tokens", "prompts", "mean", "speedup", "oracle"], rows)


def max_new_tokens(ctx: TraceCtx, figs: Figures) -> list[str]:
    out = ["#### Effect of max new tokens", ""]
    longest = int(ctx.trace.lengths.max())
    budgets = [n for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048) if n < longest] + [longest]
    if len(budgets) < 2:
        return out + na("max-new-tokens effect", "the prompts are too short to truncate")
    k_full = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    rows, sp_best, sp_full, sp_orc, ks = [], [], [], [], []
    for n in budgets:
        sub = ctx if n == longest else ctx.sub(f"max_new={n}", lambda n=n: truncate(ctx.trace, n))
        best = sub.best_fixed()
        k = int(best.policy.k)  # type: ignore[attr-defined]
        full = sub.run("fixed", k=k_full)
        orc = sub.oracle(k)
        sp_best.append(best.speedup)
        sp_full.append(full.speedup)
        sp_orc.append(orc.speedup)
        ks.append(k)
        rows.append([n, int(sub.trace.n_positions), k, fmt(best.speedup), fmt(full.speedup),
                     fmt(orc.speedup)])
    fig, ax = figs.new()
    ax.plot(budgets, sp_best, marker="o", label="best fixed k at this budget")
    ax.plot(budgets, sp_full, marker="^", label=f"fixed k={k_full} (best untruncated)")
    ax.plot(budgets, sp_orc, marker="s", label="oracle at the best k", **ORACLE_STYLE)
    ax.set_xscale("log", base=2)
    ax.set(title=f"Speedup vs generation budget ({ctx.label})",
           xlabel="max new tokens per prompt (tokens, log scale)",
           ylabel="speedup (x, vs verifier only)")
    ax.legend(fontsize=7)
    out.append("Each prompt's output cut after max new tokens (prefill included in both "
               "times, so short budgets are dominated by the prompt).")
    out.append("")
    out.append(figs.save(fig, "004-max-new-tokens", "speedup vs max new tokens", speed=True))
    out.append("")
    return out + table(["max new tokens", "tokens", "best k", "speedup", f"k={k_full}",
                        "oracle"], rows)
