"""Calibration on a tiny random Llama (seconds), the fit, pairs and model configs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from simulator.cli import latency_for  # noqa: E402
from simulator.errors import LatencyError  # noqa: E402
from simulator.latency import CONFIG_DIR, decode_cost, linear_form, load_profile  # noqa: E402
from validator.calibrate import (  # noqa: E402
    CalibrationError,
    _medians,
    app,
    calibrate,
    calibrate_roles,
    fit_knee,
    fit_linear,
    fit_points,
    hf_config,
    normalize_by_probe,
    piecewise_seconds,
    refit_profile,
)

TINY = {"name": "tiny", "architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 128,
        "tie_word_embeddings": True}
PAIRS = json.loads((CONFIG_DIR / "pairs.json").read_text())["pairs"]
MODELS = sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.json"))


def test_fit_reproduces_exact_synthetic_data() -> None:
    coef = np.array([2e-3, 5e-4, 3e-7, 2e-8])
    n, c = (g.ravel() for g in np.meshgrid([1, 2, 3, 5, 9, 17], [16, 100, 1000, 4096]))
    got = fit_linear(n, c, linear_form(coef, n, c))
    np.testing.assert_allclose(got, coef, rtol=1e-6)


def test_fit_holds_out_every_third_point_and_fits_pieces() -> None:
    one, many, long = [5e-2, 0, 1e-6, 0], [9e-2, 2e-3, 2e-6, 1e-8], [1e-2, 2e-3, 1e-6, 1e-9]
    pts = [{"new": n, "context": c, "piece": "grid",
            "median_s": float(linear_form(np.array(one if n == 1 else many), n, c))}
           for c in (256, 64, 16) for n in (1, 2, 4, 8)]
    pts += [{"new": n, "context": c, "piece": "long",
             "median_s": float(linear_form(np.array(long), n, c))}
            for c in (512, 0) for n in (32, 96, 256)]
    fit = fit_points(pts)
    assert [p["heldout"] for p in pts[:6]] == [False, False, True] * 2
    assert fit["heldout"]["points"] == 4 and fit["fit_error"]["points"] == 8
    assert fit["heldout"]["max_rel_err"] > 0.01  # one linear form cannot follow the jump
    assert fit["prefill_check"]["points"] == 6 and fit["prefill_check"]["max_rel_err"] > 0.1
    assert [p["new"] for p in fit["pieces"]] == [[1, 1], [2, 8], [9, None]]
    for got, want in zip(fit["pieces"], (one, many, long), strict=True):
        np.testing.assert_allclose(got["coef"], want, rtol=1e-6, atol=1e-12)
    for part in ("grid", "long"):
        assert fit["pieces_heldout"][part]["points"] > 0
        assert fit["pieces_heldout"][part]["max_rel_err"] < 1e-6


def test_new_factors_follow_a_consistent_kernel_effect_and_ignore_noise() -> None:
    """new = 3 costs 25% more than the line at every context (a kernel effect): it gets that
    factor, held-out error included; +-5% noise around the line at other widths gets none."""
    coef = np.array([9e-2, 2e-3, 2e-6, 1e-8])
    noise = np.random.default_rng(0)
    pts = []
    for c in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16):
        for n in (2, 3, 4, 6, 8):
            t = float(linear_form(coef, n, c)) * (1.25 if n == 3 else 1 + noise.uniform(-.05, .05))
            pts.append({"new": n, "context": c, "piece": "grid", "median_s": t})
    fit = fit_points(pts)
    assert list(fit["new_factors"]) == ["3"]
    assert 1.15 < fit["new_factors"]["3"] < 1.3
    assert fit["pieces_heldout"]["grid"]["max_rel_err"] < 0.12
    pts[1]["median_s"] /= 1.5  # one context of new = 3 on the other side: no longer consistent
    assert "3" not in fit_points(pts)["new_factors"]


def test_heldout_errors_count_the_points_within_their_own_sweep_spread() -> None:
    """A held-out point counts when the fit misses it by no more than its sweep-to-sweep spread:
    exact timings count at any spread; a point pushed 20% off counts only with a wider one."""
    coef = np.array([9e-2, 2e-3, 2e-6, 1e-8])
    pts = [{"new": n, "context": c, "piece": "grid", "spread": 0.1,
            "median_s": float(linear_form(coef, n, c))}
           for c in (4096, 1024, 256, 64, 16) for n in (2, 3, 4, 6, 8, 12)]
    got = fit_points(pts)["pieces_heldout"]["grid"]
    assert got["within_spread"] == got["points"] == 10
    pts[2]["median_s"] *= 1.25  # held out (every third point): missed by 20%
    assert fit_points(pts)["pieces_heldout"]["grid"]["within_spread"] == 9
    pts[2]["spread"] = 0.3
    assert fit_points(pts)["pieces_heldout"]["grid"]["within_spread"] == 10
    del pts[2]["spread"]  # a profile from before spreads were stored: no count
    assert "within_spread" not in fit_points(pts)["pieces_heldout"]["grid"]


def test_knee_follows_a_steeper_cost_beyond_a_context_and_ignores_noise() -> None:
    """Each context token beyond 1024 costs 3x: fit_knee finds K = 1024 and the exact
    coefficients; +-3% noise on a straight line gets no knee."""
    coef, extra = np.array([9e-2, 2e-3, 2e-6, 1e-8]), np.array([4e-6, 2e-8])
    n, c = (g.ravel().astype(float) for g in np.meshgrid(
        [2, 3, 4, 6, 8, 12, 17], [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]))
    t = linear_form(coef, n, c) + (extra[0] + extra[1] * n) * np.maximum(0, c - 1024)
    got, knee = fit_knee(n, c, t)
    assert knee is not None and knee["context"] == 1024
    np.testing.assert_allclose(got, coef, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(knee["coef"], extra, rtol=1e-5)
    pieces = [{"new": [2, None], "coef": list(got), "knee": knee}]
    np.testing.assert_allclose(piecewise_seconds(pieces, n, c), t, rtol=1e-9)
    noisy = linear_form(coef, n, c) * (1 + np.random.default_rng(1).uniform(-.03, .03, n.size))
    assert fit_knee(n, c, noisy)[1] is None


def test_fit_refuses_too_few_points() -> None:
    with pytest.raises(CalibrationError):
        fit_linear(np.array([1]), np.array([16]), np.array([1e-3]))


def test_calibrate_tiny_model_writes_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    news, contexts = [1, 2, 3, 5], [8, 32, 96]
    doc = calibrate_roles({"verifier": TINY, "tiny-d1": {**TINY, "name": "tiny-d1",
                                                        "num_hidden_layers": 1}},
                          random_weights=True, out=out, news=news, contexts=contexts,
                          repeats=1, long_new=(8, 16), long_context=(0, 32), progress=False,
                          quiet=float("inf"), sweeps=2)
    prof = load_profile(str(out))
    assert set(prof.coefs) == {"verifier", "tiny-d1"}
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    assert doc["hardware"]["device"] == "cpu" and doc["libraries"]["torch"]
    points = sum(len(e["points"]) for e in doc["models"].values())
    assert doc["probe"]["calls"] == points * 2 and doc["probe"]["median_s"] > 0  # 2 sweeps
    assert doc["probe"]["context"] == 256 and doc["probe"]["new"] == 1
    for e in doc["models"].values():  # every point normalised by the probes around it
        assert all(len(p["probe_at"]) == 2 and p["raw_median_s"] > 0 for p in e["points"])
    again = refit_profile(out)  # the stored timings fit again: the same fits
    assert all(again["models"][r]["pieces"] == e["pieces"] and again["models"][r]["coef"] ==
               e["coef"] for r, e in doc["models"].items())
    assert json.loads(out.read_text())["refit"]["plan"] == "validator.calibrate.piece_plan"
    n, c = np.meshgrid(np.arange(1, 6), np.arange(8, 97))
    for role, entry in doc["models"].items():
        assert entry["step"] == ("verify_step" if role == "verifier" else "draft_step")
        grid = [p for p in entry["points"] if p["piece"] == "grid"]
        assert len(grid) == len(news) * len(contexts) and len(entry["points"]) == len(grid) + 4
        assert all(p["median_s"] > 0 and len(p["sweep_medians_s"]) == 2 and p["spread"] >= 0
                   for p in entry["points"])
        assert entry["heldout"]["points"] == sum(p["heldout"] for p in grid) == len(grid) // 3
        held = entry["heldout"]
        assert np.isfinite([held["median_rel_err"], held["max_rel_err"]]).all()
        for t in (prof.seconds(role, n, c), piecewise_seconds(entry["pieces"], n, c)):
            assert (t > 0).all()
            assert (np.diff(t, axis=0) >= 0).all()  # more context never cheaper
        assert (np.diff(prof.seconds(role, n, c), axis=1) >= 0).all()  # nor more new tokens


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("hw", ["H100", "cpu-2core"])
def test_every_pair_resolves_for_roofline(pair: str, hw: str) -> None:
    drafters = PAIRS[pair]["drafters"]
    model = latency_for(f"roofline:{hw}", {"drafters": drafters}, pair)
    for role in ["verifier", *drafters]:
        t = model.seconds(role, np.array([1, 17]), np.array([300, 300]))
        assert np.isfinite(t).all() and (t > 0).all() and t[1] >= t[0]


@pytest.mark.parametrize("name", MODELS)
def test_model_configs_build_the_shapes_the_roofline_counts(name: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = json.loads((CONFIG_DIR / "models" / f"{name}.json").read_text())
    assert cfg["name"] == name and cfg["source"] and cfg["source_urls"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    params = sum(p.numel() for p in model.parameters())
    _, flops = decode_cost(cfg, np.array(1.0), np.array(0.0), 4.0)
    dense = flops / 2 - 2 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * \
        cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    h, vocab = cfg["hidden_size"], cfg["vocab_size"]
    head = cfg.get("head_tokens") or vocab  # the roofline counts a subset head's rows only
    tables = (1 if cfg["tie_word_embeddings"] else 2) * vocab * h  # embedding (+ untied head)
    assert params == pytest.approx(dense - head * h + tables, rel=0.03)  # norms, biases, positions


def test_a_subset_head_config_builds_that_head_and_prices_fewer_flops() -> None:
    from validator.calibrate import build_random, with_head
    from validator.drafter import SubsetHead

    cfg = json.loads((CONFIG_DIR / "models" / "smollm2-135m-d3-h8k.json").read_text())
    full = json.loads((CONFIG_DIR / "models" / "smollm2-135m-d3.json").read_text())
    tiny = {**cfg, "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 32, "vocab_size": 64,
            "head_tokens": 8}
    model = build_random(tiny, "float32", "cpu")
    assert isinstance(model.lm_head, SubsetHead) and model.lm_head.weight.shape == (8, 16)
    assert with_head(model, model, full) is model  # no head_tokens: unchanged
    n, c = np.array(1.0), np.array(300.0)
    saved = decode_cost(full, n, c, 2.0)[1] - decode_cost(cfg, n, c, 2.0)[1]
    assert saved == pytest.approx(2 * (49152 - 8192) * 576)


def test_unknown_pair_is_a_one_line_error_exit_2(tmp_path: Path) -> None:
    with pytest.raises(LatencyError, match="unknown"):
        calibrate("no-such-pair", out=str(tmp_path / "x.json"), progress=False)
    res = CliRunner().invoke(app, ["--pair", "no-such-pair", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2
    assert "no-such-pair" in res.output and len(res.output.strip().splitlines()) == 1
    from validator.cli import app as validate_app  # the same command as `validate calibrate`

    res = CliRunner().invoke(validate_app, ["calibrate", "--pair", "no-such-pair", "--out",
                                            str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "no-such-pair" in res.output
    assert not (tmp_path / "x.json").exists()


def test_refuses_to_overwrite_a_file_of_another_schema(tmp_path: Path) -> None:
    out = tmp_path / "other.json"
    out.write_text(json.dumps({"schema": "someone-else/2"}))
    res = CliRunner().invoke(app, ["--pair", "smollm2-135m", "--out", str(out),
                                   "--random-weights", "--no-progress"])
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    assert json.loads(out.read_text()) == {"schema": "someone-else/2"}


@pytest.mark.parametrize("bad", [{"architecture": "mamba"}, {"head_dim": 7}])
def test_bad_model_config_is_a_calibration_error(bad: dict) -> None:
    with pytest.raises(CalibrationError):
        calibrate_roles({"verifier": {**TINY, **bad}}, random_weights=True, news=[1],
                        contexts=[8], repeats=1, long_new=(), progress=False,
                        quiet=float("inf"))


def test_no_local_weights_asks_for_random_weights(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--random-weights"):
        calibrate("0.5b-7b", out=str(tmp_path / "x.json"), progress=False)


def test_normalize_by_probe_removes_a_drift_the_probe_sees() -> None:
    """A machine twice as slow during the second half: points timed then are halved, exactly,
    when the probe saw the same slowdown; raw values are kept."""
    probe = [1.0] * 9 + [2.0] * 9
    pts = [{"sweep_times_s": [[3.0, 3.0], [6.0, 6.0]], "probe_at": [2, 15],
            **_medians([[3.0, 3.0], [6.0, 6.0]])}]
    normalize_by_probe(pts, probe, window=5)
    p = pts[0]
    assert p["probe_local_s"] == [1.0, 2.0]
    assert p["sweep_medians_s"] == pytest.approx([4.5, 4.5])  # both at the median speed, 1.5
    assert p["spread"] == pytest.approx(0.0) and p["raw_spread"] == pytest.approx(3 / 4.5)
    assert p["raw_median_s"] == pytest.approx(4.5) and p["median_s"] == pytest.approx(4.5)
    untouched = {"median_s": 1.0}
    normalize_by_probe([untouched], probe)
    assert untouched == {"median_s": 1.0}


def test_a_feature_drafter_config_is_timed_with_its_projection() -> None:
    from validator.calibrate import FeatureStep, build_random, draft_step
    from validator.drafter import SubsetHead, uses_features

    cfg = json.loads((CONFIG_DIR / "models" / "smollm2-135m-f1-h8k.json").read_text())
    plain = json.loads((CONFIG_DIR / "models" / "smollm2-135m-d1-h8k.json").read_text())
    tiny = {**cfg, "hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 8, "intermediate_size": 32, "vocab_size": 64, "head_tokens": 8}
    step = build_random(tiny, "float32", "cpu")
    assert isinstance(step, FeatureStep) and uses_features(step.drafter)
    assert isinstance(step.drafter.lm_head, SubsetHead)
    from transformers import DynamicCache

    cache = DynamicCache(config=step.config)
    signals, tokens = draft_step(step, torch.randint(64, (1, 5)), cache)
    assert cache.get_seq_length() == 5 and len(tokens) == 1 and 0 <= tokens[0] < 64
    n, c = np.array(1.0), np.array(300.0)
    extra = decode_cost(cfg, n, c, 2.0)[1] - decode_cost(plain, n, c, 2.0)[1]
    assert extra == pytest.approx(2 * 576 * 576)  # the projection's multiply-adds
