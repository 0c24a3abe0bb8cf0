"""Media I/O and bundled samples: round trips, resampling, geometry, atomic writes, errors."""

from __future__ import annotations

import inspect
import sys
from fractions import Fraction
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elastictok.media.io import (
    MediaError,
    VideoInfo,
    crop_to_multiple,
    is_video_path,
    iter_video_frames,
    load_image,
    load_media,
    load_video,
    resize_and_crop,
    save_image,
    save_video,
    to_uint8,
    to_unit,
    video_info,
)
from elastictok.media.samples import sample_clip, sample_image, sample_image_path, write_sample_clip
from helpers import DATA

av = pytest.importorskip("av", reason="PyAV is needed for the video tests: pip install 'elastictok[video]'")



def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (the shared data folder is optional)")
    return path


def _ramp_video(num_frames: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """(3, T, H, W) whose frame i is flat grey at level 3 * i, so frames identify themselves."""
    levels = torch.arange(num_frames, dtype=torch.uint8) * 3
    u8 = levels.view(1, -1, 1, 1).expand(3, num_frames, h, w)
    return to_unit(u8)


def _frame_level(frame: torch.Tensor) -> float:
    return float(to_uint8(frame).float().mean())


def _dir_listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- value conversion ----------------------------------------------------------------------


def test_unit_uint8_round_trip_is_exact_and_rounds():
    u = np.arange(256, dtype=np.uint8)
    x = to_unit(u)
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(to_uint8(x), torch.from_numpy(u))
    # Round to nearest, clamp outside [-1, 1].
    nudged = torch.tensor([-1.5, 2.0, to_unit(np.uint8(10)).item() + 0.6 / 127.5])
    assert to_uint8(nudged).tolist() == [0, 255, 11]


def test_to_unit_rejects_float_and_to_uint8_rejects_nan():
    with pytest.raises(MediaError, match="uint8"):
        to_unit(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(MediaError, match="NaN"):
        to_uint8(torch.tensor([0.0, float("nan")]))


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hw", "size"), [((48, 64), (32, 32)), ((64, 48), (16, 40)), ((30, 30), (45, 45)), ((20, 33), (20, 33))]
)
def test_resize_and_crop_sizes(hw, size):
    frames = torch.randint(0, 256, (2, *hw, 3), dtype=torch.uint8)
    out = resize_and_crop(frames, size)
    assert out.shape == (2, *size, 3) and out.dtype == torch.uint8


def test_resize_and_crop_matches_official_pillow_pipeline():
    frame = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    # Official: shortest side to 30 with int() on the other (45), bilinear, then centre crop.
    expected = np.asarray(
        Image.fromarray(frame).resize((45, 30), Image.Resampling.BILINEAR).crop((7, 0, 37, 30))
    )
    out = resize_and_crop(torch.from_numpy(frame)[None], 30)
    assert np.array_equal(out[0].numpy(), expected)


def test_resize_and_crop_rejects_wrong_layout():
    with pytest.raises(MediaError, match=r"\(T, H, W, 3\)"):
        resize_and_crop(torch.zeros(3, 8, 8, dtype=torch.uint8), (4, 4))


def test_crop_to_multiple_centres_and_checks_patch():
    x = torch.arange(10 * 13, dtype=torch.float32).view(1, 1, 10, 13)
    out = crop_to_multiple(x, (4, 4))
    assert out.shape == (1, 1, 8, 12)
    assert torch.equal(out, x[..., 1:9, 0:12])
    assert crop_to_multiple(torch.zeros(3, 2, 16, 24), 8).shape == (3, 2, 16, 24)
    with pytest.raises(MediaError, match="smaller than one 8x8 patch"):
        crop_to_multiple(torch.zeros(3, 1, 6, 16), (8, 8))


# --- images --------------------------------------------------------------------------------


def test_png_round_trip_within_one_level(tmp_path):
    x = to_unit(torch.randint(0, 256, (3, 1, 20, 30), dtype=torch.uint8)) + 0.001
    path = save_image(x, tmp_path / "a.png")
    back = load_image(path)
    assert back.shape == (3, 1, 20, 30)
    assert float((back - x).abs().max()) <= 1 / 127.5 + 1e-6
    assert _dir_listing(tmp_path) == ["a.png"]


def test_jpeg_save_and_3d_input(tmp_path):
    x = sample_image(64)[:, 0]
    back = load_image(save_image(x, tmp_path / "a.jpg"))
    assert back.shape == (3, 1, 64, 64)
    assert float((back[:, 0] - x).abs().mean()) < 0.03


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((12, 10), 65535, dtype=np.uint16))
        suffix = ".png"
    else:
        image, suffix = rgb.convert(mode), (".tif" if mode == "CMYK" else ".png")
    path = tmp_path / f"img{suffix}"
    image.save(path)
    x = load_image(path, multiple=2)
    assert x.shape == (3, 1, 12, 10) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    if mode == "I;16":  # a full-scale 16-bit image is white, not clipped garbage
        assert float(x.min()) == 1.0


def test_load_image_size_and_multiple(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (90, 60), (200, 10, 10)).save(path)
    assert load_image(path, size=(32, 48)).shape == (3, 1, 32, 48)
    assert load_image(path, multiple=(16, 16)).shape == (3, 1, 48, 80)


# --- video round trips, resampling, laziness ----------------------------------------------


def test_video_round_trip_count_size_and_error(tmp_path):
    clip = sample_clip(12, (64, 96))
    path = save_video(clip, tmp_path / "clip.mp4", fps=24)
    frames = list(iter_video_frames(path))
    assert len(frames) == 12 and all(f.shape == (3, 64, 96) for f in frames)
    back = torch.stack(frames, dim=1)
    assert float((back - clip).abs().mean()) < 0.05
    info = video_info(path)
    assert info == VideoInfo(frames=12, fps=24.0, height=64, width=96)
    assert _dir_listing(tmp_path) == ["clip.mp4"]


def test_save_video_streams_an_iterator_and_pads_odd_sizes(tmp_path):
    clip = _ramp_video(5, h=15, w=21)
    frames = (clip[:, i] for i in range(5))  # a one-shot generator, not a tensor
    path = save_video(frames, tmp_path / "odd.mp4", fps=10)
    video, fps = load_video(path)
    assert video.shape == (3, 5, 16, 22) and fps == 10.0


def test_fps_resampling_picks_nearest_frames(tmp_path):
    path = save_video(_ramp_video(72), tmp_path / "ramp24.mp4", fps=24)
    frames = list(iter_video_frames(path, fps=8))
    assert len(frames) == 24  # a third of the frames, floor(3 s * 8 fps)
    levels = [_frame_level(f) for f in frames]
    assert levels == pytest.approx([9 * k for k in range(24)], abs=2)  # source frame 3k each
    # Upsampling repeats frames: 12 fps -> 24 fps doubles the count.
    path12 = save_video(_ramp_video(6), tmp_path / "ramp12.mp4", fps=12)
    doubled = [_frame_level(f) for f in iter_video_frames(path12, fps=24)]
    assert doubled == pytest.approx([3 * (k // 2) for k in range(12)], abs=2)  # ties go to the earlier


def test_iter_video_frames_is_lazy_generator(tmp_path):
    path = save_video(_ramp_video(30), tmp_path / "lazy.mp4", fps=30)
    frames = iter_video_frames(path, size=16)
    assert inspect.isgenerator(frames)
    first = list(islice(frames, 2))
    assert [f.shape for f in first] == [(3, 16, 16)] * 2
    frames.close()


def test_load_video_max_frames_and_multiple(tmp_path):
    path = save_video(_ramp_video(10, 36, 44), tmp_path / "m.mp4", fps=5)
    video, fps = load_video(path, max_frames=4, multiple=16)
    assert video.shape == (3, 4, 32, 32) and fps == 5.0


def test_load_media_dispatches_on_extension(tmp_path):
    image_path = save_image(sample_image(32), tmp_path / "i.png")
    video_path = save_video(_ramp_video(3), tmp_path / "v.mp4", fps=6)
    image, image_fps = load_media(image_path)
    video, video_fps = load_media(video_path, size=16)
    assert image.shape == (3, 1, 32, 32) and image_fps is None
    assert video.shape == (3, 3, 16, 16) and video_fps == 6.0
    with pytest.raises(MediaError, match="unsupported extension"):
        (tmp_path / "notes.txt").write_text("x")
        load_media(tmp_path / "notes.txt")


def test_gif_video_and_still_gif(tmp_path):
    gif = save_video(_ramp_video(4, 16, 16), tmp_path / "anim.gif", fps=10)
    assert is_video_path(gif)
    video, fps = load_media(gif)
    assert video.shape == (3, 4, 16, 16) and fps == pytest.approx(10.0)
    still = tmp_path / "still.gif"
    Image.new("RGB", (8, 8), (0, 255, 0)).save(still)
    assert not is_video_path(still)
    image, image_fps = load_media(still)
    assert image.shape == (3, 1, 8, 8) and image_fps is None
    assert is_video_path("x.MP4") and not is_video_path("x.jpeg")


def test_images_work_without_pyav_and_video_says_what_to_install(tmp_path, monkeypatch):
    video_path = save_video(_ramp_video(2), tmp_path / "v.mp4", fps=4)
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    assert load_image(save_image(sample_image(16), tmp_path / "i.png")).shape == (3, 1, 16, 16)
    with pytest.raises(MediaError, match=r"elastictok\[video\]"):
        load_video(video_path)
    with pytest.raises(MediaError, match=r"elastictok\[video\]"):
        save_video(_ramp_video(2), tmp_path / "w.mp4", fps=4)
    assert _dir_listing(tmp_path) == ["i.png", "v.mp4"]


# --- atomic writes -------------------------------------------------------------------------


def test_failed_video_write_leaves_nothing(tmp_path):
    def bad_frames():
        yield torch.zeros(3, 16, 16)
        yield torch.zeros(3, 16, 16)
        yield torch.zeros(3, 8, 8)  # size change mid-stream

    with pytest.raises(MediaError, match="frame 2 is 8x8, expected 16x16"):
        save_video(bad_frames(), tmp_path / "out.mp4", fps=8)
    assert _dir_listing(tmp_path) == []


def test_caller_error_propagates_and_keeps_old_file(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"old")

    def crashing():
        yield torch.zeros(3, 16, 16)
        raise RuntimeError("model blew up")

    with pytest.raises(RuntimeError, match="model blew up"):
        save_video(crashing(), target, fps=8)
    assert _dir_listing(tmp_path) == ["out.mp4"] and target.read_bytes() == b"old"


def test_failed_image_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(self, fp, format=None, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(MediaError, match="disk full"):
        save_image(torch.zeros(3, 8, 8), tmp_path / "a.png")
    assert _dir_listing(tmp_path) == []


# --- errors --------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MediaError, match="no such file"):
        iter_video_frames(tmp_path / "nope.mp4")  # raised at the call, before iteration
    with pytest.raises(MediaError, match="no such file"):
        load_media(tmp_path / "nope.mp4")


@pytest.mark.parametrize("name", ["bad.mp4", "bad.png"])
def test_corrupt_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=f"cannot read '.*{name}' as an? (image|video)") as caught:
        load_media(path)
    assert "\n" not in str(caught.value)


def test_truncated_png_and_audio_only_and_empty_video(tmp_path):
    png = save_image(sample_image(64), tmp_path / "t.png")
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(MediaError, match="as an image"):
        load_image(png)

    audio = tmp_path / "audio.mp4"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaError, match="no video stream"):
        load_video(audio)

    empty = tmp_path / "empty.avi"  # AVI keeps a video stream with zero frames
    with av.open(str(empty), "w", format="avi") as container:
        stream = container.add_stream("libx264", rate=Fraction(24))
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises(MediaError, match="no decodable frames"):
        load_video(empty)


def test_save_rejects_bad_tensors_and_arguments(tmp_path):
    with pytest.raises(MediaError, match=r"\(3, H, W\)"):
        save_image(torch.zeros(4, 8, 8), tmp_path / "a.png")
    with pytest.raises(MediaError, match="save_video"):
        save_image(torch.zeros(3, 2, 8, 8), tmp_path / "a.png")
    with pytest.raises(MediaError, match=r"\(3, T, H, W\)"):
        save_video(torch.zeros(3, 8, 8), tmp_path / "a.mp4", fps=8)
    with pytest.raises(MediaError, match=r"\(3, H, W\)"):
        save_video([torch.zeros(1, 8, 8)], tmp_path / "a.mp4", fps=8)
    with pytest.raises(MediaError, match="no frames"):
        save_video(iter([]), tmp_path / "a.mp4", fps=8)
    with pytest.raises(MediaError, match="unsupported extension"):
        save_video(torch.zeros(3, 2, 8, 8), tmp_path / "a.webm", fps=8)
    with pytest.raises(MediaError, match="fps"):
        save_video(torch.zeros(3, 2, 8, 8), tmp_path / "a.mp4", fps=0)
    with pytest.raises(MediaError, match="does not exist"):
        save_image(torch.zeros(3, 8, 8), tmp_path / "missing" / "a.png")
    assert _dir_listing(tmp_path) == []


# --- bundled samples -----------------------------------------------------------------------


def test_sample_image_and_asset():
    path = sample_image_path()
    assert path.is_file() and path.stat().st_size < 60_000
    x = sample_image()
    assert x.shape == (3, 1, 256, 256) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and float(x.std()) > 0.2
    assert sample_image((64, 96)).shape == (3, 1, 64, 96)


def test_sample_clip_is_deterministic_smooth_motion(tmp_path):
    clip = sample_clip()
    assert clip.shape == (3, 16, 128, 128)
    assert float(clip.min()) >= -1.0 and float(clip.max()) <= 1.0
    assert torch.equal(clip, sample_clip())
    steps = (clip[:, 1:] - clip[:, :-1]).abs().mean(dim=(0, 2, 3))
    assert bool((steps > 0.01).all()) and bool((steps < 0.4).all())
    assert sample_clip(1, 32).shape == (3, 1, 32, 32)
    path = write_sample_clip(tmp_path / "sample.mp4", num_frames=8, size=(48, 64))
    assert video_info(path) == VideoInfo(frames=8, fps=24.0, height=48, width=64)


# --- real data (skipped when ../shared/data is absent) -------------------------------------


def test_real_dev_clip():
    path = _needs(DATA / "video" / "dev" / "sam2" / "05_default_juggle.mp4")
    info = video_info(path)
    assert (info.height, info.width, info.fps) == (720, 1280, 24.0) and info.frames == 247
    video, fps = load_video(path, size=(64, 64), fps=8, max_frames=6)
    assert video.shape == (3, 6, 64, 64) and fps == 8.0
    assert -1.0 <= float(video.min()) and float(video.max()) <= 1.0


def test_real_kodak_image():
    path = _needs(DATA / "images" / "kodak" / "23.png")
    x = load_image(path)
    assert x.shape == (3, 1, 512, 768)
    assert load_image(path, size=256).shape == (3, 1, 256, 256)
