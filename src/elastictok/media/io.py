"""Media files <-> pixel tensors.

Layout convention: a video is a float tensor ``(3, T, H, W)`` of RGB values in ``[-1, 1]`` (uint8 ``x``
maps to ``x / 127.5 - 1``); an image is a one-frame video ``(3, 1, H, W)``. Sizes are always
``(height, width)``.

Every failure to read or write media raises :class:`MediaError` with one line naming the file, what
was expected and what was found; PyAV and Pillow exceptions never escape raw. Writes are atomic: the
data goes to a hidden temporary file next to the target, which is renamed over the target only
once complete, so a failed write leaves neither a partial file nor a temporary behind.

A video whose frames stop well before the duration its header declares (a file cut short, with the
index at the front) is read as far as it goes, with a :class:`TruncatedVideoWarning`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import suppress
from fractions import Fraction
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from elastictok.utils.files import atomic_path

if TYPE_CHECKING:
    import av

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "MediaError",
    "TruncatedVideoWarning",
    "VideoInfo",
    "crop_to_multiple",
    "image_size",
    "is_video_path",
    "iter_video_frames",
    "load_image",
    "load_media",
    "load_video",
    "resize_and_crop",
    "save_image",
    "save_video",
    "to_uint8",
    "to_unit",
    "video_duration",
    "video_info",
]

PathLike: TypeAlias = str | os.PathLike[str]
Size: TypeAlias = int | tuple[int, int]

IMAGE_EXTS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
# ".gif" is listed as video, but is_video_path treats a single-frame GIF as an image.
VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif"})

# Containers save_video writes with H.264; GIF goes through Pillow instead.
_H264_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_PIL_WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_DEFAULT_FPS = 25.0  # FFmpeg's own fallback when a container states no rate at all
_TIME_EPS = 1e-6
# EXIF orientations that exif_transpose turns by 90 degrees (transpose, rotations, transverse).
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})
# A video counts as cut short when its frames end this much before the declared duration: more than
# _SHORT_FRAMES frame times and more than _SHORT_SHARE of it. Whole files end within two frame times
# of it (edit lists, AVI timing); real truncations miss seconds.
_SHORT_FRAMES = 3
_SHORT_SHARE = 0.05
# Largest intermediate of a cover-resize (pixels); beyond it only the kept crop is resized.
_MAX_COVER_PIXELS = 1 << 24


class MediaError(ValueError):
    """A media file could not be read or written, or a tensor has the wrong shape for it."""


class TruncatedVideoWarning(UserWarning):
    """A video's decodable frames end well before the duration its header declares (a cut-short file)."""


class VideoInfo(NamedTuple):
    """Container-level facts about a video; ``frames`` is None when the header does not say."""

    frames: int | None
    fps: float
    height: int
    width: int


def _av() -> ModuleType:
    """PyAV, imported on first use: images work without it (it is the optional ``video`` extra)."""
    try:
        import av
    except ImportError as exc:
        raise MediaError("video files need PyAV: pip install 'elastictok[video]'") from exc
    return av


# ---------------------------------------------------------------------------------------------
# Value conversions


def to_unit(u8: np.ndarray | Tensor) -> Tensor:
    """uint8 pixels in ``[0, 255]`` -> float32 in ``[-1, 1]`` (``x / 127.5 - 1``); shape unchanged."""
    if u8.dtype not in (np.uint8, torch.uint8):
        raise MediaError(f"to_unit expects uint8 pixels, got dtype {u8.dtype}")
    # torch.tensor copies, which also sidesteps the warning on read-only numpy views of PIL images.
    t = u8 if isinstance(u8, Tensor) else torch.tensor(u8)
    return t.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: Tensor) -> Tensor:
    """Float pixels in ``[-1, 1]`` -> uint8 in ``[0, 255]``; shape unchanged.

    Values are clamped and ROUNDED to the nearest level, so ``to_uint8(to_unit(u)) == u`` exactly.
    The official ElasticTok code truncates instead, which biases every pixel down by half a level.
    """
    if not torch.is_floating_point(x):
        raise MediaError(f"to_uint8 expects a float tensor in [-1, 1], got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise MediaError("to_uint8 expects finite pixel values, got NaN or infinity")
    return ((x.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Geometry


def _pair(value: Size, name: str) -> tuple[int, int]:
    """An int or (h, w) pair of positive ints -> (h, w)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise MediaError(f"{name} must be a positive int or (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def _cover_size(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """Smallest (h, w) with the source aspect ratio that covers (th, tw).

    Truncates like the official ``_image_resize_shortest``, but never below the target: float error
    can make ``int(h * scale)`` land one short.
    """
    scale = max(th / h, tw / w)
    return max(th, int(h * scale)), max(tw, int(w * scale))


def _fit_pil(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize so ``image`` covers ``size`` (bilinear, as the official code) then centre-crop to it.

    When the covering size would be huge (a sliver of an image cover-resized to a wide frame), only
    the part that survives the crop is resized, through the same coordinate mapping.
    """
    th, tw = size
    w, h = image.size
    nh, nw = _cover_size(h, w, th, tw)
    if nh * nw > _MAX_COVER_PIXELS:
        top, left = (nh - th) // 2, (nw - tw) // 2
        sy, sx = h / nh, w / nw
        box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
        return image.resize((tw, th), Image.Resampling.BILINEAR, box=box)
    if (nh, nw) != (h, w):
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    if (nh, nw) == (th, tw):
        return image
    top, left = (nh - th) // 2, (nw - tw) // 2
    return image.crop((left, top, left + tw, top + th))


def resize_and_crop(frames_u8: Tensor, size: Size) -> Tensor:
    """Cover-resize then centre-crop uint8 frames ``(T, H, W, 3)`` to ``(T, *size, 3)``.

    The shorter side (relative to ``size``) is scaled to fit with Pillow's bilinear filter, exactly
    like the official data pipeline, and the excess is cropped evenly (the extra pixel of an odd
    excess goes to the bottom/right).
    """
    if frames_u8.dtype != torch.uint8 or frames_u8.ndim != 4 or frames_u8.shape[-1] != 3:
        raise MediaError(
            f"resize_and_crop expects uint8 frames (T, H, W, 3), "
            f"got {frames_u8.dtype} {tuple(frames_u8.shape)}"
        )
    target = _pair(size, "size")
    out = [np.asarray(_fit_pil(Image.fromarray(f.numpy()), target)) for f in frames_u8.cpu()]
    if not out:
        return frames_u8.new_empty((0, *target, 3))
    return torch.from_numpy(np.stack(out))


def _multiple_box(h: int, w: int, multiple: Size) -> tuple[int, int, int, int]:
    """(top, left, new_h, new_w) of the centred crop of an h x w frame down to multiples."""
    mh, mw = _pair(multiple, "multiple")
    if h < mh or w < mw:
        raise MediaError(f"frame is {h}x{w}, smaller than one {mh}x{mw} patch")
    nh, nw = h - h % mh, w - w % mw
    return (h - nh) // 2, (w - nw) // 2, nh, nw


def crop_to_multiple(x: Tensor, multiple: Size) -> Tensor:
    """Centre-crop the last two dims ``(H, W)`` of ``x`` down to multiples of ``multiple``.

    Works for any layout ending in H, W: ``(3, H, W)``, ``(3, T, H, W)``, ``(B, 3, T, H, W)``.
    Returns a view; raises :class:`MediaError` if a side is shorter than one patch.
    """
    if x.ndim < 2:
        raise MediaError(f"crop_to_multiple expects a tensor ending in (H, W), got shape {tuple(x.shape)}")
    top, left, nh, nw = _multiple_box(x.shape[-2], x.shape[-1], multiple)
    return x[..., top : top + nh, left : left + nw]


def _crop_hwc(frame: np.ndarray, multiple: Size) -> np.ndarray:
    """crop_to_multiple for one (H, W, 3) frame."""
    top, left, nh, nw = _multiple_box(frame.shape[0], frame.shape[1], multiple)
    return frame[top : top + nh, left : left + nw]


# ---------------------------------------------------------------------------------------------
# Paths and errors


def _ext(path: PathLike) -> str:
    return Path(path).suffix.lower()


def _existing_file(path: PathLike, what: str) -> Path:
    """``path`` as a Path, or MediaError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"cannot read {str(path)!r} as {what}: no such file")
    if not p.is_file():
        raise MediaError(f"cannot read {str(path)!r} as {what}: not a regular file")
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:  # not str(): that names the hidden temporary file
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def media_files(folder: PathLike, exts: frozenset[str] = IMAGE_EXTS | VIDEO_EXTS) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose extension is in ``exts``; hidden files and
    folders (such as macOS ``._name.jpg`` companions, which are not pictures) are left out."""
    root = Path(folder)
    return [
        p for p in sorted(root.rglob("*"))
        if p.suffix.lower() in exts and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    ]


def is_video_path(path: PathLike) -> bool:
    """Whether ``path`` names a video, judged by its extension.

    A ``.gif`` is a video only if it is animated: a still GIF is an image. Deciding that opens the
    file (Pillow reads only up to the second frame); a GIF that cannot be opened counts as a video,
    so that loading it reports the real problem.
    """
    ext = _ext(path)
    if ext != ".gif":
        return ext in VIDEO_EXTS
    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except Exception:  # any Pillow failure: defer the diagnosis to the loader
        return True


# ---------------------------------------------------------------------------------------------
# Images


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    16-bit greyscale is scaled to 8 bits (Pillow's own conversion clips it to white); alpha is
    dropped, as the official ``convert('RGB')`` does; CMYK uses Pillow's naive formula.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(wide / 257.0).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        # Palette transparency must go through RGBA or Pillow warns and may mis-map it.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _read_rgb(path: PathLike) -> Image.Image:
    """Decode the first frame of an image file as an upright RGB Pillow image."""
    p = _existing_file(path, "an image")
    try:
        with Image.open(p) as image:
            # Honour the EXIF orientation so phone photos come out upright (the official code does not).
            upright = ImageOps.exif_transpose(image)
            rgb = _to_rgb(upright)
            rgb.load()
            return rgb
    except Exception as exc:  # Pillow raises many unrelated types on corrupt input
        raise MediaError(f"cannot read {str(path)!r} as an image: {_one_line(exc)}") from exc


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file as :func:`load_image` reads it: upright, after its EXIF orientation.

    Reads the header (and the EXIF block) only; no pixels are decoded for JPEG and most other formats.
    """
    p = _existing_file(path, "an image")
    try:
        with Image.open(p) as image:
            w, h = image.size
            # The same tag, read the same way, as ImageOps.exif_transpose in _read_rgb.
            if image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPED_ORIENTATIONS:
                w, h = h, w
    except Exception as exc:  # Pillow raises many unrelated types on corrupt input
        raise MediaError(f"cannot read {str(path)!r} as an image: {_one_line(exc)}") from exc
    return h, w


def load_image(path: PathLike, size: Size | None = None, multiple: Size | None = None) -> Tensor:
    """Read an image file as a one-frame video ``(3, 1, H, W)`` in ``[-1, 1]``.

    Any Pillow mode (L, LA, P, RGBA, CMYK, 16-bit) becomes RGB. ``size`` (int or (H, W)) cover-resizes
    and centre-crops like :func:`resize_and_crop`; ``multiple`` then centre-crops H, W down to
    multiples (for models that accept any size).
    """
    image = _read_rgb(path)
    if size is not None:
        image = _fit_pil(image, _pair(size, "size"))
    pixels = np.asarray(image)
    if multiple is not None:
        pixels = _crop_hwc(pixels, multiple)
    return to_unit(pixels).permute(2, 0, 1).unsqueeze(1).contiguous()


# ---------------------------------------------------------------------------------------------
# Videos: reading


def _open_video(path: PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return its container and first video stream (caller closes)."""
    p = _existing_file(path, "a video")
    av = _av()
    try:
        container = av.open(str(p), mode="r")
    except Exception as exc:  # FFmpegError, and e.g. UnicodeDecodeError on damaged metadata
        raise MediaError(f"cannot read {str(path)!r} as a video: {_reason(exc)}") from exc
    stream = container.streams.video[0] if container.streams.video else None
    if stream is None or stream.codec_context is None:
        container.close()
        what = "no video stream" if stream is None else "its video codec is unknown"
        raise MediaError(f"cannot read {str(path)!r} as a video: {what}")
    return container, stream


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason alone: PyAV's str() appends the path, which our messages already name."""
    message = getattr(exc, "strerror", None) or _one_line(exc)
    return str(message)


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return _DEFAULT_FPS


def _declared_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """Seconds the header says the video stream lasts (else the container), or None."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def video_duration(path: PathLike) -> float | None:
    """The duration in seconds the header declares, without decoding; None when it does not say."""
    container, stream = _open_video(path)
    try:
        return _declared_duration(container, stream)
    finally:
        container.close()


def video_info(path: PathLike) -> VideoInfo:
    """Frame count, frame rate and frame size from the container header, without decoding.

    ``frames`` is None when the container does not record it (some AVI/GIF/streamed files).
    """
    container, stream = _open_video(path)
    try:
        ctx = stream.codec_context
        if not (ctx.height and ctx.width):
            raise MediaError(f"cannot read {str(path)!r} as a video: its header gives no frame size")
        return VideoInfo(stream.frames or None, _stream_fps(stream), ctx.height, ctx.width)
    finally:
        container.close()


def _timed_frames(
    path: PathLike, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
    seen: list[float] | None = None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with presentation times in seconds, shifted so the first frame is at 0.

    ``seen``, when given, gets the count and the last time appended as ``[count, time]`` on exhaustion.
    """
    decode_error = _av().error.FFmpegError
    fallback_rate = _stream_fps(stream)
    start: float | None = None
    index = 0
    decoded = container.decode(stream)
    last = 0.0
    while True:
        try:
            frame = next(decoded)
        except StopIteration:
            if seen is not None:
                seen[:] = [index, last]
            return
        except decode_error as exc:
            raise MediaError(
                f"cannot read {str(path)!r} as a video: decoding failed after {index} frames: {_reason(exc)}"
            ) from exc
        # Frames without timestamps (rare raw streams) are assumed evenly spaced.
        t = frame.time if frame.time is not None else index / fallback_rate
        start = t if start is None else start
        last = t - start
        yield last, frame
        index += 1


def _resample(
    timed: Iterable[tuple[float, av.VideoFrame]], fps: float, frame_time: float
) -> Iterator[av.VideoFrame]:
    """Keep, for each target time k / fps, the decoded frame nearest to it (ties: the earlier).

    The streaming equivalent of the official ``linspace(0, len - 1, floor(duration * fps))`` index
    choice: dropping frames lowers the rate, repeating them raises it. Target k is emitted only
    once the source is known to last until (k + 1) / fps (each frame lasts ``frame_time``), which
    reproduces the official count ``floor(duration * fps)``; unlike the official code, the first
    frame is always kept, so a clip shorter than one output frame still yields one.
    """
    k = 0
    chosen: list[av.VideoFrame] = []  # decided targets k_done .. k - 1, awaiting confirmation
    k_done = 0
    previous: tuple[float, av.VideoFrame] | None = None
    for t, frame in timed:
        while k / fps <= t + _TIME_EPS:
            target = k / fps
            near_previous = previous is not None and target - previous[0] <= t - target + _TIME_EPS
            chosen.append(previous[1] if near_previous else frame)
            k += 1
        known_end = t + frame_time
        while chosen and (k_done == 0 or (k_done + 1) / fps <= known_end + _TIME_EPS):
            yield chosen.pop(0)
            k_done += 1
        previous = (t, frame)
    if previous is None:
        return
    # Targets after the last frame's start still fall inside its display time.
    known_end = previous[0] + frame_time
    while (k_done + 1) / fps <= known_end + _TIME_EPS:
        yield chosen.pop(0) if chosen else previous[1]
        k_done += 1


def _frame_pixels(frame: av.VideoFrame, size: tuple[int, int] | None, multiple: Size | None) -> np.ndarray:
    """One decoded frame -> uint8 (H, W, 3), resized/cropped as requested."""
    if size is not None:
        pixels = np.asarray(_fit_pil(frame.to_image(), size))
    else:
        pixels = frame.to_ndarray(format="rgb24")
    if multiple is not None:
        pixels = _crop_hwc(pixels, multiple)
    return pixels


def _iter_u8(
    path: PathLike, size: Size | None, fps: float | None, multiple: Size | None
) -> Iterator[np.ndarray]:
    """Validate eagerly, then return a generator of uint8 (H, W, 3) frames.

    Opening once up front makes a missing or corrupt file fail at the call, not at the first
    ``next()``; the generator reopens the file so an unconsumed generator holds no open handle.
    """
    target = None if size is None else _pair(size, "size")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise MediaError(f"fps must be a positive number, got {fps!r}")
    if multiple is not None:
        _pair(multiple, "multiple")
    container, _ = _open_video(path)
    container.close()
    return _decode_u8(path, target, fps, multiple)


def _decode_u8(
    path: PathLike, size: tuple[int, int] | None, fps: float | None, multiple: Size | None
) -> Iterator[np.ndarray]:
    container, stream = _open_video(path)
    stream.thread_type = "AUTO"
    count = 0
    seen: list[float] = []
    try:
        timed = _timed_frames(path, container, stream, seen)
        frames = _resample(timed, fps, 1 / _stream_fps(stream)) if fps is not None else (f for _, f in timed)
        for frame in frames:
            yield _frame_pixels(frame, size, multiple)
            count += 1
        declared = (stream.frames or None, _declared_duration(container, stream), _stream_fps(stream))
    finally:
        container.close()
    if count == 0:
        raise MediaError(f"cannot read {str(path)!r} as a video: it contains no decodable frames")
    if seen:
        _warn_if_cut_short(path, int(seen[0]), seen[1], *declared)


def _warn_if_cut_short(
    path: PathLike, decoded: int, last: float, frames: int | None, duration: float | None, fps: float
) -> None:
    """Warn (TruncatedVideoWarning) when the decoded frames end well before the declared duration."""
    if not duration:
        return
    end = last + 1 / fps  # the last frame lasts one frame time
    if duration - end <= max(_SHORT_FRAMES / fps, _SHORT_SHARE * duration):
        return
    expected = f"{frames} frames" if frames else f"about {round(duration * fps)} frames"
    warnings.warn(
        f"{str(path)!r} looks cut short: its header declares {expected} ({duration:.2f} s) but only "
        f"{decoded} frames ({end:.2f} s) could be decoded; those are used",
        TruncatedVideoWarning, stacklevel=2,
    )


def iter_video_frames(
    path: PathLike, size: Size | None = None, fps: float | None = None, multiple: Size | None = None
) -> Iterator[Tensor]:
    """Lazily decode a video into frames ``(3, H, W)`` in ``[-1, 1]``.

    Frames are decoded only as they are consumed, so arbitrarily long videos stream in constant
    memory. ``fps`` resamples the frame rate by choosing, for each time ``k / fps``, the frame whose
    timestamp is nearest. ``size`` and ``multiple`` act as in :func:`load_image`. File problems
    raise :class:`MediaError` at the call; a video with no decodable frame raises when exhausted.
    """
    frames = _iter_u8(path, size, fps, multiple)
    return (to_unit(pixels).permute(2, 0, 1).contiguous() for pixels in frames)


def load_video(
    path: PathLike,
    size: Size | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    multiple: Size | None = None,
) -> tuple[Tensor, float]:
    """Decode a whole video (or its first ``max_frames`` frames) to ``(3, T, H, W)`` in ``[-1, 1]``.

    Returns the tensor and its frame rate: ``fps`` if given, else the container's. Memory is
    4 bytes per value, so pass ``size`` for long high-resolution videos.
    """
    if max_frames is not None and max_frames < 1:
        raise MediaError(f"max_frames must be at least 1, got {max_frames}")
    rate = float(fps) if fps is not None else video_info(path).fps
    frames = list(islice(_iter_u8(path, size, fps, multiple), max_frames))
    # Stacking uint8 first keeps the peak at one float copy instead of a float list plus a stack.
    stacked = to_unit(np.stack(frames))
    return stacked.permute(3, 0, 1, 2).contiguous(), rate


def load_media(
    path: PathLike,
    size: Size | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    multiple: Size | None = None,
) -> tuple[Tensor, float | None]:
    """Load an image or a video by extension -> (``(3, T, H, W)`` in ``[-1, 1]``, fps or None).

    Images come back with ``T == 1`` and fps None; ``fps`` and ``max_frames`` apply to videos only.
    """
    _existing_file(path, "an image or video")
    if is_video_path(path):
        return load_video(path, size=size, fps=fps, max_frames=max_frames, multiple=multiple)
    if _ext(path) in IMAGE_EXTS or _ext(path) == ".gif":
        return load_image(path, size=size, multiple=multiple), None
    known = ", ".join(sorted(IMAGE_EXTS | VIDEO_EXTS))
    raise MediaError(f"cannot read {str(path)!r}: unsupported extension {_ext(path)!r} (expected one of {known})")


# ---------------------------------------------------------------------------------------------
# Writing


def _hwc_u8(frame: object, what: str) -> np.ndarray:
    """A float ``(3, H, W)`` tensor in [-1, 1] -> contiguous uint8 (H, W, 3) numpy array."""
    if not isinstance(frame, Tensor):
        raise MediaError(f"{what} must be a torch.Tensor (3, H, W), got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise MediaError(f"{what} must have shape (3, H, W), got {tuple(frame.shape)}")
    if frame.shape[1] == 0 or frame.shape[2] == 0:
        raise MediaError(f"{what} is empty: shape {tuple(frame.shape)}")
    return to_uint8(frame).permute(1, 2, 0).contiguous().cpu().numpy()


def save_image(x: Tensor, path: PathLike) -> Path:
    """Write ``x`` — ``(3, H, W)`` or ``(3, 1, H, W)`` in ``[-1, 1]`` — as an image, atomically.

    The format follows the extension (PNG, JPEG at quality 95, BMP, WebP, TIFF). Returns the path.
    """
    fmt = _PIL_WRITE_FORMATS.get(_ext(path))
    if fmt is None:
        known = ", ".join(sorted(_PIL_WRITE_FORMATS))
        raise MediaError(f"cannot write {str(path)!r} as an image: unsupported extension (expected one of {known})")
    if isinstance(x, Tensor) and x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif isinstance(x, Tensor) and x.ndim == 4:
        raise MediaError(f"save_image expects one frame (3, 1, H, W), got {tuple(x.shape)}; use save_video")
    pixels = _hwc_u8(x, "save_image input")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path, error=MediaError) as temp:
        try:
            Image.fromarray(pixels).save(temp, format=fmt, **options)
        except Exception as exc:  # Pillow encoders raise assorted types
            raise MediaError(f"cannot write {str(path)!r} as an image: {_one_line(exc)}") from exc
    return Path(path)


def _frames_u8(frames: Tensor | Iterable[Tensor]) -> Iterator[np.ndarray]:
    """Validate the container shape eagerly, then yield uint8 (H, W, 3) frames one at a time."""
    if isinstance(frames, Tensor):
        if frames.ndim != 4 or frames.shape[0] != 3:
            raise MediaError(f"save_video expects a tensor (3, T, H, W), got {tuple(frames.shape)}")
        frames = frames.unbind(1)
    elif not isinstance(frames, Iterable):
        raise MediaError(f"save_video expects a tensor or an iterable of frames, got {type(frames).__name__}")
    return (_hwc_u8(frame, f"video frame {i}") for i, frame in enumerate(frames))


def _pad_even(pixels: np.ndarray) -> np.ndarray:
    """Repeat the last row/column so H and W are even, as 4:2:0 chroma requires."""
    h, w = pixels.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return pixels
    return np.pad(pixels, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _encode_h264(frames: Iterator[np.ndarray], temp: Path, fps: float, crf: int, path: PathLike) -> int:
    """Stream frames into an H.264 yuv420p file at ``temp``; returns the frame count."""

    def fail(exc: BaseException) -> MediaError:
        return MediaError(f"cannot write {str(path)!r} as a video: {_reason(exc)}")

    av = _av()
    try:
        container = av.open(str(temp), mode="w", format=_H264_CONTAINERS[_ext(path)])
    except av.error.FFmpegError as exc:
        raise fail(exc) from exc
    count, first, stream = 0, None, None
    ok = False
    try:
        for pixels in frames:  # the caller's iterator runs here; its own errors pass through
            if first is None:
                first = pixels.shape[:2]
                stream = _add_h264_stream(container, first, fps, crf, path)
            elif pixels.shape[:2] != first:
                raise MediaError(
                    f"cannot write {str(path)!r} as a video: frame {count} is "
                    f"{pixels.shape[0]}x{pixels.shape[1]}, expected {first[0]}x{first[1]}"
                )
            frame = av.VideoFrame.from_ndarray(_pad_even(pixels), format="rgb24")
            try:
                container.mux(stream.encode(frame))
            except av.error.FFmpegError as exc:
                raise fail(exc) from exc
            count += 1
        if count == 0:
            raise MediaError(f"cannot write {str(path)!r} as a video: no frames given")
        try:
            container.mux(stream.encode(None))
        except av.error.FFmpegError as exc:
            raise fail(exc) from exc
        ok = True
    finally:
        if ok:
            try:
                container.close()
            except av.error.FFmpegError as exc:
                raise fail(exc) from exc
        else:
            with suppress(Exception):  # already failing; keep the original error
                container.close()
    return count


def _add_h264_stream(
    container: av.container.OutputContainer, hw: tuple[int, int], fps: float, crf: int, path: PathLike
) -> av.video.stream.VideoStream:
    # 30000/1001-style rates come out exact; plain integers stay integers.
    rate = Fraction(fps).limit_denominator(1001)
    av = _av()
    try:
        stream = container.add_stream("libx264", rate=rate)
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"cannot write {str(path)!r}: this PyAV build has no libx264 encoder ({exc})") from exc
    stream.height, stream.width = hw[0] + hw[0] % 2, hw[1] + hw[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf)}
    return stream


def _encode_gif(frames: Iterator[np.ndarray], temp: Path, fps: float, path: PathLike) -> int:
    """Write an animated GIF with Pillow (GIF has no streaming writer, so frames are held)."""
    images = [Image.fromarray(pixels) for pixels in frames]
    if not images:
        raise MediaError(f"cannot write {str(path)!r} as a video: no frames given")
    if any(image.size != images[0].size for image in images):
        raise MediaError(f"cannot write {str(path)!r} as a video: frames differ in size")
    try:
        images[0].save(
            temp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        )
    except Exception as exc:  # Pillow encoders raise assorted types
        raise MediaError(f"cannot write {str(path)!r} as a video: {_one_line(exc)}") from exc
    return len(images)


def save_video(frames: Tensor | Iterable[Tensor], path: PathLike, fps: float, crf: int = 18) -> Path:
    """Write a video atomically; returns the path.

    ``frames`` is a tensor ``(3, T, H, W)`` or any iterable of ``(3, H, W)`` tensors, all in
    ``[-1, 1]``; an iterator is consumed one frame at a time, so long videos never sit in memory.
    ``.mp4``/``.m4v``/``.mov``/``.mkv`` get H.264 (libx264, yuv420p, constant quality ``crf``,
    0 = lossless luma .. 51 = worst); odd sizes are padded to even by repeating the last row or
    column, so reading back gives the padded size. ``.gif`` goes through Pillow (256-colour palette,
    all frames held in memory, ``crf`` ignored).
    """
    ext = _ext(path)
    if ext not in _H264_CONTAINERS and ext != ".gif":
        known = ", ".join(sorted([*_H264_CONTAINERS, ".gif"]))
        raise MediaError(f"cannot write {str(path)!r} as a video: unsupported extension (expected one of {known})")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise MediaError(f"cannot write {str(path)!r}: fps must be a positive number, got {fps!r}")
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise MediaError(f"cannot write {str(path)!r}: crf must be an int in [0, 51], got {crf!r}")
    pixels = _frames_u8(frames)
    with atomic_path(path, error=MediaError) as temp:
        if ext == ".gif":
            _encode_gif(pixels, temp, fps, path)
        else:
            _encode_h264(pixels, temp, fps, crf, path)
    return Path(path)
