"""Token-share curves and the token-efficiency gain: pure functions over per-block rate-distortion curves.

**Token-share curves.** For each item (an image, or a clip read at ``frames`` frames) every block's
official block MSE (on [-1, 1] pixels, clipped reconstruction) is measured once at a grid of token
counts: the *rate-distortion curve* of the block. Grid column ``g`` is a token fraction ``f_g``;
a block of ``T`` token slots gets ``clamp(round(f_g * T), min_tokens, T)`` tokens there. The grid is
the union of log- and linearly-spaced fractions from the model's minimum to 1, plus the budgets.
For video, every block is coded conditioned on the earlier blocks coded *at the same count* (a
fixed-count pass; the real adaptive encoder conditions on earlier blocks at their chosen counts,
which this simplification ignores). From these curves, with ``met = block MSE <= threshold``:

- *uniform* at column ``g``: every block gets its count at ``g``; the point is
  (token share, share of blocks meeting) = (sum of counts / sum of T, mean of met).
- *adaptive* with cap ``g`` (the official ``max_prop_codes`` sweep): each block gets the fewest grid
  count that meets the threshold (an exhaustive search restricted to the grid) if that count is at
  most its cap, else the cap (the search's fallback); the point is (sum of counts / sum of T,
  share of blocks whose fewest meeting count is within the cap).
- *baseline* (``--baseline``, a model trained with mask mode ``fixed``): one point per model, every
  block at ``ceil(fixed_fraction * T)``, the count it was trained at.

Shares of blocks weight every block (an image is one block) equally; token shares weight tokens.

**Token-efficiency gain.** For a curve, ``tokens_to_reach(s)`` is the token share at which it first
reaches a share ``s`` of blocks meeting the threshold, walking its points in order of token share and
interpolating linearly between the last point below ``s`` and the first at or above it (the first
point itself if it already reaches ``s``; undefined if the curve never does). The gain of adaptive
over a reference at ``s`` is ``tokens_to_reach_ref(s) / tokens_to_reach_adaptive(s)``. It is
reported at ``s`` = the share uniform reaches at full tokens (the headline), at 50% and 80%, and,
for a baseline, at the share the baseline reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BUDGETS",
    "Curve",
    "adaptive_curve",
    "baseline_curve",
    "efficiency_gain",
    "fewest_meeting",
    "grid_fractions",
    "tokens_to_reach",
    "uniform_curve",
]

# Uniform budgets reported for PSNR/SSIM/LPIPS/FVD: label -> token fraction (None: the model's minimum).
# They live here because the RD grid must contain them, so their quality comes from the same passes.
BUDGETS: dict[str, float | None] = {"min": None, "1/4": 0.25, "1/2": 0.5, "full": 1.0}


@dataclass(frozen=True)
class Curve:
    """Points (token share, share of blocks meeting the threshold), sorted by token share."""

    token_share: np.ndarray
    share_met: np.ndarray

    @classmethod
    def of(cls, x: Sequence[float], y: Sequence[float]) -> Curve:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        order = np.argsort(x, kind="stable")
        return cls(x[order], y[order])

    def to_json(self) -> list[list[float]]:
        return [[float(a), float(b)] for a, b in zip(self.token_share, self.share_met)]


def _check_rd(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray) -> None:
    if mse.shape != counts.shape or mse.ndim != 2 or tokens.shape != (mse.shape[0],):
        raise ValueError(f"expected mse and counts (N, G) and tokens (N,), got {mse.shape}, {counts.shape}, "
                         f"{tokens.shape}")


def uniform_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """Every block at its column-``g`` count, for each column: see the module docstring.

    mse, counts: (N blocks, G columns); tokens: (N,) token slots per block.
    """
    mse, counts, tokens = np.asarray(mse, float), np.asarray(counts, float), np.asarray(tokens, float)
    _check_rd(mse, counts, tokens)
    return Curve.of(counts.sum(0) / tokens.sum(), (mse <= threshold).mean(0))


def fewest_meeting(mse: np.ndarray, counts: np.ndarray, threshold: float) -> np.ndarray:
    """Per block, the fewest grid count whose MSE meets ``threshold`` (inf if none does); (N,)."""
    return np.where(np.asarray(mse) <= threshold, np.asarray(counts, float), np.inf).min(1)


def adaptive_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """Fewest meeting count per block, capped at each column's count (fallback: the cap)."""
    mse, counts, tokens = np.asarray(mse, float), np.asarray(counts, float), np.asarray(tokens, float)
    _check_rd(mse, counts, tokens)
    need = fewest_meeting(mse, counts, threshold)[:, None]  # (N, 1)
    ok = need <= counts  # (N, G): meets within the cap of column g
    used = np.where(ok, need, counts)
    return Curve.of(used.sum(0) / tokens.sum(), ok.mean(0))


def baseline_curve(mse: np.ndarray, counts: np.ndarray, tokens: np.ndarray, threshold: float) -> Curve:
    """A fixed-count model: one point per column given (usually one column, its trained count)."""
    return uniform_curve(mse, counts, tokens, threshold)


def tokens_to_reach(curve: Curve, share: float) -> float | None:
    """Token share at which ``curve`` first reaches ``share`` of blocks meeting, interpolated linearly."""
    x, y = curve.token_share, curve.share_met
    hits = np.nonzero(y >= share - 1e-12)[0]
    if share <= 0 or not len(hits):
        return None
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    x0, y0, x1, y1 = x[i - 1], y[i - 1], x[i], y[i]
    return float(x0 + (share - y0) * (x1 - x0) / (y1 - y0))


def efficiency_gain(adaptive: Curve, reference: Curve, share: float) -> dict[str, float | None]:
    """Tokens the reference needs / tokens adaptive needs to reach ``share`` of blocks meeting."""
    ref, ada = tokens_to_reach(reference, share), tokens_to_reach(adaptive, share)
    gain = ref / ada if ref is not None and ada else None
    return {"share": float(share), "reference_tokens": ref, "adaptive_tokens": ada, "gain": gain}


def grid_fractions(min_fraction: float, points: int = 32) -> list[float]:
    """Token fractions of the RD grid: half log-spaced, half linear, from the minimum to 1, plus the budgets."""
    half = max(2, points // 2)
    log = np.exp(np.linspace(math.log(min_fraction), 0.0, half))
    lin = np.linspace(min_fraction, 1.0, max(2, points - half))
    budgets = [min_fraction if f is None else f for f in BUDGETS.values()]
    return sorted({round(float(f), 6) for f in [*log, *lin, *budgets] if min_fraction - 1e-9 <= f <= 1.0})


def _count_at(fraction: float, tokens: int, min_tokens: int) -> int:
    return int(min(tokens, max(min_tokens, round(fraction * tokens))))
