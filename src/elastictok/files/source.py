"""Input files read at the size a model takes: the frame size rule, whole loads and re-iterable sources."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from elastictok.coding.streaming import blocks_of
from elastictok.media import io
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig


def input_size(path: str | Path, config: ElasticTokConfig, resolution: int | None = None) -> tuple[int, int]:
    """The (H, W) a file is resized and cropped to before coding.

    A 1-D RoPE model (the official kind) only takes its training size. An axial model keeps the
    aspect ratio: the shorter side becomes ``resolution`` (default: the model's training size) and
    both sides are cut down to multiples of the patch size.
    """
    _, hp, wp = config.patch_size
    h, w = _native_size(path)
    if h < hp or w < wp:
        raise ValueError(f"{path}: {h}x{w} pixels is smaller than one {hp}x{wp} patch")
    if config.rope == "1d":
        if resolution is not None and (resolution, resolution) != tuple(config.frame_size):
            raise ValueError(f"this model only takes {config.frame_size[0]}x{config.frame_size[1]} frames; drop --resolution")
        return config.frame_size
    if resolution is not None and resolution < min(hp, wp):
        raise ValueError(f"expected --resolution of at least one patch ({min(hp, wp)} px), got {resolution}")
    short = resolution or min(config.frame_size)
    scale = short / min(h, w)
    th, tw = max(hp, int(h * scale) // hp * hp), max(wp, int(w * scale) // wp * wp)
    return th, tw


def _native_size(path: str | Path) -> tuple[int, int]:
    if io.is_video_path(path):
        info = io.video_info(path)
        return info.height, info.width
    try:
        with Image.open(path) as image:
            w, h = image.size
    except (OSError, ValueError) as err:
        raise io.MediaError(f"cannot read {str(path)!r} as an image: {err}") from None
    return h, w


def load_input(
    path: str | Path,
    config: ElasticTokConfig,
    resolution: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, float | None]:
    """Read an image or video as a (1, 3, T, H, W) batch at the size the model takes."""
    size = input_size(path, config, resolution)
    video, rate = io.load_media(path, size=size, fps=fps, max_frames=max_frames)
    return video.unsqueeze(0), rate


@dataclass
class Source:
    """An image or video file read at the size a model takes; re-iterable (for two-pass rate control)."""

    path: Path
    size: tuple[int, int]
    fps: float | None
    max_frames: int | None = None
    frames_read: int = 0  # true frame count of the last full pass over blocks()

    @classmethod
    def open(cls, path, model: ElasticTok, resolution=None, fps=None, max_frames=None) -> "Source":
        path = Path(path)
        size = input_size(path, model.config, resolution)
        if io.is_video_path(path):
            rate = float(fps) if fps is not None else io.video_info(path).fps
            return cls(path, size, rate, max_frames)
        return cls(path, size, None, 1)

    @property
    def is_video(self) -> bool:
        return self.fps is not None

    def frames(self) -> Iterator[torch.Tensor]:
        """(3, H, W) frames in [-1, 1]."""
        if not self.is_video:
            yield io.load_image(self.path, size=self.size)[:, 0]
            return
        source_fps = io.video_info(self.path).fps
        frames = io.iter_video_frames(self.path, size=self.size, fps=self.fps if self.fps != source_fps else None)
        for i, frame in enumerate(frames):
            if self.max_frames is not None and i >= self.max_frames:
                return
            yield frame

    def blocks(self, frames_per_block: int) -> Iterator[torch.Tensor]:
        """(1, 3, frames_per_block, H, W) blocks, the last one padded by repeating its last frame."""
        self.frames_read = 0
        for block, real in blocks_of(self.frames(), frames_per_block):
            self.frames_read += real
            yield block
