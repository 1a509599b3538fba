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
    (["run", "--drafter", "nope"], "no drafter 'nope'"),
    (["run", "--drafter", "synth-d1", "--drafter", "synth-d1"], "name each drafter once"),
    (["sweep", "--policy", "fixed", "--grid", "k=2", "--drafter", "nope"], "no drafter 'nope'"),
    (["sweep", "--policy", "fixed", "--grid", "k=3:1:1"], "a <= b"),
    (["synth", "--alpha", "1.5", "--tokens", "10", "--out", "x.parquet"], "--alpha"),
    (["run", "--frobnicate"], "No such option: --frobnicate"),  # usage errors too
    (["run", "--k-max", "x"], "No such option"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_exit_2(trace, args, message):
    if "--trace" not in args and args[0] in ("run", "sweep"):
        args = [args[0], "--trace", trace, *args[1:]]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("sim: error:") and message in lines[0], \
        res.stderr


def test_bare_sim_prints_help():
    res = runner.invoke(app, [])
    assert res.exit_code == 0 and "Usage:" in res.stdout and "report" in res.stdout


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


def only_drafter(src: str, name: str, dst) -> str:
    """``src`` rewritten to hold drafter ``name``'s rows only (metadata to match)."""
    import pyarrow.compute as pc

    from simulator.trace import META_KEY
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["drafters"] = [d for d in meta["drafters"] if d["name"] == name]
    table = table.filter(pc.equal(table.column("drafter"), name))
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), dst)
    return str(dst)


@pytest.mark.parametrize("policy", ["fixed", "adaptive", "relaxed"])
def test_drafter_option_equals_a_trace_of_that_drafter_alone(trace, tmp_path, policy):
    """--drafter B on a two-drafter trace = the same run on a file holding B's rows only."""
    alone = only_drafter(trace, "synth-d1", tmp_path / "d1.parquet")
    args = ["--policy", policy, "--latency", "const:draft=0.1,verify=1", "--json"]
    chosen = json.loads(runner.invoke(app, ["run", "--trace", trace, "--drafter", "synth-d1",
                                            *args]).stdout)
    ref = json.loads(runner.invoke(app, ["run", "--trace", alone, *args]).stdout)
    default = json.loads(runner.invoke(app, ["run", "--trace", trace, *args]).stdout)
    for r in (chosen, ref, default):
        r.pop("trace")
    assert chosen == ref and chosen["drafters"] == ["synth-d1"]
    assert default["drafters"] == ["synth-d0", "synth-d1"]
    assert default["acceptance_rate"] != chosen["acceptance_rate"]  # the choice matters


def test_drafter_option_orders_a_router(trace):
    args = ["--trace", trace, "--policy", "router", "--param", "thresholds=1000",
            "--latency", "const:draft=0.1,verify=1", "--json"]
    fwd = json.loads(runner.invoke(app, ["run", *args]).stdout)
    rev = json.loads(runner.invoke(app, ["run", *args, "--drafter", "synth-d1",
                                         "--drafter", "synth-d0"]).stdout)
    # below every threshold the router drafts with index 0: the first drafter named
    assert fwd["drafter_share"] == {"synth-d0": 1.0, "synth-d1": 0.0}
    assert rev["drafter_share"] == {"synth-d1": 1.0, "synth-d0": 0.0}


def test_sweep_drafter_option(trace, tmp_path):
    out = tmp_path / "s.parquet"
    res = runner.invoke(app, ["sweep", "--trace", trace, "--policy", "fixed", "--grid", "k=2,4",
                              "--drafter", "synth-d1", "--out", str(out), "--workers", "1",
                              "--latency", "const:draft=0.1,verify=1"])
    assert res.exit_code == 0, res.output
    rows = pq.read_table(out).to_pylist()
    run = json.loads(runner.invoke(app, ["run", "--trace", trace, "--drafter", "synth-d1",
                                         "--param", "k=4", "--json", "--latency",
                                         "const:draft=0.1,verify=1"]).stdout)
    assert {r["drafters"] for r in rows} == {"synth-d1"}
    assert rows[1]["speedup"] == run["speedup"]
