"""Codec anchors: JPEG, WebP and H.264 at the byte size of an ``.etok`` file, for comparisons at equal bytes.

JPEG and WebP (Pillow; images) and H.264 (libx264 via PyAV; video) at the byte size of each item's
``.etok`` file: a bisection on a continuous quality (JPEG: libjpeg's quality scaling of the standard
tables, Huffman-optimised; WebP: quality; H.264: CRF, preset medium) to within 5% of the target.
H.264 sizes are the raw Annex-B stream without x264's settings SEI (no container).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from elastictok.media import io as media

__all__ = ["BYTE_TOLERANCE", "CodecResult", "encode_h264", "encode_jpeg", "encode_webp", "match_bytes"]

BYTE_TOLERANCE = 0.05


@dataclass
class CodecResult:
    codec: str
    target: int
    bytes: int
    param: float  # JPEG/WebP quality or H.264 CRF
    decoded: np.ndarray = field(repr=False)  # (T, H, W, 3) uint8

    @property
    def within_tolerance(self) -> bool:
        return abs(self.bytes - self.target) <= BYTE_TOLERANCE * self.target


def match_bytes(encode: Callable[[float], bytes], lo: float, hi: float, target: int, increasing: bool = True,
                iters: int = 20, tolerance: float = BYTE_TOLERANCE / 2) -> tuple[float, bytes]:
    """Bisection on a continuous codec parameter in [lo, hi] for the size closest to ``target`` bytes.

    ``increasing``: whether size grows with the parameter. Stops once within ``tolerance``; returns
    the closest (parameter, encoded bytes) seen (sizes are only roughly monotone in the parameter).
    """
    best: tuple[float, bytes] | None = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        data = encode(mid)
        if best is None or abs(len(data) - target) < abs(len(best[1]) - target):
            best = (mid, data)
        if abs(len(data) - target) <= tolerance * target:
            break
        if (len(data) < target) == increasing:
            lo = mid
        else:
            hi = mid
    for edge in (lo, hi):  # the ends of the range, when the target lies beyond them
        data = encode(edge)
        if abs(len(data) - target) < abs(len(best[1]) - target):
            best = (edge, data)
    return best


# libjpeg's standard tables (ITU T.81 Annex K), natural order.
_JPEG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_JPEG_CHROMA = (17, 18, 24, 47, *[99] * 4, 18, 21, 26, 66, *[99] * 4, 24, 26, 56, *[99] * 5, 47, 66, *[99] * 38)


def _jpeg_tables(quality: float) -> list[list[int]]:
    """libjpeg's quality scaling, for a real-valued quality in [1, 100] (integers give libjpeg's tables)."""
    q = min(max(quality, 1.0), 100.0)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return [[int(min(max((b * scale + 50) // 100, 1), 255)) for b in base] for base in (_JPEG_LUMA, _JPEG_CHROMA)]


def _pil_codec(image: np.ndarray, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **options)
    return buf.getvalue()


def _decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))[None]


def encode_jpeg(image: np.ndarray, target: int) -> CodecResult:
    """JPEG of an (H, W, 3) uint8 image at about ``target`` bytes (4:2:0, optimised Huffman tables)."""
    q, data = match_bytes(lambda q: _pil_codec(image, "JPEG", qtables=_jpeg_tables(q), optimize=True), 1, 100, target)
    return CodecResult("jpeg", target, len(data), q, _decode_image(data))


def encode_webp(image: np.ndarray, target: int) -> CodecResult:
    """Lossy WebP of an (H, W, 3) uint8 image at about ``target`` bytes (method 6)."""
    q, data = match_bytes(lambda q: _pil_codec(image, "WEBP", quality=q, method=6), 0, 100, target)
    return CodecResult("webp", target, len(data), q, _decode_image(data))


_START_CODE = re.compile(rb"\x00\x00\x00?\x01")
_NAL_SEI = 6


def _strip_sei(stream: bytes) -> bytes:
    """Drop SEI NAL units (x264 writes its settings as a ~600-byte SEI) from an Annex-B stream."""
    marks = list(_START_CODE.finditer(stream))
    kept = []
    for i, m in enumerate(marks):
        nal = stream[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(stream)]
        if nal and nal[0] & 0x1F != _NAL_SEI:
            kept.append(b"\x00\x00\x00\x01" + nal)
    return b"".join(kept)


def _h264(frames: np.ndarray, fps: float, crf: float) -> bytes:
    import av

    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        stream.options = {"crf": f"{crf:.3f}", "preset": "medium"}
        for frame in frames:
            padded = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
        container.mux(stream.encode(None))
    return _strip_sei(buf.getvalue())


def _decode_h264(data: bytes, size: tuple[int, int]) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), format="h264") as container:
        frames = [f.to_ndarray(format="rgb24")[: size[0], : size[1]] for f in container.decode(video=0)]
    return np.stack(frames)


def encode_h264(frames: np.ndarray, fps: float, target: int) -> CodecResult:
    """H.264 (libx264, yuv420p, preset medium, constant quality) of (T, H, W, 3) uint8 frames at about
    ``target`` bytes."""
    crf, data = match_bytes(lambda c: _h264(frames, fps, c), 0, 51, target, increasing=False)
    return CodecResult("h264", target, len(data), crf, _decode_h264(data, frames.shape[1:3]))


def frames_u8(video: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return media.to_uint8(video).permute(1, 2, 3, 0).contiguous().numpy()


def from_frames_u8(frames: np.ndarray) -> Tensor:
    return media.to_unit(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
