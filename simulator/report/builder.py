"""Build a report: traces in, ``index.md`` and ``fig/*.png`` out, the same bytes every time.

Sections run per trace in a fixed order (seed 004, 000, 001, 002, 003, accuracy), then the
hypotheses pool tasks over every trace. Every run goes through the fast engine with one shared
Replay and Pricer per trace; grids come from the traces' entropy quantiles; every random draw
comes from a generator seeded by ``seed`` and the section's purpose.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from ..errors import EntrospecError
from ..latency import LatencyModel
from ..trace import read_trace
from . import (
    accuracy,
    hypotheses,
    rules,
    seed000,
    seed001,
    seed001_more,
    seed002,
    seed003,
    seed004,
    validation,
)
from .common import MAX_K, Grids, TraceCtx, fmt
from .figures import FIG_DIR, Figures, default_style, table
from .stats import BOOT, BOOT_POSITIONS

SECTIONS = (seed004, seed000, seed001, seed001_more, seed002, seed003, accuracy)


class ReportError(EntrospecError):
    """The report cannot be written where asked."""


def report_command(paths: Sequence[str], out: str, latency: str, default_latency: str,
                   pair: str | None, seed: int, validations: Sequence[str] = (),
                   drafters: Sequence[str] = ()) -> str:
    """The ``sim report`` command line that makes this report (options at their defaults
    left out)."""
    parts = ["sim report", *(f"--trace {p}" for p in paths),
             *(f"--validate {v}" for v in validations), *(f"--drafter {d}" for d in drafters)]
    if latency != default_latency:
        parts.append(f"--latency {latency}")
    if pair:
        parts.append(f"--pair {pair}")
    if seed:
        parts.append(f"--seed {seed}")
    return " ".join([*parts, f"--out {out}"])


def build_report(paths: Sequence[str], latencies: Sequence[LatencyModel], out: str | Path,
                 seed: int = 0, command: str = "", progress: bool = True,
                 validations: Sequence[str] = (), drafters: Sequence[str] | None = None
                 ) -> Path:
    """Write ``out/index.md`` and its figures from the traces at ``paths``, each priced by
    its entry of ``latencies``, and the ``validate`` results (validate.json files) given;
    ``drafters`` keeps those drafters of every trace, in that order. Returns index.md's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out}: exists and is not a folder")
    checked = [validation.load(v) for v in validations]
    traces = [read_trace(p, drafters) for p in paths]
    ctxs = [TraceCtx(t, lat, seed, label, MAX_K)
            for t, lat, label in zip(traces, latencies, _labels(paths), strict=True)]
    grids = Grids.of(traces)
    (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
    for old in sorted((out / FIG_DIR).glob("*.png")):  # figures of an earlier run
        old.unlink()
    console = Console(stderr=True)
    body: list[str] = []
    with default_style(), Progress("[progress.description]{task.description}", BarColumn(),
                                   MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                   disable=not (progress and console.is_terminal)) as prog:
        task = prog.add_task("report", total=len(ctxs) * len(SECTIONS) + 1)
        for ctx in ctxs:
            figs = Figures(out, ctx.label)
            body += [f"## Trace `{ctx.label}`", ""]
            for mod in SECTIONS:
                prog.update(task, description=f"{ctx.label}: {mod.TITLE[:40]}")
                body += mod.section(ctx, figs, grids)
                prog.advance(task)
            if ctx.notes:
                body += ["### Configurations this trace cannot replay", ""]
                body += [f"- {n}" for n in ctx.notes] + [""]
        prog.update(task, description="hypotheses")
        body += hypotheses.section(ctxs, Figures(out, "all"), grids)
        prog.advance(task)
    body += validation.section(checked, list(validations), Figures(out, "all"))
    text = "\n".join(header(ctxs, paths, grids, seed, command) + body) + "\n"
    index = out / "index.md"
    _write_atomic(index, text)
    return index


def _labels(paths: Sequence[str]) -> list[str]:
    """File stems, made unique with -2, -3, ... (they prefix the figure names)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def header(ctxs: list[TraceCtx], paths: Sequence[str], g: Grids, seed: int, command: str
           ) -> list[str]:
    out = ["# entrospec report", ""]
    synthetic = [c.label for c in ctxs if c.synthetic]
    if synthetic:
        out += [f"> **SYNTHETIC.** {', '.join(synthetic)}: synthetic trace(s) (i.i.d. "
                "acceptance, made-up entropies). Every number and figure below demonstrates "
                "the report's format; none says anything about real models.", ""]
    for c in ctxs:
        part = c.trace.meta.get("partial")
        if isinstance(part, dict):
            args = c.trace.meta.get("record_args")
            total = args.get("n_prompts") if isinstance(args, dict) else None
            of = f" of the {total} its recording covers" if total else ""
            out += [f"> **PARTIAL.** {c.label}: the first {c.trace.n_prompts} prompts{of} (an "
                    "unfinished recording's leading groups); every number below is for those "
                    "prompts only.", ""]
    if command:
        out += ["Made by:", "", "```bash", command, "```", "",
                "Same traces, same options: the same bytes (fixed seeds, no timestamps).", ""]
    rows = []
    for ctx, p in zip(ctxs, paths, strict=True):
        tr = ctx.trace
        ver = tr.meta.get("verifier")
        rows.append([f"`{p}`", sha256(p)[:16], str(tr.meta.get("dataset")),
                     str(tr.meta.get("decoding")),
                     str(ver.get("name") if isinstance(ver, dict) else ver),
                     ", ".join(tr.drafters), tr.n_prompts, tr.n_positions,
                     len(ctx.task_names), "yes" if ctx.synthetic else "no",
                     f"`{ctx.latency.source}`"])
    out += ["## Inputs", ""]
    out += table(["trace", "sha256 (16)", "dataset", "decoding", "verifier", "drafters",
                  "prompts", "tokens", "tasks", "synthetic", "pricing (latency model)"], rows,
                 "llllllrrrll")
    out += [f"Replay seed {seed}; bootstrap: {BOOT} replicates over prompts ({BOOT_POSITIONS} "
            "for position-level statistics), 95% percentile intervals. Speedup = verifier-only "
            "time / policy time under the same pricing, prefill included. Unless a section says "
            "otherwise, policies draft with the trace's first drafter ("
            + ", ".join(sorted({f"`{c.trace.drafters[0]}`" for c in ctxs}))
            + "; `--drafter` chooses and orders them).", "",
            "Grids (from the traces' entropy quantiles): theta / tau = "
            f"{fmt(g.theta, 3)} nats; router thresholds from {fmt(g.vtheta, 3)} nats; budgets "
            f"{fmt(g.budget, 3)} nats; rho {fmt(g.rho)}; beta {fmt(g.beta)}; caps k "
            f"{fmt(g.caps)}.", ""]
    out += ["## Key numbers", ""]
    rows = []
    for ctx in ctxs:
        fixed = ctx.best_fixed()
        best = rules.best_runs(ctx, g, rules.SEED000)
        top = max(best.values(), key=lambda r: r.speedup) if best else fixed
        every = rules.best_runs(ctx, g)
        top_all = max(every.values(), key=lambda r: r.speedup) if every else fixed
        rows.append([ctx.label, f"{fmt(fixed.speedup)} ({fixed.label})",
                     f"{fmt(top.speedup)} ({top.label})",
                     f"{top.speedup / fixed.speedup - 1:+.1%}",
                     f"{fmt(top_all.speedup)} ({top_all.label})",
                     f"{fmt(ctx.oracle(ctx.k_max).speedup)} (k={ctx.k_max})"])
    out += table(["trace", "best fixed k", "best seed-000 entropy stop", "gain",
                  "best lossless rule", "oracle at the largest cap"], rows, "llllll")
    return out


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
