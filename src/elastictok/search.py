"""Choosing a block's token count: pure searches over a loss callable.

Every search takes ``ok(n) -> bool`` ("does keeping n tokens meet the target?") over the counts
``lo..hi`` and returns the count it picks; none of them knows about models. When nothing meets the
target they fall back to ``hi`` (every token), like the official code.

- ``binary``: bisection for the smallest passing count. The official loop can end one below the
  smallest passing count (it returns the last midpoint tried, passing or not); this one returns the
  smallest passing count it saw, which is the true smallest one whenever ``ok`` is monotone.
- ``grid``: the official log-spaced grid of 100 candidates; the smallest passing grid point.
- ``full``: every count in order; the exact smallest passing count even when ``ok`` is not monotone.
- ``fast``: gallops outwards from a starting guess (the previous block's count), then bisects the
  bracket it found. Same answer as ``binary`` for a monotone ``ok``, in far fewer evaluations when
  neighbouring blocks need similar counts.
- ``official``: the official ``inference_binary`` decision rule, quirks included, for parity checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SEARCHES = ("fast", "binary", "grid", "full")


@dataclass
class Probe:
    """Memoised ``ok``: each count is evaluated at most once; the order of evaluations is kept."""

    ok: Callable[[int], bool]
    results: dict[int, bool] = field(default_factory=dict)

    def __call__(self, n: int) -> bool:
        if n not in self.results:
            self.results[n] = bool(self.ok(n))
        return self.results[n]

    @property
    def evaluations(self) -> int:
        return len(self.results)


def _check_range(lo: int, hi: int) -> None:
    if not 1 <= lo <= hi:
        raise ValueError(f"expected 1 <= min tokens <= max tokens, got {lo} and {hi}")


def _bisect(probe: Probe, lo: int, hi: int, best: int | None) -> int | None:
    """Smallest passing count in [lo, hi] for a monotone probe; ``best`` is a known pass above hi."""
    while lo <= hi:
        mid = (lo + hi) // 2
        if probe(mid):
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
    return best


def binary(ok: Callable[[int], bool], lo: int, hi: int) -> tuple[int, int]:
    """(count, evaluations)."""
    _check_range(lo, hi)
    probe = Probe(ok)
    best = _bisect(probe, lo, hi, None)
    return (hi if best is None else best), probe.evaluations


def grid_candidates(lo: int, hi: int, num: int = 100) -> list[int]:
    """The official grid: ``num`` counts evenly spaced in log2 between lo and hi, cast to int."""
    values = np.exp2(np.linspace(np.log2(lo), np.log2(hi), num)).astype(np.int64)
    return sorted(set(int(v) for v in np.clip(values, lo, hi)))


def grid(ok: Callable[[int], bool], lo: int, hi: int, num: int = 100) -> tuple[int, int]:
    _check_range(lo, hi)
    probe = Probe(ok)
    # Ascending order with an early stop picks the same count as scoring all candidates.
    for n in grid_candidates(lo, hi, num):
        if probe(n):
            return n, probe.evaluations
    return hi, probe.evaluations


def full(ok: Callable[[int], bool], lo: int, hi: int) -> tuple[int, int]:
    _check_range(lo, hi)
    probe = Probe(ok)
    for n in range(lo, hi + 1):
        if probe(n):
            return n, probe.evaluations
    return hi, probe.evaluations


def fast(ok: Callable[[int], bool], lo: int, hi: int, start: int | None = None) -> tuple[int, int]:
    """Gallop from ``start`` to bracket the answer, then bisect the bracket."""
    _check_range(lo, hi)
    if start is None:  # no guess (the first block): plain bisection is the cheapest bracket
        return binary(ok, lo, hi)
    probe = Probe(ok)
    start = min(max(start, lo), hi)
    if probe(start):
        # Walk down in doubling steps until a count fails or lo is reached.
        passing, step = start, 1
        while passing > lo:
            n = max(lo, passing - step)
            if not probe(n):
                return _bisect(probe, n + 1, passing - 1, passing), probe.evaluations
            passing, step = n, step * 2
        return passing, probe.evaluations
    failing, step = start, 1
    while failing < hi:
        n = min(hi, failing + step)
        if probe(n):
            return _bisect(probe, failing + 1, n - 1, n), probe.evaluations
        failing, step = n, step * 2
    return hi, probe.evaluations


def official_binary(loss: Callable[[int], float], min_toks: int, max_toks: int, threshold: float) -> tuple[int, list[int]]:
    """The official ``inference_binary`` rule for one block of one clip.

    ``loss(kept)`` scores a candidate by its number of kept tokens. Returns (the official *reported*
    count n, which keeps min(n + 1, max_toks) tokens; the kept counts evaluated in order). The
    official batched loop also evaluates clips that have already stopped; those re-evaluations do
    not change this clip's outcome except through the fallback rule, which only asks whether any
    evaluation passed, so they are not replayed here.
    """
    lower, upper = min_toks, max_toks
    tried, passed, n = [], False, max_toks
    while upper > lower:
        n = math.ceil((lower + upper) / 2)
        kept = min(n + 1, max_toks)
        tried.append(kept)
        if loss(kept) < threshold:  # strict, as in the official code
            passed, upper = True, n - 1
        else:
            lower = n
    if not passed:
        n = max_toks
    return n, tried


def run_search(name: str, ok: Callable[[int], bool], lo: int, hi: int, start: int | None = None) -> tuple[int, int]:
    """Dispatch by name; returns (count, evaluations)."""
    if name == "fast":
        return fast(ok, lo, hi, start)
    if name == "binary":
        return binary(ok, lo, hi)
    if name == "grid":
        return grid(ok, lo, hi)
    if name == "full":
        return full(ok, lo, hi)
    raise ValueError(f"unknown search {name!r}; expected one of {SEARCHES}")
