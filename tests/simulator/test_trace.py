"""The trace reader refuses what it cannot interpret, naming the file and the problem."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simulator.errors import TraceError
from simulator.synth import write_synth
from simulator.trace import META_KEY, read_trace


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.parquet"
    write_synth(path, [0.6, 0.8], tokens=500, prompts=5, seed=2)
    return path


def rewrite(src, dst, table_fn=lambda t: t, meta_fn=lambda m: m):
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[META_KEY])
    table = table_fn(table)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta_fn(meta))})
    pq.write_table(table, dst)
    return dst


def test_roundtrip(good):
    tr = read_trace(good)
    assert tr.n_positions == 500 and tr.drafters == ("synth-d0", "synth-d1")
    assert tr.lengths.tolist() == [100] * 5
    assert tr.freerun["entropy"].shape == (2, 500, 16)
    # free-run recorded exactly at the mismatches
    assert np.array_equal(np.isnan(tr.freerun["entropy"][:, :, 0]), tr.match)


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_synth(a, [0.7], 1000, 4, seed=9)
    write_synth(b, [0.7], 1000, 4, seed=9)
    assert a.read_bytes() == b.read_bytes()


def test_row_order_does_not_matter(good, tmp_path):
    shuffled = rewrite(good, tmp_path / "s.parquet",
                       lambda t: t.take(np.random.default_rng(0).permutation(t.num_rows)))
    a, b = read_trace(good), read_trace(shuffled)
    assert sorted(a.prompt_ids) == sorted(b.prompt_ids)
    for pid in a.prompt_ids:  # prompts come in order of first appearance; rows within sorted
        i, j = a.prompt_ids.index(pid), b.prompt_ids.index(pid)
        ra = slice(a.offsets[i], a.offsets[i + 1])
        rb = slice(b.offsets[j], b.offsets[j + 1])
        assert np.array_equal(a.signals["entropy"][:, ra], b.signals["entropy"][:, rb])
        assert np.array_equal(a.freerun["entropy"][:, ra], b.freerun["entropy"][:, rb],
                              equal_nan=True)


@pytest.mark.parametrize("mutate, message", [
    (dict(meta_fn=lambda m: {**m, "schema_version": 99}), "schema_version 99"),
    (dict(meta_fn=lambda m: {k: v for k, v in m.items() if k != "k_max"}), "lacks k_max"),
    (dict(table_fn=lambda t: t.drop(["draft_entropy"])), "missing required column 'draft_entropy'"),
    (dict(table_fn=lambda t: t.set_column(t.schema.get_field_index("position"), "position",
                                          pa.array(np.zeros(t.num_rows, np.int32)))),
     "position"),
    (dict(table_fn=lambda t: t.set_column(
        t.schema.get_field_index("draft_entropy"), "draft_entropy",
        pa.array(np.where(np.arange(t.num_rows) == 3, np.nan, 1.0).astype(np.float32)))),
     "'draft_entropy' has NaN"),
    (dict(table_fn=lambda t: t.set_column(
        t.schema.get_field_index("draft_entropy"), "draft_entropy",
        pa.array(np.full(t.num_rows, -1.0, np.float32)))), "outside"),
    (dict(table_fn=lambda t: t.set_column(
        t.schema.get_field_index("draft_entropy"), "draft_entropy",
        t.column("draft_entropy").cast(pa.float64()))), "type double"),
    (dict(table_fn=lambda t: t.slice(0, 0)), "empty trace"),
    (dict(table_fn=lambda t: t.set_column(
        t.schema.get_field_index("accept_prob"), "accept_prob",
        pa.array(np.full(t.num_rows, 0.5, np.float32)))), "must equal 'draft_match'"),
    (dict(meta_fn=lambda m: {**m, "max_new_tokens": 99}),
     r"max_new_tokens=99 is smaller than prompt '.*'s length 100"),
    (dict(meta_fn=lambda m: {**m, "max_new_tokens": "100"}), "max_new_tokens='100' is not an"),
])
def test_bad_traces_are_refused(good, tmp_path, mutate, message):
    bad = rewrite(good, tmp_path / "bad.parquet", **mutate)
    with pytest.raises(TraceError, match=message) as info:
        read_trace(bad)
    assert str(bad) in str(info.value)


def test_not_parquet_and_missing(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_text("hello")
    with pytest.raises(TraceError, match="not a Parquet file"):
        read_trace(junk)
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.parquet")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(TraceError, match="not an entrospec trace"):
        read_trace(plain)


def test_budget_is_max_new_tokens_else_length(good, tmp_path):
    assert read_trace(good).budget.tolist() == [100] * 5  # no max_new_tokens: the lengths
    same = rewrite(good, tmp_path / "b100.parquet", meta_fn=lambda m: {**m, "max_new_tokens": 100})
    more = rewrite(good, tmp_path / "b128.parquet", meta_fn=lambda m: {**m, "max_new_tokens": 128})
    assert read_trace(same).budget.tolist() == [100] * 5
    budget = read_trace(more).budget
    assert budget.tolist() == [128] * 5 and budget.dtype == np.int64
