"""Streaming coding, context windows, keyframes and rate control."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.coding.ratecontrol import allocate
from elastictok.coding.streaming import blocks_of, code_blocks, decode_blocks, frames_of
from elastictok.coding.target import Target
from elastictok.files.coding import decode_file, decode_frames, encode_file
from elastictok.files.source import Source
from elastictok.tokenfile.format import open_token_file
from helpers import random_video, tiny


def smooth_clip(frames: int, size=(32, 32), seed: int = 0) -> torch.Tensor:
    """(1, 3, T, H, W): a drifting gradient, so blocks resemble each other like real footage."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size[0]), torch.linspace(-1, 1, size[1]), indexing="ij")
    phase = torch.rand(3, generator=g) * 6
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    chans = [torch.sin(3 * x + 2 * y + phase[c] + 0.1 * t) * 0.6 for c in range(3)]
    return torch.stack(chans)[None]  # (1, 3, T, H, W)


def as_blocks(video: torch.Tensor, fpb: int):
    return (b for b, _ in blocks_of(list(video[0].unbind(1)), fpb))


def test_streaming_equals_whole_video_when_the_window_covers_it():
    m = tiny("tiny-fsq")
    video = smooth_clip(16)
    whole = encode_adaptive(m, video, CodingOptions(target=Target("mse", 0.2), search="binary"))
    streamed = list(code_blocks(m, as_blocks(video, 4),
                                CodingOptions(target=Target("mse", 0.2), search="binary", context_blocks=4,
                                              cut_threshold=None)))
    assert [cb.count for cb in streamed] == whole.tokens.counts[0].tolist()
    assert torch.equal(torch.cat([cb.recon for cb in streamed], 2), whole.recon)


def test_small_window_codes_and_decodes_every_block():
    m = tiny("tiny-fsq")
    video = smooth_clip(40)
    coded = list(code_blocks(m, as_blocks(video, 4),
                             CodingOptions(num_tokens=20, context_blocks=2, cut_threshold=None)))
    assert len(coded) == 10
    recon = list(decode_blocks(m, (cb.codes for cb in coded), (32, 32), context_blocks=2))
    for a, b in zip(coded, recon):
        assert torch.equal(a.recon, b)
    # With a window the context differs from full attention, so later blocks differ from it.
    full = list(code_blocks(m, as_blocks(video, 4), CodingOptions(num_tokens=20, cut_threshold=None)))
    assert torch.equal(full[1].recon, coded[1].recon) and not torch.equal(full[5].recon, coded[5].recon)


def test_frames_of_stops_at_the_true_length():
    blocks = [torch.zeros(1, 3, 4, 8, 8), torch.ones(1, 3, 4, 8, 8)]
    assert len(list(frames_of(blocks, 6))) == 6


def test_scene_cut_resets_context_and_decoding_from_the_keyframe_matches(tmp_path):
    m = tiny("tiny-axial")
    a, b = smooth_clip(12, seed=0), -smooth_clip(9, seed=5)  # a hard cut after frame 12
    video = torch.cat([a, b], 2)
    src = tmp_path / "cut.mp4"
    from elastictok.media import io

    io.save_video(video[0], src, 8.0, crf=0)
    source = Source.open(src, m, resolution=32)
    etok = tmp_path / "cut.etok"
    stats = encode_file(m, source, etok, CodingOptions(num_tokens=30, cut_threshold=DEFAULT_CUT_THRESHOLD))
    assert stats["keyframes"] == [0, 3] and stats["frames"] == 21
    with open_token_file(etok) as f:
        assert f.keyframes == [0, 3] and f.num_frames == 21
    with open_token_file(etok) as f:
        frames_full = list(decode_frames(m, f))
        frames_part = list(decode_frames(m, f, start_block=3))
    assert len(frames_full) == 21 and len(frames_part) == 9
    for x, y in zip(frames_full[12:], frames_part):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="only start at a keyframe"):
        decode_file(m, etok, tmp_path / "bad.mp4", start_block=2)
    assert not (tmp_path / "bad.mp4").exists()
    assert len(list(io.iter_video_frames(decode_file(m, etok, tmp_path / "part.mp4", start_block=3)))) == 9


def test_keyframe_interval():
    m = tiny("tiny-fsq")
    coded = list(code_blocks(m, as_blocks(smooth_clip(24), 4),
                             CodingOptions(num_tokens=8, keyframe_interval=2, cut_threshold=None)))
    assert [cb.keyframe for cb in coded] == [True, False] * 3


def test_library_tokens_record_keyframes_so_decode_matches():
    m = tiny("tiny-fsq")
    cut = torch.cat((smooth_clip(12, seed=0), -smooth_clip(12, seed=5)), 2)  # a hard cut at block 3
    video = torch.cat((cut, smooth_clip(24, seed=1)))  # (2, 3, 24, 32, 32): only the first has a cut
    result = encode_adaptive(m, video, CodingOptions(target=Target("mse", 0.2), cut_threshold=0.3))
    keys = result.tokens.keyframes
    assert keys.tolist() == [[True, False, False, True, False, False], [True] + [False] * 5]
    torch.testing.assert_close(result.recon, m.decode(result.tokens), rtol=0, atol=1e-5)
    one = result.tokens.select(0)
    assert one.keyframes.shape == (1, 6)
    torch.testing.assert_close(m.decode(one), result.recon[:1], rtol=0, atol=1e-5)
    # Without the keyframes the decoder attends across the cut and reconstructs something else.
    ignored = dataclasses.replace(one, keyframes=None)
    assert not torch.allclose(m.decode(ignored)[:, :, 12:], result.recon[:1, :, 12:], atol=1e-3)
    # Keyframe-free tokens keep the plain layout.
    assert encode_adaptive(m, video,
                           CodingOptions(target=Target("mse", 0.2), cut_threshold=None)).tokens.keyframes is None


def test_allocation_respects_budget_and_beats_uniform_on_its_curves():
    curves = [
        {16: 0.10, 32: 0.05, 64: 0.01},  # a hard block: more tokens help a lot
        {16: 0.010, 32: 0.009, 64: 0.008},  # an easy one
        {16: 0.02, 32: 0.01, 64: 0.005},
    ]
    for budget in [16, 20, 32, 40, 64]:
        for objective in ["psnr", "mse"]:
            alloc = allocate(curves, budget, objective)
            assert alloc.average <= budget
            uniform = [max(n for n in c if n <= budget) for c in curves]
            alloc_u = allocate([{n: c[n]} for c, n in zip(curves, uniform)], budget, objective)
            assert alloc.predicted_distortion <= alloc_u.predicted_distortion + 1e-12
    assert allocate(curves, 32, "mse").counts[0] == 64
    with pytest.raises(ValueError, match="below the minimum"):
        allocate(curves, 8)


def test_budget_is_never_exceeded_and_caps_hold(tmp_path):
    m = tiny("tiny-axial")
    from elastictok.media import io

    src = tmp_path / "clip.mp4"
    io.save_video(torch.cat([smooth_clip(12), random_video(1, 8, seed=2) * 0.5], 2)[0], src, 8.0)
    source = Source.open(src, m, resolution=32)
    for budget in [10, 25.5]:
        stats = encode_file(m, source, tmp_path / "b.etok",
                            CodingOptions(budget=budget, min_tokens=4, max_tokens=40,
                                          cut_threshold=DEFAULT_CUT_THRESHOLD))
        counts = [b["tokens"] for b in stats["blocks"]]
        assert sum(counts) / len(counts) <= budget
        assert all(4 <= c <= 40 for c in counts)
        assert stats["rate_control"]["allocation"] == counts
    stats = encode_file(m, source, tmp_path / "q.etok",
                        CodingOptions(target=Target("mse", 1e-9), min_tokens=4, max_tokens=12,
                                      cut_threshold=DEFAULT_CUT_THRESHOLD))
    assert max(b["tokens"] for b in stats["blocks"]) <= 12


def test_budget_allocation_is_checked_against_uniform(tmp_path):
    m = tiny("tiny-axial", max_context_blocks=2)
    from elastictok.media import io

    src = tmp_path / "clip.mp4"
    io.save_video(torch.cat([smooth_clip(12), random_video(1, 12, seed=2) * 0.5], 2)[0], src, 8.0)
    source = Source.open(src, m, resolution=32)
    checked = 0
    for budget in [6, 10, 16, 25]:
        stats = encode_file(m, source, tmp_path / "b.etok",
                            CodingOptions(budget=budget, cut_threshold=DEFAULT_CUT_THRESHOLD))
        uniform = encode_file(m, source, tmp_path / "u.etok",
                              CodingOptions(num_tokens=budget, cut_threshold=DEFAULT_CUT_THRESHOLD))
        psnr = sum(b["psnr"] for b in stats["blocks"]) / len(stats["blocks"])
        psnr_uniform = sum(b["psnr"] for b in uniform["blocks"]) / len(uniform["blocks"])
        assert psnr >= psnr_uniform - 1e-6, budget  # never worse than the same count everywhere
        report = stats["rate_control"]
        if "checked" in report:
            checked += 1
            # The check is exact: it is what the encode it chose gives (-PSNR per block on average).
            chose = "allocation" if report["allocation"] != [budget] * len(stats["blocks"]) else "uniform"
            assert report["checked"][chose] == pytest.approx(-(psnr), abs=1e-6)
    assert checked  # at least one budget where the allocation differed from uniform and was checked


def test_checked_allocation_falls_back_to_uniform_when_coding_it_did_worse():
    from elastictok.coding.ratecontrol import checked

    curves = [{8: 0.02, 16: 0.01}, {8: 0.04, 16: 0.01}]  # measured with earlier blocks at 16 (uniform)
    allocation = [8, 24]
    better = [{8: 0.012}, {24: 0.001}]  # coding the allocation: block 1 gains a lot
    worse = [{8: 0.02}, {24: 0.05}]  # ... or its new context hurt it
    counts, means = checked(curves, better, allocation, 16, "mse")
    assert counts == allocation and means == pytest.approx({"allocation": 0.0065, "uniform": 0.01})
    counts, means = checked(curves, worse, allocation, 16, "mse")
    assert counts == [16, 16] and means["allocation"] > means["uniform"]


def test_killed_encode_leaves_no_partial_file(tmp_path):
    m = tiny("tiny-axial")
    from elastictok.media import io

    src = tmp_path / "clip.mp4"
    io.save_video(smooth_clip(16)[0], src, 8.0)
    source = Source.open(src, m, resolution=32)
    out = tmp_path / "k.etok"

    def interrupt(cb):
        if cb.index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_file(m, source, out, CodingOptions(num_tokens=10, cut_threshold=DEFAULT_CUT_THRESHOLD),
                    on_block=interrupt)
    assert not out.exists() and not list(tmp_path.glob(".k.etok*"))


def test_files_default_to_the_trained_context_window_and_decode_with_it(tmp_path):
    # A model trained on 2-block sequences attends to one earlier block unless told otherwise; the
    # file records the window, so decoding reproduces the encoder's reconstruction.
    m = tiny("tiny-axial", max_context_blocks=2)
    video = smooth_clip(20, seed=2)  # 5 blocks
    src = tmp_path / "long.mp4"
    from elastictok.media import io

    io.save_video(video[0], src, 8.0, crf=0)
    coded = []
    stats = encode_file(m, Source.open(src, m, resolution=32), tmp_path / "w.etok",
                        CodingOptions(num_tokens=30, cut_threshold=None), on_block=coded.append)
    assert stats["settings"]["context_blocks"] == 1
    with open_token_file(tmp_path / "w.etok") as f:
        frames = list(decode_frames(m, f))
    expected = [cb.recon[0, :, t] for cb in coded for t in range(cb.recon.shape[2])]
    assert len(frames) == 20
    for x, y in zip(frames, expected):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    # The window matters past block 2: all earlier blocks give other reconstructions there.
    everything = list(code_blocks(m, as_blocks(video, 4), CodingOptions(num_tokens=30, cut_threshold=None)))
    windowed = list(code_blocks(m, as_blocks(video, 4),
                                CodingOptions(num_tokens=30, context_blocks=1, cut_threshold=None)))
    assert torch.equal(everything[1].recon, windowed[1].recon)
    assert not torch.equal(everything[4].recon, windowed[4].recon)


@pytest.mark.parametrize("search", ["binary", "fast"])
def test_a_block_that_never_meets_its_target_is_not_coded_again_after_the_search(monkeypatch, search):
    # Every block keeps all its tokens (the target is out of reach): committing it reuses the pass
    # that evaluated every token, so the passes run are exactly the evaluations reported.
    m = tiny("tiny-fsq")
    calls = []
    code_block = m.code_block
    monkeypatch.setattr(m, "code_block", lambda *a, **k: calls.append(1) or code_block(*a, **k))
    result = encode_adaptive(m, smooth_clip(8), CodingOptions(target=Target("mse", 1e-9), search=search))
    choices = result.choices[0]
    assert all(c.count == result.tokens.tokens_per_block for c in choices)
    assert len(calls) == sum(c.evaluations for c in choices)
