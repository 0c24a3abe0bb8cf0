"""Input checks at the public boundary: one-line errors that say what was expected and what arrived."""

from __future__ import annotations

import torch

from elastictok.model.config import ElasticTokConfig

# Pixels may sit a hair outside [-1, 1] after resampling or bf16 rounding.
RANGE_SLACK = 1e-3


def check_video(video: object, config: ElasticTokConfig) -> torch.Tensor:
    """Validate a (B, 3, T, H, W) float video in [-1, 1]; return it unchanged."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor video of shape (B, 3, T, H, W), got {type(video).__name__}")
    if video.ndim != 5:
        hint = "; for images (B, 3, H, W) use images.unsqueeze(2)" if video.ndim == 4 else ""
        raise ValueError(f"expected a video of shape (B, 3, T, H, W), got shape {tuple(video.shape)}{hint}")
    if video.shape[1] != 3:
        raise ValueError(f"expected 3 RGB channels on axis 1 of (B, 3, T, H, W), got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise TypeError(
            f"expected a floating-point video in [-1, 1], got dtype {video.dtype}; "
            "convert uint8 pixels with x / 127.5 - 1"
        )
    if min(video.shape) == 0:
        raise ValueError(f"expected a non-empty video, got shape {tuple(video.shape)}")
    if not torch.isfinite(video).all():
        raise ValueError("expected finite pixel values, got NaN or infinity")
    lo, hi = float(video.min()), float(video.max())
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(
            f"expected pixel values in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "convert uint8 pixels with x / 127.5 - 1"
        )
    check_frame_size(tuple(video.shape[-2:]), config)
    return video


def check_frame_size(frame_size: tuple[int, int], config: ElasticTokConfig) -> None:
    _, hp, wp = config.patch_size
    h, w = frame_size
    if config.rope == "1d":
        if (h, w) != config.frame_size:
            raise ValueError(
                f"expected frames of {config.frame_size[0]}x{config.frame_size[1]} (this model's 1-D positions "
                f"are tied to its training size), got {h}x{w}; resize or crop the input"
            )
    elif h % hp or w % wp or h < hp or w < wp:
        raise ValueError(f"expected a frame size that is a multiple of the patch size {hp}x{wp}, got {h}x{w}")


def check_counts(
    num_tokens: int | torch.Tensor | None,
    batch: int,
    num_blocks: int,
    tokens_per_block: int,
    device: torch.device,
) -> torch.Tensor:
    """Turn ``num_tokens`` (None = all, an int, or a (B, n_blocks) tensor) into a (B, n_blocks) long tensor."""
    if num_tokens is None:
        return torch.full((batch, num_blocks), tokens_per_block, dtype=torch.long, device=device)
    if isinstance(num_tokens, bool):
        raise TypeError("expected num_tokens as an int or a (B, n_blocks) tensor, got a bool")
    if isinstance(num_tokens, int):
        counts = torch.full((batch, num_blocks), num_tokens, dtype=torch.long, device=device)
    else:
        counts = torch.as_tensor(num_tokens, device=device)
        if counts.is_floating_point() and not torch.equal(counts, counts.round()):
            raise ValueError("expected integer token counts, got fractional values")
        counts = counts.long()
        if counts.shape != (batch, num_blocks):
            raise ValueError(
                f"expected num_tokens of shape (B, n_blocks) = ({batch}, {num_blocks}), got {tuple(counts.shape)}"
            )
    lo, hi = int(counts.min()), int(counts.max())
    if lo < 1 or hi > tokens_per_block:
        raise ValueError(f"expected token counts in [1, {tokens_per_block}] (tokens kept per block), got [{lo}, {hi}]")
    return counts
