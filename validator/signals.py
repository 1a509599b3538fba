"""Distribution math shared by the real decoder and the recorder: signals and acceptance rules.

Signals (``SIGNAL_NAMES``, the policy-facing names of ``simulator.trace.SIGNALS``) are computed
from the distribution the decoder draws from, q = softmax(logits / t) at the decoding temperature
t (t = 1 under greedy decoding), exactly as validator/record.py records them:

  entropy    Shannon entropy -sum q log q (nats)
  renyi2     Renyi-2 entropy -log sum q^2 (nats)
  topk       Shannon entropy of the k largest probabilities renormalised (nats; k = ``topk``)
  top1_prob  the largest probability

Acceptance rules (``simulator.trace.RULE_NAMES``) give, for a draft y ~ q checked against the
verifier's p, the probability a(y) that y is kept; on rejection the emitted token is drawn from
the residual r(y) ∝ max(p(y) - q(y) a(y), 0) (p itself where that is all zero). The token the
round emits then has the law pi(y) = q(y) a(y) + (1 - sum_z q(z) a(z)) r(y) (DESIGN.md), which
is exactly p for the standard rule:

  standard  min(1, p/q)                                 (Leviathan et al. 2023)
  sqrt      min(1, sqrt(p/q))
  typical   1[p(y) > min(epsilon, delta * exp(-H(p)))]  (Medusa, Cai et al. 2024, sec. 3.3.1;
            epsilon = posterior_threshold = 0.09, delta = posterior_alpha = 0.3, Medusa's
            defaults; H(p) is the exact Shannon entropy where Medusa adds 1e-5 inside the log)
  all       1
  none      0 (the verifier decides; the residual is p)

Under sampling p and q are the temperature-t softmaxes. Under greedy decoding the draft is the
drafter's argmax and p, q are temperature-1 softmaxes:
the standard rule accepts iff the draft is the verifier's argmax; sqrt and typical accept the
verifier's argmax always (a relaxation never accepts less than the standard rule) and any
other draft with the rule's probability; a rejection emits the verifier's argmax.
"""

from __future__ import annotations

import torch

from simulator.trace import RULE_NAMES

SIGNAL_NAMES = ("entropy", "renyi2", "topk", "top1_prob")
TYPICAL_EPSILON = 0.09  # Medusa posterior_threshold
TYPICAL_DELTA = 0.3  # Medusa posterior_alpha (sqrt of posterior_threshold)


def as_float(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in at least float32 (float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def shannon(logp: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of log-probabilities over the last axis; 0 log 0 = 0."""
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last axis."""
    return shannon(torch.log_softmax(as_float(logits), -1))


def draft_signals(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """(..., 4) signals of softmax(logits) in ``SIGNAL_NAMES`` order (nats, nats, nats, prob).

    Pass logits / t to get the signals at temperature t.
    """
    logp = torch.log_softmax(as_float(logits), -1)
    top = logp.topk(min(topk, logp.shape[-1]), -1).values
    return torch.stack([shannon(logp), -torch.logsumexp(2 * logp, -1),
                        shannon(top - torch.logsumexp(top, -1, keepdim=True)),
                        top[..., 0].exp()], -1)


def acceptance(p: torch.Tensor, q: torch.Tensor, rules: torch.Tensor,
               greedy: bool = False) -> torch.Tensor:
    """(n, V) probability that each token y, if drafted, is accepted under its row's rule.

    p, q: (n, V) verifier and drafter probabilities; rules: (n,) indices into RULE_NAMES.
    Tokens with q(y) = 0 are never drafted; their value only needs to be finite.
    """
    top = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype) if greedy else None
    return _rule_table(p, q, p, q, top)[rules.long(), torch.arange(p.shape[0], device=p.device)]


def acceptance_at(p: torch.Tensor, q: torch.Tensor, tokens: torch.Tensor, rules: torch.Tensor,
                  greedy: bool = False) -> torch.Tensor:
    """(n,) ``acceptance(p, q, rules, greedy)`` at each row's token, bit for bit, without the
    (n, V) table: the same element-wise formulas on the drafted tokens' probabilities only
    (the typical rule's row entropy is the one full-vocabulary pass, and only when used)."""
    idx = tokens.long()[:, None]
    pt, qt = p.gather(1, idx), q.gather(1, idx)  # (n, 1)
    top = (p.argmax(-1, keepdim=True) == idx).to(p.dtype) if greedy else None
    typical = bool((rules == RULE_NAMES.index("typical")).any())
    table = _rule_table(pt, qt, p if typical else None, q, top)
    return table[rules.long(), torch.arange(p.shape[0], device=p.device), 0]


def _rule_table(pt: torch.Tensor, qt: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor,
                top: torch.Tensor | None) -> torch.Tensor:
    """(R, n, W) acceptance of every rule at the W tokens whose probabilities are pt, qt
    (W = V for the whole vocabulary); p: full rows for the typical rule's entropy bound (None:
    no row uses it, zeros); top: 1 at the verifier's argmax (greedy) or None."""
    ratio = torch.where(qt > 0, pt / qt.clamp_min(torch.finfo(q.dtype).tiny),
                        torch.ones_like(pt))
    if p is None:
        typical = torch.zeros_like(pt)
    else:
        bound = torch.minimum(torch.full_like(p[..., :1], TYPICAL_EPSILON),
                              TYPICAL_DELTA * torch.exp(-shannon(p.log())[..., None]))
        typical = (pt > bound).to(pt.dtype)
    table = {"standard": ratio.clamp(max=1.0), "sqrt": ratio.sqrt().clamp(max=1.0),
             "typical": typical, "all": torch.ones_like(pt), "none": torch.zeros_like(pt)}
    if top is not None:
        table["standard"] = top
        table["sqrt"] = torch.maximum(table["sqrt"], top)
        table["typical"] = torch.maximum(table["typical"], top)
    return torch.stack([table[r] for r in RULE_NAMES])


def residual(p: torch.Tensor, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Normalised max(p - q a, 0) over the last axis; p where that is all zero."""
    r = (p - q * a).clamp_min(0.0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / torch.where(total > 0, total, 1.0), p)


def emitted(p: torch.Tensor, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """pi = q a + (1 - sum q a) r: the law of the token one sampled verification emits."""
    kept = q * a
    return kept + (1.0 - kept.sum(-1, keepdim=True)) * residual(p, q, a)
