"""File-to-file coding that streams: frames are decoded as needed, blocks written as they are coded.

Nothing here holds a whole video: ``encode_file`` appends each block to the ``.etok`` file as soon as
it is coded, ``reconstruct_file`` also streams the reconstruction into an mp4, and ``decode_file``
decodes block by block into the output video.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import io
from .adaptive import Target
from .model import ElasticTok
from .pipeline import input_size, plot_blocks, side_by_side
from .ratecontrol import allocate, candidate_counts, checked, measure_curves, uniform_counts
from .streaming import DEFAULT_CUT_THRESHOLD, CodedBlock, blocks_of, code_blocks, decode_blocks, frames_of, is_cut
from .tokenfile import TokenFileWriter, open_token_file


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


@dataclass
class Coding:
    """How to choose token counts: a quality target, a fixed count, or an average budget."""

    target: Target | None = None
    search: str = "fast"
    num_tokens: int | None = None
    budget: float | None = None
    budget_objective: str = "psnr"
    min_tokens: int | None = None
    max_tokens: int | None = None
    context_blocks: int | None = None
    keyframe_interval: int | None = None
    cut_threshold: float | None = DEFAULT_CUT_THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, model: ElasticTok, size: tuple[int, int]) -> None:
        """Refuse contradictory settings before anything is written."""
        lo, _, T = model.config.token_bounds(size, self.min_tokens, self.max_tokens)
        if self.num_tokens is not None and not 1 <= self.num_tokens <= T:
            raise ValueError(f"expected --num-tokens in [1, {T}], got {self.num_tokens}")
        if self.budget is not None and not lo <= self.budget:
            raise ValueError(f"a budget of {self.budget} tokens per block is below the minimum of {lo}")
        for name in ("context_blocks", "keyframe_interval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"expected {name} >= 1, got {value}")

    def for_model(self, model: ElasticTok) -> "Coding":
        """These settings with the model's trained context window filled in when none was given; the
        file records the number, so decoding uses the same window whatever the defaults become."""
        return replace(self, context_blocks=model.config.context_window(self.context_blocks))

    def settings(self) -> dict[str, Any]:
        if self.budget is not None:
            mode = {"mode": "budget", "budget": self.budget, "objective": self.budget_objective}
        elif self.num_tokens is not None:
            mode = {"mode": "fixed", "num_tokens": self.num_tokens}
        else:
            target = self.target or Target()
            mode = {"mode": "adaptive", "metric": target.metric, "threshold": target.threshold, "search": self.search}
        return mode | {
            "min_tokens": self.min_tokens, "max_tokens": self.max_tokens, "context_blocks": self.context_blocks,
            "keyframe_interval": self.keyframe_interval, "cut_threshold": self.cut_threshold,
        } | self.extra


def _keyframes_of(source: Source, fpb: int, coding: Coding) -> set[int]:
    """Keyframe blocks, decided from the pixels alone so both rate-control passes agree."""
    keys, previous = {0}, None
    for i, block in enumerate(source.blocks(fpb)):
        if coding.keyframe_interval and i % coding.keyframe_interval == 0:
            keys.add(i)
        if coding.cut_threshold is not None and is_cut(previous, block, coding.cut_threshold):
            keys.add(i)
        previous = block
    return keys


def plan_counts(model: ElasticTok, source: Source, coding: Coding) -> tuple[list[int] | int | None, dict]:
    """Counts for :func:`code_blocks`: None (search), an int, or a budget allocation with its report."""
    if coding.budget is None:
        return coding.num_tokens, {}
    fpb = model.config.frames_per_block
    lo, hi, _ = model.config.token_bounds(source.size, coding.min_tokens, coding.max_tokens)
    if not lo <= coding.budget:
        raise ValueError(f"a budget of {coding.budget} tokens per block is below the minimum of {lo}")
    budget = min(coding.budget, hi)
    candidates = [n for n in candidate_counts(lo, hi, int(budget)) if lo <= n <= hi]
    keys = _keyframes_of(source, fpb, coding)
    curves = measure_curves(model, source.blocks(fpb), candidates, int(budget), coding.context_blocks, keys)
    allocation = allocate(curves, budget, coding.budget_objective)
    counts, report = allocation.counts, {"budget": coding.budget, "candidates": candidates}
    uniform = uniform_counts(curves, budget)
    if counts != uniform:
        # The curves condition every block on earlier blocks at the uniform count; the allocation
        # changes that context. One pass at the allocated counts gives exactly what encoding them
        # yields, and the curves already hold exactly what uniform yields: keep the better.
        realised = measure_curves(model, source.blocks(fpb), None, counts, coding.context_blocks, keys)
        counts, report["checked"] = checked(curves, realised, counts, budget, coding.budget_objective)
    report["allocation"] = counts
    return counts, report


def run(model: ElasticTok, source: Source, coding: Coding) -> tuple[Iterator[CodedBlock], dict]:
    """The coded blocks of ``source`` (a generator) and a report of the plan."""
    counts, report = plan_counts(model, source, coding)
    blocks = code_blocks(
        model, source.blocks(model.config.frames_per_block), target=coding.target, search=coding.search,
        min_tokens=coding.min_tokens, max_tokens=coding.max_tokens, counts=counts,
        context_blocks=coding.context_blocks, keyframe_interval=coding.keyframe_interval,
        cut_threshold=coding.cut_threshold,
    )
    return blocks, report


def block_stats(cb: CodedBlock, max_tokens: int) -> dict[str, Any]:
    return {"block": cb.index, "tokens": cb.count, "max_tokens": max_tokens, "mse": cb.mse, "psnr": cb.psnr,
            "keyframe": cb.keyframe, "evaluations": cb.evaluations}


def summarize(blocks: list[dict], source: Source, coding: Coding, report: dict, seconds: float, frames: int) -> dict:
    total = sum(b["tokens"] for b in blocks)
    return {
        "blocks": blocks,
        "total_tokens": total,
        "max_total_tokens": sum(b["max_tokens"] for b in blocks),
        "average_tokens_per_block": total / len(blocks),
        "mean_mse": sum(b["mse"] for b in blocks) / len(blocks),
        "mean_psnr": sum(b["psnr"] for b in blocks) / len(blocks),
        "keyframes": [b["block"] for b in blocks if b["keyframe"]],
        "frames": frames,
        "frame_size": list(source.size),
        "fps": source.fps,
        "settings": coding.settings(),
        "rate_control": report or None,
        "seconds": seconds,
    }


def _values(model: ElasticTok, cb: CodedBlock) -> torch.Tensor:
    return model.codes_to_values(cb.codes)[0, : cb.count].cpu()


class BlockWriter:
    """Codes ``source`` and appends each block to an ``.etok`` file as it is coded.

    Iterate over it to get the coded blocks; the file is renamed into place only after the last one.
    ``stats`` holds the per-block figures and ``report`` the rate-control plan.
    """

    def __init__(self, model: ElasticTok, source: Source, out_path, coding: Coding,
                 on_block: Callable[[CodedBlock], None] | None = None) -> None:
        self.model, self.source, self.out_path, self.coding, self.on_block = model, source, out_path, coding, on_block
        self.stats: list[dict] = []
        self.report: dict = {}
        self.start = time.perf_counter()

    def __iter__(self) -> Iterator[CodedBlock]:
        model, source = self.model, self.source
        blocks, self.report = run(model, source, self.coding)
        T = model.config.tokens_per_block(source.size)
        with TokenFileWriter.for_model(self.out_path, model, frame_size=source.size, fps=source.fps,
                                       settings=self.coding.settings()) as writer:
            for cb in blocks:
                writer.write_block(_values(model, cb), cb.count, keyframe=cb.keyframe)
                self.stats.append(block_stats(cb, T))
                if self.on_block is not None:
                    self.on_block(cb)
                yield cb
            writer.set_num_frames(source.frames_read)

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.start
        return summarize(self.stats, self.source, self.coding, self.report, seconds, self.source.frames_read)


def encode_file(
    model: ElasticTok, source: Source, out_path, coding: Coding, on_block: Callable[[CodedBlock], None] | None = None
) -> dict:
    """Code ``source`` block by block into ``out_path`` (.etok), appending each block as it is coded."""
    coding.check(model, source.size)
    coding = coding.for_model(model)
    writer = BlockWriter(model, source, out_path, coding, on_block)
    for _ in writer:
        pass
    return writer.summary()


def reconstruct_file(
    model: ElasticTok, source: Source, out_dir, coding: Coding, on_block: Callable[[CodedBlock], None] | None = None
) -> dict:
    """Write ``tokens.etok``, ``recon`` and ``compare`` (png or mp4), ``blocks.png`` and ``stats.json``.

    Videos stream: the reconstruction goes to recon.mp4 block by block while the token file grows,
    and compare.mp4 is made afterwards from the input and recon.mp4, frame by frame.
    """
    coding.check(model, source.size)
    coding = coding.for_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = BlockWriter(model, source, out / "tokens.etok", coding, on_block)
    last: list[torch.Tensor] = []

    def recon_frames() -> Iterator[torch.Tensor]:
        for cb in writer:
            last[:] = [cb.recon]
            # The source has counted this block's real frames by now; padding is never emitted.
            real = source.frames_read - cb.index * model.config.frames_per_block
            yield from (cb.recon[0, :, t] for t in range(real))

    if source.is_video:
        io.save_video(recon_frames(), out / "recon.mp4", source.fps)
        compare = (side_by_side(a[:, None], b[:, None])[:, 0] for a, b in zip(source.frames(), io.iter_video_frames(out / "recon.mp4")))
        io.save_video(compare, out / "compare.mp4", source.fps)
    else:
        for _ in recon_frames():
            pass
        image = next(source.frames())[:, None]  # (3, 1, H, W)
        io.save_image(last[0][0, :, 0], out / "recon.png")
        io.save_image(side_by_side(image, last[0][0, :, :1])[:, 0], out / "compare.png")
    result = writer.summary()
    plot_blocks(result, out / "blocks.png")
    tmp = out / "stats.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out / "stats.json")
    return result


def decode_frames(model: ElasticTok, f, start_block: int = 0) -> Iterator[torch.Tensor]:
    """(3, H, W) frames of an open token file, decoded block by block from block 0 or a keyframe."""
    f.check_model(model)
    size = tuple(f.header["frame_size"])
    if not 0 <= start_block < f.num_blocks:
        raise ValueError(f"start block {start_block} is outside the file's {f.num_blocks} blocks")
    T = model.config.tokens_per_block(size)
    codes = (_block_codes(model, f.read_block(i), T) for i in range(start_block, f.num_blocks))
    blocks = decode_blocks(model, codes, size, f.keyframes, f.context_blocks, start_block)
    return frames_of(blocks, f.num_frames - start_block * model.config.frames_per_block)


def decode_file(model: ElasticTok, etok_path, out_path, start_block: int = 0) -> Path:
    """Decode an ``.etok`` file into an image or a video (streamed), from block 0 or a keyframe."""
    with open_token_file(etok_path) as f:
        frames = decode_frames(model, f, start_block)
        if Path(out_path).suffix.lower() in io.VIDEO_EXTS:
            return io.save_video(frames, out_path, f.header.get("fps") or 24.0)
        if f.num_frames - start_block * model.config.frames_per_block != 1:
            raise ValueError(f"{etok_path} holds {f.num_frames} frames; write it to a video file such as out.mp4")
        return io.save_image(next(frames), out_path)


def _block_codes(model: ElasticTok, kept: torch.Tensor, tokens_per_block: int) -> torch.Tensor:
    """Kept tokens of one block -> masked codes (1, T, D) for the decoder."""
    codes = model.values_to_codes(kept.to(model.encoder.in_proj.weight.device))  # (n, D)
    out = torch.zeros(1, tokens_per_block, model.config.latent_dim, device=codes.device)
    out[0, : codes.shape[0]] = codes
    return out
