"""Seed 000: entropy-based draft stopping. Every stopping rule at its best configuration vs the
best fixed k, draft-length distributions, per-token latency percentiles, how well the drafter's
entropy predicts acceptance (point-biserial r, ROC AUC) and acceptance by draft step and output
position. The hypotheses H1-H3 pool tasks over every trace: see ``hypotheses``.
"""

from __future__ import annotations

import numpy as np

from . import rules
from .common import Grids, Run, TraceCtx, fmt
from .figures import Figures, table
from .stats import (
    BOOT_POSITIONS,
    RocData,
    ci,
    moment_sums,
    point_biserial_sums,
    ratio_boot,
    resample_counts,
    rng_for,
)

TITLE = "Seed 000: entropy stopping rules vs the best fixed k"


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    best = rules.best_runs(ctx, grids)
    fixed = ctx.best_fixed()
    out = [f"### {TITLE}", ""]
    out += comparison(ctx, figs, best, fixed)
    shown = {"fixed": fixed, **{f: best[f] for f in rules.SEED000 if f in best}}
    out += draft_lengths(ctx, figs, shown)
    out += latency(ctx, figs, shown)
    out += correlation(ctx, figs)
    out += position_wise(ctx, figs, fixed, best.get("stop_absolute"))
    return out


def comparison(ctx: TraceCtx, figs: Figures, best: dict[str, Run], fixed: Run) -> list[str]:
    counts = resample_counts(rng_for(ctx.seed, 0), ctx.trace.n_prompts)
    fixed_b = ratio_boot(counts, ctx.baseline, fixed.time_ns)
    rows = [["fixed (best k)", "all", fixed.label, fmt(fixed.speedup), "0", "",
             fmt(fixed.metrics["acceptance_rate"]), fmt(fixed.metrics["mean_accepted_tokens"]),
             fmt(ctx.oracle_for(fixed).speedup)]]
    names, speeds, oracles = ["fixed (best k)"], [fixed.speedup], [ctx.oracle_for(fixed).speedup]
    for f, r in best.items():
        gain = r.speedup / fixed.speedup - 1
        lo, hi = ci(ratio_boot(counts, ctx.baseline, r.time_ns) / fixed_b - 1)
        orc = ctx.oracle_for(r).speedup
        rows.append([f, rules.family(f).seed, r.label, fmt(r.speedup), f"{gain:+.1%}",
                     f"[{lo:+.1%}, {hi:+.1%}]", fmt(r.metrics["acceptance_rate"]),
                     fmt(r.metrics["mean_accepted_tokens"]), fmt(orc)])
        names.append(f)
        speeds.append(r.speedup)
        oracles.append(orc)
    fig, ax = figs.new(size=(6.4, 5.2), left=1.6, bottom=1.2)
    y = np.arange(len(names))[::-1]
    ax.barh(y, speeds, color="tab:blue", label="best configuration")
    ax.scatter(oracles, y, marker="|", s=200, color="black", label="oracle at the same cap")
    ax.axvline(fixed.speedup, color="tab:red", linestyle=":", label="best fixed k")
    ax.set_yticks(y, names, fontsize=7)
    ax.set(title=f"Every stopping rule at its best ({ctx.label})",
           xlabel="speedup (x, vs verifier only)", ylabel="rule")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.4, -0.13), ncol=3)
    return [
        "#### Every stopping rule vs the best fixed k", "",
        "Each rule at its best configuration on this trace (grids from the traces' entropy "
        "quantiles; chosen in-sample, so the gains are optimistic). Gain = speedup / best fixed "
        "k - 1, with a 95% bootstrap interval over prompts (configuration "
        "held fixed). The oracle column is the bound at the rule's own cap.", "",
        figs.save(fig, "000-rules", "every stopping rule vs best fixed k", speed=True), "",
        *table(["rule", "seed", "best configuration", "speedup", "gain", "95% CI",
                "acceptance", "n_effect", "oracle"], rows, "lllrrrrrr"),
    ]


def draft_lengths(ctx: TraceCtx, figs: Figures, shown: dict[str, Run]) -> list[str]:
    fig, ax = figs.new()
    top = max(int(r.rounds.drafted.max(initial=0)) for r in shown.values())
    rows = []
    for name, r in shown.items():
        hist = np.bincount(r.rounds.drafted, minlength=top + 1) / max(r.rounds.drafted.size, 1)
        ax.step(np.arange(top + 1), hist, where="mid", label=f"{name}: {r.label}")
        rows.append([name, fmt(float(r.rounds.drafted.mean())),
                     int(np.median(r.rounds.drafted)), int(r.rounds.drafted.max(initial=0)),
                     fmt(float(np.mean(r.rounds.drafted == 0)))])
    ax.set(title=f"Draft-length distribution ({ctx.label})",
           xlabel="tokens drafted in a round (tokens)", ylabel="share of rounds")
    ax.legend(fontsize=6)
    return ["#### Draft-length distributions", "",
            figs.save(fig, "000-draft-lengths", "draft-length distributions"), "",
            *table(["rule", "mean", "median", "max", "share of 0-draft rounds"], rows)]


def latency(ctx: TraceCtx, figs: Figures, shown: dict[str, Run]) -> list[str]:
    qs = ("p50", "p90", "p99")
    entries = list(shown.items()) + [("oracle", ctx.oracle_for(shown["fixed"]))]
    base_ms = float(ctx.baseline.sum() / shown["fixed"].tokens.sum() / 1e6)
    fig, ax = figs.new()
    width = 0.8 / len(entries)
    rows = []
    for i, (name, r) in enumerate(entries):
        vals = [r.metrics["latency_ms"][q] for q in qs]
        style = {"color": "black", "hatch": "//", "fill": False} if name == "oracle" else {}
        lbl = f"oracle (k={r.policy.k})" if name == "oracle" else name  # type: ignore[attr-defined]
        ax.bar(np.arange(3) + i * width, vals, width, label=lbl, **style)
        rows.append([name, r.label, *(fmt(v) for v in vals)])
    ax.axhline(base_ms, color="tab:red", linestyle=":", label="verifier only (mean)")
    ax.set_xticks(np.arange(3) + width * (len(entries) - 1) / 2, ["P50", "P90", "P99"])
    ax.set(title=f"Per-token latency percentiles ({ctx.label})", xlabel="percentile",
           ylabel="latency per token (ms)")
    ax.legend(fontsize=6)
    return ["#### Per-token latency P50 / P90 / P99", "",
            "A round's time split evenly over the tokens it emitted (ms per token), priced by "
            f"`{ctx.latency.source}`.", "",
            figs.save(fig, "000-latency", "latency percentiles", speed=True), "",
            *table(["rule", "configuration", "P50 ms", "P90 ms", "P99 ms"], rows, "llrrr")]


def correlation(ctx: TraceCtx, figs: Figures) -> list[str]:
    tr = ctx.trace
    counts = resample_counts(rng_for(ctx.seed, 1), tr.n_prompts)
    prompt_of = ctx.replay.prompt_of
    fig, (ax_r, ax_h) = figs.new(2, (9.6, 4.0))
    rows = []
    for d, name in enumerate(tr.drafters):
        h, m = tr.signals["entropy"][d], tr.match[d]
        sums = moment_sums(h, m, prompt_of, tr.n_prompts)
        r = float(point_biserial_sums(sums.sum(axis=1)))
        r_lo, r_hi = ci(point_biserial_sums(sums @ counts.T))
        roc = RocData.of(h, m)
        auc = roc.auc()
        boot = [roc.auc(np.repeat(c, tr.lengths).astype(np.float64))
                for c in counts[:BOOT_POSITIONS]]
        a_lo, a_hi = ci(np.asarray(boot))
        rows.append([name, tr.n_positions, fmt(float(m.mean())), fmt(r),
                     f"[{fmt(r_lo)}, {fmt(r_hi)}]", fmt(auc), f"[{fmt(a_lo)}, {fmt(a_hi)}]"])
        fpr, tpr = roc.curve()
        ax_r.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        bins = np.linspace(0, float(np.quantile(h, 0.99)) or 1.0, 40)
        ax_h.hist(h[m], bins, density=True, histtype="step", label=f"{name}, match")
        ax_h.hist(h[~m], bins, density=True, histtype="step", linestyle="--",
                  label=f"{name}, mismatch")
    ax_r.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax_r.set(title="ROC: predict match iff H <= t", xlabel="false positive rate (mismatches)",
             ylabel="true positive rate (matches)")
    ax_h.set(title="Drafter entropy by outcome", xlabel="drafter entropy (nats)",
             ylabel="density (1/nats)")
    ax_r.legend(fontsize=7)
    ax_h.legend(fontsize=6)
    return ["#### Entropy vs acceptance", "",
            "Point-biserial r between the drafter's entropy and draft_match (negative: higher "
            "entropy, fewer matches) and ROC AUC of low entropy as a predictor of a match "
            f"(0.5 = no information). 95% bootstrap intervals over prompts ({BOOT_POSITIONS} "
            "replicates for the AUC).", "",
            figs.save(fig, "000-entropy-acceptance", "entropy vs acceptance"), "",
            *table(["drafter", "positions", "match rate", "point-biserial r", "95% CI",
                    "ROC AUC", "95% CI"], rows)]


def position_wise(ctx: TraceCtx, figs: Figures, fixed: Run, absolute: Run | None) -> list[str]:
    fig, (ax_s, ax_p) = figs.new(2, (9.6, 4.0))
    entries = [ctx.run("fixed", k=ctx.k_max), fixed] + ([absolute] if absolute else [])
    rows = []
    for r in entries:
        n, a = r.rounds.drafted, r.rounds.accepted
        steps = np.arange(int(n.max(initial=0)))
        reached = np.array([np.sum((n > j) & (a >= j)) for j in steps])
        rate = np.array([np.sum(a > j) for j in steps]) / np.maximum(reached, 1)
        ax_s.plot(steps + 1, rate, marker="o", ms=3, label=r.label)
        rows.append([r.label, *(fmt(float(x), 3) for x in rate[:8])])
    edges = np.array([0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    pos = np.arange(ctx.trace.n_positions) - np.repeat(ctx.trace.offsets[:-1], ctx.trace.lengths)
    b = np.searchsorted(edges, pos, side="right") - 1
    used = np.unique(b)
    for d, name in enumerate(ctx.trace.drafters):
        m = ctx.trace.match[d]
        rate = [float(m[b == i].mean()) for i in used]
        ax_p.plot(edges[used] + 1, rate, marker="o", ms=3, label=name)
    ax_p.set_xscale("log", base=2)
    ax_s.set(title=f"Acceptance by draft step ({ctx.label})", xlabel="draft step j (1 = first)",
             ylabel="P(accept step j | steps < j accepted)")
    ax_p.set(title="Match rate by output position", xlabel="output position (tokens, log bins)",
             ylabel="draft_match rate")
    ax_s.legend(fontsize=7)
    ax_p.legend(fontsize=7)
    head = ["rule", *(f"step {j + 1}" for j in range(8))]
    rows = [row + [""] * (len(head) - len(row)) for row in rows]
    return ["#### Position-wise acceptance", "",
            "Left: the acceptance of draft step j among rounds that reached it with every "
            "earlier draft accepted (under i.i.d. acceptance it is flat). Right: the drafter's "
            "match rate along the output (bins starting at the marked position).", "",
            figs.save(fig, "000-position-acceptance", "position-wise acceptance"), "",
            *table(head, rows)]

