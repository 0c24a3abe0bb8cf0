"""The bundled sample inputs: one Kodak photograph and a synthetic camera move across it.

They let the library and its examples run on a machine with no data of its own. The clip is
rendered at runtime from the image (a pan plus a slow zoom), so no video file is shipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from elastictok.media.io import MediaError, PathLike, Size, _pair, _read_rgb, load_image, save_video, to_unit

__all__ = ["sample_clip", "sample_image", "sample_image_path", "write_sample_clip"]

_ASSETS = Path(__file__).resolve().parent / "assets"

# Camera path of the sample clip, as fractions of the largest window of the output aspect ratio
# that fits the image: the view shrinks from 80% to 62% (a zoom in) while it pans left to right
# and drifts slightly down. Linear in time, so the apparent motion is steady and smooth.
_ZOOM_START, _ZOOM_END = 0.80, 0.62
_PAN_Y_START, _PAN_Y_END = 0.35, 0.65


def sample_image_path() -> Path:
    """Path of the bundled sample photograph (Kodak image 23, 256x256 JPEG)."""
    return _ASSETS / "sample.jpg"


def sample_image(size: Size | None = None) -> Tensor:
    """The sample photograph as a one-frame video ``(3, 1, H, W)`` in ``[-1, 1]``.

    Natively 256x256; ``size`` (int or (H, W)) cover-resizes and centre-crops as in ``load_image``.
    """
    return load_image(sample_image_path(), size=size)


def _window(
    image_hw: tuple[int, int], out_hw: tuple[int, int], s: float
) -> tuple[float, float, float, float]:
    """Crop box (left, top, right, bottom) in image pixels at clip time ``s`` in [0, 1]."""
    ih, iw = image_hw
    oh, ow = out_hw
    fit = min(ih / oh, iw / ow)  # largest window of the output aspect that fits
    zoom = _ZOOM_START + (_ZOOM_END - _ZOOM_START) * s
    wh, ww = oh * fit * zoom, ow * fit * zoom
    pan_y = _PAN_Y_START + (_PAN_Y_END - _PAN_Y_START) * s
    left, top = (iw - ww) * s, (ih - wh) * pan_y
    return left, top, left + ww, top + wh


def sample_clip(num_frames: int = 16, size: Size = (128, 128)) -> Tensor:
    """A synthetic camera pan with a slow zoom across the sample image: ``(3, T, H, W)`` in ``[-1, 1]``.

    Deterministic: each frame is a sub-pixel crop of the image resized with Pillow's bilinear
    filter, so motion is smooth. The whole path is covered whatever ``num_frames`` is.
    """
    if not (isinstance(num_frames, int) and num_frames >= 1):
        raise MediaError(f"num_frames must be a positive int, got {num_frames!r}")
    out_hw = _pair(size, "size")
    image = _read_rgb(sample_image_path())
    image_hw = (image.height, image.width)
    frames = []
    for t in range(num_frames):
        s = t / (num_frames - 1) if num_frames > 1 else 0.0
        box = _window(image_hw, out_hw, s)
        frame = image.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR, box=box)
        frames.append(np.asarray(frame))
    return to_unit(np.stack(frames)).permute(3, 0, 1, 2).contiguous()


def write_sample_clip(
    path: PathLike, num_frames: int = 16, size: Size = (128, 128), fps: float = 24.0, crf: int = 18
) -> Path:
    """Render :func:`sample_clip` and save it with :func:`~elastictok.io.save_video`; returns the path."""
    return save_video(sample_clip(num_frames, size), path, fps=fps, crf=crf)
