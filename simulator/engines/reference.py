"""The reference replay: the algorithm one draft step and one forward pass at a time.

Slow on purpose: it is the executable specification the fast engine and the event engine are
tested against, so it shares with them only the policy, the acceptance draws and the per-pass
price. Every forward pass is priced as it happens.

Like the real decoder, a round at position t of prompt p caps its drafts at B_p - t - 1 (B_p:
``Trace.budget``, the recorded max_new_tokens), not at the end of the recorded output, and stops
drafting after a drafted EOS: a prompt shorter than its budget ended with EOS at its last row,
so a round whose drafts are all accepted up to that row stops there and emits no bonus token.
Known approximation: the trace does not say whether the drafter drafts EOS inside a free-run (or
as a rejected draft); the replay keeps drafting along the free-run where the real decoder stops,
so only wasted draft steps can differ (accepted and emitted tokens are exact under greedy).
Chain drafters (feature drafters) follow ``replay``'s docstring: steps 1.. of a round read the
continuation recorded from the round's own start, and the first round of a prompt drafts nothing.
"""

from __future__ import annotations

import numpy as np

from ..latency import LatencyModel
from ..policies import Context, Outcome, Policy
from ..policies.base import VERIFIER_DECIDES
from ..trace import Trace
from .replay import Pricer, Replay, Rounds, freerun_error


def run_reference(trace: Trace, policy: Policy, latency: LatencyModel, seed: int = 0) -> Rounds:
    rp = Replay(trace, seed)
    rp.check(policy)
    pricer = Pricer(latency, trace)
    names = rp.signal_names(policy)
    n_models = 1 + len(trace.drafters)
    chain = trace.chain
    rows_out: list[tuple] = []

    def forward(seen: list[int], model: int, upto: int) -> int:
        """Feed ``model`` every token up to sequence length ``upto``; its price in ns."""
        ns = int(pricer.ns(model, np.int64(upto - seen[model]), np.int64(seen[model])))
        seen[model] = upto
        return ns

    for p in range(trace.n_prompts):
        lo, hi = int(trace.offsets[p]), int(trace.offsets[p + 1])
        budget = int(trace.budget[p])
        state = policy.initial_state()
        seen = [0] * n_models  # tokens in each model's KV cache (0 = verifier)
        length = int(trace.prompt_tokens[p])  # prompt + emitted tokens
        t = 0

        while lo + t < hi:
            row = lo + t
            if t == 0 and chain.any():  # the verifier's prefill alone (replay docstring)
                verify_ns = forward(seen, 0, length)
                rows_out.append((p, 0, 0, 0, 0, False, 0, 0, 0.0, 0, verify_ns, verify_ns))
                t, length = 1, length + 1
                continue
            run = rp.run_length(0, row, hi - 1) if chain[0] else 0
            while not chain[0] and row + run < hi - 1 and \
                    rp.u[row + run] < rp.accept[0, 0, row + run]:
                run += 1
            ctx = Context(position=t, remaining=budget - t,
                          prev_verifier_entropy=trace.verifier_entropy[row - 1] if t else np.nan,
                          first_entropy=trace.signals["entropy"][:, row]
                          if policy.probes_all_drafters else None,
                          run_length=run if policy.oracle else None)
            plan = policy.plan(state, ctx)
            d, cap = int(plan.drafter), min(int(plan.cap), budget - t - 1)
            eos = hi - 1 - row  # the step drafting at the prompt's last row (EOS if L < B)
            draft_ns = 0
            if policy.probes_all_drafters:  # every drafter drafts step 0 at this position
                for x in range(len(trace.drafters)):
                    draft_ns += forward(seen, 1 + x, length)
            steps: dict[str, list[float]] = {s: [] for s in names}
            rules: list[int] = []
            rejected_at = -1  # step of the first rejected draft, -1 while all accepted
            stopped = False
            for j in range(max(cap, 0)):
                if not (policy.probes_all_drafters and j == 0):
                    draft_ns += forward(seen, 1 + d, length + j)
                for s in names:
                    if j == 0 or (rejected_at < 0 and not chain[d]):
                        value = trace.signals[s][d, row + j]
                    else:  # a chain drafter's own continuation from row, or the free-run
                        src, f = (row, j - 1) if chain[d] else \
                            (row + rejected_at, j - rejected_at - 1)
                        fr = trace.freerun.get(s)
                        value = fr[d, src, f] if fr is not None and f < trace.k_max else np.nan
                        if np.isnan(value):
                            raise freerun_error(trace, policy)
                    steps[s].append(value)
                sig = {s: np.asarray(v) for s, v in steps.items()}
                rule = int(np.asarray(policy.rules(state, sig))[-1])
                rules.append(rule)
                if rejected_at < 0:
                    if chain[d] and j > 0:
                        ok = j - 1 < trace.k_max and \
                            rp.u[row + j] < trace.chain_accept[d, row, j - 1]  # type: ignore[index]
                    else:
                        ok = rp.u[row + j] < rp.accept[rule, d, row + j]
                    if not ok:
                        rejected_at = j
                if rejected_at < 0 and j == eos:  # drafted the prompt's last token: EOS
                    stopped = True
                    break
                if bool(np.asarray(policy.stop(state, sig))[-1]):
                    stopped = True
                    break
            n = len(rules)
            assert stopped or n == max(cap, 0)
            a = n if rejected_at < 0 else rejected_at
            deviating = relaxed = 0
            bias = 0.0
            for j in range(min(n, a + 1)):
                if rules[j] not in VERIFIER_DECIDES:
                    relaxed += 1
                    bias += float(rp.bias[rules[j], d, row + j])
                    if j < a and not rp.u[row + j] < rp.accept[0, d, row + j]:
                        deviating += 1
            verify_ns = forward(seen, 0, length + n)
            seen[0] = length + a  # the verifier keeps the accepted prefix
            for x in range(1, n_models):  # drafters drop their rejected drafts
                seen[x] = min(seen[x], length if chain[x - 1] else length + a)
            rows_out.append((p, t, d, n, a, policy.probes_all_drafters, deviating, relaxed,
                             bias, draft_ns, verify_ns, draft_ns + verify_ns))
            state = policy.update(state, Outcome(d, n, a, {s: np.asarray(v)
                                                           for s, v in steps.items()}))
            t += a + 1
            length += a + 1
    return Rounds.from_rows(rows_out, trace.lengths)
