"""Choosing a block's token count: pure searches over a loss callable.

Every search takes ``margin(n) -> float`` over the counts ``lo..hi``: how far keeping n tokens is from
the target, with ``margin <= 0`` meaning the target is met (for MSE, log(mse / threshold)). It
returns the count it picks and how many counts it evaluated; none of them knows about models. When
nothing meets the target they fall back to ``hi`` (every token), like the official code.

- ``binary``: bisection for the smallest passing count. The official loop can end one below the
  smallest passing count (it returns the last midpoint tried, passing or not); this one returns the
  smallest passing count it saw, which is the true smallest one whenever ``ok`` is monotone.
- ``grid``: the official log-spaced grid of 100 candidates; the smallest passing grid point.
- ``full``: every count in order; the exact smallest passing count even when ``ok`` is not monotone.
- ``fast``: starts from a guess (the previous block's count), uses the margins' values, not just
  their signs, to jump to the predicted crossing (secant steps, safeguarded by bisection), and stops
  once it holds a failing count right below a passing one. That is the same answer as ``binary``
  whenever the margin is monotone, usually in 3-5 evaluations instead of 12. Without a guess
  (a video's first block) it bisects like ``binary``.
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
    """Memoised margin: each count is evaluated at most once."""

    margin: Callable[[int], float]
    results: dict[int, float] = field(default_factory=dict)

    def value(self, n: int) -> float:
        if n not in self.results:
            self.results[n] = float(self.margin(n))
        return self.results[n]

    def __call__(self, n: int) -> bool:
        return self.value(n) <= 0

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


def binary(margin: Callable[[int], float], lo: int, hi: int) -> tuple[int, int]:
    """(count, evaluations)."""
    _check_range(lo, hi)
    probe = Probe(margin)
    best = _bisect(probe, lo, hi, None)
    return (hi if best is None else best), probe.evaluations


def grid_candidates(lo: int, hi: int, num: int = 100) -> list[int]:
    """The official grid: ``num`` counts evenly spaced in log2 between lo and hi, cast to int."""
    values = np.exp2(np.linspace(np.log2(lo), np.log2(hi), num)).astype(np.int64)
    return sorted(set(int(v) for v in np.clip(values, lo, hi)))


def grid(margin: Callable[[int], float], lo: int, hi: int, num: int = 100) -> tuple[int, int]:
    _check_range(lo, hi)
    probe = Probe(margin)
    # Ascending order with an early stop picks the same count as scoring all candidates.
    for n in grid_candidates(lo, hi, num):
        if probe(n):
            return n, probe.evaluations
    return hi, probe.evaluations


def full(margin: Callable[[int], float], lo: int, hi: int) -> tuple[int, int]:
    _check_range(lo, hi)
    probe = Probe(margin)
    for n in range(lo, hi + 1):
        if probe(n):
            return n, probe.evaluations
    return hi, probe.evaluations


def _crossing(a: int, ma: float, b: int, mb: float) -> float:
    """Where the line through (log a, ma) and (log b, mb) crosses zero, as a count.

    Quality metrics fall roughly as a power of the token count, so margins are close to linear in
    log(count) and the secant lands near the crossing.
    """
    if ma == mb:
        return math.inf if (ma > 0) == (b > a) else -math.inf
    la, lb = math.log(a), math.log(b)
    return math.exp(la + (lb - la) * ma / (ma - mb))


def fast(
    margin: Callable[[int], float], lo: int, hi: int, start: int | None = None, slope: float | None = None
) -> tuple[int, int]:
    """Bracket the crossing from ``start`` by extrapolation, then close it with safeguarded secant steps.

    ``slope`` (d margin / d log count, e.g. from the previous block: :func:`local_slope`) lets the
    first step jump straight to the predicted crossing.
    """
    _check_range(lo, hi)
    if start is None or not lo <= start <= hi:
        return binary(margin, lo, hi)  # nothing to start from: bisection is the best blind search
    probe = Probe(margin)
    bracket = _bracket(probe, lo, hi, start, slope)
    if not isinstance(bracket, tuple):
        return (hi if bracket is None else bracket), probe.evaluations
    f, p = bracket  # f fails, p passes, f < p
    secant = True
    while p - f > 1:
        width = p - f
        if secant:
            n = min(max(math.ceil(_crossing(f, probe.value(f), p, probe.value(p))), f + 1), p - 1)
        else:
            n = (f + p) // 2
        f, p = (f, n) if probe(n) else (n, p)
        # A good secant lands next to the crossing: check the neighbour on the other side, but only
        # while the narrowed bracket still points at n (real curves bend at frame and row boundaries
        # of the token order, and a blind check there mostly wastes a pass).
        if secant and p - f > 1 and abs(_crossing(f, probe.value(f), p, probe.value(p)) - n) <= 1.5:
            m = n - 1 if p == n else n + 1
            f, p = (f, m) if probe(m) else (m, p)
        # Secant steps that did not halve the bracket are followed by a bisection step.
        secant = not secant or (p - f) <= width / 2
    return p, probe.evaluations


def _bracket(probe: Probe, lo: int, hi: int, start: int, slope: float | None) -> tuple[int, int] | int | None:
    """(failing, passing) counts around the crossing, found by walking out from ``start`` in [lo, hi],
    or the answer itself when it is already known (an int: ``lo`` passes; None: even ``hi`` fails)."""
    prev, n = None, start
    while True:
        passed = probe(n)
        if passed and n == lo:
            return lo
        if not passed and n == hi:
            return None
        if prev is not None and probe(prev) != passed:
            return (prev, n) if passed else (n, prev)
        direction = -1 if passed else 1
        if prev is None and slope is not None and slope < 0:
            guess = math.exp(math.log(n) - probe.value(n) / slope)
            step = max(1, math.ceil(1.05 * abs(guess - n)))
        elif prev is None:
            step = max(1, round(0.02 * n))  # a short step to learn the local slope
        else:
            guess = _crossing(prev, probe.value(prev), n, probe.value(n))
            # Overshoot the predicted crossing a little, and at least double the last step.
            step = max(2 * abs(n - prev), math.ceil(1.05 * abs(guess - n)) if math.isfinite(guess) else 0)
        prev, n = n, min(hi, max(lo, n + direction * step))


def local_slope(results: dict[int, float], count: int) -> float | None:
    """d margin / d log(count) from the two evaluated counts nearest ``count`` on either side of it."""
    below = [n for n in results if n < count]
    above = [n for n in results if n >= count]
    if not below or not above:
        return None
    # Adjacent counts give a noisy slope (single-token wiggles); prefer points at least 5% away.
    far_below = [n for n in below if n <= count / 1.05]
    far_above = [n for n in above if n >= count * 1.05]
    a = max(far_below) if far_below else min(below)
    b = min(far_above) if far_above else max(above)
    return (results[b] - results[a]) / (math.log(b) - math.log(a))


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


@dataclass
class SearchResult:
    count: int
    evaluations: int
    slope: float | None = None  # local d margin / d log(count), a hint for the next block


def run_search(
    name: str, margin: Callable[[int], float], lo: int, hi: int, start: int | None = None, slope: float | None = None
) -> SearchResult:
    """Dispatch by name. ``start`` and ``slope`` are hints that only ``fast`` uses."""
    probe = Probe(margin)  # shared memo, so the slope can be read off whatever the search evaluated
    if name == "fast":
        count, _ = fast(probe.value, lo, hi, start, slope)
    elif name == "binary":
        count, _ = binary(probe.value, lo, hi)
    elif name == "grid":
        count, _ = grid(probe.value, lo, hi)
    elif name == "full":
        count, _ = full(probe.value, lo, hi)
    else:
        raise ValueError(f"unknown search {name!r}; expected one of {SEARCHES}")
    return SearchResult(count, probe.evaluations, local_slope(probe.results, count) or slope)
