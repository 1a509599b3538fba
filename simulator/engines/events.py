"""The event engine (simpy): requests as processes, drafter and verifier as resources.

Each request (one prompt) is a process that loops over rounds: it takes the drafter's device for
the round's draft steps, then the verifier's device for the verification call. ``placement``
says where the models live: "shared" puts both on one device (a request's drafting waits for
other requests' verification and vice versa), "separate" gives each its own device so one
request's drafting overlaps another's verification. ``concurrency`` requests are in flight at
once (closed loop: the next prompt starts when one finishes), prompts in trace order.

Simulated time is integer nanoseconds. With one request in flight it reproduces the reference
replay exactly; with more, each round's wall time includes its queueing. Rounds are decided as
in the other engines (``all_starts`` / ``play_round``): budget caps, EOS stops and the free-run
approximation of ``replay`` included.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import simpy

from ..latency import LatencyModel
from ..policies import Policy
from ..trace import Trace
from .fast import all_starts
from .replay import Pricer, Replay, Rounds, play_round, price_round

PLACEMENTS = ("shared", "separate")


@dataclass(frozen=True)
class Served:
    """An event-engine run: the round log plus per-request timestamps (ns)."""

    rounds: Rounds
    request_start_ns: np.ndarray
    request_end_ns: np.ndarray
    makespan_ns: int


def run_events(trace: Trace, policy: Policy, latency: LatencyModel, seed: int = 0,
               concurrency: int = 1, placement: str = "shared") -> Served:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement {placement!r} not in {PLACEMENTS}")
    rp = Replay(trace, seed)
    rp.check(policy)
    pricer = Pricer(latency, trace)
    env = simpy.Environment()
    verifier_dev = simpy.Resource(env, capacity=1)
    drafter_dev = verifier_dev if placement == "shared" else simpy.Resource(env, capacity=1)
    log: list[tuple] = []
    starts = np.zeros(trace.n_prompts, dtype=np.int64)
    ends = np.zeros(trace.n_prompts, dtype=np.int64)
    queue = list(range(trace.n_prompts))[::-1]

    solo = concurrency <= 1
    planned: dict[tuple[int, int], tuple] = {}
    if policy.memoryless:  # decisions do not depend on state: take them all at once
        from .fast import probes

        st = all_starts(rp, policy)
        probe = policy.probes_all_drafters
        keys = zip(st.prompt.tolist(), st.start.tolist(), strict=True)
        vals = zip(st.drafter.tolist(), st.drafted.tolist(), st.accepted.tolist(),
                   probes(trace, st.start, probe).astype(bool).tolist(),
                   st.deviating.tolist(), st.relaxed.tolist(), st.bias.tolist(), strict=True)
        planned = dict(zip(keys, vals, strict=True))
        if st.drafted.any():
            from .fast import check_freerun
            check_freerun(rp, policy, st.m, st.rows, st.drafted)

    def request(p: int) -> Generator[simpy.Event, object, None]:
        state = policy.initial_state()
        seen = [0] * (1 + len(trace.drafters))
        t, length = 0, int(trace.prompt_tokens[p])
        starts[p] = env.now
        end = int(trace.lengths[p])
        while t < end:
            began = env.now
            if planned:
                out = planned[p, t]
            else:
                out, state = play_round(rp, policy, state, p, t)
            d, n, a, probe = out[0], out[1], out[2], out[3]
            draft_ns, verify_ns = price_round(pricer, seen, length, d, n, a, probe,
                                              trace.chain)
            if solo:  # one request in flight: no contention, the devices are always free
                yield env.timeout(draft_ns + verify_ns)
            elif draft_ns:
                with drafter_dev.request() as req:
                    yield req
                    yield env.timeout(draft_ns)
            if not solo:
                with verifier_dev.request() as req:
                    yield req
                    yield env.timeout(verify_ns)
            log.append((p, t, *out, draft_ns, verify_ns, env.now - began))
            t += a + 1
            length += a + 1
        ends[p] = env.now

    def worker() -> Generator[simpy.Event, object, None]:
        while queue:
            yield env.process(request(queue.pop()))

    for _ in range(max(1, concurrency)):
        env.process(worker())
    env.run()
    log.sort(key=lambda row: (row[0], row[1]))  # prompt, start: the other engines' order
    return Served(Rounds.from_rows(log, trace.lengths), starts, ends, int(env.now))
