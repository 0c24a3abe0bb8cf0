"""The two bottlenecks: finite scalar quantisation (FSQ) and a diagonal-Gaussian VAE."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VAE_LOGVAR_RANGE = (-30.0, 20.0)


class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al.) with the official ElasticTok bound.

    Codes lie on a per-dimension grid {-1, ..., 1 - 2/L} for even L and {-1, ..., 1} for odd L;
    indices are integers in [0, prod(levels)).
    """

    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3) -> None:
        super().__init__()
        self.levels = tuple(levels)
        lv = np.asarray(levels)
        # The official code derives these in float64 NumPy and uses them in float32 JAX ops.
        self.register_buffer("half_l", torch.tensor((lv - 1) * (1 - eps) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer(
            "offset", torch.tensor(np.where(lv % 2 == 1, 0.0, 0.5), dtype=torch.float32), persistent=False
        )
        self.register_buffer("half_width", torch.tensor(lv // 2, dtype=torch.long), persistent=False)
        basis = np.concatenate(([1], np.cumprod(lv[:-1])))
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        shift = torch.tan(self.offset / self.half_l)
        return torch.tanh(z + shift) * self.half_l - self.offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., len(levels)) -> codes on the grid, with a straight-through gradient. Always fp32."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            b = self.bound(z.float())
            # torch.round is round-half-to-even, like jnp.round in the official code.
            q = b + (torch.round(b) - b).detach()
            return q / self.half_width.float()

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        digits = torch.round(codes.float() * self.half_width + self.half_width).long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        levels = torch.tensor(self.levels, device=indices.device)
        digits = (indices.long()[..., None] // self.basis) % levels  # (..., len(levels))
        return (digits - self.half_width).float() / self.half_width.float()


class GaussianBottleneck(nn.Module):
    """Diagonal Gaussian over ``dim`` latents; the encoder emits mean and log-variance (2 * dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def split(self, z_pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = z_pre.float().split(self.dim, dim=-1)
        return mean, logvar.clamp(*VAE_LOGVAR_RANGE)

    def forward(self, z_pre: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Returns (z, mean, logvar). z is a reparameterised sample when ``sample`` else the mean."""
        mean, logvar = self.split(z_pre)
        if not sample:
            return mean, mean, logvar
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise, mean, logvar

    @staticmethod
    def kl(mean: torch.Tensor, logvar: torch.Tensor, keep: torch.Tensor, tokens_per_block: int) -> torch.Tensor:
        """Official KL: summed over kept tokens and latent dims of each block, then averaged over blocks and batch.

        mean, logvar (B, L, D); keep (B, L) boolean.
        """
        per_token = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)  # (B, L)
        per_token = per_token * keep
        per_block = per_token.unflatten(1, (-1, tokens_per_block)).sum(-1)  # (B, n_blocks)
        return per_block.mean()
