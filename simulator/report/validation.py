"""Validation against the real decoder: `validate` results (validate.json) in the report.

Each file is what `validate --pair ... --out DIR` wrote as DIR/validate.json: per policy the
real decoder's measured tokens/s, acceptance and mean accepted tokens, the simulator's
prediction on the trace of the same prompts, and their relative error (predicted / measured - 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EntrospecError
from .common import fmt
from .figures import Figures, na, note, table

TITLE = "Validation against the real decoder"
KEYS = ("tokens_per_second", "acceptance_rate", "mean_accepted_tokens")


class ValidationFileError(EntrospecError):
    """A --validate file that is not a validate.json."""


def load(path: str | Path) -> dict[str, Any]:
    """A validate.json, checked for what this section reads (one-line errors)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValidationFileError(f"--validate {p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationFileError(f"--validate {p}: not JSON") from None
    ok = isinstance(doc, dict) and isinstance(doc.get("policies"), dict) and doc["policies"] and \
        all(isinstance(e, dict) and all(k in e.get(side, {}) for side in ("measured",
                                                                           "predicted")
                                        for k in KEYS) for e in doc["policies"].values())
    if not ok:
        raise ValidationFileError(f"--validate {p}: not a validate.json (needs 'policies' with "
                                  f"'measured' and 'predicted' {', '.join(KEYS)})")
    return doc


def _err(p: Any, m: Any) -> str:
    if p is None or m is None or m == 0:
        return "n/a"
    return f"{p / m - 1:+.1%}"


def section(docs: Sequence[dict[str, Any]], paths: Sequence[str], figs: Figures) -> list[str]:
    """The report's validation section: one table and one scatter per validate.json."""
    out = [f"## {TITLE}", ""]
    if not docs:
        return out + na("validation", "no `validate` results were given to this report "
                        "(`sim report --validate DIR/validate.json`); the simulator's "
                        "predictions here are not yet checked against a real speculative decoder")
    for n, (doc, path) in enumerate(zip(docs, paths, strict=True)):
        pol = doc["policies"]
        s = doc.get("summary", {})
        out += [f"### `{path}`", "",
                f"Pair `{doc.get('pair')}` on {doc.get('device')}, {doc.get('prompts')} prompts "
                f"of `{doc.get('dataset')}`, up to {doc.get('max_new_tokens')} new tokens, "
                f"temperature {doc.get('temperature')}; pricing `{doc.get('pricing')}`"
                + ("; timing only (random weights, rounds forced from the trace)"
                   if doc.get("timing_only") else "") + f". Command: `{doc.get('command')}`.", ""]
        rows = []
        for label, e in pol.items():
            m, p = e["measured"], e["predicted"]
            rows.append([label, fmt(m["tokens_per_second"], 3), fmt(p["tokens_per_second"], 3),
                         _err(p["tokens_per_second"], m["tokens_per_second"]),
                         fmt(m["acceptance_rate"], 3), fmt(p["acceptance_rate"], 3),
                         fmt(m["mean_accepted_tokens"], 3), fmt(p["mean_accepted_tokens"], 3)])
        out += table(["policy", "measured tok/s", "predicted tok/s", "error",
                      "measured acceptance", "predicted acceptance", "measured tau",
                      "predicted tau"], rows)
        if s:
            out += [f"Median |error| of predicted tokens/s "
                    f"{s['median_abs_error_tokens_per_second']:.1%}, max "
                    f"{s['max_abs_error_tokens_per_second']:.1%} over {s['configurations']} "
                    "configurations" + (f"; greedy accepted-token counts equal between decoder "
                                        f"and simulator: {s['greedy_counts_equal']}"
                                        if "greedy_counts_equal" in s else "") + ".", ""]
        meas = np.array([e["measured"]["tokens_per_second"] for e in pol.values()], float)
        pred = np.array([e["predicted"]["tokens_per_second"] for e in pol.values()], float)
        fig, ax = figs.new(size=(5.0, 4.6))
        lo, hi = 0.9 * min(meas.min(), pred.min()), 1.1 * max(meas.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, label="prediction = measurement")
        ax.fill_between([lo, hi], [0.95 * lo, 0.95 * hi], [1.05 * lo, 1.05 * hi], color="0.85",
                        label="±5%")
        ax.scatter(meas, pred, s=16, zorder=3, label="policy")
        for x, y, name in zip(meas, pred, pol, strict=True):
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured tokens/s (real decoder)",
               ylabel="predicted tokens/s (simulator)",
               title=f"{doc.get('pair')}: predicted vs measured")
        ax.legend(fontsize=7, loc="upper left")
        out += [figs.save(fig, f"validate-{n}", "predicted vs measured tokens/s"), ""]
    out += note("error = predicted / measured - 1. Measured: wall clock of the real decoder, "
                "batch 1, prefill included; predicted: the fast engine on the trace of the same "
                "prompts, priced by the profile named above.")
    return out
