"""One source to rows: read it, split long videos into clips, code each clip from its own keyframe.

Both engines call :func:`code_source`, so for the same model, source and job they give the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, count, islice
from typing import Any

import torch

from elastictok.coding.streaming import blocks_of
from elastictok.datasets.job import TokenizeJob
from elastictok.datasets.schema import clip_key, flat_tokens
from elastictok.datasets.sources import SourceRef
from elastictok.files.coding import run
from elastictok.files.source import Source
from elastictok.model.autoencoder import ElasticTok
from elastictok.utils.files import one_line


@dataclass
class Clip:
    """Frames ``start ..`` of a source, read like a :class:`Source` (``size``, ``fps``, ``blocks()``)."""

    index: int
    start: int
    size: tuple[int, int]
    fps: float | None
    read: Callable[[], Iterator[torch.Tensor]]
    frames_read: int = 0

    def blocks(self, frames_per_block: int) -> Iterator[torch.Tensor]:
        self.frames_read = 0
        for block, real in blocks_of(self.read(), frames_per_block):
            self.frames_read += real
            yield block


def split_clips(source: Source, max_clip_frames: int | None, reread: bool) -> Iterator[Clip]:
    """The clips of ``source``, each to be coded before the next is taken.

    The video is decoded once, front to back. ``reread`` (rate control reads a clip twice) keeps each
    clip's frames in memory; without a clip length the whole source is one clip, read from the file.
    """
    if not max_clip_frames or not source.is_video:
        yield Clip(0, 0, source.size, source.fps, source.frames)
        return
    frames = source.frames()
    for index in count():
        first = next(frames, None)
        if first is None:
            return
        chunk = chain([first], islice(frames, max_clip_frames - 1))
        read = partial(iter, list(chunk)) if reread else partial(iter, chunk)
        yield Clip(index, index * max_clip_frames, source.size, source.fps, read)
        for _ in chunk:  # whatever the coder left unread still belongs to this clip
            pass


@dataclass
class SourceResult:
    """The rows of one source, or why it failed (then no rows)."""

    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None

    @property
    def blocks(self) -> int:
        return sum(r["num_blocks"] for r in self.rows)

    @property
    def tokens(self) -> int:
        return sum(r["total_tokens"] for r in self.rows)


def code_source(model: ElasticTok, ref: SourceRef, job: TokenizeJob) -> SourceResult:
    """Every clip of ``ref`` as a row; an unreadable or unsuitable source gives a failure instead.

    ``job`` must already be :meth:`~TokenizeJob.for_model`. Input errors (ValueError, OSError) become
    the failure's one-line reason; anything else is a bug and propagates.
    """
    try:
        source = Source.open(ref.path, model, job.resolution, job.fps, job.max_frames)
        job.options.bounds(model.config, source.size)
        clips = split_clips(source, job.max_clip_frames, reread=job.options.mode == "budget")
        rows = [code_clip(model, ref.name, clip, job) for clip in clips]
    except (ValueError, OSError) as err:
        return SourceResult(ref.name, failure=one_line(err))
    return SourceResult(ref.name, rows)


def code_clip(model: ElasticTok, name: str, clip: Clip, job: TokenizeJob) -> dict[str, Any]:
    """One clip coded from block 0 (a keyframe) as a dataset row."""
    blocks, _ = run(model, clip, job.options)  # type: ignore[arg-type]  # a Clip reads like a Source
    counts, keyframes, mse, psnr, values = [], [], [], [], []
    for cb in blocks:
        counts.append(cb.count)
        keyframes.append(cb.keyframe)
        mse.append(float(cb.mse))
        psnr.append(float(cb.psnr))
        values.append(model.codes_to_values(cb.codes)[0, : cb.count].cpu())
    return {
        "key": clip_key(name, clip.index), "source": name, "clip": clip.index, "start_frame": clip.start,
        "start_time": clip.start / clip.fps if clip.fps else 0.0, "num_frames": clip.frames_read,
        "height": clip.size[0], "width": clip.size[1], "fps": clip.fps, "num_blocks": len(counts),
        "counts": counts, "keyframes": keyframes, "mse": mse, "psnr": psnr, "total_tokens": sum(counts),
        "tokens": flat_tokens(torch.cat(values), model.config),
    }


