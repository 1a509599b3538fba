"""Fast drafter tests on a tiny random Llama (no downloads, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from validator.distill import kd_loss, lr_at  # noqa: E402
from validator.drafter import (  # noqa: E402
    HEAD_IDS,
    WEIGHTS,
    SubsetHead,
    build_drafter,
    frequency_ranked,
    head_token_ids,
    load_drafter,
    own_parameters,
    read_meta,
    save_drafter,
    set_subset_head,
    silence_layers,
)

VOCAB, TOPK, PAD = 128, 16, 0


@pytest.fixture()
def verifier() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=PAD, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def _examples(verifier: torch.nn.Module, n: int = 4) -> list[dict]:
    """Teacher examples like the data stage's: prompt + answer ids and the verifier's top-k."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        plen, alen = 5 + i, 7 + 2 * i
        ids = torch.randint(3, VOCAB, (plen + alen,), generator=g)
        with torch.no_grad():
            logits = verifier(ids[None]).logits[0, plen - 1:-1]
        v, idx = logits.topk(TOPK, -1)
        out.append({"ids": ids.to(torch.int32), "answer_start": plen,
                    "topk_idx": idx.to(torch.int32), "topk_logit": v.to(torch.float16)})
    return out


def test_drafter_shares_embedding_and_head(verifier: torch.nn.Module) -> None:
    d = build_drafter(verifier, 2)
    assert d.model.embed_tokens is verifier.model.embed_tokens
    assert d.lm_head is verifier.lm_head
    assert d.config.num_hidden_layers == 2 and len(d.model.layers) == 2
    assert d.model.layers[1].self_attn.layer_idx == 1
    for i in range(2):
        for a, b in zip(d.model.layers[i].parameters(), verifier.model.layers[i].parameters(),
                        strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # copied, not shared
    own = {id(p) for p in own_parameters(d)}
    assert id(verifier.lm_head.weight) not in own
    assert id(verifier.model.embed_tokens.weight) not in own


def test_full_depth_drafter_equals_verifier(verifier: torch.nn.Module) -> None:
    d = build_drafter(verifier, 4)
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(d(x).logits, verifier(x).logits)


def test_kv_cache_decoding_matches_full_forward(verifier: torch.nn.Module) -> None:
    d = build_drafter(verifier, 2)
    x = torch.randint(3, VOCAB, (1, 8))
    with torch.no_grad():
        full = d(x).logits[0, -1]
        out = d(x[:, :-1], use_cache=True)
        step = d(x[:, -1:], cache=out.cache, use_cache=True).logits[0, -1]
        gen = d.generate(x, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
    assert torch.allclose(full, step, atol=1e-5)
    assert gen.shape == (1, 11)


def test_save_load_roundtrip_exact(verifier: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors import safe_open

    d = build_drafter(verifier, 2, source_layers=[0, 3])
    with torch.no_grad():  # make the own weights differ from the verifier's
        for p in own_parameters(d):
            p.add_(0.01 * torch.randn_like(p))
    folder = save_drafter(d, tmp_path / "drafter", {"recipe": {"lr": 1.0}})
    x = torch.randint(0, VOCAB, (3, 10))
    d2 = load_drafter(folder, verifier)
    with torch.no_grad():
        assert torch.equal(d(x).logits, d2(x).logits)
    assert d2.lm_head is verifier.lm_head
    with safe_open(str(folder / WEIGHTS), "pt") as fh:
        keys = list(fh.keys())
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in keys)
    assert keys and not any("embed_tokens" in k or "lm_head" in k for k in keys)
    assert all(k.startswith(("model.layers.", "model.norm.")) for k in keys)
    meta = read_meta(folder)
    assert meta["n_layers"] == 2 and meta["source_layers"] == [0, 3]
    assert meta["recipe"] == {"lr": 1.0}
    assert meta["own_params"] == sum(p.numel() for p in own_parameters(d))


def test_one_distillation_step_lowers_kl(verifier: torch.nn.Module) -> None:
    d = build_drafter(verifier, 1)
    params = own_parameters(d)
    for p in params:
        p.requires_grad_(True)
    batch = _examples(verifier)
    opt = torch.optim.AdamW(params, lr=1e-2)
    before, _ = kd_loss(d, batch, PAD)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _ = kd_loss(d, batch, PAD)
    assert float(after) < float(before.detach())
    assert verifier.lm_head.weight.grad is None  # the shared head stays frozen


def test_kd_loss_zero_for_teacher_itself(verifier: torch.nn.Module) -> None:
    """A full-depth 'drafter' is the teacher: KL to its own full-vocab top-k is ~0."""
    d = build_drafter(verifier, 4)
    batch = _examples(verifier)
    for e in batch:  # widen to the whole vocabulary so the truncation is exact
        ids = e["ids"].long()[None]
        with torch.no_grad():
            lg = verifier(ids).logits[0, e["answer_start"] - 1:-1]
        v, idx = lg.topk(VOCAB, -1)
        e["topk_idx"], e["topk_logit"] = idx.to(torch.int32), v
    with torch.no_grad():
        kl, st = kd_loss(d, batch, PAD)
    assert abs(float(kl)) < 1e-4 and st["agree"] == 1.0


def test_subset_head_is_the_full_head_on_its_tokens_and_minus_inf_elsewhere(
        verifier: torch.nn.Module) -> None:
    ids = torch.tensor([2, 5, 6, 40, 127])
    d = set_subset_head(build_drafter(verifier, 2), verifier, ids)
    full = build_drafter(verifier, 2)
    x = torch.randint(0, VOCAB, (3, 9))
    with torch.no_grad():
        got, ref = d(x).logits, full(x).logits
    off = torch.ones(VOCAB, dtype=torch.bool)
    off[ids] = False
    assert torch.allclose(got[..., ids], ref[..., ids], atol=1e-6)
    assert bool(torch.isneginf(got[..., off]).all())
    q = torch.softmax(got, -1)  # the drafter's law: exactly zero off the subset, sums to one
    assert bool((q[..., off] == 0).all()) and torch.allclose(q.sum(-1), torch.ones(3, 9))
    from validator.signals import draft_signals

    assert bool(torch.isfinite(draft_signals(got, 4)).all())  # 0 log 0 = 0, no NaN
    assert torch.equal(head_token_ids(d), ids) and head_token_ids(full) is None


def test_subset_head_rejects_bad_ids(verifier: torch.nn.Module) -> None:
    for bad in ([], [3, 3], [5, 2], [-1, 4], [4, VOCAB]):
        with pytest.raises(ValueError):
            SubsetHead(verifier.lm_head, torch.tensor(bad, dtype=torch.long))


def test_frequency_ranked_keeps_the_most_frequent_ties_to_lower_ids_and_specials() -> None:
    counts = torch.tensor([0, 5, 9, 5, 0, 7, 0, 0])
    assert frequency_ranked(counts, 3).tolist() == [1, 2, 5]
    assert frequency_ranked(counts, 4).tolist() == [1, 2, 3, 5]
    assert frequency_ranked(counts, 6).tolist() == [0, 1, 2, 3, 4, 5]  # rest by lower id
    assert frequency_ranked(counts, 3, always=[7]).tolist() == [2, 5, 7]
    with pytest.raises(ValueError):
        frequency_ranked(counts, 9)


def test_subset_head_save_load_roundtrip(verifier: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors import safe_open

    ids = torch.arange(0, VOCAB, 3)
    d = set_subset_head(build_drafter(verifier, 1), verifier, ids)
    folder = save_drafter(d, tmp_path / "sub", {})
    d2 = load_drafter(folder, verifier)
    x = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        assert torch.equal(d(x).logits, d2(x).logits)
    assert torch.equal(head_token_ids(d2), ids)
    assert read_meta(folder)["head_tokens"] == len(ids)
    with safe_open(str(folder / WEIGHTS), "pt") as fh:
        assert fh.get_tensor(HEAD_IDS).tolist() == ids.tolist()
        assert not any(k.startswith("lm_head") for k in fh.keys())  # rows derived, not saved


def test_kd_loss_with_subset_head_scores_the_teacher_inside_the_subset(
        verifier: torch.nn.Module) -> None:
    """A full-depth drafter with a subset head is the teacher restricted to the subset: its KL
    to the teacher renormalised over the subset is ~0 and every step it is trained is finite."""
    ids = torch.arange(0, VOCAB, 2)
    d = set_subset_head(build_drafter(verifier, 4), verifier, ids)
    batch = _examples(verifier)
    for e in batch:
        with torch.no_grad():
            lg = verifier(e["ids"].long()[None]).logits[0, e["answer_start"] - 1:-1]
        v, idx = lg.topk(VOCAB, -1)
        e["topk_idx"], e["topk_logit"] = idx.to(torch.int32), v
    with torch.no_grad():
        kl, st = kd_loss(d, batch, PAD)
    assert abs(float(kl)) < 1e-4
    small = set_subset_head(build_drafter(verifier, 1), verifier, ids)
    for p in own_parameters(small):
        p.requires_grad_(True)
    loss, _ = kd_loss(small, _examples(verifier), PAD)  # top-16 teachers, half off the subset
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in own_parameters(small))


def test_a_grown_drafter_with_silenced_new_layers_computes_what_the_shallow_one_does(
        verifier: torch.nn.Module) -> None:
    shallow = build_drafter(verifier, 2)
    with torch.no_grad():
        for p in own_parameters(shallow):
            p.add_(0.05 * torch.randn_like(p))
    deep = build_drafter(verifier, 4)
    deep.load_state_dict({k: v for k, v in shallow.state_dict().items()
                          if k.startswith(("model.layers.", "model.norm."))}, strict=False)
    x = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        assert not torch.allclose(deep(x).logits, shallow(x).logits)
        silence_layers(deep, range(2, 4))
        assert torch.allclose(deep(x).logits, shallow(x).logits, atol=1e-5)
    for p in own_parameters(deep):  # and it trains: the new layers get gradients after a step
        p.requires_grad_(True)
    loss, _ = kd_loss(deep, _examples(verifier), PAD)
    loss.backward()
    assert deep.model.layers[3].self_attn.o_proj.weight.grad.abs().sum() > 0


def test_a_drafter_stored_on_top_of_another_reloads_exactly(verifier: torch.nn.Module,
                                                             tmp_path: Path) -> None:
    from safetensors import safe_open

    from validator.drafter import save_shrunk, weight_files

    shallow = build_drafter(verifier, 2)
    with torch.no_grad():
        for p in own_parameters(shallow):
            p.add_(0.05 * torch.randn_like(p))
    base = save_drafter(shallow, tmp_path / "base", {})
    shallow = load_drafter(base, verifier)
    deep = set_subset_head(build_drafter(verifier, 3), verifier, torch.arange(0, VOCAB, 2))
    deep.load_state_dict({k: v for k, v in shallow.state_dict().items()
                          if k.startswith("model.layers.")}, strict=False)
    with torch.no_grad():  # layers 0-1 frozen (shallow's), layer 2 and the norm trained
        deep.model.layers[2].mlp.down_proj.weight.mul_(1.5)
        deep.model.norm.weight.add_(0.1)
    grown = save_drafter(deep, tmp_path / "grown", {}, layers_from=(base, 2))
    with safe_open(str(grown / WEIGHTS), "pt") as fh:
        keys = set(fh.keys())
    assert not any(k.startswith(("model.layers.0.", "model.layers.1.")) for k in keys)
    assert "model.layers.2.mlp.down_proj.weight" in keys and HEAD_IDS in keys
    shrunk = save_shrunk(tmp_path / "shrunk", grown, torch.arange(0, VOCAB, 4), {})
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(load_drafter(grown, verifier)(x).logits, deep(x).logits)
        ref = set_subset_head(deep, verifier, torch.arange(0, VOCAB, 4))
        assert torch.equal(load_drafter(shrunk, verifier)(x).logits, ref(x).logits)
    assert weight_files(shrunk) == [base / WEIGHTS, grown / WEIGHTS, shrunk / WEIGHTS]


def test_lr_schedule() -> None:
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.55)


class _CharTok:
    """A tokenizer stand-in: one id per character (ids 3..), a chat template, <|im_end|> = 2."""

    pad_token_id = PAD

    def apply_chat_template(self, msgs: list, add_generation_prompt: bool,
                            tokenize: bool) -> str:
        return f"U:{msgs[0]['content']}\nA:"

    def __call__(self, text: str, add_special_tokens: bool = False) -> object:
        return type("Enc", (), {"input_ids": [3 + ord(c) % (VOCAB - 3) for c in text]})()

    def convert_tokens_to_ids(self, token: str) -> int:
        assert token == "<|im_end|>"
        return 2


def test_gold_answers_teacher_forced_match_one_sequence_forwards(
        verifier: torch.nn.Module) -> None:
    """Batched, padded teacher forcing gives each sequence's own unpadded top-k logits."""
    from validator.distill_data import clean_gold, teacher_forced_batch

    assert clean_gold("48/2 = <<48/2=24>>24 clips\n#### 72") == "48/2 = 24 clips\n#### 72"
    tok = _CharTok()
    qs, ans = ["short q", "a much longer question here"], ["12", "the answer is 7"]
    ex = teacher_forced_batch(verifier, tok, [0, 1], qs, ans, TOPK)
    for e, q, a in zip(ex, qs, ans, strict=True):
        prompt = tok(tok.apply_chat_template([{"content": q}], True, False)).input_ids
        assert e["ids"].tolist() == prompt + tok(a).input_ids + [2]
        assert e["answer_start"] == len(prompt) and e["finished"]
        with torch.no_grad():
            lg = verifier(e["ids"].long()[None]).logits[0, len(prompt) - 1:-1]
        v, idx = lg.topk(TOPK, -1)
        assert e["topk_idx"].shape == (len(a) + 1, TOPK)
        assert torch.equal(e["topk_idx"][:, 0], idx[:, 0].to(torch.int32))
        torch.testing.assert_close(e["topk_logit"].float(), v, atol=2e-2, rtol=1e-2)


def _with_features(verifier: torch.nn.Module, examples: list[dict]) -> list[dict]:
    """Attach the verifier's final-norm hidden states, as ``distill features`` stores them."""
    out = []
    for e in examples:
        with torch.no_grad():
            f = verifier.model(input_ids=e["ids"].long()[None]).last_hidden_state[0]
        out.append({**e, "feat": f.to(torch.float16)})
    return out


def test_a_feature_drafter_starts_as_its_plain_init_and_learns_from_features(
        verifier: torch.nn.Module) -> None:
    from validator.drafter import drafter_hidden, shift_features, uses_features

    plain, feat = build_drafter(verifier, 1), build_drafter(verifier, 1, features=True)
    assert uses_features(feat) and not uses_features(plain)
    x = torch.randint(3, VOCAB, (2, 9))
    f = torch.randn(2, 9, 32)
    with torch.no_grad():  # zero projection: exactly the plain drafter
        assert torch.equal(drafter_hidden(feat, x, shift_features(f)).last_hidden_state,
                           plain.model(input_ids=x).last_hidden_state)
        # position p reads f_{p-1}: changing the last feature changes nothing
        feat.model.feature_proj.weight.normal_()
        g = f.clone()
        g[:, -1] += 1.0
        a = drafter_hidden(feat, x, shift_features(f)).last_hidden_state
        b = drafter_hidden(feat, x, shift_features(g)).last_hidden_state
        assert torch.equal(a, b)
        g[:, 3] += 1.0  # ... and changing f_3 changes positions 4 on, not 0..3
        c = drafter_hidden(feat, x, shift_features(g)).last_hidden_state
        assert torch.equal(a[:, :4], c[:, :4]) and not torch.allclose(a[:, 4:], c[:, 4:])
    with pytest.raises(ValueError, match="hidden states"):
        drafter_hidden(feat, x, None)


def test_feature_drafter_distillation_step_and_save_load(verifier: torch.nn.Module,
                                                         tmp_path: Path) -> None:
    from validator.distill_eval import greedy_agreement

    d = build_drafter(verifier, 1, features=True)
    params = own_parameters(d)
    assert any(p is d.model.feature_proj.weight for p in params)
    for p in params:
        p.requires_grad_(True)
    batch = _with_features(verifier, _examples(verifier))
    opt = torch.optim.AdamW(params, lr=1e-3)
    before, st = kd_loss(d, batch, PAD, feature_weight=1.0)
    assert st["feat"] > 0
    opt.zero_grad()
    before.backward()
    assert float(d.model.feature_proj.weight.grad.abs().sum()) > 0
    opt.step()
    with torch.no_grad():
        after, _ = kd_loss(d, batch, PAD, feature_weight=1.0)
    assert float(after) < float(before.detach())
    folder = save_drafter(d, tmp_path / "feat", {})
    assert read_meta(folder)["features"] is True
    d2 = load_drafter(folder, verifier)
    assert torch.equal(d2.model.feature_proj.weight, d.model.feature_proj.weight)
    assert greedy_agreement(d2, batch, PAD) == greedy_agreement(d, batch, PAD)


def test_features_on_disk_match_the_examples(verifier: torch.nn.Module, tmp_path: Path) -> None:
    from validator import distill_data as dd

    shard = tmp_path / "data" / "shard_00000.pt"
    shard.parent.mkdir()
    examples = _examples(verifier, 5)
    dd.atomic_torch_save({"meta": {}, "examples": examples}, shard)
    with pytest.raises(FileNotFoundError, match="distill features"):
        dd.load_examples([shard], features=True)
    assert dd.write_features(verifier, shard, PAD, batch=2) == sum(len(e["ids"]) for e in examples)
    assert dd.feature_path(shard) == tmp_path / "data_features" / "shard_00000.pt"
    loaded = dd.load_examples([shard], features=True)
    for e, ref in zip(loaded, _with_features(verifier, examples), strict=True):
        assert torch.allclose(e["feat"].float(), ref["feat"].float(), atol=2e-3)


def test_agreement_of_a_feature_drafter_reads_the_verifiers_states_when_none_are_stored(
        verifier: torch.nn.Module) -> None:
    """distill eval's examples carry no features: with the verifier given, greedy_agreement
    computes its states (float32), as the decoder reads them. On answers that are the feature
    drafter's own greedy continuation, that gives agreement 1; zero features give less."""
    from validator.distill_eval import greedy_agreement
    from validator.drafter import drafter_hidden, shift_features

    d = build_drafter(verifier, 1, features=True)
    with torch.no_grad():
        d.model.feature_proj.weight.normal_(generator=torch.Generator().manual_seed(0))
        own = []
        for e in _examples(verifier):
            ids = e["ids"].long().clone()
            for p in range(int(e["answer_start"]) - 1, len(ids) - 1):  # greedy, one at a time
                f = shift_features(verifier.model(input_ids=ids[None, :p + 1]).last_hidden_state)
                h = drafter_hidden(d, ids[None, :p + 1], f).last_hidden_state[0, -1]
                ids[p + 1] = d.lm_head(h).argmax()
            own.append({**e, "ids": ids})
        got = greedy_agreement(d, own, PAD, verifier=verifier)
        zero = greedy_agreement(d, [{**e, "feat": torch.zeros((len(e["ids"]), 32))} for e in own],
                                PAD)
    assert got["agreement"] == 1.0
    assert zero["agreement"] < 1.0  # the features matter to this drafter
