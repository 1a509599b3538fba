"""sim report: every section and figure, the same bytes twice, verdict logic, association
statistics against closed forms, and "not available" notes when the trace lacks the inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.latency import parse_latency
from simulator.report import build_report
from simulator.report.hypotheses import regrets
from simulator.report.stats import (
    RocData,
    auc_pairs,
    moment_sums,
    point_biserial,
    point_biserial_sums,
    verdict_h1,
    verdict_h2,
    verdict_h3,
)
from simulator.synth import synth_columns
from simulator.trace import write_trace

from .conftest import random_trace

CATEGORIES = ("chat", "code", "math")
HEADINGS = (
    "## Inputs", "## Key numbers", "### Seed 004", "#### Fixed k, every drafter",
    "#### Effect of prompt length", "#### Effect of max new tokens", "### Seed 000",
    "#### Every stopping rule vs the best fixed k", "#### Draft-length distributions",
    "#### Per-token latency P50 / P90 / P99", "#### Entropy vs acceptance",
    "#### Position-wise acceptance", "### Seed 001", "#### Exp 1", "#### Exp 2", "#### Exp 4",
    "#### Exp 5", "#### Exp 6", "#### Exp 7", "#### Exp 8", "### Seed 002", "### Seed 003",
    "### GSM8K accuracy of lossy policies", "## Seed 000 hypotheses H1-H3",
    "## Validation against the real decoder",
)
CONST = parse_latency("const:draft=0.1,verify=1")


def categorized_trace(path: Path) -> str:
    """A 2-drafter synthetic trace with 3 categories and a per-prompt `correct` column."""
    cols = synth_columns([0.6, 0.8], tokens=900, prompts=9, seed=3, k_max=8)
    pid = cols["prompt_id"].to_pylist()
    idx = [int(p.rsplit("-", 1)[1]) for p in pid]
    cols["category"] = pa.array([CATEGORIES[i % 3] for i in idx])
    cols["correct"] = pa.array([i % 2 == 0 for i in idx])
    meta = {"verifier": {"name": "v"}, "drafters": [{"name": "synth-d0"}, {"name": "synth-d1"}],
            "dataset": "test", "decoding": "greedy", "k_max": 8, "hardware": None,
            "recorded": "1970-01-01", "synthetic": True,
            "partial": {"groups": 3, "prompts": 9}, "record_args": {"n_prompts": 30}}
    write_trace(path, cols, meta)
    return str(path)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report")
    trace = categorized_trace(base / "cat.parquet")
    a, b = base / "a", base / "b"
    for out in (a, b):
        build_report([trace], [CONST], out, seed=0, progress=False)
    return a, b


def test_every_section_and_figure(reports):
    out = reports[0]
    text = (out / "index.md").read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) >= 18
    for rel in figures:
        assert (out / rel).is_file(), rel
    assert sorted(p.name for p in (out / "fig").iterdir()) == sorted(Path(f).name
                                                                    for f in figures)
    assert "SYNTHETIC" in text and "const:draft=0.1,verify=1" in text
    assert "**PARTIAL.** cat: the first 9 prompts of the 30 its recording covers" in text
    # the trace has categories, correctness and two drafters: nothing is missing
    for what in ("accuracy: not available", "cross-task comparison: not available",
                 "routing: not available", "H2: not available", "H3: not available"):
        assert what not in text
    assert re.search(r"\| H1 \|.*\*\*(supported|not supported|inconclusive)\*\*", text)


def test_same_inputs_same_bytes(reports):
    a, b = reports
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_missing_inputs_are_said_not_invented(tmp_path):
    trace = tmp_path / "plain.parquet"
    random_trace(trace, np.random.default_rng(0), [80, 60, 100], n_drafters=1, k_max=6)
    res = CliRunner().invoke(app, ["report", "--trace", str(trace), "--out",
                                   str(tmp_path / "r"), "--latency", "const:draft=0.1,verify=1"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r" / "index.md").read_text()
    for heading in HEADINGS:
        assert heading in text, heading
    for what in ("accuracy: not available", "cross-task comparison: not available",
                 "routing: not available", "H2: not available", "H3: not available",
                 "validation: not available"):
        assert what in text, what
    assert "PARTIAL" not in text
    assert f"--trace {trace}" in text
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / "r" / rel).is_file()


def test_cli_bad_input_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["report", "--trace", str(tmp_path / "nope.parquet"),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no such file" in res.output
    trace = tmp_path / "plain.parquet"
    random_trace(trace, np.random.default_rng(0), [30, 20], n_drafters=1, k_max=4)
    (tmp_path / "v.json").write_text('{"policies": {"fixed k=2": {"measured": {}}}}')
    for bad, why in (("v.json", "not a validate.json"), ("missing.json", "no such file")):
        res = CliRunner().invoke(app, ["report", "--trace", str(trace), "--validate",
                                       str(tmp_path / bad), "--out", str(tmp_path / "r2")])
        assert res.exit_code == 2 and why in res.output and bad in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r2").exists()


def _entry(m_tps: float, p_tps: float, acc: float, tau: float) -> dict:
    side = {"tokens_per_second": 0.0, "acceptance_rate": acc, "mean_accepted_tokens": tau}
    return {"measured": {**side, "tokens_per_second": m_tps},
            "predicted": {**side, "tokens_per_second": p_tps}}


def test_validate_results_become_a_section_with_table_and_figure(tmp_path):
    import json

    trace = tmp_path / "plain.parquet"
    random_trace(trace, np.random.default_rng(0), [30, 20], n_drafters=1, k_max=4)
    doc = {"pair": "tiny", "device": "cpu", "prompts": 2, "dataset": "gsm8k",
           "max_new_tokens": 64, "temperature": 0.0, "pricing": "profile:p.json",
           "command": "validate --pair tiny",
           "policies": {"verifier-only": _entry(10.0, 10.5, None, 1.0),
                        "fixed k=2": _entry(20.0, 19.0, 0.5, 2.0)},
           "summary": {"configurations": 2, "median_abs_error_tokens_per_second": 0.05,
                       "max_abs_error_tokens_per_second": 0.05, "greedy_counts_equal": True}}
    (tmp_path / "validate.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(app, ["report", "--trace", str(trace), "--validate",
                                   str(tmp_path / "validate.json"), "--out", str(tmp_path / "r"),
                                   "--latency", "const:draft=0.1,verify=1"])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r" / "index.md").read_text()
    assert "validation: not available" not in text
    assert "| fixed k=2 | 20 | 19 | -5.0% |" in text
    assert "| verifier-only | 10 | 10.5 | +5.0% |" in text
    assert "greedy accepted-token counts equal between decoder and simulator: True" in text
    assert f"--validate {tmp_path / 'validate.json'}" in text
    assert (tmp_path / "r" / "fig" / "all-validate-0.png").is_file()


# ---- statistics against closed forms ----------------------------------------------------------

def test_point_biserial_closed_form():
    x = np.array([0.1, 0.4, 0.35, 2.0, 1.5, 0.2, 3.0])
    y = np.array([1, 1, 1, 0, 0, 1, 0], dtype=bool)
    p = y.mean()
    closed = (x[y].mean() - x[~y].mean()) / x.std() * np.sqrt(p * (1 - p))
    assert point_biserial(x, y) == pytest.approx(closed, abs=1e-12)
    assert point_biserial(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # integer weights = repeated rows; per-group sums give the same number
    w = np.array([1, 2, 1, 3, 1, 1, 2])
    rep = np.repeat(np.arange(x.size), w)
    assert point_biserial(x, y, w) == pytest.approx(point_biserial(x[rep], y[rep]), abs=1e-12)
    sums = moment_sums(x, y, np.array([0, 0, 1, 1, 2, 2, 2]), 3)
    assert point_biserial_sums(sums.sum(axis=1)) == pytest.approx(point_biserial(x, y))


def test_roc_auc_closed_form():
    h = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 2.0, 0.3, 1.1])
    m = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    # match entropies {0.1, 0.5, 0.5, 0.3} vs mismatch {0.5, 0.9, 2.0, 1.1}: 16 pairs, the two
    # (0.5, 0.5) ties count half, every other pair is ordered: AUC = 15 / 16
    assert auc_pairs(h, m) == pytest.approx(15 / 16)
    roc = RocData.of(h, m)
    assert roc.auc() == pytest.approx(15 / 16, abs=1e-12)
    w = np.array([2, 1, 1, 3, 1, 1, 2, 1], dtype=float)
    rep = np.repeat(np.arange(h.size), w.astype(int))
    assert roc.auc(w) == pytest.approx(auc_pairs(h[rep], m[rep]), abs=1e-12)
    assert RocData.of(np.arange(4.0), np.array([1, 1, 0, 0], dtype=bool)).auc() == 1.0
    fpr, tpr = roc.curve()
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.isnan(RocData.of(h, np.ones(8, dtype=bool)).auc())


# ---- verdicts on hand-made inputs -------------------------------------------------------------

def _boot(point, spread=0.005, b=400, seed=0):
    point = np.asarray(point, dtype=float)
    return point + np.random.default_rng(seed).normal(0, spread, (b, point.size))


def test_h1_verdicts():
    assert verdict_h1(np.array([0.2, 0.3, 0.05]), _boot([0.2, 0.3, 0.05])).status == "supported"
    assert verdict_h1(np.array([0.02, 0.2, 0.05]),
                      _boot([0.02, 0.2, 0.05])).status == "not supported"
    v = verdict_h1(np.array([0.10]), _boot([0.10], 0.02))  # on the margin
    assert v.status == "inconclusive" and v.lo == 0 and v.hi == 1
    assert verdict_h1(np.zeros(0), np.zeros((10, 0))).status == "not available"


def test_h2_verdicts():
    cplx = np.array([0.5, 0.8, 1.1, 1.4, 1.7])
    theta = np.array([2.0, 1.6, 1.2, 0.9, 0.5])  # harder task, stricter threshold
    v = verdict_h2(theta, cplx, _boot(theta, 0.01), _boot(cplx, 0.01, seed=1))
    assert v.status == "supported" and v.value == pytest.approx(-1.0)
    same = np.full(5, 1.2)
    assert verdict_h2(same, cplx, _boot(same), _boot(cplx)).status == "not supported"
    rng = np.random.default_rng(5)
    noisy = verdict_h2(theta, cplx, rng.permuted(np.tile(theta, (400, 1)), axis=1),
                       _boot(cplx, 0.01))
    assert noisy.status in ("inconclusive", "not supported") and noisy.lo < 0 < noisy.hi
    assert verdict_h2(theta[:2], cplx[:2], _boot(theta[:2]),
                      _boot(cplx[:2])).status == "not available"


def test_h2_inconclusive_when_every_best_theta_is_a_grid_edge():
    """The searched grid's edge as every task's optimum says nothing about ranks: the true
    optimum may lie beyond it. One interior value is enough to judge again."""
    cplx = np.array([0.5, 0.8, 1.1, 1.4])
    grid = np.linspace(0.5, 2.0, 7)
    edge = np.array([0.5, 0.5, 2.0, 0.5])
    v = verdict_h2(edge, cplx, _boot(edge), _boot(cplx), grid=grid)
    assert v.status == "inconclusive" and "0.5 or 2 nats" in v.reason
    low = np.full(4, 0.5)
    assert verdict_h2(low, cplx, _boot(low), _boot(cplx), grid=grid).status == "inconclusive"
    assert verdict_h2(low, cplx, _boot(low), _boot(cplx)).status == "not supported"  # no grid
    inner = np.array([2.0, 1.75, 1.25, 0.5])
    v = verdict_h2(inner, cplx, _boot(inner, 0.01), _boot(cplx, 0.01, seed=1), grid=grid)
    assert v.status == "supported"


def test_h3_verdicts_and_regret():
    # 2 tasks x 3 configurations: the mean picks config 1; task 0's best is config 0
    s = np.array([[2.0, 1.8, 1.0], [1.0, 1.6, 1.5]])
    assert regrets(s) == pytest.approx([1 - 1.8 / 2.0, 0.0])
    both = regrets(np.stack([s, s[:, ::-1]]))  # a leading replicate axis
    assert both[0] == pytest.approx([0.1, 0.0]) and both[1] == pytest.approx([0.1, 0.0])
    r_abs, r_rel = np.array([0.10, 0.20]), np.array([0.01, 0.02])
    assert verdict_h3(r_abs, r_rel, _boot(r_abs), _boot(r_rel, seed=1)).status == "supported"
    assert verdict_h3(r_rel, r_abs, _boot(r_rel), _boot(r_abs, seed=1)).status == \
        "not supported"
    zero = np.zeros(3)
    assert verdict_h3(zero, zero, np.zeros((50, 3)), np.zeros((50, 3))).status == \
        "not supported"
    assert verdict_h3(r_abs[:1], r_rel[:1], _boot(r_abs[:1]),
                      _boot(r_rel[:1])).status == "not available"
