"""The training objective and its optimisation: the loss, the learning-rate schedule, gradient clipping.

The loss is the official one (spec section 2.1): pixel MSE over every token, dropped ones included,
plus ``lpips_weight`` x LPIPS on one random frame per sample, plus ``kl_weight`` x KL for the VAE.
Unlike the official code, LPIPS sees frames at their native size (no 224 resize; frames under
32 px are upsampled to 32 so the backbones keep a spatial extent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LPIPS_MIN_SIDE", "clip_grad_norm", "compute_loss", "lr_factor"]

LPIPS_MIN_SIDE = 32


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr for the optimizer step after ``step`` completed ones: linear warm-up, cosine down."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _lpips_pair(recon: torch.Tensor, video: torch.Tensor, frame_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame per sample from (B, 3, T, H, W) -> two (B, 3, H', W') batches, at least 32 px a side."""
    b = torch.arange(video.shape[0], device=video.device)
    a, t = recon[b, :, frame_idx], video[b, :, frame_idx]  # (B, 3, H, W): the index dims come first
    side = min(a.shape[-2:])
    if side < LPIPS_MIN_SIDE:
        size = tuple(math.ceil(s * LPIPS_MIN_SIDE / side) for s in a.shape[-2:])
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return a, t


def compute_loss(
    model: nn.Module,
    video: torch.Tensor,
    counts: torch.Tensor,
    frame_idx: torch.Tensor | None = None,
    lpips: nn.Module | None = None,
    lpips_weight: float = 0.0,
    kl_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training loss of ``model`` (plain or wrapped) on video (B, 3, T, H, W) with counts (B, n_blocks).

    Returns the total and its parts (detached): mse, and lpips / kl when they apply.
    ``frame_idx`` (B,) picks the frame LPIPS scores in each sample; ``generator`` drives VAE sampling.
    """
    out = model(video, counts, generator=generator)
    recon = out.recon.float()
    mse = (recon - video.float()).square().mean()
    loss, parts = mse, {"mse": mse.detach()}
    if lpips is not None and lpips_weight > 0:
        idx = frame_idx if frame_idx is not None else torch.zeros(video.shape[0], dtype=torch.long, device=video.device)
        perceptual = lpips(*_lpips_pair(recon, video.float(), idx)).mean()
        loss = loss + lpips_weight * perceptual
        parts["lpips"] = perceptual.detach()
    if out.kl is not None:
        kl = out.kl.float()
        loss = loss + kl_weight * kl
        parts["kl"] = kl.detach()
    return loss, parts


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm (full, also under FSDP), clipping to ``max_norm`` when it is > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if hasattr(total, "full_tensor"):  # a DTensor under FSDP2: reduce the shards' partial norms
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
