"""``njit``: numba's compiler where installed, else a no-op decorator (plain Python, slow).

``u`` marks an array index known to be >= 0 (numba's uint64, else ``int``): numba then leaves
out its check for negative indices (wraparound), which costs a few instructions per access in
the hot loops. Cast at the subscript only (uint64 mixed with int64 arithmetic gives floats).
"""

from __future__ import annotations

try:
    from numba import njit
    from numba import uint64 as u
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    def njit(*args, **kwargs):  # type: ignore[no-redef]
        return (lambda f: f) if not args or not callable(args[0]) else args[0]

    u = int  # type: ignore[assignment,misc]

__all__ = ["njit", "u"]
