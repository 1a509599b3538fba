"""The real speculative decoder: HF causal LMs, batch size 1, KV caches cropped on rejection.

It makes the decisions of ``simulator/engines/reference.py`` from live signals, with the very
same ``Policy`` object: a round plans (drafter, cap), caps it at ``remaining - 1`` tokens, drafts
one step at a time feeding the policy's ``stop`` and ``rules`` the round's signals so far (and
stops after drafting an EOS token, after which nothing can be emitted), has
the verifier check all n drafts in one forward pass, keeps the accepted prefix and emits one
more token (the correction or the bonus). Every model keeps its own DynamicCache and a ``seen``
count; a model that is behind feeds all its unseen tokens in one call (the prompt in the first
round), so no accepted token is ever recomputed: rejected positions are cropped away.

A feature drafter (``validator.drafter``, EAGLE-style) reads the verifier's final-norm hidden
state of the previous position. With one among the drafters, the first round drafts nothing (the
verifier prefills the prompt and emits token 0: stop "prefill"), so later rounds have features;
every verifier pass stores its hidden states, and a feature drafter stores its own past the
verified prefix, where it drafts on them. Its cache entries computed on its own hidden states are
recomputed on the verifier's at the next round (one call of a+1 tokens that also feeds the new
token). So its first draft of a round reads what the recorder's teacher-forced pass reads and
later ones what its continuation from that row reads (validator/record.py): greedy rounds
replay exactly (simulator/engines/replay.py, chain drafters).

Signals are those of ``validator.signals``: of the distribution the decoder draws from (the
temperature-t softmax when sampling, temperature 1 under greedy), as validator/record.py records
them; the verifier entropy handed to the next round's plan likewise. Acceptance rules and
residuals are ``signals.acceptance`` / ``signals.residual``.

    from simulator.policies import make
    out = speculative_generate(verifier, [drafter], prompt_ids, make("stop_absolute"),
                               max_new_tokens=128)
    out.tokens, out.rounds[0].accepted, out.tokens_per_second
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from transformers import DynamicCache

from simulator.errors import PolicyError
from simulator.policies import Context, Outcome, Policy
from simulator.trace import RULE_NAMES

from .drafter import input_embeds, uses_features
from .signals import (
    SIGNAL_NAMES,
    acceptance,
    acceptance_at,
    as_float,
    draft_signals,
    entropy,
    residual,
)

STOPS = ("policy", "cap", "end", "eos", "prefill")  # why a round stopped (RoundLog.stop)


class Draws(Protocol):
    """The decoder's only source of randomness (tests substitute an exhaustive enumerator)."""

    def categorical(self, probs: torch.Tensor) -> int:
        """An index drawn with probabilities ``probs`` (V,)."""
        ...

    def first_rejection(self, accept: torch.Tensor) -> int:
        """Index of the first rejected draft (n if none) when draft j is kept w.p. accept[j]."""
        ...


class TorchDraws:
    """Draws from a ``torch.Generator`` (its device), or torch's global generator if None."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def _device(self, x: torch.Tensor) -> torch.device:
        return self.generator.device if self.generator is not None else x.device

    def categorical(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs.to(self._device(probs)), 1,
                                     generator=self.generator))

    def first_rejection(self, accept: torch.Tensor) -> int:
        n = accept.shape[0]
        if bool(((accept == 0) | (accept == 1)).all()):  # decided: no draw (plain greedy)
            ok = accept == 1
        else:
            u = torch.rand(n, generator=self.generator, device=self._device(accept),
                           dtype=accept.dtype)
            ok = u < accept.to(u.device)
        return n if bool(ok.all()) else int((~ok).int().argmax())


def verify(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, rules: torch.Tensor,
           greedy: bool, draws: Draws) -> tuple[int, int]:
    """One verification: (accepted drafts a, the token emitted after them).

    p: (n+1, V) verifier probabilities at the n drafted positions and the bonus position;
    q: (n, V) drafter probabilities; drafts: (n,) token ids; rules: (n,) RULE_NAMES indices.
    """
    n = drafts.shape[0]
    if n == 0:  # a verifier-only step
        return 0, int(p[0].argmax()) if greedy else draws.categorical(p[0])
    a = draws.first_rejection(acceptance_at(p[:n], q, drafts, rules, greedy))
    if greedy:
        return a, int(p[a].argmax())
    if a == n:
        return a, draws.categorical(p[n])
    # the residual needs the rejected row's acceptance over the whole vocabulary
    return a, draws.categorical(residual(p[a], q[a], acceptance(p[:n], q, rules, greedy)[a]))


@dataclass(frozen=True)
class RoundLog:
    """One round's decisions.

    start: tokens emitted before the round. drafter: index into ``drafters``. cap: the most
    tokens it could draft, min(plan.cap, remaining - 1). drafted / accepted: tokens.
    emitted: tokens the round added to the output (accepted + 1, fewer if EOS cut it).
    stop: "policy" (stop fired), "cap" (plan.cap reached), "end" (the max_new_tokens limit),
    "eos" (the drafter drafted an end-of-sequence token: nothing after it can be emitted),
    "prefill" (the first round with a feature drafter: the verifier alone, cap 0).
    eos: the round emitted EOS. rules: rule name per drafted token. signals: name -> value per
    draft step (all of SIGNAL_NAMES, nats / probability). probe_entropy: every drafter's
    Shannon entropy at ``start`` (nats) for probing policies, else None. seconds: wall clock.
    """

    start: int
    drafter: int
    cap: int
    drafted: int
    accepted: int
    emitted: int
    stop: str
    eos: bool
    rules: tuple[str, ...]
    signals: dict[str, tuple[float, ...]]
    probe_entropy: tuple[float, ...] | None
    seconds: float


@dataclass(frozen=True)
class DecodeResult:
    """Output and log of one generation.

    tokens: the generated ids (prompt excluded). rounds: one RoundLog per round.
    verifier_calls / drafter_calls: forward passes (drafter_calls per drafter).
    seconds: wall clock of the whole generation. finish: "eos" or "length".
    """

    tokens: tuple[int, ...]
    rounds: tuple[RoundLog, ...]
    verifier_calls: int
    drafter_calls: tuple[int, ...]
    seconds: float
    finish: str

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


class _Features:
    """Final-norm hidden states by position (L, d): the verifier's over its verified prefix
    (the first ``verified`` positions); each feature drafter keeps its own beyond it."""

    def __init__(self, length: int, width: int, device: torch.device) -> None:
        self.h = torch.zeros((length, width), dtype=torch.float32, device=device)
        self.verified = 0

    def previous(self, lo: int, hi: int, own: torch.Tensor) -> torch.Tensor:
        """What positions lo..hi-1 read: f_{lo-1}..f_{hi-2} (f_{-1} = 0), the verifier's below
        ``verified`` and ``own`` (a drafter's states, same shape as ``h``) from there on."""
        out = self.h.new_zeros((hi - lo, self.h.shape[1]))
        a = max(lo - 1, 0)
        src = torch.where((torch.arange(a, hi - 1, device=own.device) < self.verified)[:, None],
                          self.h[a:hi - 1], own[a:hi - 1])
        out[a - (lo - 1):] = src
        return out


class _Model:
    """A model with its KV cache and ``seen``: how many tokens of the sequence the cache holds.

    With ``features`` (some drafter reads them) the verifier writes its hidden states there; a
    feature drafter reads them and keeps ``exact``: the leading positions whose cache entries
    were computed on the verifier's own features (it recomputes the rest before feeding on).
    """

    def __init__(self, module: torch.nn.Module, features: _Features | None = None,
                 verifier: bool = False) -> None:
        self.module: Any = module  # a transformers causal LM: .model, .lm_head
        self.cache, self.seen, self.calls = DynamicCache(), 0, 0
        self.reads = uses_features(module)
        self.features = features if (verifier or self.reads) else None
        self.verifier, self.exact = verifier, 0
        self.own = torch.zeros_like(features.h) if self.reads and features is not None else None

    def feed(self, seq: torch.Tensor, upto: int, keep: int) -> torch.Tensor:
        """Feed seq[seen:upto] in one call; logits (keep, V) of its last ``keep`` positions."""
        if self.features is None:
            out = self.module(input_ids=seq[None, self.seen:upto], cache=self.cache,
                              use_cache=True, logits_to_keep=keep)
            self.seen, self.calls = upto, self.calls + 1
            return out.logits[0, -keep:]
        f = self.features
        if self.reads:
            self.crop(self.exact)
            lo = self.seen
            assert self.own is not None
            emb = input_embeds(self.module, seq[None, lo:upto],
                               f.previous(lo, upto, self.own)[None])
            h = self.module.model(inputs_embeds=emb, cache=self.cache,
                                  use_cache=True).last_hidden_state[0]
            self.own[lo:upto] = h  # read only past the verified prefix
            self.exact = min(upto, f.verified + 1)
        else:
            lo = self.seen
            h = self.module.model(input_ids=seq[None, lo:upto], cache=self.cache,
                                  use_cache=True).last_hidden_state[0]
            f.h[lo:upto], f.verified = h, upto  # cropped back on rejection (crop)
        self.seen, self.calls = upto, self.calls + 1
        return self.module.lm_head(h[-keep:])

    def crop(self, length: int) -> None:
        """Keep at most the first ``length`` tokens in the cache."""
        if self.seen > length:
            self.cache.crop(length - self.seen)  # transformers 5: negative = tokens to remove
            self.seen = length
        if self.verifier and self.features is not None:
            self.features.verified = self.seen


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check(policy: Policy, drafters: Sequence[torch.nn.Module], temperature: float) -> None:
    if policy.oracle:
        raise PolicyError(f"policy {policy.name} reads the acceptance run in advance "
                          "(Context.run_length); it exists only in the simulator's replay")
    need = policy.drafters_needed() if policy.max_cap() > 0 or policy.probes_all_drafters else 0
    if len(drafters) < need:
        raise PolicyError(f"policy {policy.name} with these parameters needs {need} drafters; "
                          f"got {len(drafters)}")
    if not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0")


def speculative_generate(verifier: torch.nn.Module, drafters: Sequence[torch.nn.Module],
                         input_ids: torch.Tensor, policy: Policy, max_new_tokens: int,
                         temperature: float = 0.0, generator: torch.Generator | None = None,
                         eos_token_id: int | Sequence[int] | None = None, topk: int = 10,
                         draws: Draws | None = None, max_rounds: int | None = None
                         ) -> DecodeResult:
    """Generate up to ``max_new_tokens`` tokens after the 1-D prompt ``input_ids``.

    temperature: 0 is greedy (drafts are argmaxes, accepted iff the verifier agrees under the
    standard rule); t > 0 samples drafts from softmax(logits / t) and verifies by the policy's
    rules (standard: the output has the verifier's law exactly). generator: randomness of
    sampling and of relaxed rules (None: torch's global generator). eos_token_id: stop after
    it (tokens after it in an accepted block are dropped). topk: k of the "topk" signal.
    draws: replaces ``generator`` as the source of randomness (tests, timing-only replays).
    max_rounds: stop after that many rounds (timing-only replays of simulated rounds).
    """
    _check(policy, drafters, temperature)
    device = next(verifier.parameters()).device
    greedy = temperature == 0
    scale = 1.0 if greedy else float(temperature)  # logits are divided by it everywhere
    draws = draws if draws is not None else TorchDraws(generator)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    names = tuple(dict.fromkeys(("entropy", *policy.signals())))
    prompt = input_ids.reshape(-1).to(device)
    if prompt.numel() == 0:
        raise ValueError("input_ids must hold at least one token")
    length = prompt.numel()  # prompt + emitted tokens
    seq = torch.zeros(length + max_new_tokens, dtype=torch.long, device=device)  # drafts fit
    seq[:length] = prompt
    feats = None
    if any(uses_features(m) for m in drafters):
        width = int(cast(Any, verifier).config.hidden_size)
        feats = _Features(length + max_new_tokens, width, device)
    models = [_Model(verifier, feats, verifier=True), *(_Model(m, feats) for m in drafters)]
    tokens: list[int] = []
    rounds: list[RoundLog] = []
    state = policy.initial_state()
    prev_h = math.nan  # verifier entropy (nats) of the last emitted token
    finish = "length"
    start_all = time.perf_counter()
    with torch.inference_mode():
        while len(tokens) < max_new_tokens and finish == "length" and \
                (max_rounds is None or len(rounds) < max_rounds):
            t0 = time.perf_counter()
            remaining = max_new_tokens - len(tokens)
            probe: list[torch.Tensor] = []
            prefill = feats is not None and not tokens  # no hidden states to draft on yet
            if policy.probes_all_drafters and not prefill:  # every drafter drafts step 0 here
                probe = [as_float(m.feed(seq, length, 1)[-1]) / scale for m in models[1:]]
            first = np.array([float(entropy(x)) for x in probe]) if probe else None
            if prefill:  # the verifier alone; the policy is neither asked nor told
                d, cap, stop = 0, 0, "prefill"
            else:
                plan = policy.plan(state, Context(position=len(tokens), remaining=remaining,
                                                  prev_verifier_entropy=prev_h,
                                                  first_entropy=first))
                d, cap = int(plan.drafter), min(int(plan.cap), remaining - 1)
                stop = "cap" if cap == int(plan.cap) else "end"
            if cap > 0 and not 0 <= d < len(drafters):
                raise PolicyError(f"policy {policy.name} chose drafter {d}; there are "
                                  f"{len(drafters)}")
            logits: list[torch.Tensor] = []
            steps: dict[str, list[float]] = {s: [] for s in SIGNAL_NAMES}
            rules: list[int] = []
            for j in range(max(cap, 0)):
                row = probe[d] if probe and j == 0 else \
                    as_float(models[1 + d].feed(seq, length + j, 1)[-1]) / scale
                logits.append(row)
                for s, v in zip(SIGNAL_NAMES, draft_signals(row, topk).tolist(), strict=True):
                    steps[s].append(v)
                seq[length + j] = row.argmax() if greedy else \
                    draws.categorical(torch.softmax(row, -1))
                sig = {s: np.asarray(steps[s]) for s in names}
                rules.append(int(np.asarray(policy.rules(state, sig))[-1]))
                if int(seq[length + j]) in eos:  # nothing after a drafted EOS can be emitted
                    stop = "eos"
                    break
                if bool(np.asarray(policy.stop(state, sig))[-1]):
                    stop = "policy"
                    break
            n = len(rules)
            v_logits = as_float(models[0].feed(seq, length + n, n + 1)) / scale
            p = torch.softmax(v_logits, -1)
            q = torch.softmax(torch.stack(logits), -1) if n else p[:0]
            a, tok = verify(p, q, seq[length:length + n],
                            torch.tensor(rules, dtype=torch.long, device=device), greedy, draws)
            seq[length + a] = tok
            for m in models:  # the verifier keeps the accepted prefix, drafters drop rejections
                m.crop(length + a)
            prev_h = float(entropy(v_logits[a]))
            block = seq[length:length + a + 1].tolist()
            hit = [i for i, x in enumerate(block) if x in eos]
            if hit:
                block, finish = block[:hit[0] + 1], "eos"
            tokens += block
            if not prefill:
                state = policy.update(state, Outcome(d, n, a, {s: np.asarray(steps[s])
                                                               for s in names}))
            length += a + 1
            _sync(device)
            rounds.append(RoundLog(
                start=len(tokens) - len(block), drafter=d, cap=max(cap, 0), drafted=n,
                accepted=a, emitted=len(block), stop=stop, eos=bool(hit),
                rules=tuple(RULE_NAMES[r] for r in rules),
                signals={s: tuple(v) for s, v in steps.items()},
                probe_entropy=tuple(first.tolist()) if first is not None else None,
                seconds=time.perf_counter() - t0))
    _sync(device)
    return DecodeResult(tokens=tuple(tokens), rounds=tuple(rounds),
                        verifier_calls=models[0].calls,
                        drafter_calls=tuple(m.calls for m in models[1:]),
                        seconds=time.perf_counter() - start_all, finish=finish)
