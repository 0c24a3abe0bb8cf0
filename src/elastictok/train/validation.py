"""Validation during training: PSNR at fixed token counts, adaptive token use, and a reconstruction grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.media.io import to_uint8
from elastictok.metrics.pixel import psnr
from elastictok.model.autoencoder import ElasticTok
from elastictok.utils.files import atomic_path

__all__ = ["save_grid", "validate"]


def _frame_u8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return to_uint8(x.float().clamp(-1, 1)).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)


def save_grid(rows: list[list[torch.Tensor]], path: str | Path, gap: int = 2) -> Path:
    """Write frames (3, H, W) laid out as ``rows`` of equal length to a PNG, atomically."""
    h, w = rows[0][0].shape[-2:]
    ncol = len(rows[0])
    canvas = Image.new("RGB", (ncol * (w + gap) + gap, len(rows) * (h + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            canvas.paste(Image.fromarray(_frame_u8(frame)), (gap + c * (w + gap), gap + r * (h + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        canvas.save(temp, format="PNG")
    return path


@torch.no_grad()
def validate(
    model: ElasticTok,
    video: torch.Tensor,
    threshold: float = 0.003,
    adaptive_samples: int = 4,
    grid_path: str | Path | None = None,
    grid_rows: int = 4,
) -> dict[str, float]:
    """PSNR at the minimum, half and full token counts, and the mean tokens per block that adaptive
    coding ("fast" search) needs to reach block MSE ``threshold`` on the first ``adaptive_samples``.

    ``video`` (B, 3, T, H, W) in [-1, 1]. With ``grid_path``, writes a PNG: per row one sample's first
    frame of its last block, then its reconstructions at min, 1/4, 1/2 and all tokens.
    """
    model.eval()
    frame_size = tuple(video.shape[-2:])
    T = model.config.tokens_per_block(frame_size)
    n_blocks = video.shape[2] // model.config.frames_per_block
    levels = {"min": model.config.min_tokens(frame_size), "quarter": max(1, T // 4), "half": max(1, T // 2), "full": T}
    out: dict[str, float] = {}
    recons = {}
    for name, n in levels.items():
        counts = torch.full((video.shape[0], n_blocks), n, dtype=torch.long, device=video.device)
        recons[name] = model(video, counts, sample=False).recon.float().clamp(-1, 1)
        out[f"psnr_{name}"] = float(psnr(recons[name], video).mean())
        out[f"tokens_{name}"] = n
    if adaptive_samples > 0:
        result = encode_adaptive(model, video[:adaptive_samples], CodingOptions(target=Target("mse", threshold)))
        mean = float(result.tokens.counts.float().mean())
        out.update(adaptive_tokens=mean, adaptive_fraction=mean / T, adaptive_threshold=threshold)
    if grid_path is not None:
        t = (n_blocks - 1) * model.config.frames_per_block
        rows = [[video[i, :, t]] + [recons[k][i, :, t] for k in levels] for i in range(min(grid_rows, len(video)))]
        save_grid(rows, grid_path)
    return out
