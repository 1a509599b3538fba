"""Figures and Markdown of the report, reproducible to the byte.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no backend
switch for the caller), under matplotlib's default style whatever the user's matplotlibrc, at a
fixed size, dpi and margins, and saved as PNG without the "Software" metadata (the only field that
varies with the installation). Every figure must have a title, labelled axes and a legend, and
a speed plot must draw the oracle bound: ``Figures.save`` refuses one that lacks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
SIZE = (6.4, 4.0)  # inches
FIG_DIR = "fig"
ORACLE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def default_style() -> Any:
    """Context manager: matplotlib's default rcParams, whatever the user's matplotlibrc."""
    rc = {k: v for k, v in mpl.rcParamsDefault.items()
          if k not in ("backend", "backend_fallback", "interactive")}
    return mpl.rc_context(rc)


class Figures:
    """Creates figures and writes them to ``out/fig/<prefix>-<name>.png``."""

    def __init__(self, out: Path, prefix: str) -> None:
        self.dir = out / FIG_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.written: list[str] = []

    def new(self, ncols: int = 1, size: tuple[float, float] = SIZE, left: float = 0.75,
            bottom: float = 0.55, right: float = 0.2, top: float = 0.4, gap: float = 0.8
            ) -> tuple[Figure, Any]:
        """A figure of ``ncols`` axes in a row, margins in inches (fixed, not computed: a
        layout engine costs more than the drawing itself)."""
        w, h = size
        fig = Figure(figsize=size, dpi=DPI)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        axis_w = (w - left - right - gap * (ncols - 1)) / ncols
        fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                            wspace=gap / axis_w)
        return fig, (axes[0] if ncols == 1 else axes)

    def save(self, fig: Figure, name: str, caption: str, speed: bool = False) -> str:
        """Write the PNG; return the Markdown image line. ``speed``: must show the oracle."""
        check(fig, name, speed)
        rel = f"{FIG_DIR}/{self.prefix}-{name}.png"
        fig.savefig(self.dir.parent / rel, dpi=DPI, metadata={"Software": None})
        self.written.append(rel)
        return f"![{caption}]({rel})"


def check(fig: Figure, name: str, speed: bool) -> None:
    """Title, axis labels and a legend on every axes; the oracle on speed plots."""
    titled = bool(fig.get_suptitle())
    for ax in fig.axes:
        if not (titled or ax.get_title()):
            raise ValueError(f"figure {name}: an axes has no title")
        if not ax.get_xlabel() or not ax.get_ylabel():
            raise ValueError(f"figure {name}: an axes lacks an axis label")
        if ax.get_legend() is None:
            raise ValueError(f"figure {name}: an axes has no legend")
    if speed:
        legends = [ax.get_legend() for ax in fig.axes]
        labels = [t.get_text() for lg in legends if lg is not None for t in lg.get_texts()]
        if not any(lbl.lower().startswith("oracle") for lbl in labels):
            raise ValueError(f"figure {name}: speed plot without the oracle bound")


def oracle_line(ax: Any, value: float, k: int | str) -> None:
    """The oracle's speedup at cap k as a horizontal line."""
    ax.axhline(value, label=f"oracle (k={k})", **ORACLE_STYLE)


# ---- Markdown -------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
          ) -> list[str]:
    """A Markdown table; ``align`` is one character per column, 'l' or 'r' (default: r after
    the first column)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def note(text: str) -> list[str]:
    """A "not available" (or caveat) note, set apart so a reader cannot miss it."""
    return [f"> **Note.** {text}", ""]


def na(what: str, why: str) -> list[str]:
    return note(f"{what}: not available ({why}).")
