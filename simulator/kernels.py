"""Compiled loops (numba): the fast engine's walk and pricing, and the metrics' tallies.

They live in one module because numba's on-disk cache only notices edits to the file of the
kernel it compiled, not to another file's kernel it calls. Every kernel is plain Python when
numba is missing (``simulator.jit``), only slow.

``walk_price`` walks, prices and tallies a memoryless policy's rounds in one pass, repeating the
loop bodies of ``price_log`` and ``tally`` (a call per round to a shared compiled helper costs
more than the body). tests/simulator/test_engines_agree.py keeps them in step: the fast engine
prices and tallies through ``walk_price`` (or ``price_log``), the reference and event engines
through ``replay.price_round`` and ``tally``, and all must agree to the nanosecond.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, u

# ---- the walk of a memoryless policy over every possible round start -----------------------


@njit(cache=True)
def walk(advance: np.ndarray, offsets: np.ndarray) -> np.ndarray:  # pragma: no cover (jit)
    """Rows where rounds start: from each prompt's first row, row += advance[row]."""
    out = np.empty(offsets[-1], dtype=np.int64)
    k = 0
    for p in range(offsets.size - 1):
        r = offsets[p]
        while r < offsets[p + 1]:
            out[k] = r
            k += 1
            r += advance[r]
    return out[:k]


@njit(cache=True)
def clip_caps(cap: np.ndarray, remaining: np.ndarray) -> tuple[np.ndarray, int]:  # pragma: no cover
    """Each row's cap within the budget, max(min(cap, remaining - 1), 0), and their maximum
    (``cap``: one per row, or (1,) for all)."""
    out = np.empty(remaining.size, dtype=np.int64)
    k = 0
    step = 0 if cap.size == 1 else 1
    for r in range(remaining.size):
        c = max(min(cap[r * step], remaining[r] - 1), 0)
        out[r] = c
        k = max(k, c)
    return out, k


@njit(cache=True)
def locate(rows: np.ndarray, prompt_of: np.ndarray, offsets: np.ndarray
           ) -> np.ndarray:  # pragma: no cover (jit)
    """(3, rounds): the prompt of each start row, the position in it, and the prompt's length."""
    out = np.empty((3, rows.size), dtype=np.int64)
    for i in range(rows.size):
        p = prompt_of[rows[i]]
        out[0, i], out[1, i], out[2, i] = p, rows[i] - offsets[p], offsets[p + 1] - offsets[p]
    return out


# ---- pricing ---------------------------------------------------------------------------------


@njit(cache=True)
def price_log(prompt: np.ndarray, start: np.ndarray, drafter: np.ndarray, drafted: np.ndarray,
              accepted: np.ndarray, probe: np.ndarray, prompt_tokens: np.ndarray,
              small: np.ndarray, fresh: np.ndarray, cum: np.ndarray, chain: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover (jit)
    """``replay.price_round`` over a round log: (draft ns, verify ns, passes left to price).
    ``chain``: (D,) bool, the chain drafters (they keep only the round's starting length).

    Prices are read from the Pricer's tables (``small``: at most SMALL new tokens; ``fresh``:
    context 0, a prefill); a pass they do not hold (a long catch-up) is left out and listed as
    a row (round, model, new tokens, context) for the caller to price.
    """
    n_models = cum.shape[0]
    n_small, n_ctx, n_fresh = small.shape[1], small.shape[2], fresh.shape[1]
    n = prompt.size
    draft = np.zeros(n, dtype=np.int64)
    verify = np.zeros(n, dtype=np.int64)
    todo = np.empty((n * n_models, 4), dtype=np.int64)
    t = 0
    seen = np.zeros(n_models, dtype=np.int64)  # tokens in each model's KV cache
    for i in range(n):
        if i == 0 or prompt[i] != prompt[i - 1]:
            seen[:] = 0
        ln = prompt_tokens[prompt[i]] + start[i]  # sequence length when the round starts
        d, nd, a = drafter[i], drafted[i], accepted[i]
        for x in range(n_models - 1):
            if probe[i]:
                steps = max(nd, 1) if x == d else 1
            else:
                steps = nd if x == d else 0
            if steps == 0:
                continue
            m = 1 + x
            new, ctx = ln - seen[m], seen[m]
            if new < n_small and ctx < n_ctx:
                draft[i] += small[m, new, ctx]
            elif ctx == 0 and new < n_fresh:
                draft[i] += fresh[m, new]
            else:
                todo[t, 0], todo[t, 1], todo[t, 2], todo[t, 3] = i, m, new, ctx
                t += 1
            draft[i] += cum[m, ln + steps - 1] - cum[m, ln]
            seen[m] = ln + min(steps - 1, a if x == d else 0)
            if chain[x]:
                seen[m] = ln
        new, ctx = ln - seen[0] + nd, seen[0]
        if new < n_small and ctx < n_ctx:
            verify[i] = small[0, new, ctx]
        elif ctx == 0 and new < n_fresh:
            verify[i] = fresh[0, new]
        else:
            todo[t, 0], todo[t, 1], todo[t, 2], todo[t, 3] = i, 0, new, ctx
            t += 1
        seen[0] = ln + a
    return draft, verify, todo[:t]


# ---- metrics -----------------------------------------------------------------------------


@njit(cache=True)
def tally(drafted: np.ndarray, accepted: np.ndarray, start: np.ndarray, length: np.ndarray,
          probe: np.ndarray, wall_ns: np.ndarray, draft_ns: np.ndarray, n_drafters: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """One pass over a round log: sums (tokens emitted, wall ns, drafted, accepted, draft ns,
    drafter calls), the draft-length histogram (``np.bincount(drafted)``), and each round's
    tokens emitted and per-token latency in ms (wall ns / emitted / 1e6)."""
    n = drafted.size
    top = 0
    for i in range(n):
        top = max(top, drafted[i])
    hist = np.zeros(top + 1, dtype=np.int64)
    emitted = np.empty(n, dtype=np.int64)
    per_token_ms = np.empty(n)
    sums = np.zeros(6, dtype=np.int64)
    for i in range(n):
        nd = drafted[i]
        e = min(accepted[i] + 1, length[i] - start[i])  # Rounds.emitted
        emitted[i] = e
        per_token_ms[i] = wall_ns[i] / max(e, 1) / 1e6
        hist[nd] += 1
        sums[0] += e
        sums[1] += wall_ns[i]
        sums[2] += nd
        sums[3] += accepted[i]
        sums[4] += draft_ns[i]
        sums[5] += nd + ((n_drafters - 1 if nd > 0 else n_drafters) if probe[i] else 0)
    return sums, hist, emitted, per_token_ms


# ---- the fast engine's common case, in one pass ----------------------------------------------


@njit(cache=True)
def walk_price(stop: np.ndarray, cap: np.ndarray, first_reject: np.ndarray,
               first_missing: np.ndarray, eos: np.ndarray, drafter: np.ndarray,
               offsets: np.ndarray, price: bool, keep: bool, probe: bool, prefill: bool,
               prompt_tokens: np.ndarray, small: np.ndarray, fresh: np.ndarray, cum: np.ndarray,
               n_drafters: int, chain: np.ndarray) -> tuple:  # pragma: no cover (jit)
    """Follow a memoryless policy's rounds through each prompt, reading its (starts, steps)
    stop matrix; with ``price``, also price them (``price_log``) and tally them (``tally``)
    in the same pass.

    ``cap``: each row's cap within the budget; ``first_reject``: first rejected step (may
    exceed the matrix's K steps: read as K); ``first_missing``: first step without its
    free-run signal; ``eos``: the step drafting at the prompt's last row (a round accepting
    every step up to it drafted the EOS and stops after it). ``probe``, the tables and
    ``chain`` as for ``price_log``; ``prefill``: a prompt's first round never probes (a trace
    with chain drafters, whose first round is the verifier's prefill).

    Returns (rounds, gap, todo, stats, per_token_ms). ``rounds`` (11, R) rows, the first ten
    filled only with ``keep`` (else only the count R and row 10 hold): start row, prompt,
    position in it, the prompt's length, drafter, tokens drafted, drafts accepted, draft ns,
    verify ns, wall ns, and (with ``price``) tokens emitted. ``gap``: a drafted step lacked
    its free-run signal. ``todo``: the passes left to price (as ``price_log``). ``stats``:
    ``tally``'s sums then its histogram; with the emitted row and ``per_token_ms``, the
    tallies hold only where ``todo`` is empty (they read the wall times).
    """
    gap = False
    keep = keep or not price
    k = stop.shape[1]
    n_models = cum.shape[0]
    n_small, n_ctx, n_fresh = small.shape[1], small.shape[2], fresh.shape[1]
    n_rows = offsets[-1]
    out = np.empty((11, n_rows), dtype=np.int64)
    todo = np.empty((n_rows * n_models if price else 0, 4), dtype=np.int64)
    seen = np.zeros(n_models, dtype=np.int64)
    stats = np.zeros(6 + k + 1, dtype=np.int64)  # the sums, then the histogram
    per_token_ms = np.empty(n_rows if price else 0)
    s_emitted, s_wall, s_drafted, s_accepted, s_draft, s_calls = 0, 0, 0, 0, 0, 0
    top, t, i = 0, 0, 0
    for p in range(offsets.size - 1):
        lo, end = offsets[u(p)], offsets[u(p + 1)]
        length, tokens = end - lo, prompt_tokens[u(p)]
        seen[:] = 0
        r = lo
        while r < end:
            first = min(first_reject[u(r)], k)
            c = cap[u(r)]
            if first > eos[u(r)]:  # every step up to the prompt's last row accepted: EOS
                c = min(c, eos[u(r)] + 1)
            n = c
            for j in range(c):
                if stop[u(r), u(j)]:
                    n = j + 1
                    break
            a = min(n, first)
            gap |= first_missing[u(r)] < n
            start, d, ii = r - lo, drafter[u(r)], u(i)
            if keep:
                out[0, ii], out[1, ii], out[2, ii], out[3, ii] = r, p, start, length
                out[4, ii], out[5, ii], out[6, ii] = d, n, a
            i += 1
            r += a + 1
            if not price:
                continue
            # price_log's loop body (keep the two in step)
            ln, dr = tokens + start, 0
            pr = probe and not (prefill and start == 0)
            for x in range(n_models - 1):
                if pr:
                    steps = max(n, 1) if x == d else 1
                else:
                    steps = n if x == d else 0
                if steps == 0:
                    continue
                m = u(1 + x)
                new, ctx = ln - seen[m], seen[m]
                if new < n_small and ctx < n_ctx:
                    dr += small[m, u(new), u(ctx)]
                elif ctx == 0 and new < n_fresh:
                    dr += fresh[m, u(new)]
                else:
                    todo[u(t), 0], todo[u(t), 1], todo[u(t), 2], todo[u(t), 3] = ii, m, new, ctx
                    t += 1
                dr += cum[m, u(ln + steps - 1)] - cum[m, u(ln)]
                seen[m] = ln + min(steps - 1, a if x == d else 0)
                if chain[u(x)]:
                    seen[m] = ln
            new, ctx = ln - seen[0] + n, seen[0]
            if new < n_small and ctx < n_ctx:
                vr = small[0, u(new), u(ctx)]
            elif ctx == 0 and new < n_fresh:
                vr = fresh[0, u(new)]
            else:
                vr = 0
                todo[u(t), 0], todo[u(t), 1], todo[u(t), 2], todo[u(t), 3] = ii, 0, new, ctx
                t += 1
            seen[0] = ln + a
            # tally's loop body (keep the two in step)
            wall = dr + vr
            if keep:
                out[7, ii], out[8, ii], out[9, ii] = dr, vr, wall
            e = min(a + 1, length - start)  # Rounds.emitted
            out[10, ii] = e
            per_token_ms[ii] = wall / max(e, 1) / 1e6
            stats[u(6 + n)] += 1
            s_emitted += e
            s_wall += wall
            s_drafted += n
            s_accepted += a
            s_draft += dr
            s_calls += n + ((n_drafters - 1 if n > 0 else n_drafters) if pr else 0)
            top = max(top, n)
    stats[0], stats[1], stats[2] = s_emitted, s_wall, s_drafted
    stats[3], stats[4], stats[5] = s_accepted, s_draft, s_calls
    return out[:, :i], gap, todo[:t], stats[:6 + top + 1], per_token_ms[:i]


# ---- percentiles of a repeated array, by selection -------------------------------------------


@njit(cache=True)
def multiselect(values: np.ndarray, counts: np.ndarray, ranks: np.ndarray
                ) -> np.ndarray:  # pragma: no cover (jit)
    """Entries at the ascending 0-based ``ranks`` of the sorted multiset in which values[i]
    appears counts[i] >= 0 times (no NaN): a weighted multi-quickselect, expected linear time.

    Each pass splits a region around a pivot, branch-free and out of place (the smaller values
    to the front of the region in the other buffer, the larger to its back, the pivot's copies
    only counted); the ranks falling in the pivot's copies are answered, the others go on in
    the part that holds them."""
    n = values.size
    buf_v = np.empty((2, n))
    buf_w = np.empty((2, n), dtype=np.int64)
    buf_v[0], buf_w[0] = values, counts
    out = np.empty(ranks.size)
    # pending regions: lo, hi, rank of the region's first element, buffer, ranks[r0:r1]
    stack = np.empty((ranks.size + 1, 6), dtype=np.int64)
    stack[0] = (0, n, 0, 0, 0, ranks.size)
    top = 1
    while top:
        top -= 1
        lo, hi, base, side, r0, r1 = stack[top]
        src_v, src_w, dst_v, dst_w = buf_v[side], buf_w[side], buf_v[1 - side], buf_w[1 - side]
        a, b, c = src_v[lo], src_v[(lo + hi) // 2], src_v[hi - 1]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        n_lt, n_gt, w_lt, w_eq = 0, 0, 0, 0
        for i in range(lo, hi):
            x, wx = src_v[i], src_w[i]
            less, more = x < pivot, x > pivot
            dst_v[lo + n_lt], dst_w[lo + n_lt] = x, wx
            dst_v[hi - 1 - n_gt], dst_w[hi - 1 - n_gt] = x, wx
            n_lt += less
            n_gt += more
            w_lt += wx * less
            w_eq += wx * (1 - less - more)
        eq_lo, eq_hi = base + w_lt, base + w_lt + w_eq
        m0 = r0
        while m0 < r1 and ranks[m0] < eq_lo:
            m0 += 1
        m1 = m0
        while m1 < r1 and ranks[m1] < eq_hi:
            out[m1] = pivot
            m1 += 1
        if r0 < m0:
            stack[top] = (lo, lo + n_lt, base, 1 - side, r0, m0)
            top += 1
        if m1 < r1:
            stack[top] = (hi - n_gt, hi, eq_hi, 1 - side, m1, r1)
            top += 1
    return out


@njit(cache=True)
def scan(values: np.ndarray, counts: np.ndarray
         ) -> tuple[int, bool, bool, float, float]:  # pragma: no cover (jit)
    """Total count, whether some count is 0, whether a counted value is NaN, min and max."""
    total, zero, nan = 0, False, False
    lo, hi = np.inf, -np.inf
    for i in range(values.size):
        x, c = values[i], counts[i]
        total += c
        zero |= c == 0
        nan |= (x != x) & (c > 0)
        lo, hi = min(lo, x), max(hi, x)
    return total, zero, nan, lo, hi


@njit(cache=True)
def select_ranks(values: np.ndarray, counts: np.ndarray, ranks: np.ndarray, lo: float,
                 hi: float) -> np.ndarray:  # pragma: no cover (jit)
    """``multiselect`` on many values in [lo, hi]: one pass spreads them over equal-width
    buckets (monotone in the value, so a rank's value lies in the bucket holding that rank's
    cumulative count), then each rank is read off its bucket if that holds one distinct
    value, else selected among its bucket's values only."""
    n = values.size
    n_buckets = min(4096, n // 8)
    span = hi - lo
    scale = n_buckets / span if span > 0 else np.inf
    if n_buckets < 2 or not scale < np.inf:
        return multiselect(values, counts, ranks)
    top = n_buckets - 1
    size = np.zeros(n_buckets, dtype=np.int64)
    weight = np.zeros(n_buckets, dtype=np.int64)
    b_lo = np.full(n_buckets, np.inf)
    b_hi = np.full(n_buckets, -np.inf)
    for i in range(n):
        x = values[i]
        b = min(int((x - lo) * scale), top)
        size[b] += 1
        weight[b] += counts[i]
        b_lo[b] = min(b_lo[b], x)
        b_hi[b] = max(b_hi[b], x)
    out = np.empty(ranks.size)
    seg_of = np.full(n_buckets, -1, dtype=np.int64)  # bucket -> segment of candidates
    seg_bucket = np.empty(ranks.size, dtype=np.int64)
    seg_base = np.empty(ranks.size, dtype=np.int64)  # rank of the bucket's first value
    rank_seg = np.empty(ranks.size, dtype=np.int64)
    n_seg, b, below = 0, 0, 0
    for t in range(ranks.size):
        while below + weight[b] <= ranks[t]:
            below += weight[b]
            b += 1
        if b_lo[b] == b_hi[b]:  # one distinct value
            out[t] = b_lo[b]
            rank_seg[t] = -1
            continue
        if seg_of[b] < 0:
            seg_of[b] = n_seg
            seg_bucket[n_seg], seg_base[n_seg] = b, below
            n_seg += 1
        rank_seg[t] = seg_of[b]
    if n_seg == 0:
        return out
    start = np.zeros(n_seg + 1, dtype=np.int64)
    for g in range(n_seg):
        start[g + 1] = start[g] + size[seg_bucket[g]]
    fill = start[:n_seg].copy()
    cand_v = np.empty(start[n_seg])
    cand_w = np.empty(start[n_seg], dtype=np.int64)
    for i in range(n):
        g = seg_of[min(int((values[i] - lo) * scale), top)]
        if g >= 0:
            cand_v[fill[g]], cand_w[fill[g]] = values[i], counts[i]
            fill[g] += 1
    t0 = 0
    for g in range(n_seg):
        while rank_seg[t0] != g:
            t0 += 1
        t1 = t0
        while t1 < ranks.size and rank_seg[t1] == g:
            t1 += 1
        out[t0:t1] = multiselect(cand_v[start[g]:start[g + 1]], cand_w[start[g]:start[g + 1]],
                                 ranks[t0:t1] - seg_base[g])
        t0 = t1
    return out


@njit(cache=True)
def percentile_parts(values: np.ndarray, counts: np.ndarray, quantiles: np.ndarray
                     ) -> np.ndarray:  # pragma: no cover (jit)
    """For ``np.percentile(np.repeat(values, counts), 100 * quantiles)`` (method "linear"):
    rows a, b, gamma: the two sorted entries each quantile interpolates between and its
    weight, as
    numpy's ``_quantile`` computes them (float64 throughout): virtual index (n - 1) * q, its
    floor and the next index (both the last entry at or past the end, the first below 0),
    gamma = virtual - floor (floor read as -1 for "the last"). All NaN where a counted value
    is NaN or nothing is counted."""
    nq = quantiles.size
    out = np.full((3, nq), np.nan)
    a, b, gamma = out[0], out[1], out[2]
    total, zero, nan, lo, hi = scan(values, counts)
    if total == 0 or nan:
        return out
    if zero:  # drop the entries counted 0 times
        keep = counts > 0
        values, counts = values[keep], counts[keep]
        lo, hi = values.min(), values.max()
    want = np.empty(2 * nq, dtype=np.int64)
    for j in range(nq):
        virtual = (total - 1) * quantiles[j]
        i = int(np.floor(virtual))
        nxt = i + 1
        if virtual >= total - 1:
            i = nxt = -1
        if virtual < 0:
            i = nxt = 0
        gamma[j] = virtual - i
        want[j], want[nq + j] = i % total, nxt % total
    ranks = np.unique(want)
    picked = select_ranks(values, counts, ranks, lo, hi)
    for j in range(nq):
        a[j] = picked[np.searchsorted(ranks, want[j])]
        b[j] = picked[np.searchsorted(ranks, want[nq + j])]
    return out
