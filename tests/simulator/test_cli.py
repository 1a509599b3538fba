"""The sim command: JSON output, sweeps, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.synth import write_synth

runner = CliRunner()


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.parquet"
    write_synth(path, [0.7, 0.8], tokens=2000, prompts=4, seed=0)
    return str(path)


def test_run_json(trace):
    res = runner.invoke(app, ["run", "--trace", trace, "--policy", "stop_absolute", "--param",
                              "theta=1.2", "--param", "k=6", "--latency",
                              "const:draft=0.1,verify=1", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    for key in ("policy", "params", "tokens", "tokens_per_second", "speedup", "acceptance_rate",
                "mean_accepted_tokens", "draft_length_hist", "latency_ms", "verifier_calls",
                "drafter_calls", "wasted_draft_tokens", "oracle_speedup", "pricing"):
        assert key in r
    assert r["params"] == {"theta": 1.2, "k": 6, "entropy": "entropy"}
    assert r["pricing"] == "const:draft=0.1,verify=1" and r["synthetic"] is True


def test_lossy_policy_reports_quality(trace):
    res = runner.invoke(app, ["run", "--trace", trace, "--policy", "relaxed", "--param", "tau=1",
                              "--json", "--latency", "const:draft=0.1,verify=1"])
    r = json.loads(res.stdout)
    assert r["deviating_tokens"] > 0 and r["quality_bias"] > 0


def test_table_output(trace):
    res = runner.invoke(app, ["run", "--trace", trace])
    assert res.exit_code == 0 and "speedup" in res.stdout and "SYNTHETIC" in res.stdout


def test_sweep_writes_parquet_and_csv(trace, tmp_path):
    for ext in ("parquet", "csv"):
        out = tmp_path / f"s.{ext}"
        res = runner.invoke(app, ["sweep", "--trace", trace, "--policy", "stop_absolute",
                                  "--grid", "theta=0.5:1.5:0.5", "--grid", "k=2,4",
                                  "--out", str(out), "--workers", "1",
                                  "--latency", "const:draft=0.1,verify=1"])
        assert res.exit_code == 0, res.output
        assert "Pareto" in res.stdout
    rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert len(rows) == 6 and {r["param_k"] for r in rows} == {2, 4}


@pytest.mark.parametrize("args, message", [
    (["run", "--trace", "nope.parquet"], "no such file"),
    (["run", "--policy", "nope"], "unknown policy 'nope'"),
    (["run", "--param", "zzz=1"], "unknown parameter 'zzz'"),
    (["run", "--param", "k"], "expected name=value"),
    (["run", "--param", "k=-1"], "k=-1"),
    (["run", "--latency", "const:verify=1"], "needs draft=SECONDS"),
    (["run", "--latency", "roofline:H100"], "--pair"),
    (["run", "--policy", "router", "--param", "thresholds=0.5,1,2"], "needs 4 drafters"),
    (["run", "--engine", "warp"], "--engine"),
    (["sweep", "--policy", "fixed", "--grid", "k=3:1:1"], "a <= b"),
    (["synth", "--alpha", "1.5", "--tokens", "10", "--out", "x.parquet"], "--alpha"),
])
def test_bad_input_is_one_line_exit_2(trace, args, message):
    if "--trace" not in args and args[0] in ("run", "sweep"):
        args = [args[0], "--trace", trace, *args[1:]]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("sim: error:") and message in lines[0], \
        res.stderr


def test_same_seed_same_bytes(trace, tmp_path):
    args = ["--trace", trace, "--policy", "adaptive", "--latency", "const:draft=0.1,verify=1"]
    first = runner.invoke(app, ["run", *args, "--json", "--seed", "3"]).stdout
    assert first == runner.invoke(app, ["run", *args, "--json", "--seed", "3"]).stdout
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.parquet"
        res = runner.invoke(app, ["sweep", *args, "--grid", "theta0=0.5,1", "--grid", "k=2:4:1",
                                  "--out", str(out), "--workers", str(i + 1)])
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # also independent of the number of workers
