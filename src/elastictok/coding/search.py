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
  their signs, to aim at the crossing (ITP: secant steps in log(count) whose worst case stays one
  step from bisection), and stops once it holds a failing count right below a passing one. That is
  the same answer as ``binary`` whenever the margin is monotone, in about half the evaluations on
  real videos. Without a guess (a video's first block) it first checks that every token meets the
  target (one pass when nothing can), then bisects like ``binary``. By default it runs with a
  tolerance of 1/128 of the block's tokens (below).
- ``predict``: starts from a learned prediction of the block's curve (a guess of the margin at every
  count, and how far off its crossing may be): verifies the predicted count (in a video, moved halfway
  to the count the block before took) with one real pass (just above it), tries the count that
  closes the bracket next when the prediction is confident, then aims each next count at the crossing
  of the predicted curve shifted through the margins verified so far, at the edge of the bracket that
  would close it, moving at most the prediction's spread (a limit that doubles each move) and what the
  last margin says on a curve twice as steep as the predicted one while only one side of the crossing
  is known, and bisecting after a step that did not halve the bracket. A wrong guess costs passes
  only: the count it returns was evaluated, like every other search's.
- ``official``: the official ``inference_binary`` decision rule, quirks included, for parity checks.

A tolerance (``slack``, in tokens; :func:`run_search` takes it as a fraction of the block's tokens) lets a
search stop early: once it holds a passing count with a failing count less than ``slack`` below it
(:func:`close_enough`), rather than right below it. On a monotone curve the count it returns is then
less than ``slack`` above the smallest passing one; it still always passes, or is ``hi`` when nothing
does. ``binary`` and ``fast`` probe exactly the counts they probe without a tolerance and stop sooner,
so they never take more evaluations than their exact runs. ``full`` steps by the largest stride below
``slack`` instead of one. ``grid`` has no tolerance: its candidates are the official grid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SEARCHES = ("predict", "fast", "binary", "grid", "full")
# The tolerance each search uses unless one is given, as a fraction of the block's tokens: exact (the
# official semantics) except for ``fast``, where 1/128 is the largest of 1/512..1/32 that cost at most
# 2% more tokens than exact ``binary`` on the development clips (docs/searches.md#tolerance).
DEFAULT_TOLERANCE = {"predict": 1 / 64, "fast": 1 / 128, "binary": 0.0, "grid": 0.0, "full": 0.0}


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


def check_tolerance(tolerance: object) -> float:
    """``tolerance`` as a float, or a one-line ValueError."""
    if (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real)
            or not (math.isfinite(tolerance) and 0 <= tolerance < 1)):
        raise ValueError(f"expected --tolerance to be a fraction of the block's tokens in [0, 1), got {tolerance!r}")
    return float(tolerance)


def close_enough(fail: int, passing: int, slack: float) -> bool:
    """The stopping rule every search shares: ``passing`` meets the target, ``fail`` does not (or lies
    below the range searched), and ``fail`` is right below ``passing`` or less than ``slack`` below it."""
    return passing - fail <= 1 or passing - fail < slack


def stride(slack: float) -> int:
    """The largest step k that :func:`close_enough` accepts (k < slack), and at least 1."""
    return max(1, math.ceil(slack) - 1)


def _bisect(
    probe: Callable[[int], bool], lo: int, hi: int, best: int | None, steps: int | None = None, slack: float = 0
) -> tuple[int, int, int | None]:
    """Bisect [lo, hi] for the smallest passing count (exact for a monotone probe), for at most
    ``steps`` steps or until ``best`` and lo - 1 are :func:`close_enough`; ``best`` is a known pass
    above hi. Returns the remaining (lo, hi, best): the search is over once lo > hi or they are."""
    while lo <= hi and steps != 0 and not (best is not None and close_enough(lo - 1, best, slack)):
        mid = (lo + hi) // 2
        if probe(mid):
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
        steps = None if steps is None else steps - 1
    return lo, hi, best


def binary(margin: Callable[[int], float], lo: int, hi: int, slack: float = 0) -> tuple[int, int]:
    """(count, evaluations)."""
    _check_range(lo, hi)
    probe = Probe(margin)
    _, _, best = _bisect(probe, lo, hi, None, slack=slack)
    return (hi if best is None else best), probe.evaluations


def speculative_binary(
    margins: Callable[[list[int]], list[float]], lo: int, hi: int, depth: int, slack: float = 0
) -> tuple[int, int, int]:
    """``binary``'s answer, evaluating ``depth`` levels of its decision tree per batched call.

    ``margins`` scores a list of counts at once (one batched pass). Every count bisection could
    visit in the next ``depth`` steps (2**depth - 1 of them) is scored together, then bisection walks
    those levels with the real outcomes, so the answer is ``binary``'s on any curve, monotone or
    not, in ceil(steps / depth) sequential calls. Worth it only where a batch of 2**depth - 1
    candidates costs little more than one. With a ``slack``, counts bisection would not visit before
    stopping are left out of the batches. Returns (count, evaluations, calls).
    """
    _check_range(lo, hi)
    if depth < 1:
        raise ValueError(f"expected a speculation depth >= 1, got {depth}")
    results: dict[int, float] = {}
    best, a, b, calls = None, lo, hi, 0

    def subtree(a: int, b: int, levels: int) -> list[int]:
        # Below hi, b + 1 is a pass on the path that leads here (a - 1 a fail, or below the range).
        if levels == 0 or a > b or (b < hi and close_enough(a - 1, b + 1, slack)):
            return []
        mid = (a + b) // 2
        return [mid] + subtree(a, mid - 1, levels - 1) + subtree(mid + 1, b, levels - 1)

    while a <= b and not (best is not None and close_enough(a - 1, best, slack)):
        wanted = sorted(set(n for n in subtree(a, b, depth) if n not in results))
        results.update(zip(wanted, (float(m) for m in margins(wanted))))
        calls += 1
        a, b, best = _bisect(lambda n: results[n] <= 0, a, b, best, depth, slack)
    return (hi if best is None else best), len(results), calls


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


def full(margin: Callable[[int], float], lo: int, hi: int, slack: float = 0) -> tuple[int, int]:
    """Every count from lo up, the first passing one; with a ``slack``, every :func:`stride`-th count
    (and hi), so the failing count below the one returned is less than ``slack`` below it."""
    _check_range(lo, hi)
    probe = Probe(margin)
    step = stride(slack)
    for n in [*range(lo, hi, step), hi]:
        if probe(n):
            return n, probe.evaluations
    return hi, probe.evaluations


def log_crossing(a: int, ma: float, b: int, mb: float) -> float:
    """Where the line through (log a, ma) and (log b, mb) crosses zero, as a count.

    Quality metrics fall roughly as a power of the token count, so margins are close to linear in
    log(count) and the secant lands near the crossing.
    """
    if ma == mb:
        return math.inf if (ma > 0) == (b > a) else -math.inf
    la, lb = math.log(a), math.log(b)
    return math.exp(la + (lb - la) * ma / (ma - mb))


# d margin / d log(count) assumed until a slope has been measured. Log-MSE falls by 0.7-1.3 per
# e-fold of the count on the development clips; it only places the second probe.
PRIOR_SLOPE = -1.0


def fast(
    margin: Callable[[int], float],
    lo: int,
    hi: int,
    start: int | None = None,
    slope: float | None = None,
    n0: int = 1,
    kappa: float = 0.1,
    slack: float = 0,
) -> tuple[int, int]:
    """The smallest passing count by ITP root finding (interpolate, truncate, project) from ``start``.

    ``start`` is where to look first (the previous block's count; without one, this is ``binary``);
    ``slope`` (d margin / d log count, e.g. :func:`local_slope` of the previous block)
    extrapolates from it while only one side of the crossing is known (at least doubling each move).
    Inside the bracket each step takes the secant crossing in log(count), nudged towards the midpoint
    (by ``kappa`` times the bracket's width times its share of [lo, hi])
    and pulled back to within a radius that halves every step, so that the search never needs more
    than ``n0`` steps beyond bisection of the bracket it found (Oliveira and Takahashi, 2021).
    It stops once the bracket is :func:`close_enough` for ``slack``.
    """
    _check_range(lo, hi)
    probe = Probe(margin)
    if start is None:
        # Nothing to start from (a video's first block). Where even every token misses the target,
        # one pass says so (a bisection would spend a dozen to end at hi anyway); otherwise bisect,
        # so the first block gets binary's count even where the curve is not monotone.
        if not probe(hi):
            return hi, probe.evaluations
        count, _ = binary(probe.value, lo, hi, slack)
        return count, probe.evaluations
    s = slope if slope is not None and slope < 0 else PRIOR_SLOPE
    # Invariant: every count <= a fails and b passes; lo - 1 and hi + 1 stand in until evaluated.
    a, b = lo - 1, hi + 1
    n, step, budget, reach = min(max(start, lo), hi), 0, None, 0
    while True:
        if probe(n):
            b = n
        else:
            a = n
        if a >= hi or (b <= hi and close_enough(a, b, slack)):
            return min(b, hi), probe.evaluations
        if budget is None:  # bisection steps for the first bracket, plus the slack n0
            budget = math.ceil(math.log2(b - a)) + n0
        nudge = 0.0
        if lo <= a and b <= hi:
            guess = log_crossing(a, probe.value(a), b, probe.value(b))
            # The nudge shrinks with the bracket squared (ITP's kappa2 = 2), so it fades once the
            # secant has closed in and does not push an accurate guess off the crossing.
            nudge = kappa * (b - a) ** 2 / (hi - lo + 2)
        else:
            # One side known: extrapolate along the slope, but at least double the last move (near
            # the crossing margins are close to zero and would otherwise creep a count at a time).
            last = a if lo <= a else b
            guess = last * math.exp(-probe.value(last) / s)
            reach = max(abs(guess - last), 2 * reach, 1)
            guess = last + reach if last == a else last - reach
        # In (a, b), hence in [lo, hi]: a >= lo - 1 and b <= hi + 1.
        n = _itp_point(a, b, guess, nudge, 0.5 * 2 ** (budget - step) - (b - a) / 2)
        step += 1


def _itp_point(a: int, b: int, guess: float, delta: float, radius: float) -> int:
    """The next count in (a, b): the guess, moved ``delta`` towards the midpoint (which keeps regula
    falsi from creeping up on one side) and kept within ``radius`` of the midpoint."""
    half = (a + b) / 2
    guess = min(max(guess, a + 0.5), b - 0.5)
    toward = 1 if half > guess else -1
    x = guess + toward * delta if delta <= abs(half - guess) else half
    if abs(x - half) > radius:
        x = half - toward * max(radius, 0.0)
    return min(max(round(x), a + 1), b - 1)


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


def predicted_crossing(guess: Callable[[int], float], counts: list[int]) -> float:
    """Where ``guess`` first reaches 0 along ascending ``counts`` (linear in log count between the last
    count above 0 and the first at or below it); ``math.inf`` when it never does."""
    previous = None
    for n in counts:
        m = guess(n)
        if m <= 0:
            if previous is None:
                return float(n)
            return min(log_crossing(previous[0], previous[1], n, m), float(n))
        previous = (n, m)
    return math.inf


def estimated_crossing(curve: Callable[[int], float], counts: list[int], lo: int) -> float:
    """:func:`predicted_crossing`, extrapolated below ``lo`` (down to 1) from the first two counts where
    ``curve`` already meets the target at ``lo``: how far below says whether to try ``lo`` itself."""
    c = predicted_crossing(curve, counts)
    if c <= lo and len(counts) > 1:
        c = min(max(log_crossing(counts[0], curve(counts[0]), counts[1], curve(counts[1])), 1.0), lo)
    return c


def shifted(guess: Callable[[int], float], results: dict[int, float]) -> Callable[[int], float]:
    """``guess`` plus its error at the evaluated counts, interpolated in log count between them (constant
    beyond), so it passes through every measured margin."""
    known = sorted(results)
    if not known:
        return guess
    errors = [results[n] - guess(n) for n in known]
    logs = [math.log(n) for n in known]

    def corrected(n: int) -> float:
        x = math.log(n)
        if x <= logs[0]:
            return guess(n) + errors[0]
        if x >= logs[-1]:
            return guess(n) + errors[-1]
        j = next(i for i, v in enumerate(logs) if v >= x)
        w = (x - logs[j - 1]) / (logs[j] - logs[j - 1])
        return guess(n) + (1 - w) * errors[j - 1] + w * errors[j]

    return corrected


# ``predict`` tries the count that closes the bracket after its first pass when the predicted spread is
# at most this many strides (on the development clips 2 to 8 all saved passes at MSE 0.02 and 0.03).
CONFIDENT = 4
# A predicted curve averages over where a block's real drop lies, so it is flatter than the real one:
# on the development blocks the real slope at the crossing was about twice the predicted one at MSE 0.02
# and PSNR 25 dB (alike at MSE 0.03). One-sided moves go no further than a curve this much steeper says.
STEEPER = 2.0


def predict(
    margin: Callable[[int], float],
    lo: int,
    hi: int,
    guess: Callable[[int], float],
    spread: float = 0.0,
    slack: float = 0,
    counts: list[int] | None = None,
    start: int | None = None,
) -> tuple[int, int]:
    """The smallest passing count (within ``slack``), steered by a predicted margin curve ``guess``.

    ``spread`` is the prediction's uncertainty in tokens: at most ``CONFIDENT`` strides, the second
    probe is the one that closes the bracket; otherwise, while only one side of the crossing is known,
    a move goes to the corrected crossing but no further than this, a limit that doubles each move, nor
    than the measured margin says on a curve ``STEEPER`` times steeper than the predicted one (a
    predicted curve flatter than the real one would otherwise send it far past the crossing).
    ``counts`` are where ``guess`` is read (default: every count in [lo, hi]). ``start``, the count the
    block before took, moves the first probe halfway to it (:func:`first_estimate`). Exact for a
    monotone margin with ``slack`` 0; on any curve the count returned passes, or is ``hi`` when it fails.
    """
    _check_range(lo, hi)
    probe = Probe(margin)
    counts = counts or list(range(lo, hi + 1))
    k = stride(slack)
    a, b = lo - 1, hi + 1  # every count <= a fails (or lies below the range); b passes (or lies above)
    n = clamp_count(_above(first_estimate(estimated_crossing(guess, counts, lo), start), k), lo, hi)
    width, halvings, reach = None, 0, 0.0
    while True:
        if probe(n):
            b = n
        else:
            a = n
        if a >= hi:
            return hi, probe.evaluations
        if b <= hi and close_enough(a, b, slack):
            return b, probe.evaluations
        c = estimated_crossing(shifted(guess, probe.results), [m for m in counts if a < m < b] + [b], lo)
        c = min(c, b - 0.5) if b <= hi else c
        if lo <= a and b <= hi:
            # Bisect after a step that did not halve the bracket (the corrected curve misled it).
            halvings = halvings + 1 if width is not None and (b - a) > width / 2 else 0
            width = b - a
            n = (a + b) // 2 if halvings >= 1 else _aim(a, b, c, k)
        elif probe.evaluations == 1 and spread <= CONFIDENT * k:
            # A confident prediction is most likely within a stride of its crossing: try to close at once.
            n = min(max(b - k if b <= hi else a + k, lo), hi)
        else:  # one side only: towards the corrected crossing, within a trust region that doubles each move
            reach = max(spread, float(k)) if reach == 0 else 2 * reach
            edge = b if b <= hi else a
            # A corrected curve that never meets the target (c infinite) moves the whole trust region.
            move = min(abs(c - edge), reach, _steeper_distance(guess, edge, probe.results[edge], lo, hi))
            move = max(move, float(k))
            n = _aim(a, b, b - move if b <= hi else a + move, k)


def first_estimate(crossing: float, start: int | None) -> float:
    """Where ``predict`` looks first: the predicted ``crossing`` (:func:`estimated_crossing`), moved halfway
    in log count to ``start``, the count the block before took, where there is one and the guess crosses.

    The blocks of a video change slowly, so the count the block before took is a good estimate, while the
    prediction sees a change in the content; on the development clips their geometric mean was about as
    close to the exact count as the corrected prediction, or closer. Only the first probe uses it: later ones
    aim with the prediction corrected by what they measured.
    """
    return crossing if start is None or not math.isfinite(crossing) else math.sqrt(crossing * start)


def _steeper_distance(guess: Callable[[int], float], n: int, margin: float, lo: int, hi: int) -> float:
    """How far from count ``n`` (measured ``margin``) the crossing lies on a curve ``STEEPER`` times as
    steep as ``guess`` around ``n`` in log count; infinite where ``guess`` does not fall there."""
    up, down = min(hi, round(n * 1.1)), max(lo, round(n / 1.1))
    slope = (guess(down) - guess(up)) / math.log(up / down) * STEEPER if up > down else 0.0
    if slope <= 0:
        return math.inf
    return abs(n * math.exp(min(max(margin / slope, -30.0), 30.0)) - n)


def clamp_count(x: float, lo: int, hi: int) -> int:
    """An estimated crossing as a count in [lo, hi]: rounded up, ``hi`` where there is none (infinite)."""
    return hi if not math.isfinite(x) else min(max(math.ceil(x), lo), hi)


def _aim(a: int, b: int, c: float, k: int) -> int:
    """The next count in (a, b) for a crossing estimated at ``c``: right above ``a`` where half a stride
    above ``c`` lies there (only below the range searched: a real fail's corrected curve crosses above
    it), one that closes the bracket if the estimate is right (k below a pass, or k above a fail), else
    just above ``c`` (:func:`_above`)."""
    if a + 1 < b and _above(c, k) <= a + 1:
        return a + 1
    if b - k > a and c >= b - k:
        return b - k
    if a + k < b and c <= a + k:
        return a + k
    return min(max(math.ceil(_above(c, k)), a + 1), b - 1)


def _above(c: float, k: int) -> float:
    """Half a stride above an estimated crossing: a likely pass whose next probe, k below, likely fails."""
    return c + k / 2 - 0.5 if k > 1 else c


def official_binary(
    loss: Callable[[int], float], min_toks: int, max_toks: int, threshold: float
) -> tuple[int, list[int]]:
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


def tolerance_for(name: str, tolerance: float | None) -> float:
    """The tolerance ``name`` runs with: ``tolerance``, or the search's default where None. Refuses
    unknown searches, invalid tolerances and a tolerance for ``grid``."""
    if name not in SEARCHES:
        raise ValueError(f"unknown search {name!r}; expected one of {SEARCHES}")
    if tolerance is None:
        return DEFAULT_TOLERANCE[name]
    tolerance = check_tolerance(tolerance)
    if name == "grid" and tolerance > 0:
        raise ValueError("--tolerance does not apply to --search grid (its candidates are the official grid); "
                         "leave it unset or 0")
    return tolerance


@dataclass
class Guess:
    """A predicted margin curve: ``margin(n)`` for any count, read at ``counts``, and its ``spread``
    (the uncertainty of its crossing, in tokens)."""

    margin: Callable[[int], float]
    spread: float
    counts: list[int] | None = None


@dataclass
class SearchResult:
    count: int
    evaluations: int
    slope: float | None = None  # local d margin / d log(count), a hint for the next block
    calls: int | None = None  # sequential (batched) passes; None: one per evaluation
    residual: float | None = None  # predict: real minus predicted margin at the count chosen

    @property
    def passes(self) -> int:
        return self.evaluations if self.calls is None else self.calls


def run_search(
    name: str,
    margin: Callable[[int], float],
    lo: int,
    hi: int,
    start: int | None = None,
    slope: float | None = None,
    margins: Callable[[list[int]], list[float]] | None = None,
    depth: int = 1,
    tolerance: float | None = None,
    tokens: int | None = None,
    guess: Guess | None = None,
) -> SearchResult:
    """Dispatch by name. ``start`` (the block before's count) is a hint for ``fast`` and ``predict``;
    ``slope`` one that only ``fast`` uses; so are ``margins``
    (a batched ``margin``) and ``depth``, which switch it to :func:`speculative_binary`. ``guess`` is
    the predicted curve ``predict`` needs. ``tolerance`` is a fraction of ``tokens`` (the block's
    tokens; default hi), None: the search's default."""
    tolerance = tolerance_for(name, tolerance)
    if name == "predict" and guess is None:
        raise ValueError("the predict search needs a predicted curve (a model with a token-count predictor)")
    slack = tolerance * (hi if tokens is None else tokens)
    probe = Probe(margin)  # shared memo, so the slope can be read off whatever the search evaluated
    if name == "fast" and depth > 1 and margins is not None:
        count, evaluations, calls = speculative_binary(margins, lo, hi, depth, slack)
        return SearchResult(count, evaluations, slope, calls)
    if name == "predict":
        count, _ = predict(probe.value, lo, hi, guess.margin, guess.spread, slack, guess.counts, start)
        # How far the guess was off at the count chosen: the next block's guess starts corrected by it.
        residual = probe.results[count] - guess.margin(count) if count in probe.results else None
        return SearchResult(count, probe.evaluations, slope, residual=residual)
    if name == "fast":
        count, _ = fast(probe.value, lo, hi, start, slope, slack=slack)
    elif name == "binary":
        count, _ = binary(probe.value, lo, hi, slack)
    elif name == "grid":
        count, _ = grid(probe.value, lo, hi)
    else:
        count, _ = full(probe.value, lo, hi, slack)
    return SearchResult(count, probe.evaluations, local_slope(probe.results, count) or slope)
