"""`validate --pair` pieces on tiny random Llamas: real runs vs the simulator on the recorded
trace (greedy counts must agree exactly), errors, the report, policy specs, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from simulator.errors import EntrospecError  # noqa: E402
from simulator.latency import parse_latency  # noqa: E402
from simulator.trace import read_trace  # noqa: E402
from validator.cli import app  # noqa: E402
from validator.datasets import Prompt  # noqa: E402
from validator.drafter import build_drafter  # noqa: E402
from validator.record import Models, RecordConfig, record  # noqa: E402
from validator.validate import (  # noqa: E402
    BASELINE,
    TARGET_SUITE,
    ValidateError,
    compare,
    parse_policy,
    policy_specs,
    predict,
    rel_error,
    run_real,
    write_report,
)

VOCAB, EOS, PAD, NEW = 64, 2, 0, 20
META = {"verifier": {"name": "tiny-v"}, "drafters": [{"name": "d0"}, {"name": "d1"}],
        "dataset": "tiny", "pair": "tiny"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=1,
                      eos_token_id=EOS, initializer_range=0.3)
    torch.manual_seed(1)
    verifier = LlamaForCausalLM(cfg).eval()
    verifier.requires_grad_(False)
    models = Models(verifier, {"d0": build_drafter(verifier, 2, [0, 1]),
                               "d1": build_drafter(verifier, 2, [0, 2])}, (EOS,), PAD)
    g = torch.Generator().manual_seed(2)
    ids = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (6, 4, 9)]
    prompts = [Prompt(f"p{i}", "", "tiny", "") for i in range(len(ids))]
    path = tmp_path_factory.mktemp("val") / "trace.parquet"
    # batch 1: the recording computes each prompt as the batch-1 decoder does
    record(models, prompts, ids, RecordConfig(max_new_tokens=NEW, k_max=8, batch=1), path, META,
           decode=str)
    return models, ids, read_trace(str(path))


SPECS = ["fixed:k=1", "fixed:k=4", "stop_absolute:theta=1.0,k=6", "hf_confidence:k=6",
         "router:k=4"]


def test_greedy_real_runs_match_the_simulator_on_their_trace(setup, tmp_path: Path) -> None:
    models, ids, trace = setup
    specs = policy_specs(SPECS)
    real = run_real(models, trace.drafters, ids, specs, NEW, 0.0, seed=0)
    assert set(real) == {BASELINE, *(s.label for s in specs)}
    latency = parse_latency("const:draft=0.01,verify=0.1")
    result = compare(trace, specs, real, predict(trace, specs, latency, 0), greedy=True)
    for label, e in result["policies"].items():
        g = e["greedy"]
        assert g["identical_prompts"] == len(ids), label  # batch-1 recording: same outputs
        assert g["greedy_counts_equal"], label
        m, p = e["measured"], e["predicted"]
        assert (m["tokens"], m["accepted_tokens"], m["verifier_calls"]) == \
            (p["tokens"], p["accepted_tokens"], p["verifier_calls"]), label
        # the one known approximation: a drafter that drafts EOS inside a free-run (after a
        # rejection) stops the real round; the trace does not say so, the replay drafts on
        assert m["drafted_tokens"] <= p["drafted_tokens"], label
        assert e["error"]["mean_accepted_tokens"] == pytest.approx(0.0)
    assert result["policies"][BASELINE]["measured"]["verifier_calls"] == int(trace.lengths.sum())
    assert result["summary"]["greedy_counts_equal"] is True
    assert result["summary"]["configurations"] == len(SPECS) + 1
    doc = {"pair": "tiny", "device": "cpu", "dataset": "tiny", "prompts": len(ids),
           "max_new_tokens": NEW, "temperature": 0.0, "trace": "trace.parquet",
           "pricing": latency.source, "hardware": {"device": "cpu"}, "measured_at": "now",
           "command": "validate --pair tiny", **result}
    md = write_report(doc, tmp_path / "rep")
    text = md.read_text()
    assert "| fixed k=4 |" in text and "predicted_vs_measured.png" in text
    assert (tmp_path / "rep" / "predicted_vs_measured.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "validate.json").read_text())["summary"] == \
        json.loads(json.dumps(result["summary"]))


def test_a_diverged_prompt_is_reported_not_counted(setup) -> None:
    models, ids, trace = setup
    specs = policy_specs(["fixed:k=2"])
    real = run_real(models, trace.drafters, ids, specs, NEW, 0.0, seed=0)
    res = real["fixed k=2"][0]
    real["fixed k=2"][0] = type(res)(tokens=res.tokens[:-1] + (res.tokens[-1] + 1,),
                                     rounds=res.rounds, verifier_calls=res.verifier_calls,
                                     drafter_calls=res.drafter_calls, seconds=res.seconds,
                                     finish=res.finish)
    latency = parse_latency("const:draft=0.01,verify=0.1")
    g = compare(trace, specs, real, predict(trace, specs, latency, 0), True)["policies"][
        "fixed k=2"]["greedy"]
    assert g["identical_prompts"] == len(ids) - 1 and g["diverged"] == [trace.prompt_ids[0]]
    assert g["greedy_counts_equal"]


def test_policy_specs_and_errors() -> None:
    assert len(policy_specs([])) == len(TARGET_SUITE) == 12
    spec = parse_policy("fixed", {"k": "3"})
    assert spec.label == "fixed k=3" and spec.make().params()["k"] == 3
    assert parse_policy("stop_absolute:theta=2,k=5").label == "stop_absolute theta=2.0 k=5"
    for bad in ("nosuch", "fixed:k", "fixed:k=x"):
        with pytest.raises(ValidateError, match="--policy"):
            parse_policy(bad)
    with pytest.raises(ValidateError, match="twice"):
        policy_specs(["fixed:k=2", "fixed:k=2"])
    with pytest.raises(ValidateError, match="--suite"):
        policy_specs([], suite="everything")
    assert rel_error(1.1, 1.0) == pytest.approx(0.1) and rel_error(None, 1.0) is None


@pytest.mark.parametrize("argv, needle", [
    (["--pair", "no-such-pair"], "no-such-pair"),
    (["--pair", "smollm2-135m", "--policy", "nosuch"], "nosuch"),
    (["--pair", "0.5b-7b", "--device", "cpu"], "0.5b-7b"),
    (["--pair", "smollm2-135m", "--drafter", "nosuch-d9"], "--drafter 'nosuch-d9'"),
    (["reprice", "no-such/validate.json"], "no such file"),
    (["reprice", "pyproject.toml"], "not a readable validate.json"),
])
def test_cli_bad_input_is_one_line_exit_2(argv: list[str], needle: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("validate: error:") and needle in lines[0]
    assert not (tmp_path / "r").exists()


def test_timing_only_forces_exactly_the_simulated_rounds(setup) -> None:
    """Random weights cannot agree with a trace; forced draws make the real decoder play the
    simulator's rounds anyway, so only time differs."""
    from simulator.engines.fast import run_fast
    from validator.validate import _first_prompts, run_forced

    models, _, trace = setup
    sub = _first_prompts(trace, 2)
    assert sub.n_prompts == 2 and sub.token_id.size == int(trace.offsets[2])
    latency = parse_latency("const:draft=0.01,verify=0.1")
    for spec in ["fixed:k=3", "stop_absolute:theta=1.0,k=6", "router:k=4"]:
        rounds = run_fast(sub, parse_policy(spec).make(), latency)
        real = run_forced(models.verifier, [models.drafters[n] for n in sub.drafters], sub,
                          rounds, 2)
        for p, res in enumerate(real):
            sel = rounds.prompt == p
            assert len(res.tokens) == sub.lengths[p]
            got = [(x.drafter, x.drafted, x.accepted) for x in res.rounds]
            want = list(zip(rounds.drafter[sel].tolist(), rounds.drafted[sel].tolist(),
                            rounds.accepted[sel].tolist(), strict=True))
            assert got == want, spec


def test_timing_only_needs_a_trace(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["--pair", "0.5b-7b", "--timing-only", "--device", "cpu",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--trace" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_drafter_order_is_the_same_in_decoder_and_simulator(setup) -> None:
    """`validate --drafter d1 --drafter d0`: the decoder drafts with the trace's reordered
    drafters, and the simulator replays that order: counts still agree."""
    models, ids, trace = setup
    swapped = trace.select_drafters(["d1", "d0"])
    specs = policy_specs(["fixed:k=4", "router:k=4"])
    real = run_real(models, swapped.drafters, ids, specs, NEW, 0.0, seed=0)
    latency = parse_latency("const:draft=0.01,verify=0.1")
    result = compare(swapped, specs, real, predict(swapped, specs, latency, 0), greedy=True)
    assert result["summary"]["greedy_counts_equal"] is True
    default = compare(trace, specs[:1], run_real(models, trace.drafters, ids, specs[:1], NEW,
                                                 0.0, seed=0),
                      predict(trace, specs[:1], latency, 0), greedy=True)
    assert result["policies"]["fixed k=4"]["measured"]["accepted_tokens"] != \
        default["policies"]["fixed k=4"]["measured"]["accepted_tokens"]


class FakeProbe:
    """A probe whose timings are given: each measure() returns the next value, repeated."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.calls = list(values), 0

    def measure(self, calls: int) -> list[float]:
        self.calls += 1
        return [self.values.pop(0)] * calls


def test_speed_adjusted_prediction_scales_each_run_by_its_probe(setup, tmp_path: Path) -> None:
    """Probe timings around every run -> per-run factors; a uniform 2x slow machine halves the
    predicted tokens/s exactly, and leaves the predicted speedup unchanged."""
    from validator.validate import PROBE_CALLS, adjusted_tokens_per_second, speed_factors

    models, ids, trace = setup
    specs = policy_specs(["fixed:k=2"])
    runs = len(ids) * (len(specs) + 1)
    probe, probes = FakeProbe([0.2] * (runs + 1)), {}
    real = run_real(models, trace.drafters, ids, specs, NEW, 0.0, seed=0, probe=probe,
                    probes=probes)
    assert probe.calls == runs + 1  # one block before the first run, one after each
    assert {k: len(v) for k, v in probes.items()} == {BASELINE: len(ids), "fixed k=2": len(ids)}
    assert all(t == [0.2] * (2 * PROBE_CALLS) for v in probes.values() for t in v)
    latency = parse_latency("const:draft=0.01,verify=0.1")
    pred = predict(trace, specs, latency, 0)
    result = compare(trace, specs, real, pred, True, probes, probe_reference_s=0.1)
    for e in result["policies"].values():
        assert e["adjusted"]["tokens_per_second"] == pytest.approx(
            e["predicted"]["tokens_per_second"] / 2)
        assert e["adjusted"]["speedup"] == pytest.approx(e["predicted"]["speedup"])
        assert e["adjusted"]["speed_factor_min"] == e["adjusted"]["speed_factor_max"] == 2.0
    assert result["summary"]["speed_factor_range"] == [2.0, 2.0]
    # per prompt: prompt 0 at half speed, the rest at the profile's: only its time doubles
    rounds = pred["fixed k=2"][1]
    f = speed_factors([[0.2, 0.2]] + [[0.1, 0.1]] * (len(ids) - 1), 0.1)
    per = np.bincount(rounds.prompt, weights=rounds.wall_ns) / 1e9
    expect = trace.lengths.sum() / (2 * per[0] + per[1:].sum())
    assert adjusted_tokens_per_second(trace, rounds, f) == pytest.approx(expect)
    assert "adjusted" not in compare(trace, specs, real, pred, True)["policies"][BASELINE]
    doc = {"pair": "tiny", "device": "cpu", "dataset": "tiny", "prompts": len(ids),
           "max_new_tokens": NEW, "temperature": 0.0, "trace": "trace.parquet",
           "pricing": latency.source, "hardware": {"device": "cpu"}, "measured_at": "now",
           "command": "validate --pair tiny", **result}
    text = write_report(doc, tmp_path / "rep").read_text()
    assert "Speed-adjusted" in text and "| adjusted predicted tok/s |" in text
    assert "factors 2.00-2.00" in text


def test_reprice_reuses_the_measurements_and_only_changes_the_prediction(setup,
                                                                         tmp_path: Path) -> None:
    """The same profile reproduces the stored result; a dearer verifier lowers every predicted
    tokens/s while the measurements, greedy checks and speed factors stay as stored."""
    from validator.validate import reprice

    models, ids, trace = setup
    specs = policy_specs(["fixed:k=2", "stop_absolute:theta=1.0,k=4"])
    runs = len(ids) * (len(specs) + 1)
    probes: dict = {}
    real = run_real(models, trace.drafters, ids, specs, NEW, 0.0, seed=0,
                    probe=FakeProbe([0.2] * (runs + 1)), probes=probes)
    profiles = {}
    for name, verify in (("a", 0.1), ("b", 0.3)):
        profiles[name] = tmp_path / f"{name}.json"
        profiles[name].write_text(json.dumps({"schema": "entrospec-profile/1", "models": {
            "verifier": {"coef": [verify, 0.01, 0, 0]}, "d0": {"coef": [0.01, 0, 0, 0]},
            "d1": {"coef": [0.02, 0, 0, 0]}}}))
    from simulator.latency import load_profile

    lat = load_profile(str(profiles["a"]))
    result = compare(trace, specs, real, predict(trace, specs, lat, 0), True, probes, 0.1)
    doc = {"pair": "tiny", "device": "cpu", "dataset": "tiny", "prompts": len(ids),
           "max_new_tokens": NEW, "temperature": 0.0, "seed": 0, "trace": trace.path,
           "drafters": list(trace.drafters), "pricing": lat.source,
           "hardware": {"device": "cpu"}, "measured_at": "then", "command": "validate --pair x",
           **result}
    write_report(doc, tmp_path / "orig")
    same = reprice(tmp_path / "orig" / "validate.json", profiles["a"], tmp_path / "same")
    stored = json.loads((tmp_path / "orig" / "validate.json").read_text())
    assert same["policies"] == stored["policies"] and same["summary"] == stored["summary"]
    dear = reprice(tmp_path / "orig" / "validate.json", profiles["b"], tmp_path / "dear", "cmd")
    for label, e in dear["policies"].items():
        old = stored["policies"][label]
        assert e["measured"] == old["measured"] and e["greedy"] == old["greedy"]
        assert e["adjusted"]["speed_factors"] == old["adjusted"]["speed_factors"]
        assert e["predicted"]["tokens_per_second"] < old["predicted"]["tokens_per_second"]
    assert dear["repriced"]["pricing_before"] == lat.source and dear["measured_at"] == "then"
    assert "re-priced" in (tmp_path / "dear" / "report.md").read_text()
    with pytest.raises(EntrospecError, match="not a validate.json"):
        (tmp_path / "bad.json").write_text("{}")
        reprice(tmp_path / "bad.json", profiles["a"], tmp_path / "x")
