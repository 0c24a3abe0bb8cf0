"""Media reading that agrees with itself: EXIF-rotated sizes, and videos cut short."""

from __future__ import annotations

import warnings
from itertools import islice
from pathlib import Path

import pytest
import torch
from PIL import Image

from elastictok.media.io import (
    MediaError,
    TruncatedVideoWarning,
    image_size,
    iter_video_frames,
    load_image,
    save_video,
    video_duration,
)

av = pytest.importorskip("av", reason="the video cases need PyAV: pip install 'elastictok[video]'")


def _exif_jpeg(path: Path, orientation: int, stored=(400, 512)) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.linear_gradient("L").resize(stored).convert("RGB").save(path, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_image_size_is_the_size_load_image_reads(tmp_path, orientation):
    path = _exif_jpeg(tmp_path / "p.jpg", orientation)
    h, w = image_size(path)
    assert load_image(path).shape == (3, 1, h, w)
    assert (h, w) == ((512, 400) if orientation < 5 else (400, 512))


def test_image_size_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="no such file"):
        image_size(tmp_path / "gone.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MediaError, match="bad.png"):
        image_size(bad)


def _cut_short(folder: Path, frames: int = 32, keep: int = 13) -> tuple[Path, Path]:
    """A whole clip with its index at the front, and a copy cut after the data of frame ``keep``."""
    full = folder / "full.mp4"
    g = torch.Generator().manual_seed(0)
    with av.open(str(full), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(full)) as src:
        pos, size = sorted((p.pos, p.size) for p in src.demux(src.streams.video[0]) if p.size)[keep - 1]
    cut = folder / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: pos + size])
    return full, cut


def test_video_cut_short_warns_once_read_to_the_end(tmp_path):
    full, cut = _cut_short(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(list(iter_video_frames(full))) == 32
        assert len(list(islice(iter_video_frames(cut), 4))) == 4  # stopped early: nothing to say yet
    assert caught == []
    with pytest.warns(TruncatedVideoWarning, match=r"cut short: its header declares 32 frames .* but only 1[0-9] "):
        frames = list(iter_video_frames(cut, size=16, fps=12))  # resampled: the source frames are judged
    assert 0 < len(frames) < 16
    assert video_duration(full) == pytest.approx(32 / 24)


def test_whole_videos_do_not_warn(tmp_path):
    g = torch.Generator().manual_seed(1)
    for n, fps in [(1, 24.0), (2, 1.0), (25, 30000 / 1001)]:
        path = save_video(torch.rand(3, n, 16, 16, generator=g) * 2 - 1, tmp_path / f"v{n}.mp4", fps=fps)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(list(iter_video_frames(path))) == n


def test_a_sliver_is_not_blown_up_before_the_crop(tmp_path):
    path = tmp_path / "sliver.png"
    Image.new("RGB", (2_000_000, 1), (10, 200, 30)).save(path)  # a cover-resize to 24x40 would be 24x48000000
    image = load_image(path, size=(24, 40))
    assert image.shape == (3, 1, 24, 40)
    assert torch.allclose(image[:, 0, 0, 0], torch.tensor([10, 200, 30]) / 127.5 - 1)


def test_damaged_container_metadata_is_a_media_error(tmp_path, monkeypatch):
    path = save_video(torch.zeros(3, 2, 16, 16), tmp_path / "v.mp4", fps=4.0)

    def undecodable(*args, **kwargs):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(av, "open", undecodable)
    with pytest.raises(MediaError, match="cannot read .* as a video"):
        list(iter_video_frames(path))
