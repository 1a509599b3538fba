"""The policy interface: what every drafting / acceptance / routing policy implements.

A speculative round starting at position t goes:
  1. ``plan``: choose the drafter and the most tokens to draft this round (the cap);
  2. draft steps j = 0, 1, ...: after step j the drafter's signals (entropy, top-1 probability,
     ...) at that step are known; ``stop`` says whether to stop after step j;
  3. the verifier checks the n drafted tokens in one call; ``rules`` names the acceptance rule
     applied to each drafted token (standard, or a relaxed one);
  4. ``update`` sees the outcome (drafted, accepted) and updates the policy's state.

``stop`` and ``rules`` take the signals of a round as arrays whose LAST axis is the draft step,
and must be prefix-causal: the answer at step j may depend only on steps 0..j. The reference
engine calls them one step at a time on growing prefixes; the fast engine calls them once on a
whole round, or, for a memoryless policy, once on every possible round of a trace at a time
(shape (starts, steps)). Same function, three uses: that is what keeps the engines in agreement.

A policy is *memoryless* when plan/stop/rules ignore ``state`` (its decisions depend only on the
round's own signals and context); the fast engine then evaluates all rounds at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..trace import ENTROPY_SIGNALS, RULE_NAMES

Signals = dict[str, np.ndarray]  # signal name -> array (..., steps)


@dataclass(frozen=True)
class Context:
    """What is known when a round starts. Fields may be scalars or arrays over round starts.

    position: index of the next token to emit (tokens).
    remaining: tokens the decoder may still emit for this prompt, >= 1: its budget
        (max_new_tokens) minus ``position``; the output may end sooner with EOS.
    prev_verifier_entropy: nats, entropy of the verifier's distribution for the last emitted
        token; NaN at position 0 (nothing emitted yet).
    first_entropy: (D,) or (D, starts) nats, every drafter's entropy at this position (only
        filled for policies with ``probes_all_drafters``; they pay one step of each drafter).
    run_length: tokens that WOULD be accepted from here, before the prompt's last row (the
        oracle's knowledge: it never drafts the last token, EOS or not); honest policies must
        not read it.
    """

    position: Any
    remaining: Any
    prev_verifier_entropy: Any
    first_entropy: Any = None
    run_length: Any = None


@dataclass(frozen=True)
class Plan:
    """A round's plan: drafter index and the most tokens to draft (0 = verifier step only).

    Scalars, or arrays shaped like the Context's fields (a scalar applies to every start)."""

    drafter: Any
    cap: Any


@dataclass(frozen=True)
class Outcome:
    """What ``update`` sees after verification. ``signals`` hold the drafted steps (n,)."""

    drafter: int
    drafted: int
    accepted: int
    signals: Signals


class Policy:
    """Base class. Subclasses are frozen dataclasses whose fields are the parameters.

    Class attributes:
      name: registry name (``--policy NAME``).
      stop_params: the parameters ``stop`` reads, declared in the class that defines ``stop``
        (None: not declared). The fast engine then evaluates the rule once for configurations
        that differ only in other parameters (a sweep's caps) and slices it.
      memoryless: plan/stop/rules ignore state (enables the all-rounds-at-once fast path).
      lossy: may change the output distribution (reports deviating_tokens, quality_bias).
      probes_all_drafters: every drafter drafts step 0; the plan sees ``first_entropy``.
      oracle: reads ``Context.run_length``.
    """

    name: ClassVar[str] = ""
    stop_params: ClassVar[tuple[str, ...] | None] = ()  # the default stop reads nothing
    memoryless: ClassVar[bool] = True
    lossy: ClassVar[bool] = False
    probes_all_drafters: ClassVar[bool] = False
    oracle: ClassVar[bool] = False

    # ---- parameters ----
    def params(self) -> dict[str, Any]:
        names = _field_names(type(self))  # type: ignore[arg-type]  # classes hash; mypy disagrees
        return {name: getattr(self, name) for name in names}

    def signals(self) -> tuple[str, ...]:
        """Trace signals this policy reads (see trace.SIGNALS)."""
        kind = getattr(self, "entropy", None)
        return (kind,) if kind in ENTROPY_SIGNALS else ()

    def accept_rules(self) -> tuple[str, ...]:
        """Acceptance rules this policy may apply (see trace.RULES)."""
        return ("standard",)

    def routes(self) -> bool:
        """Whether rounds may use different drafters (then results report ``drafter_share``)."""
        return self.probes_all_drafters or self.drafters_needed() > 1

    def drafters_needed(self) -> int:
        """How many drafters the trace must hold (plan indexes them 0..n-1)."""
        return 2 if self.probes_all_drafters else 1

    def max_cap(self) -> int:
        """Upper bound of ``Plan.cap`` over the whole run (sizes the engines' buffers)."""
        return int(self.k)  # type: ignore[attr-defined]

    # ---- decisions ----
    def initial_state(self) -> Any:
        return None

    def plan(self, state: Any, ctx: Context) -> Plan:
        return Plan(drafter=0, cap=self.max_cap())  # the same for every round start

    def stop(self, state: Any, sig: Signals) -> np.ndarray:
        """Bool (..., steps): stop drafting after step j. Default: never (draft the cap).

        ``sig`` always holds "entropy" and every signal named by ``signals()``.
        """
        return np.zeros(sig["entropy"].shape, dtype=bool)

    def rules(self, state: Any, sig: Signals) -> np.ndarray:
        """Int (..., steps): index into trace.RULE_NAMES of each drafted token's rule."""
        return np.zeros(sig["entropy"].shape, dtype=np.int8)

    def update(self, state: Any, outcome: Outcome) -> Any:
        return state


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


RULE_INDEX = {name: i for i, name in enumerate(RULE_NAMES)}
# rules under which the verifier decides the token: no bias, not counted as relaxed
VERIFIER_DECIDES = (RULE_INDEX["standard"], RULE_INDEX["none"])


def entropy_field_doc() -> str:
    return f"entropy: which drafter entropy to read, one of {ENTROPY_SIGNALS} (nats)"
