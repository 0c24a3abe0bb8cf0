"""A model's token-count predictor read as a search's guess: predicted margins for a quality target."""

from __future__ import annotations

import math

import numpy as np
import torch

from elastictok.coding.search import Guess
from elastictok.coding.target import Target
from elastictok.metrics.pixel import mse_to_psnr
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.predictor import PastSlice, block_features

PREDICTED_METRICS = ("mse", "psnr")
# Counts the predicted curve is read at (log-spaced); between them it is interpolated in log count.
READ_POINTS = 32


def last_slice(model: ElasticTok, patches: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """A block's patches (B, T, P), coded or not -> its last time slice (B, rows * cols, P) in [-1, 1]."""
    _, rows, cols = model.config.grid(frame_size)
    return patches[:, -rows * cols:].float().clamp(-1, 1)


def past_slice(model: ElasticTok, recon: torch.Tensor, patches: torch.Tensor, frame_size: tuple[int, int]) -> PastSlice:
    """What the predictor reads of a coded block for the next one: its last slice, reconstructed (``recon``)
    and as it was (``patches``)."""
    return PastSlice(last_slice(model, recon, frame_size), last_slice(model, patches, frame_size))


def read_counts(lo: int, hi: int, num: int = READ_POINTS) -> list[int]:
    return sorted({lo, hi, *(int(round(v)) for v in np.exp(np.linspace(math.log(lo), math.log(hi), num)))})


@torch.no_grad()
def predicted_guess(
    model: ElasticTok, patches: torch.Tensor, previous: PastSlice | None, frame_size: tuple[int, int],
    target: Target, lo: int, hi: int, bias: float = 0.0,
) -> Guess:
    """The guess of ``model.predictor`` for one block's patches (1, T, P); ``previous`` is the context's
    last time slice, None at a keyframe. ``bias`` is added to every
    margin (the error the guess made on the block before)."""
    if target.metric not in PREDICTED_METRICS:
        raise ValueError(f"the predictor predicts {' and '.join(PREDICTED_METRICS)}, not {target.metric}: "
                         "use --search fast for this metric")
    grid = model.config.grid(frame_size)
    tokens, block = block_features(patches, model.config.patch_size, grid, previous)
    counts = read_counts(lo, hi)
    log_mse, log_spread = model.predictor(tokens, block, torch.tensor(counts), grid[1] * grid[2], previous is not None)
    logs = np.log(np.asarray(counts, dtype=np.float64))
    values = log_mse[0].double().cpu().numpy()

    def margin(n: int) -> float:
        mse = math.exp(float(np.interp(math.log(n), logs, values)))
        return target.margin(mse if target.metric == "mse" else float(mse_to_psnr(mse))) + bias

    # The crossing's uncertainty in tokens: the spread of log MSE over the local slope in log count.
    margins = [margin(n) for n in counts]
    i = next((j for j, m in enumerate(margins) if m <= 0), len(counts) - 1)
    j0, j1 = max(i - 1, 0), min(i + 1, len(counts) - 1)
    slope = (values[j1] - values[j0]) / max(logs[j1] - logs[j0], 1e-9)
    spread = counts[i] * float(log_spread[0, i].exp()) / max(abs(slope), 0.05)
    return Guess(margin, min(spread, float(hi - lo)), counts)
