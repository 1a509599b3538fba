"""Pair registry and the ``validate`` CLI: offline-only loading, one-line errors, a tiny run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from simulator.trace import read_trace  # noqa: E402
from validator import pairs  # noqa: E402
from validator.cli import app  # noqa: E402
from validator.datasets import DatasetError, load_prompts  # noqa: E402
from validator.pairs import PAIRS, PairError, check_available, get_pair  # noqa: E402
from validator.record import Models  # noqa: E402
from validator.smollm2 import MODEL_ID  # noqa: E402

HUB_PAIRS = [n for n, p in PAIRS.items() if p.verifier is not None]


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _fake_cached(cache: Path, hub_id: str, weights: bool = True) -> None:
    """A Hugging Face cache entry (refs/main -> snapshot with config and maybe weights)."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text("{}")
    if weights:
        (snap / "model.safetensors").write_bytes(b"x")


def test_registry_names_the_published_pairs():
    assert set(PAIRS) == {"smollm2-135m", "smollm2-135m-h8k", "smollm2-135m-f1",
                          "0.5b-7b", "1.5b-32b",
                          "opt-125m-2.7b", "llama-1b-3b", "r1-distill"}
    assert PAIRS["0.5b-7b"].verifier.hub_id == "Qwen/Qwen2.5-7B-Instruct"
    assert [m.hub_id for m in PAIRS["r1-distill"].drafters] == [
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    assert PAIRS["opt-125m-2.7b"].chat_template is False
    with pytest.raises(PairError, match="unknown; known: smollm2-135m"):
        get_pair("gpt-5")


@pytest.mark.parametrize("name", HUB_PAIRS)
def test_absent_weights_name_the_hub_id(name, empty_hf_cache):
    pair = PAIRS[name]
    with pytest.raises(PairError, match="not in the local Hugging Face cache") as exc:
        check_available(pair)
    assert pair.verifier.hub_id in str(exc.value) and "\n" not in str(exc.value)


def test_a_config_without_weights_is_absent(empty_hf_cache):
    pair = PAIRS["0.5b-7b"]
    _fake_cached(empty_hf_cache, pair.verifier.hub_id)
    _fake_cached(empty_hf_cache, pair.drafters[0].hub_id, weights=False)
    with pytest.raises(PairError, match="Qwen/Qwen2.5-0.5B-Instruct"):
        check_available(pair)
    assert pairs.cached_snapshot(pair.verifier.hub_id).name == "abc123"


def test_smollm2_needs_a_trained_drafter(tmp_path):
    pair = PAIRS["smollm2-135m"]
    with pytest.raises(PairError, match="no trained drafter"):
        check_available(pair, tmp_path)
    for name, layers, verifier in (("d6", 6, MODEL_ID), ("d2", 2, MODEL_ID), ("other", 1, "x")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "drafter.json").write_text(json.dumps(
            {"n_layers": layers, "verifier": verifier}))
        (tmp_path / name / "drafter.safetensors").write_bytes(b"")
    check_available(pair, tmp_path)
    assert [p.name for p in pairs.trained_drafters(tmp_path)] == ["d2", "d6"]


def test_smollm2_pairs_use_their_listed_drafters_unless_given_a_folder(tmp_path, monkeypatch):
    for name, layers in (("a", 1), ("b", 3), ("c", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "drafter.json").write_text(json.dumps(
            {"n_layers": layers, "verifier": MODEL_ID}))
        (tmp_path / name / "drafter.safetensors").write_bytes(b"")
    monkeypatch.setattr(pairs, "DRAFTERS_DIR", tmp_path)
    listed = pairs.Pair("p", None, local_drafters=("b", "a"))
    assert [f.name for f in pairs.drafter_folders(listed)] == ["b", "a"]  # as listed
    assert [f.name for f in pairs.drafter_folders(listed, tmp_path)] == ["a", "c", "b"]
    with pytest.raises(PairError, match="drafter 'z' is not a trained drafter folder"):
        pairs.drafter_folders(pairs.Pair("q", None, local_drafters=("a", "z")))
    monkeypatch.undo()
    for pair in ("smollm2-135m", "smollm2-135m-h8k", "smollm2-135m-f1"):  # folders exist
        assert [f.name for f in pairs.drafter_folders(PAIRS[pair])] == list(
            PAIRS[pair].local_drafters)


def test_datasets():
    g = load_prompts("gsm8k", 3)
    assert [p.prompt_id for p in g] == ["gsm8k-0000", "gsm8k-0001", "gsm8k-0002"]
    assert g[0].reference.rstrip().endswith("#### 18") and g[0].category == "gsm8k"
    qa = load_prompts("specbench:qa", 2)
    assert all(p.category == "qa" for p in qa) and qa[0].prompt_id.startswith("specbench-")
    every = load_prompts("specbench")
    assert len(every) == 480 and len({p.prompt_id for p in every}) == 480
    for n in range(1, 481):  # every prefix is proportional, to rounding
        head = [p.category for p in every[:n]]
        for cat, size in Counter(p.category for p in every).items():
            assert abs(head.count(cat) - n * size / 480) < 2, (n, cat)
    assert len(set(p.category for p in every[:48])) == 13
    for spec, msg in (("mmlu", "unknown"), ("gsm8k:x", "only specbench"),
                      ("specbench:poetry", "unknown category")):
        with pytest.raises(DatasetError, match=msg):
            load_prompts(spec)
    with pytest.raises(DatasetError, match="has only 10"):
        load_prompts("specbench:math", 11)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("args", "msg"), [
    (["--pair", "nope", "--dataset", "gsm8k"], "--pair 'nope': unknown"),
    (["--pair", "0.5b-7b", "--dataset", "trivia"], "--dataset 'trivia': unknown"),
    (["--pair", "0.5b-7b", "--dataset", "gsm8k"], "Qwen/Qwen2.5-7B-Instruct is not in the local"),
    (["--pair", "0.5b-7b", "--dataset", "gsm8k", "--temperature", "hot"], "--temperature"),
    (["--pair", "0.5b-7b", "--dataset", "gsm8k", "--k-max", "0"], "--k-max must be >= 1"),
    (["--pair", "0.5b-7b", "--dataset", "gsm8k", "--prompts", "5000"], "has only 1319"),
    (["--pair", "0.5b-7b", "--dataset", "gsm8k", "--frobnicate"], "No such option"),
    (["--pair", "smollm2-135m", "--dataset", "gsm8k", "--drafters-dir", "/nonexistent"],
     "no trained drafter"),
])
def test_cli_bad_input_is_one_line_exit_2(args, msg, tmp_path, empty_hf_cache):
    out = tmp_path / "t.parquet"
    out.write_bytes(b"precious")
    res = _invoke(["record", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("validate: error: ") and msg in lines[0]
    assert out.read_bytes() == b"precious"


class CharTokenizer:
    """Stand-in tokenizer: characters -> ids 3..63, ids -> digits (so GSM8K scoring runs)."""

    chat_template = None

    def __call__(self, text: str) -> SimpleNamespace:
        return SimpleNamespace(input_ids=[3 + ord(c) % 61 for c in text[:10]])

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(str(i % 10) if i > 2 else "" for i in ids)


@pytest.fixture()
def tiny_pair(monkeypatch) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from validator.drafter import build_drafter

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                      eos_token_id=2, initializer_range=0.3, tie_word_embeddings=False)
    torch.manual_seed(0)
    verifier = LlamaForCausalLM(cfg).eval()
    models = Models(verifier, {"d1": build_drafter(verifier, 1)}, (2,), 0)
    loaded = pairs.LoadedPair(PAIRS["smollm2-135m"], models, CharTokenizer(), None,
                              {"pair": "smollm2-135m", "verifier": {"name": "tiny"},
                               "drafters": [{"name": "d1"}], "chat_template": None},
                              {"d1": "fingerprint"})
    monkeypatch.setattr(pairs, "check_available", lambda pair, folder: None)
    monkeypatch.setattr(pairs, "load_pair", lambda *a, **k: loaded)


def test_cli_records_resumes_and_guards_its_output(tiny_pair, tmp_path):
    out = tmp_path / "t.parquet"
    base = ["record", "--pair", "smollm2-135m", "--dataset", "gsm8k", "--prompts", "3",
            "--max-new-tokens", "6", "--k-max", "3", "--batch", "2", "--threads", "1",
            "--no-progress", "--out", str(out)]
    res = _invoke(base)
    assert res.exit_code == 0, res.output
    assert "3 prompts, 2 groups recorded now" in res.stdout and "tokens/s" in res.stdout
    tr = read_trace(out)
    assert tr.meta["dataset"] == "gsm8k" and tr.meta["command"].startswith("validate record")
    assert tr.meta["hardware"] and tr.meta["max_new_tokens"] == 6 and tr.meta["seed"] == 0
    assert tr.prompt_columns["correct"].dtype == object and len(tr.prompt_ids) == 3
    before = out.read_bytes()
    res = _invoke(base)
    assert res.exit_code == 0 and "0 groups recorded now" in res.stdout
    res = _invoke([*base, "--seed", "1"])
    assert res.exit_code == 2 and "--overwrite" in res.stderr and out.read_bytes() == before
    res = _invoke([*base, "--seed", "1", "--overwrite"])
    assert res.exit_code == 0 and read_trace(out).meta["seed"] == 1
