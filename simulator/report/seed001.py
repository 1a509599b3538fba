"""Seed 001, experiments 1, 2, 4 and 5: entropy around the drafter's divergence points,
entropy-selective intervention (ESAR: big-model share vs accuracy), relaxed vs strict
acceptance paths, and the threshold sensitivity of relaxed acceptance with its Pareto front.
Experiments 6-8 are in ``seed001_more``.
"""

from __future__ import annotations

import numpy as np

from ..sweep import pareto_front
from .common import Grids, Run, TraceCtx, fmt
from .figures import ORACLE_STYLE, Figures, na, oracle_line, table
from .stats import ci, ratio_boot, resample_counts, rng_for

TITLE = "Seed 001: entropy at divergence, selective intervention, relaxed acceptance"
WINDOW = 8  # tokens either side of a divergence point


def section(ctx: TraceCtx, figs: Figures, grids: Grids) -> list[str]:
    out = [f"### {TITLE}", ""]
    out += divergence(ctx, figs)
    out += intervention(ctx, figs, grids)
    out += paths(ctx, figs, grids)
    out += sensitivity(ctx, figs, grids)
    return out


def agreement(r: Run) -> float:
    """Share of emitted tokens equal to the verifier's (1 - deviating / tokens)."""
    return 1.0 - float(r.deviating.sum()) / float(r.tokens.sum())


def divergence(ctx: TraceCtx, figs: Figures) -> list[str]:
    tr = ctx.trace
    offs = np.arange(-WINDOW, WINDOW + 1)
    counts = resample_counts(rng_for(ctx.seed, 2), tr.n_prompts)
    pos = np.arange(tr.n_positions) - np.repeat(tr.offsets[:-1], tr.lengths)
    fig, ax = figs.new()
    rows: list[list[str]] = [[str(o)] for o in offs]
    header = ["offset (tokens)"]
    for d, name in enumerate(tr.drafters):
        m = tr.match[d]
        onset = np.flatnonzero(~m & ((pos == 0) | np.r_[True, m[:-1]]))
        if onset.size == 0:
            continue
        series = [("drafter " + name, tr.signals["entropy"][d])]
        if d == 0:
            series.append(("verifier", tr.verifier_entropy))
        colors = []
        for label, h in series:
            means, los, his = [], [], []
            for o in offs:
                rows_o = onset + o
                ok = (pos[onset] + o >= 0) & (pos[onset] + o < tr.lengths[ctx.replay.prompt_of
                                                                              [onset]])
                r_o, p_o = rows_o[ok], ctx.replay.prompt_of[onset[ok]]
                s = np.bincount(p_o, h[r_o], tr.n_prompts)
                c = np.bincount(p_o, minlength=tr.n_prompts).astype(np.float64)
                means.append(s.sum() / max(c.sum(), 1))
                lo, hi = ci(ratio_boot(counts, s, c))
                los.append(lo)
                his.append(hi)
            line = ax.plot(offs, means, marker="o", ms=3, label=f"{label} (95% CI)")[0]
            ax.fill_between(offs, los, his, color=line.get_color(), alpha=0.2)
            colors.append(line.get_color())
            header.append(f"{label} (nats)")
            for row, mu, lo, hi in zip(rows, means, los, his, strict=True):
                row.append(f"{fmt(mu)} [{fmt(lo)}, {fmt(hi)}]")
        base = float(tr.signals["entropy"][d][m].mean()) if m.any() else np.nan
        ax.axhline(base, color=colors[0], linestyle=":",
                   label=f"drafter {name} at matches (mean)")
    if len(header) == 1:
        return ["#### Exp 1: entropy around the drafter's divergence points", "",
                *na("divergence analysis", "no drafter ever diverges from the verifier")]
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(title=f"Entropy around divergence points ({ctx.label})",
           xlabel="offset from the divergence (tokens)", ylabel="mean entropy (nats)")
    ax.legend(fontsize=6)
    return ["#### Exp 1: entropy around the drafter's divergence points", "",
            "A divergence point is the onset of a mismatch run: the drafter's argmax differs "
            "from the verifier's token there and matched at the position before (or it is the "
            "first position). Mean entropies at each offset, 95% bootstrap intervals over "
            "prompts.", "",
            figs.save(fig, "001-divergence", "entropy around divergence points"), "",
            *table(header, rows)]


def intervention(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    out = ["#### Exp 2: entropy-selective intervention (ESAR)", "",
           "The small model writes while its entropy is <= tau; the big model produces each "
           "token above it. Big-model call share = big-model calls / emitted tokens; agreement "
           "= share of emitted tokens equal to the verifier's (greedy replay). Lossy.", ""]
    esar = [r for r in (ctx.try_run("esar", tau=t) for t in g.theta) if r is not None]
    if not esar:
        return out + na("ESAR", "; ".join(ctx.notes) or "no run")
    correct = ctx.trace.prompt_columns.get("correct")
    fig, (ax, ax_s) = figs.new(2, (9.6, 4.0))
    share = [100 * float(r.calls.sum() / r.tokens.sum()) for r in esar]
    agree = [100 * agreement(r) for r in esar]
    ax.plot(share, agree, marker="o", label="ESAR, one point per tau")
    rows = []
    for r, s, a in zip(esar, share, agree, strict=True):
        acc = ""
        if correct is not None:
            lo, hi = accuracy_bounds(r, np.asarray(correct, dtype=bool))
            acc = f"[{lo:.1%}, {hi:.1%}]"
        rows.append([fmt(r.policy.tau), f"{s:.1f}%", f"{a:.2f}%", fmt(r.speedup),  # type: ignore[attr-defined]
                     fmt(r.metrics["quality_bias"] / r.metrics["tokens"]), acc])
    ax.set(title=f"Big-model share vs agreement ({ctx.label})",
           xlabel="big-model calls per emitted token (%)",
           ylabel="tokens equal to the verifier's (%)")
    ax.legend(fontsize=7)
    ax_s.plot([r.policy.tau for r in esar], [r.speedup for r in esar], marker="o",  # type: ignore[attr-defined]
              label="ESAR")
    ax_s.axhline(ctx.best_fixed().speedup, color="tab:red", linestyle=":",
                 label="best fixed k (lossless)")
    oracle_line(ax_s, ctx.oracle(ctx.k_max).speedup, ctx.k_max)
    ax_s.set_xscale("log")
    ax_s.set(title="ESAR speedup vs tau", xlabel="tau (nats, log scale)",
             ylabel="speedup (x, vs verifier only)")
    ax_s.legend(fontsize=7)
    out += [figs.save(fig, "001-esar", "ESAR big-model share vs agreement", speed=True), ""]
    out += table(["tau (nats)", "big-model share", "agreement", "speedup", "bias / token",
                  "GSM8K accuracy bounds"], rows)
    if correct is None:
        out += na("accuracy", "the trace has no `correct` column; agreement with the "
                  "verifier is the only quality measure")
    return out


def accuracy_bounds(r: Run, correct: np.ndarray) -> tuple[float, float]:
    """Accuracy over prompts: exact where the run emitted the verifier's output unchanged
    (no deviating token); a changed prompt counts as wrong (lower) or right (upper)."""
    same = r.deviating == 0
    ok = int(np.sum(correct & same))
    return ok / correct.size, (ok + int(np.sum(~same))) / correct.size


def relaxed_runs(ctx: TraceCtx, g: Grids, rule: str, k: int) -> list[Run]:
    out = [ctx.try_run("relaxed", k=k, tau=t, rule=rule) for t in g.theta]
    return [r for r in out if r is not None]


def paths(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    k = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    out = ["#### Exp 4: relaxed vs strict acceptance paths", "",
           f"Relaxed acceptance at k={k} (the best fixed k): accepted tokens on the strict path "
           "(the standard rule would accept them too) and on the relaxed path only (deviating "
           "tokens), per tau, next to fixed k.", ""]
    strict = ctx.run("fixed", k=k)
    rows = [["fixed (strict)", "", int(strict.accepted.sum()), 0, 0, fmt(strict.speedup)]]
    fig, ax = figs.new()
    any_rule = False
    for i, rule in enumerate(("sqrt", "all")):
        runs = relaxed_runs(ctx, g, rule, k)
        if not runs:
            continue
        any_rule = True
        taus = [r.policy.tau for r in runs]  # type: ignore[attr-defined]
        x = np.arange(len(runs)) + 0.4 * i - 0.2
        s_path = np.array([int(r.accepted.sum() - r.deviating.sum()) for r in runs])
        r_path = np.array([int(r.deviating.sum()) for r in runs])
        ax.bar(x, s_path, 0.4, label=f"{rule}: strict path", alpha=0.8)
        ax.bar(x, r_path, 0.4, bottom=s_path, label=f"{rule}: relaxed path only", alpha=0.8)
        ax.set_xticks(np.arange(len(runs)), [fmt(t, 3) for t in taus], fontsize=7)
        for r, t, a, b in zip(runs, taus, s_path, r_path, strict=True):
            rows.append([f"relaxed {rule}", fmt(t), int(a), int(b), int(r.relaxed.sum()),
                         fmt(r.speedup)])
    if not any_rule:
        return out + na("relaxed acceptance", "; ".join(ctx.notes) or "no run")
    ax.axhline(int(strict.accepted.sum()), color="black", linestyle=":",
               label=f"fixed k={k}: accepted")
    ax.set(title=f"Accepted tokens by path ({ctx.label})", xlabel="tau (nats)",
           ylabel="accepted draft tokens (tokens)")
    ax.legend(fontsize=6)
    return out + [figs.save(fig, "001-paths", "relaxed vs strict path counts"), "",
                  *table(["policy", "tau (nats)", "strict-path tokens", "relaxed-path tokens",
                          "tokens judged by the relaxed rule", "speedup"], rows)]


def sensitivity(ctx: TraceCtx, figs: Figures, g: Grids) -> list[str]:
    k = int(ctx.best_fixed().policy.k)  # type: ignore[attr-defined]
    out = ["#### Exp 5: threshold sensitivity and the speed/quality Pareto front", ""]
    runs = relaxed_runs(ctx, g, "sqrt", k)
    if not runs:
        return out + na("threshold sensitivity", "; ".join(ctx.notes) or "no run")
    taus = [r.policy.tau for r in runs]  # type: ignore[attr-defined]
    fig, (ax, ax_p) = figs.new(2, (9.6, 4.0))
    ax.plot(taus, [r.speedup for r in runs], marker="o", label="speedup (x)")
    ax.plot(taus, [r.metrics["acceptance_rate"] for r in runs], marker="s",
            label="acceptance rate")
    ax.plot(taus, [agreement(r) for r in runs], marker="^", label="agreement with verifier")
    oracle_line(ax, ctx.oracle(k).speedup, k)
    ax.set_xscale("log")
    ax.set(title=f"Relaxed (sqrt, k={k}) vs tau ({ctx.label})", xlabel="tau (nats, log scale)",
           ylabel="speedup (x) / rate (fraction)")
    ax.legend(fontsize=7)
    lossy = runs + relaxed_runs(ctx, g, "all", k) + \
        [r for r in (ctx.try_run("typical", k=k),) if r is not None] + \
        [r for r in (ctx.try_run("esar", tau=t) for t in g.theta) if r is not None]
    pts = [{"speedup": r.speedup, "quality_bias": r.metrics["quality_bias"] /
            r.metrics["tokens"], "run": r} for r in lossy]
    pts.append({"speedup": ctx.best_fixed().speedup, "quality_bias": 0.0,
                "run": ctx.best_fixed()})
    ax_p.scatter([p["quality_bias"] for p in pts], [p["speedup"] for p in pts], s=10,
                 color="grey", label="configurations")
    front = pareto_front(pts)
    ax_p.plot([p["quality_bias"] for p in front], [p["speedup"] for p in front], marker="o",
              color="tab:red", label="Pareto front")
    ax_p.axhline(ctx.oracle(ctx.k_max).speedup, label=f"oracle (k={ctx.k_max}, lossless)",
                 **ORACLE_STYLE)
    ax_p.set(title="Speed vs quality cost", xlabel="bias per token (mean TV(pi, p))",
             ylabel="speedup (x, vs verifier only)")
    ax_p.legend(fontsize=7)
    rows = [[p["run"].label, fmt(p["speedup"]), fmt(p["quality_bias"])] for p in front]
    return out + ["Left: three lines over tau for relaxed acceptance (sqrt rule). Right: every "
                  "lossy configuration (relaxed sqrt / all, typical, ESAR) and the best fixed k; "
                  "the front keeps those no other beats on both speed and bias.", "",
                  figs.save(fig, "001-sensitivity", "threshold sensitivity and Pareto front",
                            speed=True), "",
                  *table(["Pareto configuration", "speedup", "bias / token"], rows, "lrr")]
