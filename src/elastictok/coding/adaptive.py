"""Adaptive encoding: per block, the fewest tokens that meet a quality target, given the blocks before it.

Blocks are coded in order through the model's KV-cached block path. For each block a search
(:mod:`elastictok.coding.search`) asks whether a candidate count meets the target; each candidate costs one
encoder + decoder pass over that block only, attending to the committed earlier blocks. The winning
candidate's keys/values are kept and committed directly, so no extra commit pass and no final
whole-sequence pass are needed (the block path equals the whole-sequence path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from elastictok.coding.options import CodingOptions
from elastictok.coding.ratecontrol import plan_counts
from elastictok.coding.streaming import code_blocks
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.checks import check_video
from elastictok.model.tokens import Tokens


@dataclass
class BlockChoice:
    count: int
    value: float  # the target metric at that count
    evaluations: int  # candidates scored
    passes: int  # sequential passes (fewer than the evaluations when candidates were batched)


@dataclass
class AdaptiveResult:
    tokens: Tokens
    recon: torch.Tensor  # (B, 3, T, H, W)
    choices: list[list[BlockChoice]] = field(default_factory=list)  # [sample][block]
    options: CodingOptions | None = None  # as run: the model's defaults filled in

    @property
    def evaluations(self) -> int:
        return sum(c.evaluations for sample in self.choices for c in sample)

    @property
    def passes(self) -> int:
        return sum(c.passes for sample in self.choices for c in sample)


@torch.no_grad()
def encode_adaptive(
    model: ElasticTok,
    video: torch.Tensor,
    options: CodingOptions | None = None,
    *,
    counts: torch.Tensor | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> AdaptiveResult:
    """Encode ``video`` (B, 3, T, H, W) in [-1, 1] block by block, as ``options`` say (default:
    each block gets the fewest tokens that meet the official MSE 0.003, or all of them; with a
    budget, rate control allocates the counts of each video).

    ``counts``, a (B, n_blocks) allocation, gives every block's count instead. The tokens record the
    context window and the keyframes, so ``model.decode(result.tokens)`` repeats the reconstruction.
    ``on_block(i, n)`` is called after each block.
    """
    options = (options or CodingOptions()).for_model(model)
    check_video(video, model.config)
    frame_size = tuple(video.shape[-2:])
    T = model.config.tokens_per_block(frame_size)
    num_frames = video.shape[2]
    padded = model.pad_frames(video)
    fpb = model.config.frames_per_block
    n_blocks = padded.shape[2] // fpb
    if counts is not None and tuple(counts.shape) != (video.shape[0], n_blocks):
        raise ValueError(f"expected counts of shape (B, n_blocks) = ({video.shape[0]}, {n_blocks}), "
                         f"got {tuple(counts.shape)}")
    all_counts, all_codes, all_recon, all_keys, choices = [], [], [], [], []
    for b in range(video.shape[0]):
        def blocks(b=b):
            return (padded[b : b + 1, :, i * fpb : (i + 1) * fpb] for i in range(n_blocks))

        allocation = None if counts is None else counts[b].tolist()
        if allocation is None and options.mode == "budget":
            allocation, _ = plan_counts(model, blocks, frame_size, options)
        coded = []
        for cb in code_blocks(model, blocks(), options, counts=allocation):
            coded.append(cb)
            if on_block is not None:
                on_block(cb.index, cb.count)
        all_counts.append(torch.tensor([cb.count for cb in coded]))
        all_keys.append(torch.tensor([cb.keyframe for cb in coded]))
        all_codes.append(torch.cat([cb.codes for cb in coded], 1))
        all_recon.append(torch.cat([cb.recon for cb in coded], 2)[:, :, :num_frames])
        choices.append([BlockChoice(cb.count, cb.value, cb.evaluations, cb.passes) for cb in coded])
    codes = torch.cat(all_codes)  # (B, L, D)
    values = model.codes_to_values(codes).unflatten(1, (n_blocks, T)).cpu()  # (B, n_blocks, T[, D])
    keys = torch.stack(all_keys)  # (B, n_blocks)
    keys = keys if keys[:, 1:].any() else None  # only block 0: the plain layout
    tokens = Tokens(torch.stack(all_counts), values, model.config.bottleneck, num_frames, frame_size,
                    options.context_blocks, keys)
    return AdaptiveResult(tokens, torch.cat(all_recon), choices, options)
