"""Evaluation: token efficiency (the paper's main curve), quality at fixed budgets, FVD and codec anchors.

**Token-share curves.** For each item (an image, or a clip read at ``frames`` frames) every block's
official block MSE (on [-1, 1] pixels, clipped reconstruction) is measured once at a grid of token
counts: the *rate-distortion curve* of the block. Grid column ``g`` is a token fraction ``f_g``;
a block of ``T`` token slots gets ``clamp(round(f_g * T), min_tokens, T)`` tokens there. The grid is
the union of log- and linearly-spaced fractions from the model's minimum to 1, plus the budgets.
For video, every block is coded conditioned on the earlier blocks coded *at the same count* (a
fixed-count pass; the real adaptive encoder conditions on earlier blocks at their chosen counts,
which this simplification ignores). From these curves, with ``met = block MSE <= threshold``:

- *uniform* at column ``g``: every block gets its count at ``g``; the point is
  (token share, share of blocks meeting) = (sum of counts / sum of T, mean of met).
- *adaptive* with cap ``g`` (the official ``max_prop_codes`` sweep): each block gets the fewest grid
  count that meets the threshold (an exhaustive search restricted to the grid) if that count is at
  most its cap, else the cap (the search's fallback); the point is (sum of counts / sum of T,
  share of blocks whose fewest meeting count is within the cap).
- *baseline* (``--baseline``, a model trained with mask mode ``fixed``): one point per model, every
  block at ``ceil(fixed_fraction * T)``, the count it was trained at.

Shares of blocks weight every block (an image is one block) equally; token shares weight tokens.

**Token-efficiency gain.** For a curve, ``tokens_to_reach(s)`` is the token share at which it first
reaches a share ``s`` of blocks meeting the threshold, walking its points in order of token share and
interpolating linearly between the last point below ``s`` and the first at or above it (the first
point itself if it already reaches ``s``; undefined if the curve never does). The gain of adaptive
over a reference at ``s`` is ``tokens_to_reach_ref(s) / tokens_to_reach_adaptive(s)``. It is
reported at ``s`` = the share uniform reaches at full tokens (the headline), at 50% and 80%, and,
for a baseline, at the share the baseline reaches.

**Quality.** PSNR (dB on [0, 1]), SSIM and LPIPS (AlexNet) per frame, averaged over frames and then
items, of reconstructions rounded to 8 bits (what a user would save), at uniform budgets (min, 1/4,
1/2, full tokens per block), for adaptive encoding at each threshold (real ``.etok`` files from
:func:`elastictok.filecoding.encode_file`, decoded back), for baselines and for the codec anchors.
FVD (video) is the Fréchet distance between Gaussian fits of the I3D logits of real and
reconstructed 16-frame windows (non-overlapping, all items pooled; see :mod:`elastictok.i3d`).

**Codec anchors.** JPEG and WebP (Pillow; images) and H.264 (libx264 via PyAV; video) at the byte size
of each item's ``.etok`` file: a bisection on a continuous quality (JPEG: libjpeg's quality scaling of
the standard tables, Huffman-optimised; WebP: quality; H.264: CRF, preset medium) to within 5% of the
target. H.264 sizes are the raw Annex-B stream without x264's settings SEI (no container).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import io as media
from .adaptive import Target
from .metrics import psnr, ssim
from .model import ElasticTok

__all__ = [
    "BUDGETS",
    "Baseline",
    "CodecResult",
    "Curve",
    "EvalOptions",
    "adaptive_curve",
    "baseline_curve",
    "code_fixed",
    "efficiency_gain",
    "encode_h264",
    "encode_jpeg",
    "encode_webp",
    "evaluate",
    "fewest_meeting",
    "grid_fractions",
    "list_inputs",
    "match_bytes",
    "tokens_to_reach",
    "uniform_curve",
    "write_plots",
    "write_summary",
]

DEFAULT_THRESHOLDS = (0.003, 0.007)
# Uniform budgets reported for PSNR/SSIM/LPIPS/FVD: label -> token fraction (None: the model's minimum).
BUDGETS: dict[str, float | None] = {"min": None, "1/4": 0.25, "1/2": 0.5, "full": 1.0}
BYTE_TOLERANCE = 0.05
GAIN_SHARES = (0.5, 0.8)

# ---------------------------------------------------------------------------------------------
# Token-share curves (pure functions over per-block rate-distortion curves)


@dataclass(frozen=True)
class Curve:
    """Points (token share, share of blocks meeting the threshold), sorted by token share."""

    token_share: np.ndarray
    share_met: np.ndarray

    @classmethod
    def of(cls, x: Sequence[float], y: Sequence[float]) -> Curve:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        order = np.argsort(x, kind="stable")
        return cls(x[order], y[order])

    def to_json(self) -> list[list[float]]:
        return [[float(a), float(b)] for a, b in zip(self.token_share, self.share_met)]


def _check_rd(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray) -> None:
    if mse.shape != counts.shape or mse.ndim != 2 or tokens.shape != (mse.shape[0],):
        raise ValueError(f"expected mse and counts (N, G) and tokens (N,), got {mse.shape}, {counts.shape}, {tokens.shape}")


def uniform_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """Every block at its column-``g`` count, for each column: see the module docstring.

    mse, counts: (N blocks, G columns); tokens: (N,) token slots per block.
    """
    mse, counts, tokens = np.asarray(mse, float), np.asarray(counts, float), np.asarray(tokens, float)
    _check_rd(mse, counts, tokens)
    return Curve.of(counts.sum(0) / tokens.sum(), (mse <= threshold).mean(0))


def fewest_meeting(mse: np.ndarray, counts: np.ndarray, threshold: float) -> np.ndarray:
    """Per block, the fewest grid count whose MSE meets ``threshold`` (inf if none does); (N,)."""
    return np.where(np.asarray(mse) <= threshold, np.asarray(counts, float), np.inf).min(1)


def adaptive_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """Fewest meeting count per block, capped at each column's count (fallback: the cap)."""
    mse, counts, tokens = np.asarray(mse, float), np.asarray(counts, float), np.asarray(tokens, float)
    _check_rd(mse, counts, tokens)
    need = fewest_meeting(mse, counts, threshold)[:, None]  # (N, 1)
    ok = need <= counts  # (N, G): meets within the cap of column g
    used = np.where(ok, need, counts)
    return Curve.of(used.sum(0) / tokens.sum(), ok.mean(0))


def baseline_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """A fixed-count model: one point per column given (usually one column, its trained count)."""
    return uniform_curve(mse, counts, tokens, threshold)


def tokens_to_reach(curve: Curve, share: float) -> float | None:
    """Token share at which ``curve`` first reaches ``share`` of blocks meeting, interpolated linearly."""
    x, y = curve.token_share, curve.share_met
    hits = np.nonzero(y >= share - 1e-12)[0]
    if share <= 0 or not len(hits):
        return None
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
    return float(x0 + (share - y0) * (x1 - x0) / (y1 - y0))


def efficiency_gain(adaptive: Curve, reference: Curve, share: float) -> dict[str, float | None]:
    """Tokens the reference needs / tokens adaptive needs to reach ``share`` of blocks meeting."""
    ref, ada = tokens_to_reach(reference, share), tokens_to_reach(adaptive, share)
    gain = ref / ada if ref is not None and ada else None
    return {"share": float(share), "reference_tokens": ref, "adaptive_tokens": ada, "gain": gain}


def grid_fractions(min_fraction: float, points: int = 32) -> list[float]:
    """Token fractions of the RD grid: half log-spaced, half linear, from the minimum to 1, plus the budgets."""
    half = max(2, points // 2)
    log = np.exp(np.linspace(math.log(min_fraction), 0.0, half))
    lin = np.linspace(min_fraction, 1.0, max(2, points - half))
    budgets = [min_fraction if f is None else f for f in BUDGETS.values()]
    return sorted({round(float(f), 6) for f in [*log, *lin, *budgets] if min_fraction - 1e-9 <= f <= 1.0})


def _count_at(fraction: float, tokens: int, min_tokens: int) -> int:
    return int(min(tokens, max(min_tokens, round(fraction * tokens))))


# ---------------------------------------------------------------------------------------------
# Coding at fixed counts


@torch.no_grad()
def code_fixed(model: ElasticTok, video: Tensor, counts: Sequence[int]) -> Tensor:
    """Reconstructions (k, 3, T', H, W) of ``video`` (1, 3, T, H, W) with each of k counts in every block.

    Blocks are coded in order through the KV cache, batched over the counts, so each block is
    conditioned on the earlier blocks coded at the same count. T' is T padded to whole blocks (the
    last frame repeated, as the encoder does).
    """
    device = model.encoder.in_proj.weight.device
    padded = model.pad_frames(video).to(device)
    fpb, size = model.config.frames_per_block, tuple(video.shape[-2:])
    state = model.new_state(size)
    n = torch.tensor(list(counts), device=device)
    blocks = []
    for i in range(padded.shape[2] // fpb):
        patches = model.patchify(padded[:, :, i * fpb : (i + 1) * fpb]).expand(len(n), -1, -1)
        step = model.code_block(patches, n, state)
        model.commit(state, step)
        blocks.append(model.unpatchify(step.recon.float(), fpb, size).clamp(-1, 1))
    return torch.cat(blocks, 2)


def _block_mse(recon: Tensor, padded: Tensor, frames_per_block: int) -> np.ndarray:
    """Official block MSE of (k, 3, T', H, W) reconstructions against the padded input: (k, n_blocks)."""
    err = (recon.float().cpu() - padded.float().cpu()).square()
    k, c, t, h, w = err.shape
    return err.reshape(k, c, t // frames_per_block, frames_per_block, h, w).mean((1, 3, 4, 5)).numpy()


# ---------------------------------------------------------------------------------------------
# Frame metrics


def _to_8bit(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


class FrameMetrics:
    """PSNR, SSIM and LPIPS per frame of (3, T, H, W) pairs in [-1, 1], averaged over frames."""

    def __init__(self, device: torch.device | str, use_lpips: bool = True) -> None:
        self.device, self.lpips, self.note = device, None, None
        if use_lpips:
            try:
                from .lpips import LPIPS

                self.lpips = LPIPS("alex").to(device)
            except FileNotFoundError as err:
                self.note = f"LPIPS skipped: {err}"

    @torch.no_grad()
    def __call__(self, ref: Tensor, rec: Tensor) -> dict[str, float | None]:
        a = ref.float().transpose(0, 1).contiguous()  # (T, 3, H, W)
        b = _to_8bit(rec).transpose(0, 1).contiguous()
        out: dict[str, float | None] = {"psnr": float(psnr(b, a).clamp(max=100).mean())}
        out["ssim"] = float(ssim(b, a).mean()) if min(a.shape[-2:]) >= 11 else None
        if self.lpips is not None:
            values = [self.lpips(b[i : i + 16].to(self.device), a[i : i + 16].to(self.device)) for i in range(0, len(a), 16)]
            out["lpips"] = float(torch.cat(values).mean())
        else:
            out["lpips"] = None
        return out


# ---------------------------------------------------------------------------------------------
# Codec anchors


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
    """H.264 (libx264, yuv420p, preset medium, constant quality) of (T, H, W, 3) uint8 frames at about ``target`` bytes."""
    crf, data = match_bytes(lambda c: _h264(frames, fps, c), 0, 51, target, increasing=False)
    return CodecResult("h264", target, len(data), crf, _decode_h264(data, frames.shape[1:3]))


def _u8(video: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return media.to_uint8(video).permute(1, 2, 3, 0).contiguous().numpy()


def _from_u8(frames: np.ndarray) -> Tensor:
    return media.to_unit(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


# ---------------------------------------------------------------------------------------------
# The evaluation run


@dataclass
class EvalOptions:
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    resolution: int | None = None
    max_items: int | None = None
    frames: int = 16
    grid_points: int = 32
    search: str = "fast"
    fvd: bool = True
    codecs: bool = True
    lpips: bool = True
    batch: int = 4  # counts coded together in one batched pass


@dataclass
class Baseline:
    """A fixed-token model (trained with mask mode ``fixed``) evaluated at ``ceil(fraction * T)`` tokens."""

    name: str
    model: ElasticTok
    fraction: float
    fraction_source: str = ""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", fraction: float | None = None) -> Baseline:
        from .pretrained import load_pretrained

        path = Path(path)
        found, source = _trained_fraction(path)
        if fraction is not None:
            found, source = fraction, "--baseline-fraction"
        return cls(path.name, load_pretrained(path, device=device), found, source)

    def count(self, tokens: int) -> int:
        return min(tokens, max(1, math.ceil(tokens * self.fraction - 1e-9)))  # as data.sample_counts


def _trained_fraction(path: Path) -> tuple[float, str]:
    """The fixed_fraction a baseline was trained with, from a train_config.json next to it (else 0.5)."""
    for candidate in (path / "train_config.json", path.parent / "train_config.json"):
        if candidate.is_file():
            cfg = json.loads(candidate.read_text())
            if cfg.get("mask_mode") == "fixed":
                return float(cfg.get("fixed_fraction", 0.5)), str(candidate)
    return 0.5, "default 0.5 (no train_config.json with mask_mode fixed found; pass --baseline-fraction)"


def list_inputs(folder: str | Path, kind: str, max_items: int | None = None) -> list[Path]:
    """Image or video files under ``folder`` (recursively, sorted), at most ``max_items``."""
    exts = media.IMAGE_EXTS if kind == "image" else media.VIDEO_EXTS
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if kind == "video":
        files = [p for p in files if media.is_video_path(p)]
    files = files[:max_items] if max_items else files
    if not files:
        raise FileNotFoundError(f"no {kind} files found under {folder}")
    return files


@dataclass
class _Item:
    """What is kept of one evaluated item."""

    name: str
    frames: int
    frame_size: tuple[int, int]
    fps: float | None
    tokens_per_block: int
    min_tokens: int
    counts: list[int]  # per grid column
    mse: list[list[float]]  # (n_blocks, G)
    budgets: dict[str, dict] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)
    adaptive: dict[str, dict] = field(default_factory=dict)
    codecs: dict[str, dict[str, dict]] = field(default_factory=dict)


class _Evaluator:
    def __init__(self, model: ElasticTok, kind: str, out_dir: Path, options: EvalOptions,
                 baselines: Sequence[Baseline]) -> None:
        self.model, self.kind, self.out, self.opt, self.baselines = model, kind, out_dir, options, list(baselines)
        self.device = model.encoder.in_proj.weight.device
        self.metrics = FrameMetrics(self.device, options.lpips)
        self.notes: list[str] = [self.metrics.note] if self.metrics.note else []
        self.fractions = grid_fractions(model.config.min_token_fraction, options.grid_points)
        self.i3d = self._load_i3d()
        self.features: dict[str, list[np.ndarray]] = {}  # method -> I3D features of 16-frame windows

    def _load_i3d(self):
        if self.kind != "video" or not self.opt.fvd:
            return None
        from .i3d import FVD_FRAMES, load_i3d

        if self.opt.frames < FVD_FRAMES:
            self.notes.append(f"FVD skipped: it needs clips of at least {FVD_FRAMES} frames (--frames {self.opt.frames})")
            return None
        try:
            return load_i3d(self.device)
        except FileNotFoundError as err:
            self.notes.append(f"FVD skipped: {err}")
            return None

    # -- per item ---------------------------------------------------------------------------------
    def item(self, path: Path, name: str) -> _Item:
        from .pipeline import load_input

        video, fps = load_input(path, self.model.config, self.opt.resolution,
                                max_frames=self.opt.frames if self.kind == "video" else None)
        size = tuple(video.shape[-2:])
        T, lo = self.model.config.tokens_per_block(size), self.model.config.min_tokens(size)
        counts = [_count_at(f, T, lo) for f in self.fractions]
        item = _Item(name, video.shape[2], size, fps, T, lo, counts, [])
        self._features("real", video[0])
        self._grid(item, video)
        for b in self.baselines:
            self._baseline(item, video, b)
        for threshold in self.opt.thresholds:
            self._adaptive(item, path, video, threshold)
        return item

    def _score(self, method: str, ref: Tensor, rec: Tensor) -> dict[str, float | None]:
        self._features(method, rec)
        return self.metrics(ref, rec)

    def _features(self, method: str, clip: Tensor) -> None:
        """I3D features of the non-overlapping 16-frame windows of a (3, T, H, W) clip."""
        if self.i3d is None:
            return
        from .i3d import FVD_FRAMES

        windows = [clip[:, i : i + FVD_FRAMES] for i in range(0, clip.shape[1] - FVD_FRAMES + 1, FVD_FRAMES)]
        if windows:
            feats = self.i3d.features(_to_8bit(torch.stack(windows)) if method != "real" else torch.stack(windows))
            self.features.setdefault(method, []).append(feats.numpy())

    def _grid(self, item: _Item, video: Tensor) -> None:
        fpb = self.model.config.frames_per_block
        padded = self.model.pad_frames(video)
        unique = sorted(set(item.counts))
        mse_of: dict[int, np.ndarray] = {}
        budget_counts = {label: _count_at(item.min_tokens / item.tokens_per_block if f is None else f,
                                          item.tokens_per_block, item.min_tokens) for label, f in BUDGETS.items()}
        for i in range(0, len(unique), self.opt.batch):
            chunk = unique[i : i + self.opt.batch]
            recon = code_fixed(self.model, video, chunk)
            for n, m, rec in zip(chunk, _block_mse(recon, padded, fpb), recon):
                mse_of[n] = m
                for label, count in budget_counts.items():
                    if count == n:
                        scores = self._score(f"uniform {label}", video[0], rec[:, : item.frames].cpu())
                        item.budgets[label] = {"count": n, "token_share": n / item.tokens_per_block, **scores}
        item.mse = np.stack([mse_of[n] for n in item.counts], 1).tolist()

    def _baseline(self, item: _Item, video: Tensor, baseline: Baseline) -> None:
        if baseline.model.config.tokens_per_block(item.frame_size) != item.tokens_per_block:
            raise ValueError(f"baseline {baseline.name} has a different token grid than the evaluated model")
        n = baseline.count(item.tokens_per_block)
        recon = code_fixed(baseline.model, video, [n])
        mse = _block_mse(recon, baseline.model.pad_frames(video), baseline.model.config.frames_per_block)[0]
        scores = self._score(f"baseline {baseline.name}", video[0], recon[0, :, : item.frames].cpu())
        item.baselines[baseline.name] = {"count": n, "token_share": n / item.tokens_per_block,
                                         "mse": mse.tolist(), **scores}

    def _adaptive(self, item: _Item, path: Path, video: Tensor, threshold: float) -> None:
        from .filecoding import Coding, Source, decode_frames, encode_file
        from .tokenfile import open_token_file

        source = Source.open(path, self.model, self.opt.resolution,
                             max_frames=self.opt.frames if self.kind == "video" else None)
        etok = self.out / "etok" / f"{item.name}_mse{threshold:g}.etok"
        etok.parent.mkdir(parents=True, exist_ok=True)
        stats = encode_file(self.model, source, etok, Coding(target=Target("mse", threshold), search=self.opt.search))
        with open_token_file(etok) as f:
            recon = torch.stack(list(decode_frames(self.model, f)), 1).cpu()
        size = etok.stat().st_size
        key = f"{threshold:g}"
        item.adaptive[key] = {
            "tokens": [b["tokens"] for b in stats["blocks"]], "token_share": stats["total_tokens"] / stats["max_total_tokens"],
            "bytes": size, "bpp": self._bpp(size, item), "seconds": stats["seconds"],
            **self._score(f"adaptive {key}", video[0], recon),
        }
        if self.opt.codecs:
            item.codecs[key] = self._codecs(video[0], item, size, key)

    def _codecs(self, ref: Tensor, item: _Item, target: int, key: str) -> dict[str, dict]:
        frames = _u8(ref)
        if self.kind == "image":
            results = [encode_jpeg(frames[0], target), encode_webp(frames[0], target)]
        else:
            results = [encode_h264(frames, item.fps or 25.0, target)]
        out = {}
        for r in results:
            out[r.codec] = {"target": r.target, "bytes": r.bytes, "bpp": self._bpp(r.bytes, item), "param": r.param,
                            "within_tolerance": r.within_tolerance,
                            **self._score(f"{r.codec} {key}", ref, _from_u8(r.decoded[: item.frames]))}
        return out

    @staticmethod
    def _bpp(size: int, item: _Item) -> float:
        return 8 * size / (item.frames * item.frame_size[0] * item.frame_size[1])

    # -- aggregation --------------------------------------------------------------------------------
    def fvd(self) -> dict[str, float | None]:
        if self.i3d is None or "real" not in self.features:
            return {}
        from .i3d import fvd

        real = np.concatenate(self.features["real"])
        if len(real) < 2:
            self.notes.append("FVD skipped: it needs at least two 16-frame windows in all (more clips or --frames)")
            return {}
        if len(real) < 64:
            self.notes.append(f"FVD is over only {len(real)} 16-frame windows: a noisy estimate, comparable only within this run")
        return {m: fvd(real, np.concatenate(f)) for m, f in self.features.items() if m != "real"}


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _aggregate(rows: list[dict], keys: Sequence[str]) -> dict[str, float | None]:
    return {k: _mean(r.get(k) for r in rows) for k in keys}


_QUALITY = ("token_share", "psnr", "ssim", "lpips")


def _token_share_results(items: list[_Item], thresholds: Sequence[float], baselines: Sequence[Baseline]) -> dict:
    mse = np.concatenate([np.asarray(it.mse) for it in items])
    counts = np.concatenate([np.tile(it.counts, (len(it.mse), 1)) for it in items])
    tokens = np.concatenate([np.full(len(it.mse), it.tokens_per_block) for it in items])
    out = {}
    for thr in thresholds:
        uni, ada = uniform_curve(mse, counts, tokens, thr), adaptive_curve(mse, counts, tokens, thr)
        full_share = float(uniform_curve(mse[:, -1:], counts[:, -1:], tokens, thr).share_met[0])
        entry: dict[str, Any] = {
            "uniform": uni.to_json(), "adaptive": ada.to_json(),
            "uniform_share_at_full_tokens": full_share,
            "gains": {"at_uniform_full": efficiency_gain(ada, uni, full_share),
                      **{f"at_{round(s * 100)}": efficiency_gain(ada, uni, s) for s in GAIN_SHARES}},
            "baselines": {},
        }
        for b in baselines:
            bm = np.concatenate([np.asarray(it.baselines[b.name]["mse"])[:, None] for it in items])
            bc = np.concatenate([np.full((len(it.mse), 1), it.baselines[b.name]["count"]) for it in items])
            curve = baseline_curve(bm, bc, tokens, thr)
            share = float(curve.share_met[0])
            entry["baselines"][b.name] = {"point": curve.to_json()[0], "fraction": b.fraction,
                                          "fraction_source": b.fraction_source,
                                          "gain": efficiency_gain(ada, curve, share)}
        out[f"{thr:g}"] = entry
    return out


def _quality_results(items: list[_Item], ev: _Evaluator, fvd: dict[str, float | None]) -> dict:
    out: dict[str, Any] = {"uniform": {}, "adaptive": {}, "baselines": {}}
    for label in BUDGETS:
        rows = [it.budgets[label] for it in items if label in it.budgets]
        out["uniform"][label] = {**_aggregate(rows, _QUALITY), "fvd": fvd.get(f"uniform {label}")}
    for thr in ev.opt.thresholds:
        key = f"{thr:g}"
        rows = [it.adaptive[key] for it in items]
        out["adaptive"][key] = {**_aggregate(rows, (*_QUALITY, "bytes", "bpp", "seconds")), "fvd": fvd.get(f"adaptive {key}")}
    for b in ev.baselines:
        rows = [it.baselines[b.name] for it in items]
        out["baselines"][b.name] = {**_aggregate(rows, _QUALITY), "fvd": fvd.get(f"baseline {b.name}")}
    return out


def _codec_results(items: list[_Item], ev: _Evaluator, fvd: dict[str, float | None]) -> dict:
    out: dict[str, Any] = {}
    for thr in ev.opt.thresholds:
        key = f"{thr:g}"
        ours = [it.adaptive[key] for it in items]
        entry = {"elastictok": {**_aggregate(ours, ("bytes", "bpp", "psnr", "ssim", "lpips")), "fvd": fvd.get(f"adaptive {key}")}}
        codecs = sorted({c for it in items for c in it.codecs.get(key, {})})
        for codec in codecs:
            rows = [it.codecs[key][codec] for it in items]
            entry[codec] = {**_aggregate(rows, ("target", "bytes", "bpp", "param", "psnr", "ssim", "lpips")),
                            "within_tolerance": sum(r["within_tolerance"] for r in rows) / len(rows),
                            "fvd": fvd.get(f"{codec} {key}")}
        out[key] = entry
    return out


def evaluate(
    model: ElasticTok,
    inputs: Sequence[str | Path],
    kind: str,
    out_dir: str | Path,
    options: EvalOptions | None = None,
    baselines: Sequence[Baseline] = (),
    model_name: str = "",
) -> dict:
    """Run the whole evaluation over image or video files and write results.json, summary.md and plots.

    ``kind`` is "image" or "video"; see the module docstring for every definition. Returns the results.
    """
    from tqdm import tqdm

    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    options = options or EvalOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ev = _Evaluator(model.eval(), kind, out, options, baselines)
    items: list[_Item] = []
    seen: dict[str, int] = {}
    for path in tqdm(list(inputs)[: options.max_items], desc=f"eval {kind}s", unit=kind):
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1  # same-named files in different folders keep apart
        items.append(ev.item(Path(path), stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    fvd = ev.fvd()
    results = {
        "settings": {
            "model": model_name, "config": model.config.to_dict(), "kind": kind, "items": len(items),
            "options": asdict(options), "grid_fractions": ev.fractions,
            "baselines": {b.name: {"fraction": b.fraction, "source": b.fraction_source} for b in baselines},
            "seconds": None,
        },
        "token_share": _token_share_results(items, options.thresholds, baselines),
        "quality": _quality_results(items, ev, fvd),
        "codecs": _codec_results(items, ev, fvd) if options.codecs else {},
        "items": [asdict(it) for it in items],
        "notes": ev.notes + [
            "Token-share curves come from fixed-count passes: each video block is conditioned on earlier blocks "
            "coded at the same count, not at their adaptive counts.",
        ],
    }
    results["settings"]["seconds"] = time.perf_counter() - start
    write_plots(results, out)  # may add a note, so before the JSON
    _write_json(results, out / "results.json")
    write_summary(results, out / "summary.md")
    return results


def _write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=False) + "\n")
    tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Report: plots and summary.md


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def _plot_token_share(results: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    unit = "blocks" if results["settings"]["kind"] == "video" else "images"
    paths = []
    for key, entry in results["token_share"].items():
        fig, ax = plt.subplots(figsize=(5.2, 4), dpi=110)
        for name, color in (("adaptive", "#4c78a8"), ("uniform", "#e45756")):
            pts = np.asarray(entry[name])
            ax.plot(pts[:, 0] * 100, pts[:, 1] * 100, color=color, marker=".", label=f"{name} (same model)")
        for name, b in entry["baselines"].items():
            ax.scatter([b["point"][0] * 100], [b["point"][1] * 100], marker="*", s=140, zorder=3, label=f"fixed baseline {name}")
        gain = entry["gains"]["at_uniform_full"]["gain"]
        ax.set_title(f"block MSE <= {key}" + (f": {gain:.2f}x fewer tokens" if gain else ""))
        ax.set_xlabel("tokens used (% of all)")
        ax.set_ylabel(f"{unit} meeting the threshold (%)")
        ax.set_xlim(0, 100)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        paths.append(_save(fig, out / f"token_share_mse{key}.png"))
    return paths


def _plot_quality(results: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    q = results["quality"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, metric in zip(axes, ("psnr", "ssim", "lpips")):
        uni = [(r["token_share"], r[metric]) for r in q["uniform"].values() if r[metric] is not None]
        if uni:
            xs, ys = zip(*sorted(uni))
            ax.plot(np.asarray(xs) * 100, ys, color="#e45756", marker="o", label="uniform")
        ada = [(k, r["token_share"], r[metric]) for k, r in q["adaptive"].items() if r[metric] is not None]
        for k, x, y in ada:
            ax.scatter([x * 100], [y], color="#4c78a8", zorder=3)
            ax.annotate(f"MSE<={k}", (x * 100, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for name, r in q["baselines"].items():
            if r[metric] is not None:
                ax.scatter([r["token_share"] * 100], [r[metric]], marker="*", s=120, label=f"baseline {name}")
        ax.set_xlabel("tokens used (% of all)")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "quality_vs_tokens.png")


def _plot_codecs(results: dict, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    codecs = results["codecs"]
    if not codecs:
        return None
    methods = sorted({m for entry in codecs.values() for m in entry})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    for ax, metric in zip(axes, ("psnr", "ssim", "lpips")):
        for method in methods:
            pts = sorted((e[method]["bpp"], e[method][metric]) for e in codecs.values()
                         if method in e and e[method][metric] is not None and e[method]["bpp"] is not None)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=method)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out / "codecs.png")


def _plot_token_use(results: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    keys = list(results["quality"]["adaptive"])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), dpi=110, squeeze=False)
    video = results["settings"]["kind"] == "video"
    for ax, key in zip(axes[0], keys):
        for it in results["items"]:
            share = np.asarray(it["adaptive"][key]["tokens"]) / it["tokens_per_block"] * 100
            if video:
                ax.plot(np.arange(len(share)), share, marker=".", label=it["name"])
        if video:
            ax.set_xlabel("block (time)")
            ax.set_ylabel("tokens kept (% of block)")
            if len(results["items"]) <= 8:
                ax.legend(fontsize=7)
        else:
            shares = [it["adaptive"][key]["tokens"][0] / it["tokens_per_block"] * 100 for it in results["items"]]
            ax.hist(shares, bins=20, range=(0, 100), color="#4c78a8")
            ax.set_xlabel("tokens kept (% of image)")
            ax.set_ylabel("images")
        ax.set_title(f"adaptive, block MSE <= {key}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _save(fig, out / "token_use.png")


def write_plots(results: dict, out: Path) -> list[Path]:
    """token_share_mse<T>.png, quality_vs_tokens.png, codecs.png, token_use.png (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        results["notes"].append("plots skipped: matplotlib is not installed (pip install 'elastictok[plot]')")
        return []
    paths = [*_plot_token_share(results, out), _plot_quality(results, out), _plot_token_use(results, out)]
    codecs = _plot_codecs(results, out)
    return [p for p in [*paths, codecs] if p is not None]


GAIN_DEFINITION = (
    "For each curve, the token share needed to reach a share s of blocks meeting the threshold is read "
    "where the curve (points sorted by token share) first reaches s, interpolating linearly between the "
    "neighbouring points. The gain is (tokens uniform, or the baseline, needs) / (tokens adaptive needs) at "
    "the same s: s = the share uniform reaches at full tokens (headline), 50% and 80%, and for a baseline the "
    "share it reaches. Adaptive = per block the fewest grid count meeting the threshold, capped (fallback: the "
    "cap), swept over caps; uniform = the same count in every block. Both come from per-block MSE measured at "
    "every grid count with fixed-count coding (video blocks conditioned on earlier blocks at the same count)."
)


def _summary_lines(results: dict) -> list[str]:
    s = results["settings"]
    unit = "blocks" if s["kind"] == "video" else "images"
    sizes = sorted({tuple(it["frame_size"]) for it in results["items"]})
    lines = [
        "# ElasticTok evaluation", "",
        f"Model: `{s['model'] or 'in-memory'}` ({s['config']['bottleneck']}); {s['items']} {s['kind']}s at "
        + ", ".join(f"{h}x{w}" for h, w in sizes)
        + (f", {s['options']['frames']} frames each" if s["kind"] == "video" else "")
        + f"; {len(s['grid_fractions'])} token counts per block measured; {s['seconds']:.0f} s.", "",
        f"## Token efficiency (share of {unit} whose block MSE meets the threshold)", "",
        "| MSE threshold | uniform share at full tokens | uniform tokens | adaptive tokens | gain | gain at 50% | gain at 80% |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, e in results["token_share"].items():
        g = e["gains"]
        head = g["at_uniform_full"]
        lines.append(
            f"| {key} | {_fmt(e['uniform_share_at_full_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['reference_tokens'] and head['reference_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['adaptive_tokens'] and head['adaptive_tokens'] * 100, '.1f', '%')} | "
            f"{_fmt(head['gain'], '.2f', 'x')} | {_fmt(g['at_50']['gain'], '.2f', 'x')} | {_fmt(g['at_80']['gain'], '.2f', 'x')} |"
        )
    baseline_rows = [(key, name, b) for key, e in results["token_share"].items() for name, b in e["baselines"].items()]
    if baseline_rows:
        lines += ["", "| MSE threshold | fixed baseline | its tokens | share meeting | adaptive tokens at that share | gain |",
                  "|---|---|---|---|---|---|"]
        for key, name, b in baseline_rows:
            lines.append(f"| {key} | {name} (fraction {b['fraction']:g}) | {b['point'][0] * 100:.1f}% | "
                         f"{b['point'][1] * 100:.1f}% | {_fmt(b['gain']['adaptive_tokens'] and b['gain']['adaptive_tokens'] * 100, '.1f', '%')} | "
                         f"{_fmt(b['gain']['gain'], '.2f', 'x')} |")
    lines += ["", f"Definition: {GAIN_DEFINITION}", ""]
    q = results["quality"]
    lines += ["## Quality at token budgets", "",
              "| allocation | tokens (% of all) | PSNR (dB) | SSIM | LPIPS | FVD |", "|---|---|---|---|---|---|"]
    rows = [(f"uniform, {label} tokens per block", r) for label, r in q["uniform"].items()]
    rows += [(f"adaptive, block MSE <= {k}", r) for k, r in q["adaptive"].items()]
    rows += [(f"fixed baseline {k}", r) for k, r in q["baselines"].items()]
    for name, r in rows:
        lines.append(f"| {name} | {_fmt(r['token_share'] and r['token_share'] * 100, '.1f', '%')} | {_fmt(r['psnr'])} | "
                     f"{_fmt(r['ssim'], '.4f')} | {_fmt(r['lpips'], '.4f')} | {_fmt(r['fvd'], '.1f')} |")
    if results["codecs"]:
        lines += ["", "## Codecs at equal bytes (the size of each item's .etok file)", "",
                  "| MSE threshold | method | bytes | bpp | PSNR (dB) | SSIM | LPIPS | FVD | within 5% of target |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, entry in results["codecs"].items():
            for method, r in entry.items():
                within = _fmt(r["within_tolerance"] * 100, ".0f", "% of items") if "within_tolerance" in r else ""
                lines.append(f"| {key} | {method} | {_fmt(r['bytes'], '.0f')} | {_fmt(r['bpp'], '.3f')} | {_fmt(r['psnr'])} | "
                             f"{_fmt(r['ssim'], '.4f')} | {_fmt(r['lpips'], '.4f')} | {_fmt(r['fvd'], '.1f')} | {within} |")
    lines += ["", "## Notes", "", *(f"- {n}" for n in results["notes"]), ""]
    return lines


def write_summary(results: dict, path: Path) -> Path:
    """The Markdown summary: token-efficiency gains, quality at budgets, codec comparison, notes."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(_summary_lines(results)))
    tmp.replace(path)
    return path
