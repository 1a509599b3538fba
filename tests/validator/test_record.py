"""Recorder tests on tiny random Llamas (no downloads, seconds): every column against a direct
computation, a live greedy draft loop, kill-and-resume, the simulator reading the result."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simulator.trace import META_KEY, read_trace  # noqa: E402
from validator.datasets import Prompt, gsm8k_correct  # noqa: E402
from validator.drafter import build_drafter  # noqa: E402
from validator.record import (  # noqa: E402
    Models,
    RecordConfig,
    RecordError,
    emitted,
    parts_dir,
    record,
    rule_accept,
)

VOCAB, EOS, PAD = 64, 2, 0
LENS = (5, 9, 7, 3, 6)
META = {"verifier": {"name": "tiny-v"}, "drafters": [{"name": "d-first"}, {"name": "d-last"}],
        "dataset": "tiny", "pair": "tiny"}


def decode(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only contend
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models() -> Models:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=PAD, bos_token_id=1,
                      eos_token_id=EOS, initializer_range=0.3)
    torch.manual_seed(0)
    verifier = LlamaForCausalLM(cfg).eval()
    verifier.requires_grad_(False)
    drafters = {"d-first": build_drafter(verifier, 1, [0]),
                "d-last": build_drafter(verifier, 1, [1])}
    return Models(verifier, drafters, (EOS,), PAD)


@pytest.fixture(scope="module")
def prompts() -> tuple[list[Prompt], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in LENS]
    return [Prompt(f"p{i}", f"prompt {i}", "tiny", "#### 3") for i in range(len(LENS))], ids


def _cfg(temperature: float, **kw) -> RecordConfig:
    return RecordConfig(**{"max_new_tokens": 16, "temperature": temperature, "k_max": 4,
                           "topk": 5, "batch": 2, "freerun_batch": 7, "seed": 3, **kw})


@pytest.fixture(scope="module")
def traces(models, prompts, tmp_path_factory) -> dict[float, Path]:
    out = {}
    for t in (0.0, 0.9):
        path = tmp_path_factory.mktemp("rec") / f"t{t}.parquet"
        record(models, *prompts, _cfg(t), path, META, decode=decode, score=gsm8k_correct)
        out[t] = path
    return out


def _direct(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)


def _tv_explicit(p: np.ndarray, q: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum q a and TV(pi, p) with pi written out term by term (DESIGN.md)."""
    acc = (q * a).sum(-1)
    resid = np.maximum(p - q * a, 0)
    r = resid / resid.sum(-1, keepdims=True)
    pi = q * a + (1 - acc)[:, None] * r
    return acc, 0.5 * np.abs(pi - p).sum(-1)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_every_column_equals_a_direct_computation(models, prompts, traces, temperature):
    tr = read_trace(traces[temperature])
    table = pq.read_table(traces[temperature]).to_pandas()
    t, cfg = temperature or 1.0, _cfg(temperature)
    assert tr.meta["decoding"] == ("greedy" if temperature == 0 else "sampled")
    for p, (prompt, ids) in enumerate(zip(*prompts, strict=True)):
        lo, hi = tr.offsets[p], tr.offsets[p + 1]
        y = tr.token_id[lo:hi].tolist()
        assert tr.prompt_tokens[p] == len(ids) and (y[-1] == EOS or len(y) == 16)
        zp = _direct(models.verifier, ids + y)[len(ids) - 1:-1]
        pp = _softmax(zp / t)
        np.testing.assert_allclose(tr.verifier_entropy[lo:hi], _entropy(pp), atol=1e-4)
        if temperature == 0:
            assert y == zp.argmax(-1).tolist()
        rows = table[table.prompt_id == prompt.prompt_id]
        assert rows.generated_text.iloc[0] == decode(y) and rows.prompt_text.iloc[0] == prompt.text
        for d, (name, drafter) in enumerate(models.drafters.items()):
            r = rows[rows.drafter == name].sort_values("position")
            zq = _direct(drafter, ids + y)[len(ids) - 1:-1]
            q = _softmax(zq / t)
            srt = np.sort(zq, -1)
            top_k = np.sort(np.log(q), -1)[:, -cfg.topk:]
            qk = _softmax(top_k)
            checks = {
                "draft_entropy": _entropy(q), "draft_top1_prob": q.max(-1),
                "draft_renyi2_entropy": -np.log((q * q).sum(-1)),
                "draft_topk_entropy": _entropy(qk), "draft_margin": srt[:, -1] - srt[:, -2],
                "verifier_margin": np.sort(zp, -1)[:, -1] - np.sort(zp, -1)[:, -2],
            }
            x = zq.argmax(-1)
            match = x == np.array(y)
            assert np.array_equal(tr.match[d, lo:hi], match)
            hp = _entropy(pp)
            thr = np.minimum(cfg.typical_epsilon, cfg.typical_delta * np.exp(-hp))
            if temperature == 0:
                px, qx = pp[np.arange(len(y)), x], q[np.arange(len(y)), x]
                a_sqrt = np.where(match, 1.0, np.minimum(1, np.sqrt(px / qx)))
                a_typ = np.where(match, 1.0, (px > thr).astype(float))
                checks.update(accept_prob=match.astype(float), accept_prob_sqrt=a_sqrt,
                              tv_sqrt=np.where(match, 0, a_sqrt), accept_prob_typical=a_typ,
                              tv_typical=np.where(match, 0, a_typ), tv_all=(~match) * 1.0)
            else:
                acc_s, tv_s = _tv_explicit(pp, q, np.minimum(1, np.sqrt(pp / q)))
                acc_t, tv_t = _tv_explicit(pp, q, (pp > thr[:, None]) * 1.0)
                checks.update(accept_prob=np.minimum(pp, q).sum(-1), accept_prob_sqrt=acc_s,
                              tv_sqrt=tv_s, accept_prob_typical=acc_t, tv_typical=tv_t,
                              tv_all=0.5 * np.abs(q - pp).sum(-1))
            for col, want in checks.items():
                np.testing.assert_allclose(r[col].to_numpy(float), want, atol=2e-4, err_msg=col)
            need = ~match if temperature == 0 else checks["accept_prob"] < 1 - 1e-6
            has = r.freerun_entropy.notna().to_numpy()
            assert np.array_equal(has[need], np.ones(need.sum(), bool))
            assert all(len(v) == cfg.k_max for v in r.freerun_entropy[has])


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_subset_head_free_runs_equal_those_over_the_full_row(models, prompts, tmp_path,
                                                            monkeypatch, temperature):
    """Free-runs of a subset-head drafter, computed over its m logits, equal those computed over
    the full row (-inf off the subset): signals to float rounding, drafts token for token."""
    from validator import record as rec
    from validator.drafter import set_subset_head

    sub = build_drafter(models.verifier, 1, [1])
    set_subset_head(sub, models.verifier, torch.arange(3, VOCAB, 2))
    many = Models(models.verifier, {"d-sub": sub}, (EOS,), PAD)
    meta = {**META, "drafters": [{"name": "d-sub"}]}
    cfg = _cfg(temperature)
    record(many, *prompts, cfg, tmp_path / "subset.parquet", meta, decode=decode)
    monkeypatch.setattr(rec, "head_token_ids", lambda model: None)  # the full-row path
    record(many, *prompts, cfg, tmp_path / "full.parquet", meta, decode=decode)
    a, b = (read_trace(tmp_path / f"{n}.parquet") for n in ("subset", "full"))
    assert np.array_equal(a.token_id, b.token_id) and np.array_equal(a.match, b.match)
    has = ~np.isnan(a.freerun["entropy"][0, :, 0])
    assert has.sum() >= 5 and np.array_equal(has, ~np.isnan(b.freerun["entropy"][0, :, 0]))
    for name in a.freerun:
        np.testing.assert_allclose(a.freerun[name], b.freerun[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_generation_keeps_the_verifier_states_a_teacher_forced_pass_computes(models, prompts):
    """generate(states=True): the final-norm states at every column of the teacher-forced layout
    (prompt columns from the prefill, answer columns from the steps), as one pass over prompt +
    answer computes them, to float rounding; tokens and logits as without states."""
    from validator.record import _layout, generate, positions, verifier_features

    cfg = _cfg(0.0)
    tokens, lengths, logits, states = generate(models.verifier, prompts[1], cfg, models, None,
                                               states=True)
    again = generate(models.verifier, prompts[1], cfg, models, None)
    assert again[3] is None and torch.equal(again[0], tokens) and torch.equal(again[2], logits)
    ids, mask = _layout(prompts[1], tokens, lengths, PAD, tokens.device)
    with torch.no_grad():
        want = models.verifier.model(input_ids=ids, attention_mask=mask,
                                     position_ids=positions(mask)).last_hidden_state
    assert states is not None and states.shape == want.shape
    live = mask.bool()
    torch.testing.assert_close(states[live], want[live], rtol=1e-4, atol=1e-5)
    feats = verifier_features(states, prompts[1], tokens, lengths, PAD)
    assert torch.equal(feats[:, 0], torch.zeros_like(feats[:, 0]))
    torch.testing.assert_close(feats[:, 1:], (states * mask[..., None])[:, :-1])


def test_standard_rule_emits_p_exactly():
    g = torch.Generator().manual_seed(0)
    z = torch.randn((50, 40), generator=g) * 3
    p, q = torch.softmax(z, -1), torch.softmax(z + torch.randn((50, 40), generator=g), -1)
    p[:5, :10] = 0  # zeros in p (and below in q) must not break the identity
    q[5:10, 10:20] = 0
    p, q = p.double(), q.double()
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    acc, pi = emitted(p, q, rule_accept("standard", p, q, torch.zeros(50), _cfg(1.0)))
    torch.testing.assert_close(pi, p, atol=1e-12, rtol=0)
    torch.testing.assert_close(acc, torch.minimum(p, q).sum(-1), atol=1e-12, rtol=0)
    _, pi_all = emitted(p, q, rule_accept("all", p, q, torch.zeros(50), _cfg(1.0)))
    torch.testing.assert_close(pi_all, q)


def test_live_greedy_draft_loop_reproduces_match_and_freerun(models, prompts, traces):
    """A drafter drafting step by step with its own KV cache from the true prefix."""
    tr = read_trace(traces[0.0])
    assert 0.1 < tr.match.mean() < 0.9  # both branches (match, free-run) are exercised
    for d, drafter in enumerate(models.drafters.values()):
        for p, ids in enumerate(prompts[1]):
            lo, hi = tr.offsets[p], tr.offsets[p + 1]
            y = tr.token_id[lo:hi].tolist()
            with torch.no_grad():
                out = drafter(torch.tensor([ids]), use_cache=True)
                for t in range(hi - lo):
                    logits = out.logits[0, -1]
                    x = int(logits.argmax())
                    assert (x == y[t]) == tr.match[d, lo + t]
                    ent = float(torch.special.entr(torch.softmax(logits, -1)).sum())
                    assert abs(ent - tr.signals["entropy"][d, lo + t]) < 1e-5
                    if x != y[t]:  # free-run on its own token from here, a copy of the cache
                        cache, tok = copy.deepcopy(out.cache), x
                        for j in range(tr.k_max):
                            o = drafter(torch.tensor([[tok]]), cache=cache,
                                        use_cache=True)
                            q = torch.softmax(o.logits[0, -1], -1)
                            want = tr.freerun["entropy"][d, lo + t, j]
                            assert abs(float(torch.special.entr(q).sum()) - want) < 1e-5
                            tok = int(q.argmax())
                    else:
                        assert np.isnan(tr.freerun["entropy"][d, lo + t]).all()
                    out = drafter(torch.tensor([[y[t]]]), cache=out.cache,
                                  use_cache=True)


def _same_rows(a: Path, b: Path) -> None:
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))
    ma, mb = (json.loads(t.schema.metadata[META_KEY]) for t in (ta, tb))
    ma.pop("recorded"), mb.pop("recorded")
    ga, gb = ma.pop("groups"), mb.pop("groups")  # when and where each group was recorded
    assert [g["group"] for g in ga] == [g["group"] for g in gb]
    assert {g["hardware"] for g in ga} == {g["hardware"] for g in gb} == {ma["hardware"]}
    assert ma == mb


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_kill_and_resume_equals_uninterrupted(models, prompts, traces, tmp_path, temperature):
    out = tmp_path / "k.parquet"

    def die(g: int) -> None:
        raise KeyboardInterrupt(f"killed after group {g}")

    with pytest.raises(KeyboardInterrupt):
        record(models, *prompts, _cfg(temperature), out, META, decode=decode,
               score=gsm8k_correct, on_group_done=die)
    assert not out.exists() and len(list(parts_dir(out).glob("group-*.parquet"))) == 1
    res = record(models, *prompts, _cfg(temperature), out, META, decode=decode,
                 score=gsm8k_correct)
    assert res.groups_done == 2 and not parts_dir(out).exists()
    _same_rows(out, traces[temperature])


def test_partial_trace_of_an_unfinished_recording_then_resume(models, prompts, traces,
                                                                tmp_path):
    from validator.record import assemble_partial

    out = tmp_path / "p.parquet"

    def die(g: int) -> None:
        if g == 1:
            raise KeyboardInterrupt("killed after group 1")

    with pytest.raises(KeyboardInterrupt):
        record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct,
               on_group_done=die)
    assert assemble_partial(out) == (4, 2)  # batch 2: groups 0 and 1
    part, whole = read_trace(out), read_trace(traces[0.0])
    assert part.meta["partial"]["prompts"] == 4 and part.prompt_ids == whole.prompt_ids[:4]
    n = int(part.offsets[-1])
    assert np.array_equal(part.token_id, whole.token_id[:n])
    assert np.array_equal(part.match, whole.match[:, :n])
    assert parts_dir(out).is_dir()  # kept: the same command resumes
    res = record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct)
    assert res.groups_done == 1 and not parts_dir(out).exists()
    _same_rows(out, traces[0.0])
    with pytest.raises(RecordError, match="no finished leading group"):
        assemble_partial(tmp_path / "none.parquet")


def test_sampling_does_not_depend_on_batch_composition(models, prompts, traces, tmp_path):
    out = tmp_path / "b3.parquet"
    record(models, *prompts, _cfg(0.9, batch=3), out, META, decode=decode, score=gsm8k_correct)
    a, b = read_trace(out), read_trace(traces[0.9])
    assert np.array_equal(a.token_id, b.token_id)
    np.testing.assert_allclose(a.accept["standard"], b.accept["standard"], atol=1e-5)


def test_resume_refuses_other_arguments_and_keeps_files(models, prompts, traces, tmp_path):
    out = tmp_path / "r.parquet"
    with pytest.raises(KeyboardInterrupt):
        record(models, *prompts, _cfg(0.0), out, META, decode=decode,
               on_group_done=lambda g: (_ for _ in ()).throw(KeyboardInterrupt()))
    part = next(parts_dir(out).glob("group-*.parquet"))
    before = part.read_bytes()
    with pytest.raises(RecordError, match="seed: 3 there vs 4 now"):
        record(models, *prompts, _cfg(0.0, seed=4), out, META, decode=decode)
    assert part.read_bytes() == before
    done = tmp_path / "done.parquet"
    done.write_bytes(traces[0.0].read_bytes())
    with pytest.raises(RecordError, match="--overwrite"):
        record(models, *prompts, _cfg(0.0, seed=4), done, META, decode=decode)
    assert done.read_bytes() == traces[0.0].read_bytes()
    res = record(models, *prompts, _cfg(0.0), done, META, decode=decode, score=gsm8k_correct)
    assert res.groups_done == 0 and done.read_bytes() == traces[0.0].read_bytes()


def test_simulator_reads_and_runs_the_trace(traces):
    from typer.testing import CliRunner

    from simulator.cli import app

    for path in traces.values():
        tr = read_trace(path)
        assert tr.drafters == ("d-first", "d-last") and tr.k_max == 4
        assert set(tr.accept) == {"standard", "sqrt", "typical", "all", "none"}
        assert tr.meta["synthetic"] is False and tr.meta["relaxed_rules"]["typical"]["delta"] == 0.3
        assert set(tr.prompt_columns) >= {"category", "correct", "prompt_text", "generated_text"}
        for policy in (["--policy", "stop_absolute", "--param", "theta=1", "--param", "k=4"],
                       ["--policy", "relaxed", "--param", "tau=2", "--param", "k=3"]):
            res = CliRunner().invoke(app, ["run", "--trace", str(path), *policy, "--json",
                                           "--latency", "const:draft=0.1,verify=1"])
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout)["tokens"] == tr.n_positions


@pytest.mark.parametrize(("generated", "reference", "ok"), [
    ("so she makes 18 dollars", "work\n#### 18", True),
    ("The answer is 1,234.00.", "#### 1234", True),
    ("It is 18, not 17", "#### 18", False),
    ("no number here", "#### 5", False),
    ("-3 degrees", "x\n#### -3", True),
])
def test_gsm8k_scoring_rule(generated, reference, ok):
    assert gsm8k_correct(generated, reference) is ok


def test_roomy_cache_decodes_bit_identically_to_dynamic_cache(models):
    """The free-runs' preallocated cache: same logits, to the bit, as transformers' own, on a
    masked, left-padded batch sliced from a longer cache (as freerun builds it)."""
    from transformers.cache_utils import Cache, DynamicCache

    from validator.record import RoomyLayer

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding
    with torch.no_grad():
        full = models.verifier(input_ids=ids, attention_mask=mask, use_cache=True).cache
        cols, k = 31, 6
        data = [(layer.keys[:, :, :cols], layer.values[:, :, :cols]) for layer in full.layers]
        caches = [DynamicCache(ddp_cache_data=data),
                  Cache(layers=[RoomyLayer(kk, vv, k) for kk, vv in data])]
        logits = []
        for cache in caches:
            m, tok, out = mask[:, :cols].clone(), ids[:, cols], []
            for _ in range(k):
                m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
                pos = m.sum(-1, keepdim=True) - 1
                o = models.verifier(input_ids=tok[:, None], attention_mask=m, position_ids=pos,
                                    cache=cache, use_cache=True)
                out.append(o.logits[:, -1])
                tok = o.logits[:, -1].argmax(-1)
            logits.append(torch.stack(out))
        assert torch.equal(logits[0], logits[1])
        with pytest.raises(RuntimeError, match="overflow"):
            caches[1].layers[0].update(data[0][0][:, :, :1], data[0][1][:, :, :1])


def test_resumed_on_another_machine_names_both(models, prompts, traces, tmp_path, monkeypatch):
    """Groups keep where and when they were recorded; the trace names every machine."""
    import validator.record as rec

    out = tmp_path / "m.parquet"

    def die(g: int) -> None:
        raise KeyboardInterrupt(f"killed after group {g}")

    monkeypatch.setattr(rec, "hardware", lambda device: "machine A")
    with pytest.raises(KeyboardInterrupt):
        record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct,
               on_group_done=die)
    monkeypatch.setattr(rec, "hardware", lambda device: "machine B")
    record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct)
    meta = read_trace(out).meta
    assert meta["hardware"] == "machine A; machine B"
    assert [(g["group"], g["hardware"]) for g in meta["groups"]] == [
        (0, "machine A"), (1, "machine B"), (2, "machine B")]
    assert all(g["recorded"] for g in meta["groups"])
    _same_rows_values(out, traces[0.0])


def _same_rows_values(a: Path, b: Path) -> None:
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.replace_schema_metadata(None).equals(tb.replace_schema_metadata(None))


def test_parallel_recorders_share_groups_by_claims(models, prompts, traces, tmp_path):
    """A group claimed by a live recorder is left to it; the last recorder assembles; a claim
    of a dead process is taken over. The trace equals an uninterrupted run's."""
    import os
    import socket
    import subprocess
    import sys

    from validator.record import claim, release

    out = tmp_path / "c.parquet"
    held = parts_dir(out) / "group-00001.parquet"
    assert claim(held)  # "another recorder" (this process) is recording group 1
    res = record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct)
    assert res.pending == [1] and res.groups_done == 2 and not out.exists()
    assert not claim(held)  # still held by a live process
    release(held)
    res = record(models, *prompts, _cfg(0.0), out, META, decode=decode, score=gsm8k_correct)
    assert res.pending == [] and res.groups_done == 1 and not parts_dir(out).exists()
    _same_rows(out, traces[0.0])

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    stale = tmp_path / "s.parquet.parts" / "group-00000.parquet"
    stale.parent.mkdir()
    (stale.parent / "group-00000.claim").write_text(f"{socket.gethostname()} {dead}")
    assert claim(stale)  # its owner died: taken over
    assert (stale.parent / "group-00000.claim").read_text().split()[1] == str(os.getpid())
    (stale.parent / "group-00000.claim").write_text(f"other-host {dead}")
    assert not claim(stale)  # a claim from another machine is never taken over
