"""The ``predict`` search's contract on synthetic curves: whatever the guess, the count it returns passes
(or is the maximum when nothing does), within the tolerance, and exactly the smallest at tolerance 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from elastictok.coding.search import Guess, binary, predict, predicted_crossing, run_search, shifted


def power_law(k: float, slope: float = 1.3):
    """A monotone margin crossing zero between k - 1 and k, like log(mse / threshold) for a power law."""
    return lambda n: slope * (math.log(k - 0.5) - math.log(n))


def staircase(rng, lo, hi):
    """Monotone with flat stretches and cliffs, like real curves near the crossing."""
    drops = np.sort(rng.choice(np.arange(lo, hi + 1), size=int(rng.integers(1, 12)), replace=False))
    heights = rng.exponential(1.0, drops.size)
    level = float(rng.uniform(-0.6, 0.6) * heights.sum())
    return lambda n: level + heights[drops > n].sum() - heights.sum() / 2


def smallest_pass(margin, lo, hi):
    return next((n for n in range(lo, hi + 1) if margin(n) <= 0), hi)


def check(margin, lo, hi, guess, spread, slack):
    count, evaluations = predict(margin, lo, hi, guess, spread, slack)
    assert lo <= count <= hi
    exact = smallest_pass(margin, lo, hi)
    if margin(hi) > 0:
        assert count == hi
    else:
        assert margin(count) <= 0  # it passes
        assert count - exact < max(slack, 1) + (slack > 1) * 0  # within the tolerance (exact when slack <= 1)
        if slack <= 1:
            assert count == exact
    return count, evaluations


@pytest.mark.parametrize("seed", range(4))
def test_every_count_passes_and_respects_the_tolerance_whatever_the_guess(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        lo, hi = int(rng.integers(1, 200)), int(rng.integers(300, 3000))
        margin = staircase(rng, lo, hi) if rng.random() < 0.5 else power_law(float(rng.integers(lo, hi + 40)))
        kind = rng.integers(4)
        if kind == 0:  # a good guess
            guess = lambda n, m=margin, e=float(rng.normal(0, 0.05)): m(n) + e  # noqa: E731
        elif kind == 1:  # a wrong level
            guess = lambda n, m=margin, e=float(rng.normal(0, 2)): m(n) + e  # noqa: E731
        elif kind == 2:  # a curve that never reaches the target
            guess = lambda n: 5.0  # noqa: E731
        else:  # one that always passes
            guess = lambda n: -5.0  # noqa: E731
        slack = float(rng.choice([0, 1, 5.5, 0.02 * hi]))
        check(margin, lo, hi, guess, float(rng.uniform(0, 200)), slack)


def test_exact_at_tolerance_zero_like_binary():
    rng = np.random.default_rng(7)
    for _ in range(200):
        lo, hi = int(rng.integers(1, 100)), int(rng.integers(200, 2000))
        k = int(rng.integers(lo, hi + 1))
        margin = power_law(k)
        guess = lambda n, e=float(rng.normal(0, 0.3)): margin(n) + e  # noqa: E731
        assert predict(margin, lo, hi, guess, 50.0, 0)[0] == binary(margin, lo, hi)[0] == k


def test_nothing_passes_costs_one_pass_when_predicted_and_falls_back_to_the_maximum():
    never = lambda n: 1.0  # noqa: E731
    assert predict(never, 10, 1000, lambda n: 0.5, 10.0, 0) == (1000, 1)
    # A guess that wrongly promises a pass costs passes, never correctness.
    count, evaluations = predict(never, 10, 1000, lambda n: -1.0, 10.0, 0)
    assert count == 1000 and evaluations > 1


def test_a_target_predicted_met_at_the_fewest_tokens_tries_them_first():
    # Every count passes (an easy block): one pass, and exactly the minimum, whatever the tolerance.
    assert predict(lambda n: -1.0, 88, 1344, lambda n: -0.5, 10.0, 1344 / 64) == (88, 1)
    # One that meets the target barely below the minimum (extrapolated: at 85) probes half a stride above it.
    assert predict(lambda n: -1.0, 88, 1344, power_law(85.5), 10.0, 1344 / 64) == (95, 1)
    # The guess promised the minimum but it fails: still the smallest passing count, within the tolerance.
    margin = power_law(120)
    count, evaluations = predict(margin, 88, 1344, lambda n: -0.5, 10.0, 1344 / 64)
    assert margin(count) <= 0 and count - 120 < 1344 / 64 and evaluations > 1
    # Moving down from a pass towards a crossing predicted below the minimum lands on the minimum.
    # (an unsure guess crossing at 200: its first probe passes by far, so the corrected crossing is the minimum)
    assert predict(lambda n: -1.0, 88, 1344, lambda n: 0.1 * (math.log(200) - math.log(n)), 500.0, 21) == (88, 2)


def test_a_good_guess_needs_about_two_passes_and_a_bad_one_stays_bounded():
    lo, hi, slack = 49, 784, 784 / 64
    good, bad = [], []
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(100, 700))
        margin = power_law(k)
        good.append(predict(margin, lo, hi, lambda n, m=margin: m(n) + 0.01, 20.0, slack)[1])
        bad.append(predict(margin, lo, hi, lambda n, m=margin: 0.4 * m(n) + 1.0, 20.0, slack)[1])
    assert np.mean(good) <= 2.2
    # A misleading guess: still no worse than a few passes beyond bisecting the whole range.
    assert max(bad) <= math.ceil(math.log2(hi - lo)) + 4


def test_corrected_curve_passes_through_the_measured_margins():
    guess = lambda n: math.log(300 / n)  # noqa: E731
    measured = {100: 2.0, 400: -0.5}
    curve = shifted(guess, measured)
    assert curve(100) == pytest.approx(2.0) and curve(400) == pytest.approx(-0.5)
    assert predicted_crossing(curve, list(range(1, 1000))) < 400
    assert predicted_crossing(lambda n: 1.0, [1, 2, 3]) == math.inf


def test_run_search_needs_a_guess_for_predict():
    margin = power_law(300)
    with pytest.raises(ValueError, match="predicted curve"):
        run_search("predict", margin, 10, 1000)
    found = run_search("predict", margin, 10, 1000, guess=Guess(margin, 5.0), tolerance=0)
    assert found.count == 300


def test_a_confident_exact_guess_closes_in_two_passes():
    # Its first pass lands just above the crossing and passes; the count a stride below fails.
    lo, hi, slack = 84, 1344, 1344 / 64
    for k in range(120, 1300, 37):
        margin = power_law(k)
        count, evaluations = predict(margin, lo, hi, margin, 10.0, slack)
        assert evaluations == 2 and margin(count) <= 0 and count - k < slack


def test_a_confident_guess_just_off_the_crossing_closes_next_even_when_its_slope_is_wrong():
    # A guess too flat, crossing half a stride below the real one: its corrected curve points far above,
    # but a confident prediction (spread within a few strides) tries the count that closes the bracket.
    lo, hi, slack = 84, 1344, 1344 / 64
    for k in range(150, 1200, 53):
        margin = power_law(k)
        flat = power_law(k - 20, slope=0.2)
        count, evaluations = predict(margin, lo, hi, flat, 60.0, slack)
        assert evaluations == 2 and margin(count) <= 0 and count - k < slack


def test_an_unsure_guess_too_flat_moves_no_further_than_a_steeper_curve_says():
    # A guess half as steep as the real curve, crossing 30 tokens low, with a wide spread: after its
    # failing first pass the corrected curve points about twice too far; the move is held to what a
    # curve twice as steep as the guess says, which lands near the real crossing.
    lo, hi, slack = 84, 1344, 1344 / 64
    for k in range(200, 1100, 61):
        margin = power_law(k, slope=2.0)
        flat = power_law(k - 30, slope=1.0)
        count, evaluations = predict(margin, lo, hi, flat, 400.0, slack)
        assert evaluations <= 3 and margin(count) <= 0 and count - k < slack


def test_the_first_probe_lies_halfway_in_log_count_to_the_count_the_block_before_took():
    margin, lo, hi, slack = power_law(200.0), 50, 1600, 0.0
    tried = []
    logged = lambda n: tried.append(n) or margin(n)  # noqa: E731
    guess = power_law(800.0)  # four times too many tokens
    count, _ = predict(logged, lo, hi, guess, spread=300.0, slack=slack, start=50)
    assert tried[0] == 200  # sqrt(800 * 50) (the crossing lies between 799 and 800)
    assert count == 200
    tried.clear()
    assert predict(logged, lo, hi, guess, spread=300.0, slack=slack)[0] == 200
    assert tried[0] == 800  # without a start, the prediction alone
    # A guess that never meets the target is not moved: it tries every token first, start or not.
    tried.clear()
    predict(logged, lo, hi, lambda n: 5.0, slack=slack, start=50)
    assert tried[0] == hi


@pytest.mark.parametrize("seed", range(2))
def test_any_start_keeps_the_contract(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        lo, hi = int(rng.integers(1, 200)), int(rng.integers(300, 3000))
        margin = staircase(rng, lo, hi)
        guess = lambda n, m=margin, e=float(rng.normal(0, 1)): m(n) + e  # noqa: E731
        slack = float(rng.choice([0, 5.5, 0.02 * hi]))
        start = int(rng.integers(lo, hi + 1))
        count, _ = predict(margin, lo, hi, guess, float(rng.uniform(0, 200)), slack, start=start)
        exact = smallest_pass(margin, lo, hi)
        if margin(hi) > 0:
            assert count == hi
        else:
            assert margin(count) <= 0 and count - exact < max(slack, 1)
