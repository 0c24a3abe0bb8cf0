from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.search import (
    binary,
    fast,
    full,
    grid,
    grid_candidates,
    official_binary,
    run_search,
    speculative_binary,
)
from elastictok.coding.target import Target
from elastictok.metrics.pixel import block_mse
from helpers import PARITY, need_dir, random_video, tiny


def threshold_at(k: int):
    """A monotone margin crossing zero at k, like log(mse / threshold) for a power-law curve."""
    return lambda n: 1.3 * (np.log(k - 0.5) - np.log(n))


@pytest.mark.parametrize("seed", range(5))
def test_searches_agree_on_monotone_targets(seed):
    rng = random.Random(seed)
    for _ in range(200):
        lo = rng.randint(1, 300)
        hi = rng.randint(lo, 4096)
        k = rng.randint(lo, hi + 3)  # beyond hi: nothing passes
        expected = min(k, hi) if k <= hi else hi
        start = rng.randint(lo, hi)
        assert binary(threshold_at(k), lo, hi)[0] == expected
        assert full(threshold_at(k), lo, hi)[0] == expected
        assert fast(threshold_at(k), lo, hi, start)[0] == expected
        g = [c for c in grid_candidates(lo, hi) if c >= k]
        assert grid(threshold_at(k), lo, hi)[0] == (g[0] if g else hi)


@pytest.mark.parametrize("seed", range(3))
def test_fast_is_never_much_worse_than_bisection(seed):
    # Monotone staircases with flat stretches and cliffs (what real curves look like near the crossing)
    # defeat interpolation; ITP's radius still bounds fast by the start probe, bisection and one step.
    rng = np.random.default_rng(seed)
    for _ in range(300):
        lo, hi = int(rng.integers(1, 200)), int(rng.integers(300, 4096))
        drops = np.sort(rng.choice(np.arange(lo, hi + 1), size=int(rng.integers(1, 12)), replace=False))
        heights = rng.exponential(1.0, drops.size) * rng.choice([1e-3, 1.0], drops.size)
        level = float(rng.uniform(-0.5, 0.5) * heights.sum())
        margin = lambda n: level + heights[drops > n].sum() - heights.sum() / 2  # noqa: E731
        start = int(rng.integers(lo, hi + 1)) if rng.random() < 0.8 else None
        slope = float(-rng.uniform(0.1, 5)) if rng.random() < 0.5 else None
        count, evals = fast(margin, lo, hi, start, slope)
        assert count == binary(margin, lo, hi)[0]
        assert evals <= 1 + math.ceil(math.log2(hi - lo + 2)) + 1 + 1


def test_fast_is_cheap_near_its_start_and_bounded_far_away():
    _, near = fast(threshold_at(1000), 256, 4096, start=1003)
    _, far = fast(threshold_at(300), 256, 4096, start=4000)
    _, bisect = binary(threshold_at(1000), 256, 4096)
    _, exact = fast(threshold_at(1000), 256, 4096, start=1000)
    assert exact <= 3 and near <= 4 and bisect == 12
    assert far <= bisect
    # With the slope of the previous block, a jump lands next to the crossing.
    found = run_search("fast", threshold_at(1500), 256, 4096, start=1000, slope=-1.3)
    assert found.count == 1500 and found.evaluations <= 4


def test_an_unreachable_target_costs_fast_one_pass():
    never = lambda n: 1.0  # noqa: E731  every count misses the target
    assert fast(never, 84, 1344) == (1344, 1)  # a first block: every token is checked first
    assert fast(never, 84, 1344, start=1344) == (1344, 1)  # later blocks start from the last count
    assert binary(never, 84, 1344)[1] > 10


def test_fast_without_a_start_bisects_and_reads_the_slope_over_a_wide_baseline():
    # A first block gets binary's count even on a curve that is not monotone.
    wiggle = np.random.default_rng(0).normal(0, 0.3, 1400)
    margin = lambda n: 1.3 * (np.log(699.5) - np.log(n)) + wiggle[n]  # noqa: E731
    count, evaluations = binary(margin, 84, 1344)
    assert fast(margin, 84, 1344) == (count, evaluations + 1)  # + the check that every token passes
    # Adjacent counts that wiggle must not set the next block's jump: 199 and 200 alone would give a
    # slope of -4; the slope comes from counts at least 5% away (190 and 210) instead.
    wiggly = {100: 0.20, 190: 0.02, 199: 0.01, 200: -0.01, 201: 0.0, 210: -0.05, 400: -0.7}
    from elastictok.coding.search import local_slope

    slope = local_slope(wiggly, 200)
    assert slope == pytest.approx((wiggly[210] - wiggly[190]) / np.log(210 / 190))
    assert -2.5 < slope < -0.5


@pytest.mark.parametrize("seed", range(3))
def test_searches_on_noisy_curves_return_passing_counts_or_fall_back(seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        k = int(rng.integers(300, 5000))
        wiggle = rng.normal(0, 0.05, 4097)
        margin = lambda n: 1.3 * (np.log(k - 0.5) - np.log(n)) + wiggle[n]  # noqa: E731
        truth = full(margin, 256, 4096)[0]
        for name in ["fast", "binary", "grid"]:
            n = run_search(name, margin, 256, 4096, start=int(rng.integers(256, 4097))).count
            assert margin(n) <= 0 or n == 4096, name
            assert n >= truth


def test_full_finds_smallest_pass_even_when_not_monotone():
    margin = lambda n: -1.0 if n in (7, 20) or n > 40 else 1.0  # noqa: E731
    assert full(margin, 1, 64)[0] == 7


def test_grid_matches_official_candidates():
    c = grid_candidates(256, 4096)
    assert c[0] == 256 and c[-1] == 4096 and len(c) <= 100
    assert c == sorted(set(int(v) for v in np.exp2(np.linspace(8, 12, 100)).astype(int)))


def test_binary_fixes_official_off_by_one():
    # Kept counts >= 40 pass. The official loop reports n with n + 1 kept; it can stop on a failing mid.
    loss = lambda kept: 0.0 if kept >= 40 else 1.0  # noqa: E731
    reported, _ = official_binary(loss, 4, 64, 0.5)
    ours, _ = binary(lambda n: loss(n) - 0.25, 4, 64)
    assert ours == 40
    assert min(reported + 1, 64) in (39, 40)  # 39 would be a failing count: the quirk
    reported_all_fail, _ = official_binary(lambda kept: 1.0, 4, 64, 0.5)
    assert reported_all_fail == 64


def test_bad_ranges_and_names():
    with pytest.raises(ValueError, match="min tokens <= max tokens"):
        binary(threshold_at(3), 10, 5)
    with pytest.raises(ValueError, match="unknown search"):
        run_search("magic", threshold_at(3), 1, 5)
    with pytest.raises(ValueError, match="unknown metric"):
        Target("psnr2")


def _parity_model(tmp_path, kind):
    from elastictok import ElasticTok
    from elastictok.app.cli import main

    parity = need_dir(PARITY, "the official parity fixtures")
    assert main(["convert-official", str(parity / f"params_{kind}.msgpack"), "--config", str(parity / "configs.json"),
                 "--config-key", kind, "-o", str(tmp_path)]) == 0
    x = torch.from_numpy(np.load(parity / "input_video.npz")[f"patches_{kind}_f32"])
    return ElasticTok.from_pretrained(tmp_path), x, np.load(parity / f"ref_{kind}_search.npz")


@pytest.mark.parametrize("kind", ["fsq", "vae"])
def test_official_rule_reproduces_the_official_search(tmp_path, kind):
    model, x, ref = _parity_model(tmp_path, kind)
    T = model.config.tokens_per_block()
    lo = model.config.min_tokens()
    threshold = np.float32(ref["threshold"])
    for b in range(x.shape[0]):
        state = model.new_state()
        for i in range(3):
            patches = x[b : b + 1, i * T : (i + 1) * T]

            def loss(kept):
                step = model.code_block(patches, torch.tensor([kept]), state)
                return np.float32(block_mse(step.recon, patches, T)[0, 0])

            with torch.no_grad():
                reported, tried = official_binary(loss, lo, T, threshold)
                assert reported == ref["reported_ntoks"][b, i]
                rows = (ref["trace_block"] == i) & ~ref["trace_is_commit"]
                assert tried == list(ref["trace_kept"][rows, b][: len(tried)])
                kept = min(reported + 1, T)
                model.commit(state, model.code_block(patches, torch.tensor([kept]), state))
    assert ref["kept_counts"].tolist() == np.minimum(ref["reported_ntoks"] + 1, T).tolist()


@pytest.mark.parametrize("search", ["fast", "binary", "grid", "full"])
@pytest.mark.parametrize("preset", ["tiny-fsq", "tiny-vae"])
def test_adaptive_encode_meets_target_and_matches_decode(preset, search):
    m = tiny(preset)
    video = random_video(batch=1, frames=12, seed=3) * 0.3
    # A threshold in the middle of this random model's range, so counts vary.
    full_mse = block_mse(m.patchify(m.decode(m.encode(video))), m.patchify(video), m.config.tokens_per_block())
    target = Target("mse", float(full_mse.mean()) * 1.02)
    result = encode_adaptive(m, video, CodingOptions(target=target, search=search))
    counts = result.tokens.counts[0].tolist()
    for c, choice in zip(counts, result.choices[0]):
        assert choice.count == c
        assert target.met(choice.value) or c == m.config.tokens_per_block()
    # The block-by-block reconstruction is what decoding the tokens gives.
    torch.testing.assert_close(result.recon, m.decode(result.tokens), rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_adaptive_encode_records_its_context_window(window):
    m = tiny("tiny-fsq", max_context_blocks=2)  # trained on 2-block clips: 1 earlier block by default
    video = random_video(batch=1, frames=16, seed=3) * 0.3  # 4 blocks
    result = encode_adaptive(m, video, CodingOptions(target=Target("mse", 0.05), context_blocks=window))
    assert result.tokens.context_blocks == (window or 1)
    torch.testing.assert_close(result.recon, m.decode(result.tokens), rtol=0, atol=1e-5)


def test_searches_pick_the_same_counts_on_a_model():
    m = tiny("tiny-fsq")
    video = random_video(batch=1, frames=8, seed=1) * 0.3
    target = Target("psnr", 10.7)
    picks = {s: encode_adaptive(m, video, CodingOptions(target=target, search=s)) for s in ["fast", "binary", "full"]}
    # Random-weight models are not monotone in the count, so only full search is exact; the others
    # must still return counts that meet the target or fall back to the maximum.
    for s, r in picks.items():
        for choice in r.choices[0]:
            assert target.met(choice.value) or choice.count == 64, s


def test_fixed_count_and_caps():
    m = tiny("tiny-fsq")
    video = random_video(batch=2, frames=8)
    r = encode_adaptive(m, video, CodingOptions(num_tokens=9))
    assert torch.equal(r.tokens.counts, torch.full((2, 2), 9))
    assert torch.equal(r.tokens.values, m.encode(video, 9).values)
    capped = encode_adaptive(m, video, CodingOptions(target=Target("mse", 1e-9), min_tokens=5, max_tokens=20))
    assert capped.tokens.counts.max() <= 20  # nothing meets the target: fall back to the cap
    easy = encode_adaptive(m, video, CodingOptions(target=Target("mse", 4.0), min_tokens=5, max_tokens=20))
    assert easy.tokens.counts.min() == 5
    with pytest.raises(ValueError, match="min tokens"):
        encode_adaptive(m, video, CodingOptions(min_tokens=30, max_tokens=20))


def test_unconditioned_model_encodes_once_per_block():
    m = tiny("tiny-fsq", encoder_conditioning="none")
    video = random_video(batch=1, frames=8) * 0.3
    r = encode_adaptive(m, video, CodingOptions(target=Target("mse", 0.05), search="binary"))
    torch.testing.assert_close(r.recon, m.decode(r.tokens), rtol=0, atol=1e-5)


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_other_metrics(metric):
    m = tiny("tiny-axial")
    video = random_video(batch=1, frames=4, size=(32, 32)) * 0.2
    r = encode_adaptive(m, video, CodingOptions(target=Target(metric)))
    assert len(r.choices[0]) == 1


@pytest.mark.parametrize("kind", ["fsq", "vae"])
def test_binary_matches_the_official_search_results(tmp_path, kind):
    """Our `binary` gives the official kept counts. The official loop can never keep fewer than
    min + 2 tokens (it keeps n + 1 and its first midpoint is above min), so with the official minimum
    ours can go lower where everything passes; on the official's reachable range the answers agree."""
    model, x, ref = _parity_model(tmp_path, kind)
    video = model.unpatchify(x, 12, model.config.frame_size)
    target = Target("mse", float(np.float32(ref["threshold"])))
    lo = model.config.min_tokens()
    same_range = encode_adaptive(model, video, CodingOptions(target=target, search="binary", min_tokens=lo + 2))
    assert same_range.tokens.counts.tolist() == ref["kept_counts"].tolist()
    fixed = encode_adaptive(model, video, CodingOptions(target=target, search="binary"))
    lower = fixed.tokens.counts < torch.from_numpy(ref["kept_counts"])
    assert torch.all(fixed.tokens.counts[lower] == lo)  # only where the minimum itself passes


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_speculative_binary_is_binary_on_any_curve(depth):
    rng = np.random.default_rng(depth)
    for _ in range(300):
        lo, hi = int(rng.integers(1, 100)), int(rng.integers(100, 3000))
        wiggle, k = rng.normal(0, 0.3, hi + 2), int(rng.integers(lo, hi + 3))
        margin = lambda n: 1.3 * (np.log(k - 0.5) - np.log(n)) + wiggle[n]  # noqa: E731
        batches = []
        count, evals, calls = speculative_binary(
            lambda ns: batches.append(ns) or [margin(n) for n in ns], lo, hi, depth
        )
        b_count, b_evals = binary(margin, lo, hi)
        assert count == b_count
        assert calls == len(batches) == math.ceil(b_evals / depth)
        assert all(len(ns) <= 2**depth - 1 for ns in batches) and evals >= b_evals


def test_speculation_through_the_model_matches_binary_in_fewer_passes():
    for conditioning in ["mask", "none"]:
        m = tiny("tiny-fsq", encoder_conditioning=conditioning)
        video = random_video(batch=1, frames=8, seed=3) * 0.3
        target = Target("mse", 0.05)
        ref = encode_adaptive(m, video, CodingOptions(target=target, search="binary"))
        spec = encode_adaptive(m, video, CodingOptions(target=target, search="fast", speculation=3))
        assert torch.equal(spec.tokens.counts, ref.tokens.counts), conditioning
        assert spec.passes < ref.passes <= spec.evaluations
        torch.testing.assert_close(spec.recon, m.decode(spec.tokens), rtol=0, atol=1e-5)
        # On a CPU the depth is 1 without timing anything: batches cost as much as their candidates.
        assert (
            encode_adaptive(m, video, CodingOptions(target=target)).passes
            == encode_adaptive(m, video, CodingOptions(target=target)).evaluations
        )
    with pytest.raises(ValueError, match="speculation depth"):
        encode_adaptive(m, video, CodingOptions(target=target, speculation=0))


def test_speculation_backs_off_when_copies_of_the_past_would_not_fit():
    from elastictok.coding.coder import affordable_depth, past_bytes

    assert affordable_depth(4, past_bytes=0, free_bytes=0) == 4  # no past yet: nothing is copied
    assert affordable_depth(4, past_bytes=1 << 20, free_bytes=56 << 20) == 4  # 14 copies of 1 MiB <= 14 MiB
    assert affordable_depth(4, past_bytes=1 << 20, free_bytes=55 << 20) == 3
    assert affordable_depth(4, past_bytes=1 << 30, free_bytes=1 << 30) == 1
    m = tiny("tiny-fsq")
    state = m.new_state((32, 32))
    assert past_bytes(state) == 0
    step = m.code_block(m.patchify(random_video(batch=1, frames=4)), torch.tensor([8]), state)
    m.commit(state, step)
    layers = m.config.num_encoder_layers + m.config.num_decoder_layers
    assert past_bytes(state) == layers * 2 * step.enc_kv[0][0].numel() * 4


def test_speculation_depth_is_the_cheapest_per_level():
    from elastictok.coding.coder import best_depth

    tried = []

    def timed(cost):
        def seconds(k):
            tried.append(k)
            return cost(k)

        return seconds

    assert best_depth(timed(lambda k: 1.0), 6) == 6  # batches free: as deep as allowed
    assert best_depth(timed(lambda k: float(k)), 6) == 1  # cost grows with the batch: sequential
    tried.clear()
    # Nearly free up to 7 candidates, then linear: depth 3, and 31 candidates are never timed.
    assert best_depth(timed(lambda k: 1.0 if k <= 7 else k / 2), 6) == 3
    assert tried == [1, 3, 7, 15]

    def out_of_memory_beyond_7(k):
        if k > 7:
            raise torch.cuda.OutOfMemoryError("simulated")
        return 1.0

    assert best_depth(out_of_memory_beyond_7, 6) == 3


def staircase(rng, lo: int, hi: int):
    """A random monotone staircase (flat stretches and cliffs, like real curves near the crossing)."""
    drops = np.sort(rng.choice(np.arange(lo, hi + 1), size=int(rng.integers(1, 12)), replace=False))
    heights = rng.exponential(1.0, drops.size) * rng.choice([1e-3, 1.0], drops.size)
    level = float(rng.uniform(-0.5, 0.5) * heights.sum())
    return lambda n: level + heights[drops > n].sum() - heights.sum() / 2


@pytest.mark.parametrize("seed", range(3))
def test_a_tolerance_returns_a_passing_count_within_it_in_no_more_evaluations(seed):
    rng = np.random.default_rng(seed)
    for _ in range(300):
        lo, hi = int(rng.integers(1, 200)), int(rng.integers(300, 4096))
        tokens = hi + int(rng.integers(0, 500))  # the block's tokens; hi may be a cap below them
        tolerance = float(rng.choice([1 / 256, 1 / 64, 1 / 32, 0.1, 0.5]))
        slack = tolerance * tokens
        if rng.random() < 0.5:
            k = int(rng.integers(lo, hi + 3))  # beyond hi: nothing passes
            margin = threshold_at(k)
        else:
            margin = staircase(rng, lo, hi)
        start = int(rng.integers(lo, hi + 1)) if rng.random() < 0.8 else None
        slope = float(-rng.uniform(0.1, 5)) if rng.random() < 0.5 else None
        truth = full(margin, lo, hi)[0]
        for name in ["fast", "binary", "full"]:
            exact = run_search(name, margin, lo, hi, start, slope, tolerance=0, tokens=tokens)
            loose = run_search(name, margin, lo, hi, start, slope, tolerance=tolerance, tokens=tokens)
            assert exact.count == truth, name
            assert margin(loose.count) <= 0 or loose.count == hi, name
            assert truth <= loose.count < truth + max(slack, 1), (name, truth, loose.count, slack)
            assert loose.evaluations <= exact.evaluations, name
        for depth in [2, 3]:
            batched = lambda ns: [margin(n) for n in ns]  # noqa: E731
            count, evals, calls = speculative_binary(batched, lo, hi, depth, slack)
            b_count, b_evals = binary(margin, lo, hi, slack)
            assert count == b_count and calls == math.ceil(b_evals / depth)
            assert evals <= speculative_binary(batched, lo, hi, depth)[1]


def test_a_tolerance_saves_evaluations_and_zero_is_exact():
    margin, T = threshold_at(1000), 4096
    exact = {name: run_search(name, margin, 256, T, start=700, tolerance=0) for name in ["fast", "binary", "full"]}
    loose = {name: run_search(name, margin, 256, T, start=700, tolerance=1 / 64) for name in exact}
    for name in exact:
        assert exact[name].count == 1000 and 1000 <= loose[name].count < 1000 + T / 64, name
    assert loose["binary"].evaluations <= exact["binary"].evaluations - 4  # 12 bisection steps become 7 or 8
    assert loose["full"].evaluations <= exact["full"].evaluations / 50  # a stride of 63 counts
    # Exact where the slack is one token or less: a tolerance below 1 / T changes nothing.
    for name in ["binary", "full", "grid"]:
        assert run_search(name, margin, 256, T) == run_search(name, margin, 256, T, tolerance=0), name
    assert run_search("binary", margin, 256, T, tolerance=1 / T) == exact["binary"]
    assert run_search("fast", margin, 256, T, start=700, tolerance=0.9 / T) == exact["fast"]
    # The fallback is unchanged: nothing passes, hi.
    assert run_search("binary", lambda n: 1.0, 84, 1344, tolerance=0.5).count == 1344
    assert run_search("fast", lambda n: 1.0, 84, 1344, start=300, tolerance=0.5).count == 1344


@pytest.mark.parametrize("bad", [-0.01, 1, 1.5, math.nan, math.inf, True, "0.1", None])
def test_invalid_tolerances_are_refused_in_one_line(bad):
    for make in [lambda: CodingOptions(tolerance=bad), lambda: run_search("binary", threshold_at(9), 1, 64,
                                                                          tolerance=bad)]:
        if bad is None:  # the search's default
            make()
            continue
        with pytest.raises(ValueError, match="--tolerance") as e:
            make()
        assert "\n" not in str(e.value)


def test_tolerance_options():
    from elastictok.coding.search import DEFAULT_TOLERANCE

    assert CodingOptions(search="grid", tolerance=0).search_tolerance == 0  # exact grid: accepted
    for options in [dict(search="grid", tolerance=0.01), dict(num_tokens=8, tolerance=0.01),
                    dict(budget=100.0, tolerance=0.01)]:
        with pytest.raises(ValueError, match="--tolerance") as e:
            CodingOptions(**options)
        assert "\n" not in str(e.value)
    # What ran is recorded: the given tolerance, else the search's default.
    assert CodingOptions(search="binary").settings()["tolerance"] == 0
    assert CodingOptions().settings()["tolerance"] == DEFAULT_TOLERANCE["fast"]
    assert CodingOptions(tolerance=1 / 64).settings()["tolerance"] == 1 / 64
    assert "tolerance" not in CodingOptions(num_tokens=8).settings()


def test_the_cli_takes_a_tolerance_as_a_fraction():
    import argparse

    from elastictok.app.args import add_coding_args, coding_options

    parser = argparse.ArgumentParser()
    add_coding_args(parser)
    assert coding_options(parser.parse_args(["--tolerance", "1/64"])).tolerance == 1 / 64
    assert coding_options(parser.parse_args(["--tolerance", "0.01"])).tolerance == 0.01
    assert coding_options(parser.parse_args([])).tolerance is None
    with pytest.raises(ValueError, match="--tolerance"):
        coding_options(parser.parse_args(["--tolerance", "2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--tolerance", "1/0"])


@pytest.mark.parametrize("search", ["binary", "fast"])
def test_encode_adaptive_honours_a_tolerance(search):
    m = tiny("tiny-fsq")
    T = m.config.tokens_per_block()
    video = random_video(batch=1, frames=16, seed=3) * 0.3
    target = Target("mse", 0.0535)  # within this random model's range at 4..64 tokens without context
    # Every block a keyframe, so each block's curve is the same in both runs whatever the other blocks got.
    exact = encode_adaptive(m, video, CodingOptions(target=target, search=search, tolerance=0, keyframe_interval=1))
    loose = encode_adaptive(m, video, CodingOptions(target=target, search=search, tolerance=0.25,
                                                    keyframe_interval=1))
    assert loose.evaluations < exact.evaluations
    for e, c in zip(exact.choices[0], loose.choices[0]):
        assert target.met(c.value) or c.count == T
        if search == "binary":  # same curve, same probes cut short: at most 16 tokens above, never fewer passes
            assert e.count <= c.count < e.count + T / 4 and c.evaluations <= e.evaluations
    torch.testing.assert_close(loose.recon, m.decode(loose.tokens), rtol=0, atol=1e-5)
