"""sim info: every number against pandas on the Parquet rows; status, --json, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.info import trace_info
from simulator.synth import write_synth
from simulator.trace import META_KEY

from .conftest import random_trace

runner = CliRunner()

LENGTHS = [5, 8, 8, 3, 8, 6]  # budget 8: three prompts hit it
TASKS = ["math", "code", "math", "qa", "code", "math"]
CORRECT = [True, False, True, False, False, True]


def rewrite(src, dst, meta_updates=None, prompt_columns=None) -> str:
    """``src`` with metadata keys updated and per-prompt columns (prompt_id -> value) added."""
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta.update(meta_updates or {})
    pids = table.column("prompt_id").to_pylist()
    for name, by_prompt in (prompt_columns or {}).items():
        values = [by_prompt[p] for p in pids]
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(values))
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), dst)
    return str(dst)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> str:
    """A two-drafter greedy trace that looks recorded: budget, tasks, correctness, command."""
    d = tmp_path_factory.mktemp("info")
    random_trace(d / "raw.parquet", np.random.default_rng(3), LENGTHS, n_drafters=2,
                 max_new_tokens=8)
    pids = [f"p{i}" for i in range(len(LENGTHS))]
    return rewrite(d / "raw.parquet", d / "rec.parquet",
                   {"synthetic": False, "pair": "tiny", "temperature": 0.0,
                    "hardware": "test-cpu", "recorded": "2026-01-02T03:04:05+00:00",
                    "command": "validate record --pair tiny --out rec.parquet"},
                   {"category": dict(zip(pids, TASKS, strict=True)),
                    "correct": dict(zip(pids, CORRECT, strict=True))})


def test_numbers_match_pandas(recorded):
    r = trace_info(recorded)
    df = pd.read_parquet(recorded)
    drafters = list(dict.fromkeys(df["drafter"]))
    one = df[df["drafter"] == drafters[0]]
    lengths = one.groupby("prompt_id", sort=False).size()
    assert r["trace"] == recorded and r["status"] == "complete"
    assert r["size_mib"] == pytest.approx(os.path.getsize(recorded) / 2**20)
    assert r["prompts"] == df["prompt_id"].nunique() == len(LENGTHS)
    assert r["positions"] == len(one) == len(df) // len(drafters) == sum(LENGTHS)
    assert r["mean_tokens"] == pytest.approx(lengths.mean())
    assert r["budget_hits"] == int((lengths >= 8).sum()) == 3
    correct = one.groupby("prompt_id")["correct"].first()
    assert r["accuracy"] == {"correct": int(correct.sum()), "prompts": len(correct),
                             "rate": pytest.approx(correct.mean())}
    assert [d["name"] for d in r["drafters"]] == drafters == ["d0", "d1"]
    by_drafter = df.groupby("drafter")
    for d in r["drafters"]:
        assert d["agreement"] == pytest.approx(by_drafter["draft_match"].mean()[d["name"]])
        assert d["accept_prob"] == pytest.approx(by_drafter["accept_prob"].mean()[d["name"]])
        assert d["mean_entropy"] == pytest.approx(by_drafter["draft_entropy"].mean()[d["name"]])
    tasks = {t["name"]: t for t in r["tasks"]}
    assert [t["name"] for t in r["tasks"]] == sorted(set(TASKS))
    for name, g in df.groupby("category"):
        first = g[g["drafter"] == drafters[0]]
        assert tasks[name]["prompts"] == first["prompt_id"].nunique()
        assert tasks[name]["positions"] == len(first)
        agree = g.groupby("drafter")["draft_match"].mean()
        assert tasks[name]["agreement"] == {d: pytest.approx(agree[d]) for d in drafters}
    assert r["provenance"] == {
        "pair": "tiny", "verifier": "test", "drafters": ["d0", "d1"], "dataset": "test",
        "decoding": "greedy", "temperature": 0.0, "k_max": 4, "max_new_tokens": 8,
        "hardware": "test-cpu", "recorded": "2026-01-02T03:04:05+00:00",
        "command": "validate record --pair tiny --out rec.parquet", "synthetic": False}


def test_sampled_accept_prob_differs_from_agreement(tmp_path):
    path = tmp_path / "s.parquet"
    random_trace(path, np.random.default_rng(1), [7, 4], sampled=True)
    r = trace_info(path)
    df = pd.read_parquet(path)
    d = r["drafters"][0]
    assert d["accept_prob"] == pytest.approx(df["accept_prob"].mean())
    assert d["agreement"] == pytest.approx(df["draft_match"].mean())
    assert d["accept_prob"] != pytest.approx(d["agreement"])
    assert r["tasks"] == [] and r["accuracy"] is None and r["budget_hits"] is None


def test_partial_status(recorded, tmp_path):
    partial = {"prompts": len(LENGTHS), "groups": 2, "note": "leading groups"}
    with_total = rewrite(recorded, tmp_path / "p.parquet",
                         {"partial": partial, "record_args": {"n_prompts": 40}})
    assert trace_info(with_total)["status"] == f"partial: {len(LENGTHS)} of 40 prompts"
    no_total = rewrite(recorded, tmp_path / "q.parquet", {"partial": partial})
    assert trace_info(no_total)["status"].startswith(f"partial: {len(LENGTHS)} prompts")
    res = runner.invoke(app, ["info", "--trace", with_total])
    assert res.exit_code == 0, res.output
    assert f"partial: {len(LENGTHS)} of 40 prompts" in res.stdout


def test_json_shape(recorded):
    res = runner.invoke(app, ["info", "--trace", recorded, "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r == json.loads(json.dumps(trace_info(recorded)))
    assert {"trace", "status", "provenance", "size_mib", "prompts", "positions", "budget_hits",
            "accuracy", "drafters", "tasks"} <= set(r)
    assert set(r["drafters"][0]) == {"name", "agreement", "accept_prob", "mean_entropy"}
    assert set(r["tasks"][0]) == {"name", "prompts", "positions", "agreement"}
    assert set(r["tasks"][0]["agreement"]) == {"d0", "d1"}


def test_human_output(recorded):
    res = runner.invoke(app, ["info", "--trace", recorded])
    assert res.exit_code == 0, res.output
    text = res.stdout
    r = trace_info(recorded)
    for needle in ("status", "complete", "tiny", "greedy, temperature 0", "test-cpu",
                   "MiB on disk", "tokens, per drafter", "budget hits", "accuracy",
                   f"{sum(CORRECT)} / {len(CORRECT)}", "nats", "math", "code", "qa",
                   f"{r['drafters'][0]['agreement']:.3f}", "validate record"):
        assert needle in text, needle
    assert "SYNTHETIC" not in text


def test_synthetic_said_loudly(tmp_path):
    path = tmp_path / "s.parquet"
    write_synth(path, [0.7, 0.8], tokens=400, prompts=4, seed=0)
    res = runner.invoke(app, ["info", "--trace", str(path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.lstrip().startswith("SYNTHETIC")
    r = json.loads(runner.invoke(app, ["info", "--trace", str(path), "--json"]).stdout)
    assert r["provenance"]["synthetic"] is True and r["tasks"][0]["name"] == "synthetic"
    assert r["tasks"][0]["positions"] == 400 and r["tasks"][0]["prompts"] == 4


@pytest.mark.parametrize("command", [["info"], ["run"], ["info", "--json"]])
def test_missing_trace_with_parts_is_one_line(tmp_path, command):
    trace = tmp_path / "x.parquet"
    parts = tmp_path / "x.parquet.parts"
    parts.mkdir()
    write_synth(parts / "group-00000.parquet", [0.5], tokens=20, prompts=2)
    res = runner.invoke(app, [command[0], "--trace", str(trace), *command[1:]])
    assert res.exit_code == 2
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"sim: error: {trace}: no such trace; {parts}/ holds an "
                               "unfinished recording")
    assert "--partial" in lines[0] and "validate record" in lines[0]


def test_missing_trace_without_parts(tmp_path):
    res = runner.invoke(app, ["info", "--trace", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "no such file" in res.stderr
    assert "unfinished" not in res.stderr
