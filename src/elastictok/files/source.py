"""Input files read at the size a model takes: the frame size rule, the size limits, whole loads and
re-iterable sources."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import torch

from elastictok.coding.streaming import blocks_of
from elastictok.media import io
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig


class LimitError(ValueError):
    """An input that would be coded at an absurd size; the message names the limit and its option."""


@dataclass(frozen=True)
class Limits:
    """The largest inputs coded; bigger ones are refused before any pixel is decoded (docs/limits.md).

    ``pixels``: pixels per frame at the size the model codes (after resizing), default one 1080p frame;
    ``aspect``: longer side over shorter side of the input; ``resolution``: the most ``--resolution``
    (shorter side) an any-size model is asked for; ``frames``: frames coded from one video. Each is
    raised on the command line with ``--limit-pixels``, ``--limit-aspect``, ``--limit-resolution``
    and ``--limit-frames``.
    """

    pixels: int = 1920 * 1080
    aspect: float = 16.0
    resolution: int = 1080
    frames: int = 100_000

    def __post_init__(self) -> None:
        for name in ("pixels", "resolution", "frames"):
            value = getattr(self, name)
            if not (isinstance(value, Integral) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"expected --limit-{name} to be an int >= 1, got {value!r}")
        if not (isinstance(self.aspect, Real) and math.isfinite(self.aspect) and self.aspect >= 1):
            raise ValueError(f"expected --limit-aspect to be a number >= 1, got {self.aspect!r}")


DEFAULT_LIMITS = Limits()


def _num(value: float) -> str:
    """1000.0 -> '1,000', 16.25 -> '16.25': no exponent, no trailing zeros."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def input_size(
    path: str | Path, config: ElasticTokConfig, resolution: int | None = None, limits: Limits | None = None
) -> tuple[int, int]:
    """The (H, W) a file is resized and cropped to before coding.

    A 1-D RoPE model (the official kind) only takes its training size. An axial model keeps the
    aspect ratio: the shorter side becomes ``resolution`` (default: the model's training size) and
    both sides are cut down to multiples of the patch size. The size is read upright (after an
    image's EXIF orientation), as the loader reads the pixels. ``limits`` (default
    :data:`DEFAULT_LIMITS`) refuses absurd aspect ratios, resolutions and frame sizes with a
    :class:`LimitError`, before anything is decoded.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    _, hp, wp = config.patch_size
    h, w = _native_size(path)
    if h < hp or w < wp:
        raise ValueError(f"{path}: {h}x{w} pixels is smaller than one {hp}x{wp} patch")
    ratio = max(h, w) / min(h, w)
    if ratio > limits.aspect:
        raise LimitError(
            f"{path}: {h}x{w} pixels (height x width) has an aspect ratio of {_num(ratio)}:1, above the limit of "
            f"{_num(limits.aspect)}:1 (raise it with --limit-aspect)"
        )
    if config.rope == "1d":
        if resolution is not None and (resolution, resolution) != tuple(config.frame_size):
            fh, fw = config.frame_size
            raise ValueError(f"this model only takes {fh}x{fw} frames; drop --resolution")
        th, tw = config.frame_size
    else:
        if resolution is not None and resolution < min(hp, wp):
            raise ValueError(f"expected --resolution of at least one patch ({min(hp, wp)} px), got {resolution}")
        if resolution is not None and resolution > limits.resolution:
            raise LimitError(
                f"--resolution {resolution} is above the limit of {limits.resolution} px "
                f"(raise it with --limit-resolution)"
            )
        short = resolution or min(config.frame_size)
        scale = short / min(h, w)
        th, tw = max(hp, int(h * scale) // hp * hp), max(wp, int(w * scale) // wp * wp)
    if th * tw > limits.pixels:
        raise LimitError(
            f"{path}: frames of {th}x{tw} = {th * tw:,} pixels are above the limit of {limits.pixels:,} "
            f"(raise it with --limit-pixels, or lower --resolution)"
        )
    return th, tw


def _native_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of the file as it is read: a video's coded frame size, an image's upright size."""
    if io.is_video_path(path):
        info = io.video_info(path)
        return info.height, info.width
    return io.image_size(path)


def load_input(
    path: str | Path,
    config: ElasticTokConfig,
    resolution: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    limits: Limits | None = None,
) -> tuple[torch.Tensor, float | None]:
    """Read an image or video as a (1, 3, T, H, W) batch at the size the model takes."""
    size = checked_size(path, config, resolution, fps, max_frames, limits)
    video, rate = io.load_media(path, size=size, fps=fps, max_frames=max_frames)
    return video.unsqueeze(0), rate


def checked_size(
    path: str | Path, config: ElasticTokConfig, resolution: int | None, fps: float | None,
    max_frames: int | None, limits: Limits | None = None,
) -> tuple[int, int]:
    """The coded (H, W) of ``path`` after every check that needs no pixels: the read options, the
    size and aspect limits and, for a video, the frame limit."""
    limits = DEFAULT_LIMITS if limits is None else limits
    check_read_options(fps, max_frames)
    size = input_size(path, config, resolution, limits)
    if io.is_video_path(path):
        _check_frames(path, fps, max_frames, limits)
    return size


def check_read_options(fps: float | None, max_frames: int | None) -> None:
    """ValueError naming the option unless ``fps`` is a positive rate and ``max_frames`` a count >= 1 (or None)."""
    if fps is not None and not (isinstance(fps, Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"expected --fps to be a positive number of frames per second, got {fps!r}")
    if max_frames is not None and not (isinstance(max_frames, Integral) and not isinstance(max_frames, bool)
                                       and max_frames >= 1):
        raise ValueError(f"expected --max-frames to be an int >= 1, got {max_frames!r}")


def _check_frames(path: Path | str, fps: float | None, max_frames: int | None, limits: Limits) -> None:
    """Refuse a video whose header says it would give more than ``limits.frames`` frames."""
    info = io.video_info(path)
    duration = io.video_duration(path)
    if fps is not None and duration:
        expected = math.floor(duration * fps)  # the resampler's count
    elif info.frames:
        expected = info.frames
    elif duration:
        expected = math.floor(duration * info.fps)
    else:
        return  # the header does not say: Source.frames stops at the limit instead
    if max_frames is not None:
        expected = min(expected, max_frames)
    if expected > limits.frames:
        rate = f" at {_num(fps)} fps" if fps is not None else ""
        raise LimitError(
            f"{path}: {expected:,} frames{rate} are above the limit of {limits.frames:,} "
            f"(raise it with --limit-frames, or read fewer with --max-frames)"
        )


@dataclass
class Source:
    """An image or video file read at the size a model takes; re-iterable (for two-pass rate control)."""

    path: Path
    size: tuple[int, int]
    fps: float | None
    max_frames: int | None = None
    frames_read: int = 0  # true frame count of the last full pass over blocks()
    limits: Limits = DEFAULT_LIMITS

    @classmethod
    def open(cls, path, model: ElasticTok, resolution=None, fps=None, max_frames=None,
             limits: Limits | None = None) -> "Source":
        """``path`` at the size ``model`` takes; sizes beyond ``limits`` are refused here, before decoding."""
        path = Path(path)
        limits = DEFAULT_LIMITS if limits is None else limits
        size = checked_size(path, model.config, resolution, fps, max_frames, limits)
        if io.is_video_path(path):
            rate = float(fps) if fps is not None else io.video_info(path).fps
            return cls(path, size, rate, max_frames, limits=limits)
        return cls(path, size, None, 1, limits=limits)

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
            if i >= self.limits.frames:  # a header that did not say how long the video is
                raise LimitError(
                    f"{self.path}: more than {self.limits.frames:,} frames, the limit "
                    f"(raise it with --limit-frames, or read fewer with --max-frames)"
                )
            yield frame

    def blocks(self, frames_per_block: int) -> Iterator[torch.Tensor]:
        """(1, 3, frames_per_block, H, W) blocks, the last one padded by repeating its last frame."""
        self.frames_read = 0
        for block, real in blocks_of(self.frames(), frames_per_block):
            self.frames_read += real
            yield block
