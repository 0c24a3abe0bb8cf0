"""Size limits: absurd inputs are refused by the frame-size rule, before anything is decoded."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from elastictok.files.source import DEFAULT_LIMITS, LimitError, Limits, Source, input_size
from elastictok.media.io import save_video
from helpers import tiny


@pytest.fixture(scope="module")
def axial():
    return tiny("tiny-axial")  # 32x32 training frames, 8x8 patches


def _png(path, size):
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def test_defaults_are_documented_values():
    assert DEFAULT_LIMITS == Limits(pixels=1920 * 1080, aspect=16.0, resolution=1080, frames=100_000)


@pytest.mark.parametrize("field, value", [("pixels", 0), ("frames", -1), ("resolution", 2.5), ("aspect", 0.9),
                                          ("aspect", float("nan")), ("pixels", True)])
def test_bad_limits_name_the_option(field, value):
    with pytest.raises(ValueError, match=f"--limit-{field}"):
        Limits(**{field: value})


@pytest.mark.parametrize("size", [(10, 10000), (10000, 10), (8, 200)])
def test_aspect_ratio_limit(tmp_path, axial, size):
    path = _png(tmp_path / "thin.png", size)
    with pytest.raises(LimitError, match="--limit-aspect"):
        input_size(path, axial.config)
    with pytest.raises(LimitError, match="--limit-aspect"):
        Source.open(path, axial)
    # Raised, the aspect limit lets it through to the pixel limit, which still holds absurd frames back.
    if max(size) == 10000:
        with pytest.raises(LimitError, match="--limit-pixels"):
            input_size(path, axial.config, limits=Limits(aspect=2000, pixels=500_000))


def test_sixteen_to_one_is_accepted(tmp_path, axial):
    assert input_size(_png(tmp_path / "pano.png", (256, 16)), axial.config) == (32, 512)  # 256 wide, 16 tall


def test_resolution_and_pixel_limits(tmp_path, axial):
    path = _png(tmp_path / "p.png", (40, 20))  # 20 tall, 40 wide
    with pytest.raises(LimitError, match="--resolution 100000 is above the limit of 1080"):
        input_size(path, axial.config, resolution=100_000)
    with pytest.raises(LimitError, match=r"1080x2160 = 2,332,800 pixels .* limit of 2,073,600"):
        input_size(path, axial.config, resolution=1080)
    assert input_size(path, axial.config, resolution=1080, limits=Limits(pixels=3_000_000)) == (1080, 2160)
    assert input_size(path, axial.config, resolution=2000,
                      limits=Limits(pixels=10**7, resolution=2000)) == (2000, 4000)


def test_frame_limit_before_decoding_and_while_streaming(tmp_path, axial):
    g = torch.Generator().manual_seed(0)
    clip = save_video(torch.rand(3, 12, 32, 32, generator=g) * 2 - 1, tmp_path / "c.mp4", fps=24.0)
    with pytest.raises(LimitError, match="12 frames are above the limit of 10"):
        Source.open(clip, axial, limits=Limits(frames=10))
    with pytest.raises(LimitError, match="48 frames at 96 fps"):
        Source.open(clip, axial, fps=96, limits=Limits(frames=40))
    assert Source.open(clip, axial, max_frames=8, limits=Limits(frames=10)).max_frames == 8
    # A header that does not say how long the video is: the stream stops at the limit.
    source = Source.open(clip, axial)
    source.limits = Limits(frames=5)
    with pytest.raises(LimitError, match="more than 5 frames"):
        list(source.frames())
