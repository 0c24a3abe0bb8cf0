"""A learned token-count predictor: a block's reconstruction MSE at any token count, from its pixels.

Pure (no I/O). It reads cheap statistics of each token's pixels (detail, and change from the token
it can be copied from: the same place one time slice earlier, or the last reconstructed slice of
the context for a block's first slice), then a small MLP predicts each token's squared error at a
given count, knowing whether that token and its reference are kept; the block's MSE is their mean.
Kept tokens form a prefix in time-major raster order, so this follows the shape of real curves (a
flat stretch while the kept prefix covers still regions, a cliff where it reaches detail). A second
head gives the spread of log MSE (an uncertainty), learned with a Gaussian likelihood. Its cost is a
few milliseconds against the hundreds of a full encoder+decoder pass, with either encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from elastictok.utils.pretrained import PretrainedMixin

TOKEN_FEATURES = 5  # log detail, log gradient, log change from the reference, has a reference, time slice
BLOCK_FEATURES = 5  # means of the three logs over the block, has a past, log tokens per block
COUNT_FEATURES = 3  # kept fraction, token kept, its reference kept
_EPS = 1e-4


@dataclass
class PredictorConfig:
    """``for_weights``: SHA-256 of the model weights whose curves it learned; ``extra``: how it was trained."""

    hidden_size: int = 32
    for_weights: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PredictorConfig:
        data = json.loads(text)
        unknown = sorted(set(data) - {"hidden_size", "for_weights", "extra"})
        if not isinstance(data, dict) or unknown:
            raise TypeError(f"unknown predictor fields {unknown}")
        return cls(**data)


def _log(x: torch.Tensor) -> torch.Tensor:
    return (torch.log(x + _EPS) + 5.0) / 3.0  # roughly [-1, 2] for pixels in [-1, 1]


def block_features(
    patches: torch.Tensor, patch_size: tuple[int, int, int], grid: tuple[int, int, int],
    previous: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (B, T, P) in [-1, 1]; ``previous`` (B, rows * cols, P): the context's last reconstructed
    time slice, or None at a keyframe. Returns token features (B, T, 5) and block features (B, 5)."""
    tp, hp, wp = patch_size
    S, gh, gw = grid
    B, T, _ = patches.shape
    x = patches.float().reshape(B, S, gh * gw, tp, hp, wp, 3)  # (B, S, N, tp, hp, wp, C)
    detail = x.var(dim=(3, 4, 5), unbiased=False).mean(-1)  # (B, S, N)
    gradient = (x[:, :, :, :, 1:] - x[:, :, :, :, :-1]).pow(2).mean((3, 4, 5, 6)) + (
        x[:, :, :, :, :, 1:] - x[:, :, :, :, :, :-1]).pow(2).mean((3, 4, 5, 6))
    has_past = previous is not None
    first = previous.float().reshape(B, 1, gh * gw, tp, hp, wp, 3) if has_past else torch.zeros_like(x[:, :1])
    reference = torch.cat((first, x[:, :-1]), dim=1)
    change = (x - reference).pow(2).mean((3, 4, 5, 6))  # (B, S, N)
    has_ref = torch.ones_like(change)
    if not has_past:
        change[:, 0], has_ref[:, 0] = 0.0, 0.0
    slice_pos = (torch.arange(S, device=x.device, dtype=x.dtype) / S)[None, :, None].expand(B, S, gh * gw)
    tokens = torch.stack((_log(detail), _log(gradient), _log(change) * has_ref, has_ref, slice_pos), -1)
    tokens = tokens.reshape(B, T, TOKEN_FEATURES)  # (B, T, F), time-major then raster
    past = torch.full((B,), float(has_past), device=x.device)
    size = torch.full((B,), float(torch.log(torch.tensor(float(T)))) / 8, device=x.device)
    block = torch.stack((tokens[..., 0].mean(1), tokens[..., 1].mean(1), tokens[..., 2].mean(1), past, size), -1)
    return tokens, block


class CountPredictor(PretrainedMixin, nn.Module):
    """Predicts log MSE (on [-1, 1] pixels) and its spread at given token counts, from :func:`block_features`."""

    config_class = PredictorConfig
    config_name = "predictor.json"
    weights_name = "predictor.safetensors"

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        # The first layer of the per-token error MLP, split by input: token and block features once per
        # block, count features per count (a few broadcast adds instead of a (K, T, 13) matrix product).
        self.token_in = nn.Linear(TOKEN_FEATURES, h)
        self.block_in = nn.Linear(BLOCK_FEATURES, h, bias=False)
        self.count_in = nn.Linear(COUNT_FEATURES, h, bias=False)
        self.error = nn.Sequential(nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
        self.spread = nn.Sequential(nn.Linear(BLOCK_FEATURES + 1, h), nn.SiLU(), nn.Linear(h, 1))

    def forward(
        self, tokens: torch.Tensor, block: torch.Tensor, counts: torch.Tensor, slice_tokens: int, has_past: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, 5), block (B, 5), counts (K,) -> (log MSE (B, K), log of its spread (B, K)).

        ``slice_tokens`` is rows x cols (a token's reference is that many positions earlier)."""
        B, T, _ = tokens.shape
        K = counts.shape[0]
        counts = counts.to(tokens.device, tokens.dtype)
        pos = torch.arange(T, device=tokens.device, dtype=tokens.dtype)
        kept = (pos[None, :] < counts[:, None]).to(tokens.dtype)  # (K, T)
        ref_pos = pos - slice_tokens
        ref_kept = (ref_pos[None, :] < counts[:, None]).to(tokens.dtype)
        if not has_past:
            ref_kept = ref_kept * (ref_pos >= 0).to(tokens.dtype)
        fraction = counts / T
        w = self.count_in.weight  # (h, 3)
        per_count = fraction[:, None, None] * w[:, 0] + kept[..., None] * w[:, 1] + ref_kept[..., None] * w[:, 2]
        x = (self.token_in(tokens) + self.block_in(block)[:, None])[:, None] + per_count[None]  # (B, K, T, h)
        log_err = self.error(x)[..., 0]  # (B, K, T)
        log_mse = torch.logsumexp(log_err, -1) - torch.log(torch.tensor(float(T)))
        spread_in = torch.cat((block[:, None].expand(B, K, BLOCK_FEATURES), fraction[None, :, None].expand(B, K, 1)),
                              -1)
        log_spread = self.spread(spread_in)[..., 0].clamp(-5.0, 2.0)
        return log_mse, log_spread
