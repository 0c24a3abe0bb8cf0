"""Quality targets: which metric a block must reach, and how to score a reconstructed block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from elastictok.metrics.lpips import LPIPS
from elastictok.metrics.pixel import block_mse, mse_to_psnr, ssim
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig

METRICS = ("mse", "psnr", "ssim", "lpips")
DEFAULT_THRESHOLDS = {"mse": 0.003, "psnr": 31.25, "ssim": 0.9, "lpips": 0.1}
# MSE on [-1, 1] pixels is at most 4; PSNR above 100 dB or SSIM above 1 can never be met.
THRESHOLD_RANGES = {"mse": (0.0, 4.0), "psnr": (0.0, 100.0), "ssim": (0.0, 1.0), "lpips": (0.0, 10.0)}


@dataclass(frozen=True)
class Target:
    """A quality target: ``metric`` must reach ``threshold`` on each block.

    MSE is the official block MSE on [-1, 1] pixels; PSNR is in dB on the [0, 1] scale (0.003 MSE is
    31.25 dB); SSIM and LPIPS (AlexNet) are averaged over the block's frames. A block meets an MSE or
    LPIPS target when its value is <= the threshold, and a PSNR or SSIM target when it is >=.
    """

    metric: str = "mse"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")
        if self.threshold is None:
            object.__setattr__(self, "threshold", DEFAULT_THRESHOLDS[self.metric])
        lo, hi = THRESHOLD_RANGES[self.metric]
        if not (math.isfinite(self.threshold) and lo < self.threshold <= hi):
            raise ValueError(f"a {self.metric} threshold must be in ({lo}, {hi}], got {self.threshold}")

    def met(self, value: float) -> bool:
        return self.margin(value) <= 0

    def margin(self, value: float) -> float:
        """How far ``value`` misses the target (<= 0: met), on a roughly log scale for the searches."""
        if self.metric == "psnr":
            return self.threshold - value  # dB is already logarithmic
        if self.metric == "ssim":
            return math.log(max(1 - value, 1e-12)) - math.log(max(1 - self.threshold, 1e-12))
        return math.log(max(value, 1e-12)) - math.log(max(self.threshold, 1e-12))


def default_target(config: ElasticTokConfig) -> Target:
    """The target a model declares it is meant to run at, else the official block MSE 0.003."""
    return Target(*config.default_target) if config.default_target else Target()


class BlockScorer:
    """Scores a reconstructed block against its input with one metric."""

    def __init__(self, model: ElasticTok, metric: str, frame_size: tuple[int, int]) -> None:
        self.model, self.metric, self.frame_size = model, metric, frame_size
        self._lpips = None
        if metric == "lpips":
            self._lpips = LPIPS("alex").to(model.device)
        if metric == "ssim" and min(frame_size) < 11:
            raise ValueError(f"ssim needs frames of at least 11x11, got {frame_size[0]}x{frame_size[1]}")

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> float:
        """recon, target: one block's patches (1, T, P)."""
        T = recon.shape[1]
        if self.metric in ("mse", "psnr"):
            mse = float(block_mse(recon, target, T)[0, 0])
            return mse if self.metric == "mse" else float(mse_to_psnr(mse))
        frames = self.model.config.frames_per_block
        # (F, 3, H, W)
        a = self.model.unpatchify(recon.float().clamp(-1, 1), frames, self.frame_size)[0].transpose(0, 1)
        b = self.model.unpatchify(target.float(), frames, self.frame_size)[0].transpose(0, 1)
        if self.metric == "ssim":
            return float(ssim(a, b).mean())
        return float(self._lpips(a, b).mean())
