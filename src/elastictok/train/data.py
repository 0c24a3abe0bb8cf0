"""Training data: a compact pre-decoded pack of images and clips, a resumable sampler over it, and masks.

Decoding JPEGs and videos at every step would dominate the cost of training a small tokenizer, so
:func:`pack_dataset` decodes the sources once, resizes them (shorter side to ``size``, centre crop)
and stores uint8 arrays in one ``.npz`` file:

- ``images`` (N, S, S, 3) and ``clips`` (M, F, S, S, 3) with F = ``blocks_per_clip * frames_per_block``
  consecutive frames at ``fps``;
- ``clip_source`` (M,) the index of each clip's source folder in the metadata;
- ``meta`` a JSON string (format, geometry, counts, per-source clip counts, skipped files).

With ``jpeg_quality`` set, the pixels are stored as JPEG files instead (``images_jpeg`` /
``clips_jpeg``: all files concatenated, with ``*_offsets`` of N + 1 byte positions, one file per
image and per clip frame), about a tenth of the raw size at 224 px; :func:`load_pack` decodes them
back into the same uint8 arrays, so everything downstream is unchanged. This is what lets a pack of
full-size Imagenette images fit the GPU machine's transfer limit.

The pack is read with ``allow_pickle=False``: it holds plain arrays and one string, nothing executable.

Unlike the official pipeline, which packs consecutive blocks of different files into one sequence
with ``segment_ids`` always zero (so blocks of unrelated clips attend to each other), every sample
here is exactly one clip or one image: blocks only ever attend to earlier blocks of the same clip.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import IterableDataset

from elastictok.media.io import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    MediaError,
    iter_video_frames,
    load_image,
    media_files,
    to_uint8,
    to_unit,
)
from elastictok.utils.files import atomic_path

__all__ = [
    "Pack",
    "PackStats",
    "PackedDataset",
    "derive_seed",
    "load_pack",
    "pack_dataset",
    "sample_counts",
    "write_pack",
]

log = logging.getLogger(__name__)

PACK_FORMAT = "elastictok-pack"
PACK_VERSION = 1
# Room for the zip and .npy headers and the JSON metadata around the arrays.
_PACK_OVERHEAD = 64 * 1024
# Skipped paths listed in the metadata (all are counted); bounds the metadata size.
_MAX_LISTED_SKIPS = 100


# ---------------------------------------------------------------------------------------------
# Seeds


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints (e.g. (seed, epoch, index)).

    Randomness that is a pure function of the position in the run needs no state to resume.
    """
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------
# The pack file


@dataclass
class Pack:
    """An in-memory pack: uint8 ``images`` (N, S, S, 3), ``clips`` (M, F, S, S, 3) and metadata."""

    images: np.ndarray
    clips: np.ndarray
    clip_source: np.ndarray
    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def num_frames(self) -> int:
        return int(self.meta["frames_per_block"]) * int(self.meta["blocks_per_clip"])


@dataclass
class PackStats:
    """What :func:`pack_dataset` wrote and what it skipped."""

    path: Path
    num_images: int
    num_clips: int
    bytes: int
    skipped: int  # unreadable or corrupt files
    skipped_files: list[str] = field(default_factory=list)
    too_short: int = 0  # readable videos shorter than one clip at the target fps
    clips_per_source: dict[str, int] = field(default_factory=dict)


def _check_jpeg_quality(quality: int | None) -> None:
    if quality is not None and not 1 <= quality <= 95:
        raise ValueError(f"jpeg_quality must be in [1, 95], got {quality}")


def _jpeg_files(images: Sequence[np.ndarray], clips: Sequence[np.ndarray],
                quality: int) -> tuple[list[bytes], list[list[bytes]]]:
    """JPEG files of (S, S, 3) uint8 frames: one per image, and per clip one per frame."""

    def one(frame: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=quality)
        return buf.getvalue()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        files = list(pool.map(one, [*images, *(frame for clip in clips for frame in clip)]))
    n, per_clip = len(images), len(clips[0]) if len(clips) else 0
    return files[:n], [files[n + i * per_clip : n + (i + 1) * per_clip] for i in range(len(clips))]


def _concat(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Files -> (all bytes concatenated (uint8), offsets (N + 1,) int64)."""
    offsets = np.zeros(len(files) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(f) for f in files])
    return np.frombuffer(b"".join(files), dtype=np.uint8), offsets


def _decode_jpegs(data: np.ndarray, offsets: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The inverse of :func:`_concat` of :func:`_jpeg_files`: a uint8 array of ``shape`` (N * frames of (S, S, 3))."""
    out = np.empty(shape, dtype=np.uint8)
    flat = out.reshape(-1, *shape[-3:])  # (N * F, S, S, 3) view
    if len(offsets) != len(flat) + 1 or offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) <= 0):
        raise ValueError(f"{where}: JPEG offsets do not match {len(flat)} frames of {len(data)} bytes")

    def one(i: int) -> None:
        try:
            with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as im:
                frame = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise ValueError(f"{where}: frame {i} is not a readable JPEG ({err})") from None
        if frame.shape != flat.shape[1:]:
            raise ValueError(f"{where}: frame {i} is {frame.shape}, expected {flat.shape[1:]}")
        flat[i] = frame

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(len(flat))))
    return out


def write_pack(path: str | Path, images: np.ndarray, clips: np.ndarray, meta: dict[str, Any],
               clip_source: np.ndarray | None = None, jpeg_quality: int | None = None) -> Path:
    """Write a pack atomically (temporary file, then rename). ``meta`` needs size, frames_per_block, blocks_per_clip.

    ``jpeg_quality`` (1-95) stores the pixels as JPEG files (lossy, about 10x smaller) instead of raw arrays.
    """
    _check_jpeg_quality(jpeg_quality)
    files = _jpeg_files(images, clips, jpeg_quality) if jpeg_quality else None
    return _write(Path(path), images, clips, meta, clip_source, jpeg_quality, files)


def _write(path: Path, images: np.ndarray, clips: np.ndarray, meta: dict[str, Any], clip_source: np.ndarray | None,
           jpeg_quality: int | None, files: tuple[list[bytes], list[list[bytes]]] | None) -> Path:
    """:func:`write_pack` with the JPEG files (of exactly these images and clips) already encoded."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    clips = np.ascontiguousarray(clips, dtype=np.uint8)
    _check_arrays(images, clips, meta, str(path))
    if clip_source is None:
        clip_source = np.zeros(len(clips), dtype=np.int32)
    meta = {**meta, "format": PACK_FORMAT, "version": PACK_VERSION,
            "num_images": len(images), "num_clips": len(clips), "encoding": "jpeg" if files else "raw"}
    arrays: dict[str, np.ndarray] = {"clip_source": np.asarray(clip_source, dtype=np.int32)}
    if files:
        meta["jpeg_quality"] = jpeg_quality
        image_files, clip_files = files
        arrays["images_jpeg"], arrays["images_offsets"] = _concat(image_files)
        arrays["clips_jpeg"], arrays["clips_offsets"] = _concat([f for clip in clip_files for f in clip])
    else:
        arrays.update(images=images, clips=clips)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp, open(temp, "wb") as f:  # a file object: numpy appends no ".npz"
        np.savez(f, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
    return path


def _check_arrays(images: np.ndarray, clips: np.ndarray, meta: dict[str, Any], where: str) -> None:
    size = int(meta["size"])
    frames = int(meta["frames_per_block"]) * int(meta["blocks_per_clip"])
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"{where}: images must be (N, {size}, {size}, 3) uint8, got {images.shape}")
    if clips.ndim != 5 or clips.shape[1:] != (frames, size, size, 3):
        raise ValueError(f"{where}: clips must be (M, {frames}, {size}, {size}, 3) uint8, got {clips.shape}")
    if len(images) + len(clips) == 0:
        raise ValueError(f"{where}: a pack needs at least one image or clip")


def load_pack(path: str | Path) -> Pack:
    """Read a pack written by :func:`pack_dataset` or :func:`write_pack` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data pack not found: {path} (make one with `elastictok pack-data`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: not an elastictok data pack ({err})") from None
    if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
        raise ValueError(f"{path}: expected an {PACK_FORMAT} v{PACK_VERSION} pack, got {meta.get('format')!r} "
                         f"v{meta.get('version')!r}")
    try:
        clip_source = arrays["clip_source"]
        if meta.get("encoding", "raw") == "jpeg":
            size, frames = int(meta["size"]), int(meta["frames_per_block"]) * int(meta["blocks_per_clip"])
            images = _decode_jpegs(arrays["images_jpeg"], arrays["images_offsets"],
                                   (int(meta["num_images"]), size, size, 3), str(path))
            clips = _decode_jpegs(arrays["clips_jpeg"], arrays["clips_offsets"],
                                  (int(meta["num_clips"]), frames, size, size, 3), str(path))
        else:
            images, clips = arrays["images"], arrays["clips"]
    except KeyError as err:
        raise ValueError(f"{path}: the pack lacks the array {err}") from None
    _check_arrays(images, clips, meta, str(path))
    return Pack(images, clips, clip_source, meta)


# ---------------------------------------------------------------------------------------------
# Packing


def _media_files(folder: str | Path, exts: frozenset[str], what: str) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{what} folder {str(root)!r} does not exist or is not a directory")
    files = media_files(root, exts)
    if not files:
        raise ValueError(f"{what} folder {str(root)!r} holds no {what} files ({', '.join(sorted(exts))})")
    return files


def _skip(path: Path, err: Exception, skipped: list[str]) -> None:
    skipped.append(str(path))
    warnings.warn(f"skipping unreadable file {path}: {err}", stacklevel=3)


def _video_clips(path: Path, size: int, fps: float, clip_len: int, max_clips: int | None) -> list[np.ndarray]:
    """Decode a video once at (size, fps) and cut it into evenly spread, non-overlapping clips."""
    frames = np.stack([to_uint8(f).permute(1, 2, 0).numpy() for f in iter_video_frames(path, size=size, fps=fps)])
    n = len(frames) // clip_len
    if n == 0:
        return []
    k = n if max_clips is None else min(n, max_clips)
    starts = np.unique(np.linspace(0, n - 1, k).round().astype(int)) * clip_len
    return [frames[s : s + clip_len] for s in starts]  # each (F, S, S, 3)


def _source_of(path: Path, root: Path) -> str:
    """The first folder under the videos root (e.g. 'liveportrait'); '.' for files at the top."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "."


def _round_robin(queues: list[list[Any]], limit: int | None) -> list[Any]:
    """Take one item from each queue in turn until ``limit`` or all are empty."""
    out: list[Any] = []
    queues = [list(q) for q in queues]
    while any(queues) and (limit is None or len(out) < limit):
        for q in queues:
            if q and (limit is None or len(out) < limit):
                out.append(q.pop(0))
    return out


ClipsBySource = dict[str, list[list[np.ndarray]]]  # {source: [[clip (F, S, S, 3) of a video, ...], ...]}


def _decode_videos(files: list[Path], root: Path, size: int, fps: float, clip_len: int,
                   max_clips_per_video: int | None, skipped: list[str]) -> tuple[ClipsBySource, int]:
    """The clips of each readable video by source, and the number of videos too short for one clip."""
    by_source: ClipsBySource = {}
    too_short = 0
    for path in files:
        try:
            clips = _video_clips(path, size, fps, clip_len, max_clips_per_video)
        except (MediaError, OSError) as err:
            _skip(path, err, skipped)
            continue
        if not clips:
            too_short += 1
            log.info("%s is shorter than one %d-frame clip at %g fps; not used", path, clip_len, fps)
            continue
        by_source.setdefault(_source_of(path, root), []).append(clips)
    return by_source, too_short


def _select_clips(by_source: ClipsBySource, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """Balance sources: round robin over sources, and within a source over its videos."""
    sources = sorted(by_source)
    queues = [[(s, c) for c in _round_robin(by_source[s], None)] for s in sources]
    return _round_robin(queues, limit)


def _fit(sizes: np.ndarray, room: float) -> int:
    """How many leading items of byte ``sizes`` fit in ``room`` bytes."""
    return int(np.searchsorted(np.cumsum(sizes), room, side="right"))


def _budget(max_bytes: int | None, image_sizes: np.ndarray, clip_sizes: np.ndarray,
            image_share: float) -> tuple[int, int]:
    """How many leading images and clips (of the given byte sizes, in order) fit in ``max_bytes``.

    Images get ``image_share`` of the room; a share one kind cannot use goes to the other.
    """
    n_images, n_clips = len(image_sizes), len(clip_sizes)
    if max_bytes is None or n_images + n_clips == 0:
        return n_images, n_clips
    room = max_bytes - _PACK_OVERHEAD
    smallest = min(int(a.min()) for a in (image_sizes, clip_sizes) if len(a))
    if room < smallest:
        raise ValueError(f"max_bytes={max_bytes} is too small for even one image or clip")
    images = _fit(image_sizes, room * image_share if n_clips else room)
    clips = _fit(clip_sizes, room - image_sizes[:images].sum())
    images = _fit(image_sizes, room - clip_sizes[:clips].sum())
    return images, clips


def _decode_images(files: list[Path], want: int, size: int, skipped: list[str]) -> np.ndarray:
    out: list[np.ndarray] = []
    for path in files:
        if len(out) >= want:
            break
        try:
            image = load_image(path, size=size)  # (3, 1, S, S)
        except (MediaError, OSError) as err:
            _skip(path, err, skipped)
            continue
        out.append(to_uint8(image[:, 0]).permute(1, 2, 0).numpy())
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def pack_dataset(
    images_dir: str | Path | None,
    videos_dir: str | Path | None,
    out_path: str | Path,
    size: int = 64,
    frames_per_block: int = 4,
    blocks_per_clip: int = 2,
    fps: float = 8.0,
    max_images: int | None = None,
    max_clips_per_video: int | None = 16,
    max_bytes: int | None = None,
    image_share: float = 0.5,
    seed: int = 0,
    jpeg_quality: int | None = None,
) -> PackStats:
    """Decode images and videos once into one uint8 pack at ``out_path`` (see the module docstring).

    Images (any depth under ``images_dir``) are taken in a seeded random order; videos are grouped
    by their first folder under ``videos_dir`` (the source) and clips are taken round robin over
    sources, so a source with many long videos cannot dominate. ``max_bytes`` caps the file size,
    giving images ``image_share`` of it and any share one kind cannot use to the other. Unreadable
    files are skipped with a warning and counted in the returned :class:`PackStats`.
    ``jpeg_quality`` stores JPEG files instead of raw pixels (see the module docstring); the byte
    cap then counts the encoded sizes.
    """
    if images_dir is None and videos_dir is None:
        raise ValueError("give an images folder, a videos folder, or both")
    if not 0 <= image_share <= 1:
        raise ValueError(f"image_share must be in [0, 1], got {image_share}")
    _check_jpeg_quality(jpeg_quality)  # before the slow decoding
    clip_len = frames_per_block * blocks_per_clip
    skipped: list[str] = []
    image_files = _media_files(images_dir, IMAGE_EXTS, "image") if images_dir is not None else []
    order = np.random.default_rng(seed).permutation(len(image_files))
    image_files = [image_files[i] for i in order]
    by_source, too_short = {}, 0
    if videos_dir is not None:
        video_files = _media_files(videos_dir, VIDEO_EXTS, "video")
        by_source, too_short = _decode_videos(video_files, Path(videos_dir), size, fps, clip_len,
                                              max_clips_per_video, skipped)
    available_clips = sum(len(c) for videos in by_source.values() for c in videos)
    image_cap = len(image_files) if max_images is None else min(len(image_files), max_images)
    meta = {"size": size, "frames_per_block": frames_per_block, "blocks_per_clip": blocks_per_clip, "fps": fps,
            "seed": seed, "sources": sorted(by_source)}
    files = None
    if jpeg_quality is None:
        n_images, n_clips = _budget(max_bytes, np.full(image_cap, size * size * 3),
                                    np.full(available_clips, clip_len * size * size * 3), image_share)
        chosen = _select_clips(by_source, n_clips)
        images = _decode_images(image_files, n_images, size, skipped)
    else:  # encoded sizes vary: decode and encode every candidate once, then cut to the budget
        chosen = _select_clips(by_source, None)
        images = _decode_images(image_files, image_cap, size, skipped)
        image_files, clip_files = _jpeg_files(images, [c for _, c in chosen], jpeg_quality)
        n_images, n_clips = _budget(max_bytes, np.array([len(f) for f in image_files], dtype=np.int64),
                                    np.array([sum(map(len, c)) for c in clip_files], dtype=np.int64), image_share)
        images, chosen = images[:n_images], chosen[:n_clips]
        files = (image_files[:n_images], clip_files[:n_clips])
    clips = np.stack([c for _, c in chosen]) if chosen else np.zeros((0, clip_len, size, size, 3), np.uint8)
    sources = meta["sources"]
    clip_source = np.array([sources.index(s) for s, _ in chosen], dtype=np.int32)
    per_source = {s: int((clip_source == i).sum()) for i, s in enumerate(sources)}
    if len(images) + len(clips) == 0:
        raise ValueError(f"no usable images or clips: {len(skipped)} unreadable files, {too_short} videos too short")
    meta.update(clips_per_source=per_source, num_skipped=len(skipped), too_short=too_short,
                skipped=[p[-200:] for p in skipped[:_MAX_LISTED_SKIPS]])
    path = _write(Path(out_path), images, clips, meta, clip_source, jpeg_quality, files)
    nbytes = path.stat().st_size
    if max_bytes is not None and nbytes > max_bytes:
        path.unlink()
        raise RuntimeError(f"pack came out at {nbytes} bytes, over max_bytes={max_bytes}; please report this")
    return PackStats(path, len(images), len(clips), nbytes, len(skipped), skipped, too_short, per_source)


# ---------------------------------------------------------------------------------------------
# Sampling from a pack


def _held_out(n: int, count: int) -> np.ndarray:
    """Indices of ``count`` items spread evenly over ``n`` (at least one item stays for training)."""
    count = max(0, min(count, n - 1))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


class PackedDataset(IterableDataset):
    """Samples (3, T, H, W) float in [-1, 1] from a pack, T = blocks_per_clip * frames_per_block.

    Each sample is ONE clip or ONE image, never a mix, so blocks of different clips never attend
    to each other (the official pipeline joins blocks of different files into one sequence with
    ``segment_ids`` always zero). An image becomes a static clip: the image repeated on every frame
    of every block, as the official ``_process_image`` does for one block.

    ``split="train"`` is an endless stream: in each epoch, every position is an image with
    probability ``image_ratio`` (None: the pack's natural proportion) and items come in a fresh
    permutation; augmentation is a random square crop of side in [``crop_scale``, 1] of the frame,
    resized to ``frame_size``, and a horizontal flip, the same for every frame of a clip.
    ``split="val"`` is one pass over the held-out items (``val_per_kind`` images and clips spread
    evenly through the pack), unaugmented. Held-out clips are never trained on, though they may
    come from a video that also gave training clips: 47 videos are too few to hold whole ones out.

    Rank ``rank`` of ``world_size`` takes global positions rank, rank + world_size, ... so the ranks'
    batches together form the global batch. All randomness is a function of (seed, epoch, index),
    so :meth:`state_dict` is just the position: resuming continues exactly. Use it in-process (no
    DataLoader workers): the pack is in memory and a sample costs microseconds.

    ``device`` holds the decoded pack there (e.g. "cuda": the pixels are copied to the GPU once and
    crops, flips and resizes run there), so the host never becomes the bottleneck of a fast step.
    """

    def __init__(
        self,
        pack: Pack | str | Path,
        split: str = "train",
        frame_size: int | None = None,
        image_ratio: float | None = 0.5,
        augment: bool = True,
        crop_scale: float = 0.8,
        flip: bool = True,
        val_per_kind: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.pack = pack if isinstance(pack, Pack) else load_pack(pack)
        device = torch.device(device or "cpu")
        self._pixels = (torch.from_numpy(self.pack.images).to(device), torch.from_numpy(self.pack.clips).to(device))
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 < crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.split, self.seed, self.rank, self.world_size = split, seed, rank, world_size
        self.frame_size = frame_size or self.pack.size
        self.augment = augment and split == "train"
        self.crop_scale, self.flip = crop_scale, flip
        self.images, self.clips = self._split_indices(val_per_kind)
        self.image_ratio = self._check_ratio(image_ratio)
        self.position = 0  # samples this rank has produced
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None

    def _split_indices(self, val_per_kind: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for n in (len(self.pack.images), len(self.pack.clips)):
            val = _held_out(n, val_per_kind)
            out.append(val if self.split == "val" else np.setdiff1d(np.arange(n), val))
        return out[0], out[1]

    def _check_ratio(self, ratio: float | None) -> float | None:
        if ratio is not None and not 0 <= ratio <= 1:
            raise ValueError(f"image_ratio must be in [0, 1] or None, got {ratio}")
        if self.split == "val" or ratio is None:
            return ratio
        if ratio > 0 and len(self.images) == 0:
            raise ValueError(f"image_ratio={ratio} but the pack has no training images; use image_ratio=0")
        if ratio < 1 and len(self.clips) == 0:
            raise ValueError(f"image_ratio={ratio} but the pack has no training clips; use image_ratio=1")
        return ratio

    @property
    def num_frames(self) -> int:
        return self.pack.num_frames

    @property
    def epoch_size(self) -> int:
        """Global positions per epoch: every training item once (on average, with a mix ratio)."""
        return len(self.images) + len(self.clips)

    def __len__(self) -> int:
        if self.split == "val":
            return len(self.images) + len(self.clips)
        raise TypeError("the training stream is endless; use epoch_size")

    # Resumable position ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        g = self.position * self.world_size + self.rank
        return {"position": self.position, "epoch": g // self.epoch_size, "index": g % self.epoch_size,
                "seed": self.seed, "world_size": self.world_size,
                "num_images": len(self.images), "num_clips": len(self.clips)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        mine = self.state_dict()
        for key in ("seed", "num_images", "num_clips"):
            if int(state[key]) != mine[key]:
                raise ValueError(f"data state does not match this dataset: {key} was {state[key]}, now {mine[key]} "
                                 "(a different pack, seed or held-out split)")
        position, world = int(state["position"]), int(state["world_size"])
        if world != self.world_size:
            # Continue after the samples all ranks consumed together; the interleaving changes.
            log.warning("resuming a data position from %d ranks on %d ranks: the sample order changes",
                        world, self.world_size)
            position = -(-position * world // self.world_size)
        self.position = position

    # Sampling -------------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(is_image (E,), item index (E,)) for every global position of ``epoch``."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1], self._plan[2]
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        n_img, n_clip, size = len(self.images), len(self.clips), self.epoch_size
        if self.image_ratio is None:
            order = torch.randperm(size, generator=g).numpy()
            is_image = order < n_img
            item = np.where(is_image, order, order - n_img)
        else:
            is_image = (torch.rand(size, generator=g) < self.image_ratio).numpy()
            img_perm = torch.randperm(max(n_img, 1), generator=g).numpy()
            clip_perm = torch.randperm(max(n_clip, 1), generator=g).numpy()
            # The k-th image position takes the k-th image of the permutation, cycling if the draw asks for more.
            k_img, k_clip = np.cumsum(is_image) - 1, np.cumsum(~is_image) - 1
            item = np.where(is_image, img_perm[k_img % max(n_img, 1)], clip_perm[k_clip % max(n_clip, 1)])
        self._plan = (epoch, is_image, item)
        return is_image, item

    def _raw(self, is_image: bool, item: int) -> torch.Tensor:
        """uint8 (F, S, S, 3); F = 1 for an image (expanded to every frame later)."""
        if is_image:
            return self._pixels[0][int(self.images[item])][None]
        return self._pixels[1][int(self.clips[item])]

    def _to_sample(self, frames: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = frames.permute(3, 0, 1, 2)  # (3, F, S, S) uint8
        S = x.shape[-1]
        side, top, left, flip = S, 0, 0, False
        if generator is not None:
            scale = self.crop_scale + (1 - self.crop_scale) * torch.rand((), generator=generator).item()
            side = min(S, max(1, round(S * scale)))
            top = int(torch.randint(S - side + 1, (), generator=generator))
            left = int(torch.randint(S - side + 1, (), generator=generator))
            flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        x = x[..., top : top + side, left : left + side]
        if flip:
            x = x.flip(-1)
        x = to_unit(x)  # uint8 -> [-1, 1]
        if side != self.frame_size:
            x = F.interpolate(x, size=(self.frame_size, self.frame_size), mode="bilinear", antialias=True,
                              align_corners=False).clamp_(-1, 1)  # (3, F, H, W): frames act as the batch axis
        return x.expand(-1, self.num_frames, -1, -1).contiguous() if x.shape[1] == 1 else x

    def sample_at(self, global_index: int) -> torch.Tensor:
        """The training sample at a global stream position (a pure function of seed and position)."""
        epoch, index = divmod(global_index, self.epoch_size)
        is_image, item = self._epoch_plan(epoch)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index, 1)) if self.augment else None
        return self._to_sample(self._raw(bool(is_image[index]), int(item[index])), generator)

    def _val_items(self) -> list[tuple[bool, int]]:
        """Held-out images and clips interleaved, so a small validation batch sees both kinds."""
        items = []
        for k in range(max(len(self.images), len(self.clips))):
            items += [(True, k)] if k < len(self.images) else []
            items += [(False, k)] if k < len(self.clips) else []
        return items

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.split == "val":
            for is_image, item in self._val_items():
                yield self._to_sample(self._raw(is_image, item), None)
            return
        if self.epoch_size == 0:
            raise ValueError("the training split is empty")
        while True:
            index = self.position * self.world_size + self.rank
            self.position += 1  # before yielding: the state always names the next unseen sample
            yield self.sample_at(index)

    def batch_at(self, position: int, batch_size: int) -> torch.Tensor:
        """This rank's samples at positions [position, position + batch_size), stacked (B, 3, T, H, W).

        A pure function of the position, so a batch can be prepared ahead (e.g. in a thread) without
        touching the resumable state.
        """
        if self.split != "train":
            raise ValueError("batch_at is for the training stream; use val_batch for the held-out split")
        g = [p * self.world_size + self.rank for p in range(position, position + batch_size)]
        return torch.stack([self.sample_at(i) for i in g])

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` training samples of this rank, stacked: (B, 3, T, H, W)."""
        batch = self.batch_at(self.position, batch_size)
        self.position += batch_size
        return batch

    def val_batch(self, limit: int | None = None) -> torch.Tensor | None:
        """Up to ``limit`` held-out samples stacked (B, 3, T, H, W), or None when nothing is held out."""
        samples = [s for _, s in zip(range(limit if limit is not None else 1 << 30), iter(self))]
        return torch.stack(samples) if samples else None


# ---------------------------------------------------------------------------------------------
# Token budgets


def sample_counts(
    batch: int,
    n_blocks: int,
    min_tokens: int,
    max_tokens: int,
    generator: torch.Generator | None = None,
    mode: str = "elastic",
    fixed_fraction: float = 0.5,
) -> torch.Tensor:
    """Kept tokens per block, (B, n_blocks) long, drawn independently per block.

    ``elastic``: uniform over [min_tokens, max_tokens] inclusive (the official draw keeps
    randint(min, max) + 1, i.e. [min + 1, max]; the paper's U{M_min..M_max} is used here).
    ``fixed``: every block keeps ceil(max_tokens * fixed_fraction), the fixed-token baseline.
    """
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"expected 1 <= min_tokens <= max_tokens, got {min_tokens} and {max_tokens}")
    if mode == "elastic":
        return torch.randint(min_tokens, max_tokens + 1, (batch, n_blocks), generator=generator)
    if mode == "fixed":
        if not 0 < fixed_fraction <= 1:
            raise ValueError(f"fixed_fraction must be in (0, 1], got {fixed_fraction}")
        n = min(max_tokens, max(1, math.ceil(max_tokens * fixed_fraction - 1e-9)))
        return torch.full((batch, n_blocks), n, dtype=torch.long)
    raise ValueError(f"unknown mask mode {mode!r}; expected 'elastic' or 'fixed'")
