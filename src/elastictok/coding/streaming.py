"""Block-by-block coding of videos of any length with bounded memory.

Blocks are coded in order through the model's KV cache. ``context_blocks`` bounds how many earlier
blocks each block attends to (a sliding window), so memory does not grow with the video. At a
keyframe (the first block, every ``keyframe_interval`` blocks, or a detected hard cut) the context
is reset, so decoding can start there.

Positions keep counting past the trained context: block i always sits at its global index. RoPE
attention depends only on the offset between a query and a key, so a window of W blocks sees the
same relative geometry wherever it is in the video; what grows is only the float32 rounding of the
absolute angles, as in the official code at its 1M-token context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from elastictok.coding.coder import BlockCoder, depth_for_block, speculation_depth
from elastictok.coding.options import CodingOptions, search_for
from elastictok.coding.prediction import past_slice, predicted_guess
from elastictok.coding.search import run_search
from elastictok.coding.target import BlockScorer, default_target
from elastictok.metrics.pixel import mse_to_psnr
from elastictok.model.autoencoder import ElasticTok, KVCache, StreamState


@dataclass
class CodedBlock:
    index: int
    count: int
    codes: torch.Tensor  # (1, T, D), zero past the count
    recon: torch.Tensor  # (1, 3, frames_per_block, H, W) in [-1, 1]
    value: float  # the target metric (MSE when coding at fixed counts)
    mse: float
    evaluations: int  # candidates scored
    keyframe: bool
    passes: int  # sequential (batched) passes; fewer than the evaluations when candidates were batched

    @property
    def psnr(self) -> float:
        return float(mse_to_psnr(self.mse))


def blocks_of(frames: Iterable[torch.Tensor], frames_per_block: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Group (3, H, W) frames into (1, 3, frames_per_block, H, W) blocks with their true frame counts.

    A last partial block is completed by repeating its last frame, as the encoder does.
    """
    buf: list[torch.Tensor] = []
    for frame in frames:
        buf.append(frame)
        if len(buf) == frames_per_block:
            yield torch.stack(buf, dim=1)[None], frames_per_block
            buf = []
    if buf:
        real = len(buf)
        buf += [buf[-1]] * (frames_per_block - real)
        yield torch.stack(buf, dim=1)[None], real


def is_cut(previous_block: torch.Tensor | None, block: torch.Tensor, threshold: float) -> bool:
    if previous_block is None:
        return False
    return float((block[:, :, 0] - previous_block[:, :, -1]).abs().mean()) > threshold


def reset_context(state: StreamState) -> None:
    state.enc, state.dec = KVCache(), KVCache()


@torch.no_grad()
def code_blocks(
    model: ElasticTok,
    blocks: Iterable[torch.Tensor],
    options: CodingOptions | None = None,
    counts: Iterable[int] | None = None,
) -> Iterator[CodedBlock]:
    """Code (1, 3, frames_per_block, H, W) blocks in order; yields each block as soon as it is coded.

    Each block's count is searched for ``options.target``, or is ``options.num_tokens``, or the next
    of ``counts`` (a rate-control allocation, one per block). With the ``fast`` search,
    ``options.speculation`` levels are scored per batched pass
    (:func:`~elastictok.coding.search.speculative_binary`); None measures it on the first block where
    batches are cheap (CUDA) and uses 1 elsewhere. ``options.tolerance`` is a fraction of the
    block's tokens (:func:`~elastictok.coding.search.run_search`). ``options.context_blocks`` None
    attends to every earlier block; ``options.for_model(config)`` gives the trained window.
    """
    options = options or CodingOptions()
    if options.mode == "budget" and counts is None:
        raise ValueError("a budget needs per-block counts: plan them with ratecontrol.plan_counts")
    target, speculation = options.target or default_target(model.config), options.speculation
    fixed = counts is not None or options.num_tokens is not None
    search = search_for(options.search, model, target, "fixed" if fixed else options.mode)
    per_block = None if counts is None else iter(counts)
    state, scorer, mse_scorer = None, None, None
    start = slope = None
    previous = context = None  # context: the last reconstructed slice, for predict
    bias = 0.0  # predict: the guess's error on the previous block, carried over (consecutive blocks share it)
    for i, block in enumerate(blocks):
        if state is None:
            frame_size = tuple(block.shape[-2:])
            state = model.new_state(frame_size)
            lo, hi, T = model.config.token_bounds(frame_size, options.min_tokens, options.max_tokens)
            scorer = BlockScorer(model, "mse" if fixed else target.metric, frame_size)
            mse_scorer = scorer if scorer.metric == "mse" else BlockScorer(model, "mse", frame_size)
        keyframe = i == 0 or bool(options.keyframe_interval and i % options.keyframe_interval == 0)
        keyframe = keyframe or (options.cut_threshold is not None and is_cut(previous, block, options.cut_threshold))
        if keyframe:
            reset_context(state)
            context = None
        patches = model.patchify(block.to(model.device))
        coder = BlockCoder(model, patches, state, scorer)
        if not fixed:
            if speculation is None:
                speculation = speculation_depth(coder, lo, hi) if search == "fast" else 1
            guess = None
            if search == "predict":
                guess = predicted_guess(model, patches, context, state.frame_size, target, lo, hi, bias)
            found = run_search(
                search, lambda m: target.margin(coder.evaluate(m, target.met)), lo, hi, start, slope,
                margins=lambda ns: [target.margin(v) for v in coder.evaluate_many(ns, target.met)],
                depth=depth_for_block(coder, speculation), tolerance=options.tolerance, tokens=T, guess=guess,
            )
            n, evals, passes, start, slope = found.count, found.evaluations, found.passes, found.count, found.slope
            bias += found.residual or 0.0
        else:
            n = options.num_tokens if per_block is None else next(per_block, None)
            if n is None:
                raise ValueError(f"the allocation has fewer counts than the video has blocks ({i})")
            if not 1 <= n <= T:
                raise ValueError(f"expected token counts in [1, {T}], got {n} for block {i}")
            coder.evaluate(n, lambda v: True)
            evals = passes = 1
        step = coder.final(n)
        model.commit(state, step, options.context_blocks)
        if search == "predict":
            context = past_slice(model, step.recon, patches, state.frame_size)
        value = coder.values.get(n)
        if value is None:
            value = scorer(step.recon, patches)
        mse = value if scorer is mse_scorer else mse_scorer(step.recon, patches)
        recon = model.unpatchify(step.recon.float(), model.config.frames_per_block, state.frame_size)
        previous = block
        yield CodedBlock(i, n, step.codes, recon, value, mse, evals, keyframe, passes)


@torch.no_grad()
def decode_blocks(
    model: ElasticTok,
    codes: Iterable[torch.Tensor],
    frame_size: tuple[int, int],
    keyframes: Iterable[int] = (0,),
    context_blocks: int | None = None,
    start_block: int = 0,
) -> Iterator[torch.Tensor]:
    """Decode per-block masked codes (1, T, D) in order to (1, 3, frames_per_block, H, W) blocks.

    Uses the same context rules as :func:`code_blocks`, so it reproduces the encoder's reconstruction;
    ``start_block`` must be a keyframe when decoding from the middle.
    """
    keys = set(keyframes)
    if start_block and start_block not in keys:
        raise ValueError(f"decoding can only start at a keyframe; block {start_block} is not one ({sorted(keys)})")
    state = model.new_state(frame_size)
    state.next_block = start_block
    for block_codes in codes:
        if state.next_block in keys:
            reset_context(state)
        recon, kv = model.decode_block(block_codes.to(model.device), state)
        state.dec.append(kv)
        if context_blocks is not None:
            state.dec.keep_last(context_blocks)
        state.next_block += 1
        yield model.unpatchify(recon.float(), model.config.frames_per_block, frame_size)


def frames_of(blocks: Iterable[torch.Tensor], num_frames: int | None = None) -> Iterator[torch.Tensor]:
    """(1, 3, F, H, W) blocks -> (3, H, W) frames, stopping after ``num_frames`` (the true length)."""
    emitted = 0
    for block in blocks:
        for t in range(block.shape[2]):
            if num_frames is not None and emitted >= num_frames:
                return
            emitted += 1
            yield block[0, :, t]


def on_each(items: Iterable, callback: Callable | None) -> Iterator:
    """Pass items through, calling ``callback(item)`` on each (to write blocks while streaming)."""
    for item in items:
        if callback is not None:
            callback(item)
        yield item
