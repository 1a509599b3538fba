"""The real speculative decoder on tiny random Llamas (float64, seconds): greedy output identity
for every lossless policy, KV-cache logits against full recomputes, and the link the project
rests on: per-round decisions equal the simulator's reference replay of a recorded trace."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from simulator.engines import run_reference  # noqa: E402
from simulator.errors import PolicyError  # noqa: E402
from simulator.latency import Const  # noqa: E402
from simulator.policies import REGISTRY, make, names  # noqa: E402
from simulator.trace import Trace, read_trace, write_trace  # noqa: E402
from validator.decoder import STOPS, speculative_generate  # noqa: E402
from validator.signals import SIGNAL_NAMES, draft_signals, entropy  # noqa: E402

VOCAB, K_MAX, TOPK = 32, 8, 10
PROMPTS = ([1, 5, 7, 9], [3, 3, 20, 11, 2, 17], [30])
LENGTHS = (40, 14, 5)  # tokens generated per prompt
LOSSLESS = [n for n in names() if not REGISTRY[n].lossy and not REGISTRY[n].oracle]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models are all overhead: one thread is several times faster on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(seed: int, vocab: int = VOCAB, init: float = 0.5, layers: int = 1,
               dtype: Any = None) -> torch.nn.Module:
    """A random Llama; init 0.5 makes its next-token entropies spread over ~0.1-2.7 nats."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, initializer_range=init)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval().to(dtype or torch.float64).requires_grad_(False)


def perturbed(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    """A different model near ``model``: every weight plus scale * its std * N(0, 1) noise."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in out.parameters():
            noise = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.dtype)
            w.add_(noise * scale * w.std().clamp_min(1e-3))
    return out


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """Verifier and three drafters that agree with it on some tokens, each differently often."""
    v = tiny_llama(0)
    return v, [perturbed(v, 10 + i, s) for i, s in enumerate((0.05, 0.1, 0.25))]


def plain_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by full recompute, no cache: the reference output."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def policy_params(name: str) -> dict[str, Any]:
    """Parameters exercising each policy on the tiny pair (caps <= K_MAX, thresholds inside
    the entropy range, several drafters for routers)."""
    return {"hf_confidence": {"k": 8}, "hf_confidence_static": {"k": 8},
            "hf_heuristic": {"k0": 2, "k": 8, "threshold": 0.3},
            "router": {"thresholds": "1.0,2.0"}, "min_entropy": {"k": 6, "theta": 1.5},
            "stop_absolute": {"theta": 1.2, "k": 6}}.get(name, {})


# ---- a greedy trace recorded by hand (teacher-forced drafters, batched free-runs) ----

COLUMN = {"entropy": "entropy", "top1_prob": "top1_prob", "renyi2": "renyi2_entropy",
          "topk": "topk_entropy"}


def _last_logits(model: torch.nn.Module, seqs: list[list[int]]) -> torch.Tensor:
    """(B, V) next-token logits of each sequence, one left-padded batch, no cache."""
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask,
                     position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits[:, -1]


def _freeruns(model: torch.nn.Module, prefixes: list[list[int]]) -> torch.Tensor:
    """(B, K_MAX, 4) signals after feeding 1..K_MAX of the drafter's own argmax tokens."""
    seqs, rows = [list(p) for p in prefixes], []
    for _ in range(K_MAX + 1):
        logits = _last_logits(model, seqs)
        rows.append(draft_signals(logits, TOPK))
        for s, x in zip(seqs, logits.argmax(-1).tolist(), strict=True):
            s.append(x)
    return torch.stack(rows[1:], 1)


def record_by_hand(verifier: torch.nn.Module, drafters: list[torch.nn.Module],
                   path: Path) -> Any:
    """A greedy trace of PROMPTS (LENGTHS tokens), written and read back through the schema."""
    cols: dict[str, list] = {}

    def add(**values: Any) -> None:
        for key, v in values.items():
            cols.setdefault(key, []).append(v)

    outputs = [plain_greedy(verifier, prompt, n) for prompt, n in zip(PROMPTS, LENGTHS,
                                                                       strict=True)]
    for d, drafter in enumerate(drafters):
        for p, (prompt, n, y) in enumerate(zip(PROMPTS, LENGTHS, outputs, strict=True)):
            seq = torch.tensor([prompt + y])
            with torch.no_grad():
                h_v = entropy(verifier(seq).logits[0, len(prompt) - 1:-1])
                logits = drafter(seq).logits[0, len(prompt) - 1:-1]
            sig = draft_signals(logits, TOPK)
            match = (logits.argmax(-1) == torch.tensor(y)).tolist()
            miss = [t for t in range(n) if not match[t]]
            fr = dict(zip(miss, _freeruns(drafter, [prompt + y[:t] for t in miss]).tolist(),
                          strict=True)) if miss else {}
            for t in range(n):
                add(prompt_id=f"p{p}", position=t, drafter=f"d{d}", token_id=y[t],
                    prompt_tokens=len(prompt), draft_match=match[t], accept_prob=float(match[t]),
                    verifier_entropy=float(h_v[t]))
                for i, s in enumerate(SIGNAL_NAMES):
                    add(**{f"draft_{COLUMN[s]}": float(sig[t, i]),
                           f"freerun_{COLUMN[s]}": [r[i] for r in fr[t]] if t in fr else None})
    meta = {"verifier": "tiny", "drafters": [f"d{d}" for d in range(len(drafters))],
            "dataset": "tiny", "decoding": "greedy", "k_max": K_MAX, "hardware": "cpu",
            "recorded": "test", "synthetic": False, "topk": TOPK}
    write_trace(path, cols, meta)
    return read_trace(path)


@pytest.fixture(scope="module")
def trace(pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    verifier, drafters = pair
    return record_by_hand(verifier, drafters, tmp_path_factory.mktemp("trace") / "tiny.parquet")


def _between(values: np.ndarray, q: float) -> float:
    """A threshold strictly between two adjacent distinct values near quantile q (no ties with
    the float32-rounded trace values)."""
    u = np.unique(values)
    i = min(max(int(q * (u.size - 1)), 0), u.size - 2)
    return float((u[i] + u[i + 1]) / 2)


CASES = [(n, policy_params(n)) for n in LOSSLESS] + [
    ("stop_absolute", {"quantile": 0.3}), ("stop_absolute", {"quantile": 0.7, "k": 8}),
    ("stop_absolute", {"quantile": 0.5, "entropy": "renyi2"}),
    ("stop_absolute", {"quantile": 0.5, "entropy": "topk"}),
    ("router", {"quantile": (0.33, 0.66)}), ("fixed", {"k": 0}), ("fixed", {"k": 1})]


def _case_policy(name: str, params: dict[str, Any], trace: Any) -> Any:
    """Thresholds given as quantiles of the trace's own values become numbers between them."""
    params = dict(params)
    q = params.pop("quantile", None)
    if q is not None and name == "router":
        params["thresholds"] = ",".join(str(_between(trace.verifier_entropy, x)) for x in q)
    elif q is not None:
        params["theta"] = _between(trace.signals[params.get("entropy", "entropy")], q)
    return make(name, params)


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                         enumerate(CASES)])
def test_greedy_output_is_the_verifiers_and_rounds_are_the_replays(
        pair: Any, trace: Any, name: str, params: dict[str, Any]) -> None:
    """Lossless policy, greedy: (1) the output is token-identical to the verifier's own greedy
    decoding; (2) every round's (start, drafter, drafted, accepted) equals the simulator's
    reference replay of the trace recorded from the same pair: the replay is exact."""
    verifier, drafters = pair
    policy = _case_policy(name, params, trace)
    sim = run_reference(trace, policy, Const(draft=1e-3, verify=5e-3))
    used = set()
    for p, (prompt, n) in enumerate(zip(PROMPTS, LENGTHS, strict=True)):
        out = speculative_generate(verifier, drafters, torch.tensor(prompt), policy, n,
                                   topk=TOPK)
        y = trace.token_id[trace.offsets[p]:trace.offsets[p + 1]].tolist()  # plain greedy's
        assert list(out.tokens) == y
        got = [(r.start, r.drafter, r.drafted, r.accepted) for r in out.rounds]
        mine = sim.prompt == p
        assert got == list(zip(sim.start[mine].tolist(), sim.drafter[mine].tolist(),
                               sim.drafted[mine].tolist(), sim.accepted[mine].tolist(),
                               strict=True))
        # the log is consistent
        assert sum(r.emitted for r in out.rounds) == n and out.finish == "length"
        assert out.verifier_calls == len(out.rounds)
        probes = len(drafters) if policy.probes_all_drafters else 0
        assert sum(out.drafter_calls) == sum(probes + r.drafted - (probes > 0 and r.drafted > 0)
                                             for r in out.rounds)
        for r in out.rounds:
            assert 0 <= r.accepted <= r.drafted <= r.cap <= n - r.start - 1
            assert r.stop in STOPS and (r.stop == "policy" or r.drafted == r.cap)
            assert r.rules == ("standard",) * r.drafted
            assert all(len(r.signals[s]) == r.drafted for s in SIGNAL_NAMES)
        used |= {r.drafter for r in out.rounds if r.drafted}
    if name in ("router", "min_entropy"):
        assert len(used) >= 2


def test_greedy_output_is_the_verifiers_with_a_subset_head_drafter(pair: Any) -> None:
    """Drafts from a head over a third of the vocabulary: still the verifier's greedy output."""
    from validator.drafter import set_subset_head

    verifier, drafters = pair
    d = copy.deepcopy(drafters[0])
    set_subset_head(d, d, torch.arange(0, VOCAB, 3))
    prompt = [3, 14, 15, 9]
    out = speculative_generate(verifier, [d], torch.tensor(prompt), make("fixed", {"k": 4}), 24)
    assert list(out.tokens) == plain_greedy(verifier, prompt, 24)
    assert sum(r.drafted for r in out.rounds) > 0 and any(r.accepted for r in out.rounds)


def test_eos_ends_generation_and_drops_tokens_after_it(pair: Any) -> None:
    verifier, drafters = pair
    ref = plain_greedy(verifier, PROMPTS[0], 30)
    eos = ref[20]
    cut = ref.index(eos)
    out = speculative_generate(verifier, drafters[:1], torch.tensor(PROMPTS[0]),
                               make("fixed", {"k": 6}), 30, eos_token_id=[eos, VOCAB + 5])
    assert list(out.tokens) == ref[:cut + 1] and out.finish == "eos" and out.rounds[-1].eos


def test_greedy_rules_all_and_none(pair: Any) -> None:
    """ESAR at tau=inf: the drafter writes everything but the verifier's last token; at tau=0
    every first draft is handed to the verifier (rule none): plain verifier greedy."""
    verifier, drafters = pair
    prompt, n = PROMPTS[1], 12
    out = speculative_generate(verifier, drafters[2:], torch.tensor(prompt),
                               make("esar", {"tau": math.inf, "max_run": 64}), n)
    own = plain_greedy(drafters[2], prompt, n - 1)
    assert list(out.tokens) == own + plain_greedy(verifier, prompt + own, 1)
    assert [(r.drafted, r.accepted) for r in out.rounds] == [(n - 1, n - 1)]
    assert out.rounds[0].rules == ("all",) * (n - 1) and out.rounds[0].stop == "end"
    out = speculative_generate(verifier, drafters[2:], torch.tensor(prompt),
                               make("esar", {"tau": 0.0}), n)
    assert list(out.tokens) == plain_greedy(verifier, prompt, n)
    assert all(r.rules in (("none",), ()) and r.accepted == 0 for r in out.rounds)


def test_policy_errors(pair: Any) -> None:
    verifier, drafters = pair
    with pytest.raises(PolicyError, match="only in the simulator"):
        speculative_generate(verifier, drafters, torch.tensor([1]), make("oracle"), 5)
    with pytest.raises(PolicyError, match="needs 3 drafters"):
        speculative_generate(verifier, drafters[:2], torch.tensor([1]),
                             make("router", {"thresholds": "1,2"}), 5)


class Spy(torch.nn.Module):
    """Wraps a model; logs (clock, cached length, fed ids, returned logits) of every call."""

    def __init__(self, inner: torch.nn.Module, clock: list[int]) -> None:
        super().__init__()
        self.inner, self.clock, self.calls = inner, clock, []

    def forward(self, input_ids: torch.Tensor, cache: Any, **kw: Any) -> Any:
        past = cache.get_seq_length()
        out = self.inner(input_ids=input_ids, cache=cache, **kw)
        self.clock.append(len(self.clock))
        self.calls.append((self.clock[-1], past, input_ids[0].clone(), out.logits[0].clone()))
        return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_logits_equal_full_recompute(temperature: float) -> None:
    """float32, 1e-4: every call's logits equal a no-cache pass over the tokens it should see;
    the verifier's cache always holds a prefix of the final output, a drafter's the output up
    to its round's start (then its own drafts): rejected tokens were cropped away."""
    v = tiny_llama(0, layers=2, dtype=torch.float32)
    clock: list[int] = []
    spies = [Spy(m, clock) for m in (v, perturbed(v, 1, 0.1), perturbed(v, 2, 0.2))]
    prompt = torch.tensor(PROMPTS[1])
    out = speculative_generate(spies[0], spies[1:], prompt, make("min_entropy", {"k": 5}), 30,
                               temperature=temperature,
                               generator=torch.Generator().manual_seed(3))
    final = prompt.tolist() + list(out.tokens)
    v_clock = [c for c, *_ in spies[0].calls]
    round_start = [len(PROMPTS[1]) + r.start for r in out.rounds]
    for i, spy in enumerate(spies):
        mirror: list[int] = []  # what this model's cache should hold
        for c, past, ids, logits in spy.calls:
            rnd = int(np.searchsorted(v_clock, c))  # the round this call belongs to
            keep = past if i == 0 else min(past, round_start[rnd])
            assert mirror[:keep] == final[:keep] and len(mirror) >= past
            mirror = mirror[:past] + ids.tolist()
            with torch.no_grad():
                full = spy.inner(torch.tensor([mirror])).logits[0, -logits.shape[0]:]
            torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)
    assert len(spies[0].calls) == len(out.rounds) and sum(out.drafter_calls) == \
        sum(len(s.calls) for s in spies[1:])




def record_tiny(verifier: torch.nn.Module, drafters: list[torch.nn.Module],
                tmp_path: Path) -> Trace:
    """The trace validator.record writes for PROMPTS on this tiny pair (24 new tokens, greedy)."""
    record = pytest.importorskip("validator.record")
    from validator.datasets import Prompt

    names_ = [f"d{i}" for i in range(len(drafters))]
    models = record.Models(verifier, dict(zip(names_, drafters, strict=True)), (VOCAB - 1,), 0)
    cfg = record.RecordConfig(max_new_tokens=24, k_max=K_MAX, topk=TOPK, batch=3)
    path = tmp_path / "rec.parquet"
    record.record(models, [Prompt(f"p{i}", "", "tiny", "") for i in range(len(PROMPTS))],
                  [list(p) for p in PROMPTS], cfg, path,
                  {"verifier": {"name": "tiny"}, "drafters": [{"name": n} for n in names_],
                   "dataset": "tiny", "pair": "tiny"}, decode=str)
    return read_trace(path)


def test_rounds_equal_the_replay_of_a_trace_from_validator_record(pair: Any,
                                                                  tmp_path: Path) -> None:
    """The same link through the project's recorder: a trace written by validator.record
    (batched generation, teacher forcing, free-runs) replays to the decoder's rounds, with
    max_new_tokens = the recorded length of each prompt."""
    verifier, drafters = pair
    trace = record_tiny(verifier, drafters, tmp_path)
    for name, params in [("fixed", {"k": 3}), ("stop_absolute", {"quantile": 0.5}),
                         ("min_entropy", {"k": 6, "theta": 1.5}),
                         ("hf_confidence", {"k": 8}), ("router", {"quantile": (0.33, 0.66)})]:
        decode_as_replayed(verifier, drafters, trace, _case_policy(name, params, trace))


def decode_as_replayed(verifier: torch.nn.Module, drafters: list[torch.nn.Module],
                       trace: Trace, policy: Any) -> list[list[Any]]:
    """Decode each of PROMPTS for its recorded length and assert that the output is the
    trace's tokens and the rounds (drafter, drafted, accepted) are the reference replay's;
    the decoder's rounds, per prompt."""
    sim = run_reference(trace, policy, Const(draft=1e-3, verify=5e-3))
    logs = []
    for p, prompt in enumerate(PROMPTS):
        y = trace.token_id[trace.offsets[p]:trace.offsets[p + 1]].tolist()
        out = speculative_generate(verifier, drafters, torch.tensor(prompt), policy, len(y),
                                   topk=TOPK)
        assert list(out.tokens) == y
        mine = sim.prompt == p
        assert [(r.drafter, r.drafted, r.accepted) for r in out.rounds] == list(zip(
            sim.drafter[mine].tolist(), sim.drafted[mine].tolist(),
            sim.accepted[mine].tolist(), strict=True)), (policy.name, p)
        logs.append(list(out.rounds))
    return logs


def feature_drafter(verifier: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    """A one-layer feature drafter on ``verifier`` (shared embedding and head): the verifier's
    first layer perturbed, and a random projection of the verifier's hidden states."""
    from validator.drafter import build_drafter

    d = build_drafter(verifier, 1, features=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in d.model.layers.parameters():
            w.add_(torch.randn(w.shape, generator=g, dtype=w.dtype) * scale * w.std())
        d.model.feature_proj.weight.copy_(
            torch.randn(d.model.feature_proj.weight.shape, generator=g, dtype=torch.float64))
    return d.requires_grad_(False)


def test_feature_drafters_replay_exactly_as_chain_drafters(pair: Any, tmp_path: Path) -> None:
    """Feature drafters (they read the verifier's hidden states, and their own past the
    verified prefix): greedy output is the verifier's, and every round equals the replay of a
    trace recorded by validator.record, whose rows hold each feature drafter's continuation
    from every position (chain drafters): a prefill round first, then drafts that depend on
    where their round began."""
    verifier, plain = pair
    drafters = [feature_drafter(verifier, 1, 0.3), plain[1], feature_drafter(verifier, 2, 0.6)]
    trace = record_tiny(verifier, drafters, tmp_path)
    accepted = 0
    for name, params in [("fixed", {"k": 1}), ("fixed", {"k": 4}),
                         ("stop_absolute", {"quantile": 0.5}),
                         ("min_entropy", {"k": 6, "theta": 1.5}),
                         ("router", {"quantile": (0.33, 0.66)})]:
        for rounds in decode_as_replayed(verifier, drafters, trace,
                                         _case_policy(name, params, trace)):
            assert rounds[0].stop == "prefill" and rounds[0].drafted == 0
            accepted += sum(r.accepted for r in rounds if r.drafter != 1)
    for p, prompt in enumerate(PROMPTS):
        y = trace.token_id[trace.offsets[p]:trace.offsets[p + 1]].tolist()
        assert y == plain_greedy(verifier, list(prompt), len(y))
    assert accepted > 0
    # the drafter agrees on some tokens, not all: both branches of the replay are exercised
    assert 0 < float(np.mean(trace.match[0])) < 1
    assert trace.chain.tolist() == [True, False, True]
    # every engine prices the chain rounds alike (cache kept only up to the round's start)
    from simulator.engines import run_events, run_fast

    lat = Const(draft=1e-3, verify=5e-3)
    for name, params in [("fixed", {"k": 4}), ("stop_absolute", {"quantile": 0.5}),
                         ("min_entropy", {"k": 6, "theta": 1.5})]:
        policy = _case_policy(name, params, trace)
        ref = run_reference(trace, policy, lat)
        for other in (run_fast(trace, policy, lat), run_events(trace, policy, lat).rounds):
            for f in ("start", "drafter", "drafted", "accepted", "probe", "draft_ns",
                      "verify_ns"):
                assert np.array_equal(getattr(ref, f), getattr(other, f)), (name, f)
