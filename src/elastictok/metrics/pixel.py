"""Pixel-space reconstruction metrics: MSE, PSNR and SSIM.

Pixels follow the package convention, floats in [-1, 1]. MSE is reported on that scale (it is the
quantity the ElasticTok token search thresholds), while PSNR and SSIM are computed on the [0, 1]
scale so they read like the numbers in the literature. Since a [-1, 1] error is twice a [0, 1]
error, a [-1, 1] MSE ``m`` is ``m / 4`` on [0, 1] and ``PSNR = 10 * log10(1 / (m / 4)) =
10 * log10(4 / m)``; e.g. an MSE of 0.003 is 31.25 dB.

Every function takes a batch ``(B, ...)`` (SSIM: ``(B, C, H, W)``) and returns one value per item,
shape ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["block_mse", "mse", "mse_to_psnr", "psnr", "psnr_from_mse", "psnr_to_mse", "ssim"]

# Squared peak-to-peak range of [-1, 1] pixels: PSNR on [0, 1] is 10 * log10(PEAK_SQ / mse_pm1).
_PEAK_SQ = 4.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Number = TypeVar("Number", float, Tensor)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() < 2:
        raise ValueError(f"expected a batch (B, ...), got shape {tuple(x.shape)}")


def mse(x: Tensor, y: Tensor, dims: Sequence[int] | None = None) -> Tensor:
    """Mean squared error on [-1, 1] pixels, reduced over ``dims`` (default: all but the batch dim)."""
    _check_pair(x, y)
    if dims is None:
        dims = tuple(range(1, x.dim()))
    dtype = torch.promote_types(x.dtype, torch.float32)
    return (x.to(dtype) - y.to(dtype)).square().mean(dim=tuple(dims))


def mse_to_psnr(mse_pm1: Number) -> Number:
    """PSNR in dB on the [0, 1] scale for an MSE measured on [-1, 1]: ``10 * log10(4 / mse)``.

    Works on floats (thresholds) and tensors alike; an MSE of 0 gives ``inf``.
    """
    if isinstance(mse_pm1, Tensor):
        return 10.0 * torch.log10(_PEAK_SQ / mse_pm1)
    if mse_pm1 == 0:
        return math.inf
    return 10.0 * math.log10(_PEAK_SQ / mse_pm1)


def psnr_to_mse(psnr_db: Number) -> Number:
    """Inverse of :func:`mse_to_psnr`: the [-1, 1] MSE that gives ``psnr_db`` dB on [0, 1]."""
    if isinstance(psnr_db, Tensor):
        return _PEAK_SQ * torch.pow(10.0, -psnr_db / 10.0)
    return _PEAK_SQ * 10.0 ** (-psnr_db / 10.0)


# The name used when converting a measured per-image MSE tensor; same function.
psnr_from_mse = mse_to_psnr


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-item PSNR in dB on the [0, 1] scale of two [-1, 1] batches, shape ``(B,)``."""
    return mse_to_psnr(mse(x, y))


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian blur of every channel with 'valid' borders, as in Wang et al.'s reference."""
    channels, size = x.shape[1], window.numel()
    rows = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    x = F.conv2d(x, rows, groups=channels)
    return F.conv2d(x, cols, groups=channels)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity of two [-1, 1] batches ``(B, C, H, W)``, shape ``(B,)``.

    Standard SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
    data range 1 (pixels mapped to [0, 1]), no padding; the SSIM map is averaged over space and
    channels. Both sides need to be at least 11 pixels.
    """
    _check_pair(x, y)
    if x.dim() != 4:
        raise ValueError(f"ssim expects (B, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = (x.to(dtype) + 1) / 2
    y = (y.to(dtype) + 1) / 2
    c = x.shape[1]
    window = _gaussian_1d(SSIM_WINDOW, SSIM_SIGMA, dtype, x.device)
    # One grouped blur for all five local statistics: (B, 5C, H', W').
    stats = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    var_x = e_xx - mu_x.square()
    var_y = e_yy - mu_y.square()
    cov = e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3))


def block_mse(recon: Tensor, target: Tensor, tokens_per_block: int) -> Tensor:
    """The official per-block MSE: patches (B, L, P) -> (B, L / tokens_per_block).

    The reconstruction is clipped to [-1, 1], squared errors are averaged over each token's values
    and then over the tokens of each block; this is what the adaptive search thresholds.
    """
    _check_pair(recon, target)
    err = (recon.float().clamp(-1, 1) - target.float()).square().mean(-1)  # (B, L)
    return err.unflatten(1, (-1, tokens_per_block)).mean(-1)  # (B, n_blocks)
