"""Distribution correctness of the real decoder, computed EXACTLY, not estimated.

``Enumerate`` replaces the decoder's random source and re-runs it along every branch of its
random choices (draft draws, the first rejection, residual and bonus draws), multiplying the
branch probabilities: the output law of speculative sampling as a table, to float rounding.
Then: standard rule -> the verifier's own law (its chain of next-token softmaxes, computed by
full recompute); relaxed rules -> the analytic pi of DESIGN.md, pi = q a + (1 - sum q a) r.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
hyp = pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.policies import RULE_INDEX, make  # noqa: E402
from simulator.trace import RULE_NAMES  # noqa: E402
from tests.validator.test_decoder import perturbed, tiny_llama  # noqa: E402
from validator.decoder import speculative_generate, verify  # noqa: E402
from validator.signals import (  # noqa: E402
    TYPICAL_DELTA,
    TYPICAL_EPSILON,
    acceptance,
    acceptance_at,
    draft_signals,
    emitted,
)

TOL = 1e-9  # float64 throughout


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Enumerate:
    """A ``Draws`` that follows a given prefix of choices, then the first possible one, and
    remembers the untaken alternatives; ``law`` runs a function along every branch."""

    def __init__(self, prefix: list[int]) -> None:
        self.prefix, self.path, self.prob = prefix, [], 1.0
        self.fresh: list[tuple[int, list[int]]] = []  # (depth, alternatives) of new choices

    def _choose(self, weights: list[float]) -> int:
        options = [i for i, w in enumerate(weights) if w > 0]
        depth = len(self.path)
        if depth < len(self.prefix):
            c = self.prefix[depth]
        else:
            c = options[0]
            self.fresh.append((depth, options[1:]))
        self.path.append(c)
        self.prob *= weights[c]
        return c

    def categorical(self, probs: torch.Tensor) -> int:
        return self._choose(probs.double().tolist())

    def first_rejection(self, accept: torch.Tensor) -> int:
        a = accept.double().tolist()
        kept = np.concatenate([[1.0], np.cumprod(a)])  # P(first i drafts accepted)
        return self._choose([kept[i] * (1 - a[i]) for i in range(len(a))] + [kept[-1]])

    @staticmethod
    def law(run: Callable[[Enumerate], Any]) -> dict[Any, float]:
        """{outcome: exact probability} of ``run(draws)`` over all branches."""
        out: dict[Any, float] = defaultdict(float)
        stack: list[list[int]] = [[]]
        while stack:
            e = Enumerate(stack.pop())
            result = run(e)
            out[result] += e.prob
            stack += [e.path[:depth] + [alt] for depth, alts in e.fresh for alt in alts]
        assert abs(sum(out.values()) - 1) < TOL
        return dict(out)


# ---- one verification step, on hypothesis-drawn distributions ----

def _dist(logits: list[float], mask: list[bool]) -> np.ndarray:
    x = np.where(mask, np.asarray(logits), -np.inf)
    e = np.exp(x - x.max())
    return e / e.sum()


@st.composite
def distributions(draw: Any, vocab: int | None = None) -> np.ndarray:
    """A distribution over 2-6 tokens from logits in [-4, 4], some tokens possibly at 0."""
    v = vocab or draw(st.integers(2, 6))
    logits = draw(st.lists(st.floats(-4, 4), min_size=v, max_size=v))
    mask = draw(st.lists(st.booleans(), min_size=v, max_size=v).filter(any))
    return _dist(logits, mask)


def analytic_pi(p: np.ndarray, q: np.ndarray, rule: str) -> np.ndarray:
    """DESIGN.md's pi = q a + (1 - sum q a) r, r = max(p - q a, 0) normalised (else p)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(q > 0, p / q, 1.0)
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))
    a = {"standard": np.minimum(1, ratio), "sqrt": np.minimum(1, np.sqrt(ratio)),
         "typical": (p > min(TYPICAL_EPSILON, TYPICAL_DELTA * math.exp(-h))).astype(float),
         "all": np.ones_like(p), "none": np.zeros_like(p)}[rule]
    r = np.maximum(p - q * a, 0)
    r = r / r.sum() if r.sum() > 0 else p
    return q * a + (1 - np.sum(q * a)) * r


def _first_token_law(p: np.ndarray, q: np.ndarray, rule: str, greedy: bool) -> np.ndarray:
    """Exact law of the token a one-draft verification emits first, by enumeration."""
    pt, qt = torch.tensor(p), torch.tensor(q)

    def run(dr: Enumerate) -> int:
        x = int(qt.argmax()) if greedy else dr.categorical(qt)
        a, tok = verify(torch.stack([pt, pt]), qt[None], torch.tensor([x]),
                        torch.tensor([RULE_INDEX[rule]]), greedy, dr)
        return x if a == 1 else tok

    out = np.zeros_like(p)
    for tok, prob in Enumerate.law(run).items():
        out[tok] += prob
    return out


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rule=st.sampled_from(RULE_NAMES))
def test_one_step_emits_p_under_standard_and_pi_under_relaxed_rules(data: Any,
                                                                    rule: str) -> None:
    p = data.draw(distributions())
    q = data.draw(distributions(len(p)))
    law = _first_token_law(p, q, rule, greedy=False)
    np.testing.assert_allclose(law, analytic_pi(p, q, rule), atol=TOL, rtol=0)
    np.testing.assert_allclose(emitted(torch.tensor(p), torch.tensor(q), acceptance(
        torch.tensor(p)[None], torch.tensor(q)[None], torch.tensor([RULE_INDEX[rule]]))[0]),
        analytic_pi(p, q, rule), atol=TOL, rtol=0)
    if rule == "standard":
        np.testing.assert_allclose(law, p, atol=TOL, rtol=0)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rule=st.sampled_from(RULE_NAMES))
def test_one_step_greedy(data: Any, rule: str) -> None:
    """Greedy: x = argmax q is kept with the rule's probability at x (always when x = argmax p,
    except under "none"); a rejection emits argmax p."""
    p = data.draw(distributions())
    q = data.draw(distributions(len(p)))
    x, y = int(np.argmax(q)), int(np.argmax(p))
    with np.errstate(divide="ignore"):
        a = {"standard": float(x == y), "sqrt": min(1.0, math.sqrt(p[x] / q[x])),
             "typical": float(p[x] > min(TYPICAL_EPSILON, TYPICAL_DELTA * math.exp(
                 -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))))),
             "all": 1.0, "none": 0.0}[rule]
    if rule in ("sqrt", "typical") and x == y:
        a = 1.0
    want = np.zeros_like(p)
    want[x] += a
    want[y] += 1 - a
    np.testing.assert_allclose(_first_token_law(p, q, rule, greedy=True), want, atol=TOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_block_of_drafts_standard_rule(data: Any) -> None:
    """Three drafts with fixed rows: the first emitted token has law p0, and given that the
    round emitted >= 2 tokens the second has law p1 whatever the first."""
    v = data.draw(st.integers(2, 5))
    p = torch.tensor(np.stack([data.draw(distributions(v)) for _ in range(4)]))
    q = torch.tensor(np.stack([data.draw(distributions(v)) for _ in range(3)]))

    def run(dr: Enumerate) -> tuple[int, ...]:
        x = torch.tensor([dr.categorical(q[j]) for j in range(3)])
        a, tok = verify(p, q, x, torch.zeros(3, dtype=torch.long), False, dr)
        return (*x[:a].tolist(), tok)

    law = Enumerate.law(run)
    first, second = np.zeros(v), np.zeros((v, v))
    for out, prob in law.items():
        first[out[0]] += prob
        if len(out) >= 2:
            second[out[0], out[1]] += prob
    np.testing.assert_allclose(first, p[0].numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(second, np.outer(second.sum(1), p[1].numpy()), atol=TOL, rtol=0)


# ---- the whole decoder on a tiny vocabulary: exact law of the output sequences ----

V, T, TEMP = 4, 3, 0.8


class Memo(torch.nn.Module):
    """Memoised forward of ``inner``: a call's logits and new KV entries depend only on the
    tokens its cache holds plus the new ones, so re-running the decoder along another branch
    reuses them, appending the stored KV to the cache exactly as the model would."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.memo, self.held = inner, {}, {}

    def forward(self, input_ids: torch.Tensor, cache: Any, **kw: Any) -> Any:
        past = cache.get_seq_length()
        ctx = self.held.get(id(cache), [])[:past] + input_ids[0].tolist()
        self.held[id(cache)] = ctx
        key = (tuple(ctx), kw.get("logits_to_keep"))
        if key not in self.memo:
            out = self.inner(input_ids=input_ids, cache=cache, **kw)
            self.memo[key] = (out.logits, [(c.keys[..., past:, :], c.values[..., past:, :])
                                           for c in cache.layers])
        else:
            for i, (k, v) in enumerate(self.memo[key][1]):
                cache.update(k, v, i)
        return type("Out", (), {"logits": self.memo[key][0]})


@pytest.fixture(scope="module")
def small() -> tuple[Memo, list[Memo]]:
    """Vocabulary-4 verifier and two different drafters (memoised)."""
    v = tiny_llama(1, vocab=V)
    return Memo(v), [Memo(perturbed(v, 20, 0.3)), Memo(perturbed(v, 21, 0.6))]


def next_law(model: Memo, prefix: tuple[int, ...], temp: float = TEMP) -> np.ndarray:
    """softmax(logits / temp) of the next token after ``prefix``, full recompute."""
    with torch.no_grad():
        logits = model.inner(torch.tensor([list(prefix)])).logits[0, -1]
    return torch.softmax(logits / temp, -1).numpy()


PROMPT = (2, 1, 3)


def verifier_law(verifier: Memo) -> dict[tuple[int, ...], float]:
    """The verifier's own law of T-token continuations of PROMPT: its chain of softmaxes."""
    law = {(): 1.0}
    for _ in range(T):
        law = {s + (y,): pr * py for s, pr in law.items()
               for y, py in enumerate(next_law(verifier, PROMPT + s))}
    return law


def decoder_law(verifier: Memo, drafters: list[Memo], policy: Any) -> dict[tuple, float]:
    return Enumerate.law(lambda dr: speculative_generate(
        verifier, drafters, torch.tensor(PROMPT), policy, T, temperature=TEMP, draws=dr).tokens)


def _compare(got: dict[tuple, float], want: dict[tuple, float]) -> None:
    keys = set(got) | set(want)
    worst = max(abs(got.get(k, 0.0) - want.get(k, 0.0)) for k in keys)
    assert worst < 1e-9, worst


@pytest.mark.parametrize(("name", "params"), [
    ("fixed", {"k": 2}), ("stop_absolute", {"theta": 0.6, "k": 3}),
    ("hf_confidence", {"k": 3, "threshold": 0.5}), ("dynamic_gamma", {"tau": 0.8}),
    ("min_entropy", {"k": 2}), ("router", {"thresholds": "0.9"})])
def test_sampled_output_law_is_the_verifiers(small: Any, name: str, params: dict) -> None:
    verifier, drafters = small
    _compare(decoder_law(verifier, drafters, make(name, params)), verifier_law(verifier))


@pytest.mark.parametrize(("name", "params"),
                         [("fixed", {"k": 2}), ("router", {"thresholds": "0.9"})])
def test_sampled_output_law_is_the_verifiers_with_a_subset_head_drafter(
        small: Any, name: str, params: dict) -> None:
    """A drafter whose head covers tokens {0, 2, 3} only (q = 0 on token 1, which the verifier
    still emits): speculative sampling stays exact."""
    from validator.drafter import set_subset_head

    verifier, drafters = small
    inner = perturbed(verifier.inner, 22, 0.3)
    subset = Memo(set_subset_head(inner, inner, torch.tensor([0, 2, 3])))
    _compare(decoder_law(verifier, [subset, drafters[1]], make(name, params)),
             verifier_law(verifier))


def relaxed_law(verifier: Memo, drafter: Memo, rule: str) -> dict[tuple[int, ...], float]:
    """Analytic law of k=1 rounds with every draft judged by ``rule``: a round on prefix s emits
    x ~ q kept w.p. a(x) then a bonus ~ p, or on rejection one token ~ r; a round with one
    token left emits it ~ p (cap = remaining - 1 = 0)."""

    def law(s: tuple[int, ...], left: int) -> dict[tuple[int, ...], float]:
        p = next_law(verifier, PROMPT + s)
        if left == 1:
            return {s + (y,): float(py) for y, py in enumerate(p)}
        q = next_law(drafter, PROMPT + s)
        kept = q * _accept(p, q, rule)  # P(draft y, kept)
        rejected = analytic_pi(p, q, rule) - kept  # P(rejection, then y ~ r)
        out: dict[tuple[int, ...], float] = defaultdict(float)
        for y in range(V):
            for seq, pr in law(s + (y,), left - 1).items():
                out[seq] += rejected[y] * pr
            for b, pb in enumerate(next_law(verifier, PROMPT + s + (y,))):
                if left == 2:
                    out[s + (y, b)] += kept[y] * pb
                else:
                    for seq, pr in law(s + (y, b), left - 2).items():
                        out[seq] += kept[y] * pb * pr
        return out

    return dict(law((), T))


def _accept(p: np.ndarray, q: np.ndarray, rule: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(q > 0, p / q, 1.0)
    h = -np.sum(p * np.log(p))
    return {"sqrt": np.minimum(1, np.sqrt(ratio)), "all": np.ones_like(p),
            "typical": (p > min(TYPICAL_EPSILON, TYPICAL_DELTA * math.exp(-h))).astype(float),
            "standard": np.minimum(1, ratio)}[rule]


@pytest.mark.parametrize(("name", "params", "rule"), [
    ("relaxed", {"k": 1, "tau": math.inf, "rule": "sqrt"}, "sqrt"),
    ("relaxed", {"k": 1, "tau": math.inf, "rule": "all"}, "all"),
    ("typical", {"k": 1}, "typical"), ("fixed", {"k": 1}, "standard")])
def test_relaxed_output_law_is_the_analytic_pi(small: Any, name: str, params: dict,
                                               rule: str) -> None:
    verifier, drafters = small
    want = relaxed_law(verifier, drafters[0], rule)
    _compare(decoder_law(verifier, drafters[:1], make(name, params)), want)
    if rule == "standard":
        _compare(want, verifier_law(verifier))


# ---- the signals and rules the decoder uses are the ones the trace records ----

@settings(max_examples=100, deadline=None)
@given(logits=st.lists(st.floats(-6, 6), min_size=2, max_size=24),
       temp=st.sampled_from([1.0, 0.7]), k=st.integers(1, 30))
def test_signals_are_their_definitions(logits: list[float], temp: float, k: int) -> None:
    z = np.asarray(logits) / temp
    p = np.exp(z - z.max())
    p /= p.sum()
    top = np.sort(p)[::-1][:k]
    top /= top.sum()
    h = lambda x: -np.sum(np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0))  # noqa: E731
    want = [h(p), -np.log(np.sum(p * p)), h(top), p.max()]
    got = draft_signals(torch.tensor(logits, dtype=torch.float64) / temp, k).numpy()
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_signals_and_rules_agree_with_the_recorder(temperature: float) -> None:
    """validator.record's columns (signals, accept_prob_*, tv_*) equal what the decoder's
    signals and acceptance rules give on the same logits."""
    record = pytest.importorskip("validator.record")
    g = torch.Generator().manual_seed(5)
    pl, ql = torch.randn(200, 7, generator=g) * 2, torch.randn(200, 7, generator=g) * 2
    cfg = record.RecordConfig(temperature=temperature, topk=3)
    scale = temperature or 1.0
    stats, _ = record.dist_stats(ql, temperature, 3)
    mine = draft_signals(ql.double() / scale, 3)
    for i, col in enumerate(("entropy", "renyi2_entropy", "topk_entropy", "top1_prob")):
        np.testing.assert_allclose(stats[col].numpy(), mine[:, i].numpy(), atol=1e-5)
    p, q = torch.softmax(pl.double() / scale, -1), torch.softmax(ql.double() / scale, -1)
    cols = record.acceptance_columns(pl, ql, p.argmax(-1), cfg)
    x = q.argmax(-1)
    for rule in ("sqrt", "typical"):
        acc = acceptance(p, q, torch.full((200,), RULE_INDEX[rule]), greedy=temperature == 0)
        if temperature == 0:
            kept = acc.gather(1, x[:, None])[:, 0]
        else:
            kept = (q * acc).sum(-1)
            tv = 0.5 * (emitted(p, q, acc) - p).abs().sum(-1)
            np.testing.assert_allclose(cols[f"tv_{rule}"].numpy(), tv.numpy(), atol=1e-5)
        np.testing.assert_allclose(cols[f"accept_prob_{rule}"].numpy(), kept.numpy(), atol=1e-5)


def test_torch_draws_sample_the_verifiers_law(small: Any) -> None:
    """The real random source (a seeded torch.Generator): chi-square of 1,500 sampled outputs
    against the verifier's exact law; cells with expectation < 5 pooled; false-alarm rate
    alpha = 1e-3 (fixed seed: the verdict is deterministic)."""
    from scipy.stats import chisquare

    verifier, drafters = small
    want = verifier_law(verifier)
    keys = sorted(want)
    g = torch.Generator().manual_seed(11)
    policy = make("fixed", {"k": 2})
    runs = 1500
    counts = dict.fromkeys(keys, 0)
    for _ in range(runs):
        counts[speculative_generate(verifier, drafters[:1], torch.tensor(PROMPT), policy, T,
                                    temperature=TEMP, generator=g).tokens] += 1
    big = [k for k in keys if want[k] * runs >= 5]
    small_ = [k for k in keys if want[k] * runs < 5]
    obs = [counts[k] for k in big] + ([sum(counts[k] for k in small_)] if small_ else [])
    exp = [want[k] * runs for k in big] + ([sum(want[k] for k in small_) * runs] if small_
                                           else [])
    assert chisquare(obs, exp).pvalue > 1e-3


@settings(max_examples=100, deadline=None)
@given(data=st.data(), greedy=st.booleans())
def test_acceptance_at_the_drafts_is_the_tables_bit_for_bit(data: Any, greedy: bool) -> None:
    """The decoder's per-draft acceptance (no (n, V) table) equals the table's entries
    exactly, for any mix of rules per row: the output laws pinned above carry over."""
    n, v = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 6))
    p = torch.tensor(np.stack([data.draw(distributions(v)) for _ in range(n)]))
    q = torch.tensor(np.stack([data.draw(distributions(v)) for _ in range(n)]))
    rules = torch.tensor(data.draw(st.lists(st.integers(0, len(RULE_NAMES) - 1),
                                            min_size=n, max_size=n)))
    drafts = torch.tensor(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    table = acceptance(p, q, rules, greedy)
    want = table.gather(1, drafts[:, None])[:, 0]
    assert torch.equal(acceptance_at(p, q, drafts, rules, greedy), want)
