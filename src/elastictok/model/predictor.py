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

# Per token: log detail in three bands, the neighbourhood's detail, brightness, share of clipped pixels,
# log change from its reference, whether it has one, its time slice, the log error of the context's
# reconstruction at its place.
TOKEN_FEATURES = 10
# Per block: mean detail, its spread over the block, mean change, whether it has a past, log tokens,
# the context's mean log error.
BLOCK_FEATURES = 6
COUNT_FEATURES = 4  # kept fraction, token kept, its reference kept, how far past the kept prefix (in slices)
_EPS = 1e-4


@dataclass(frozen=True)
class PastSlice:
    """The context's last time slice, (B, rows * cols, P) in [-1, 1]: as the decoder has it and as it was.

    A still block is copied from ``recon``, so it cannot be reconstructed better than ``recon`` matches
    ``source``; the change from ``recon`` alone does not tell that error from motion."""

    recon: torch.Tensor
    source: torch.Tensor


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


def _pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average over k x k pixel squares inside each patch, repeated back to full size: (..., hp, wp, C)."""
    *lead, hp, wp, c = x.shape
    y = x.reshape(*lead, hp // k, k, wp // k, k, c).mean((-4, -2), keepdim=True)
    return y.expand(*lead, hp // k, k, wp // k, k, c).reshape(x.shape)


def block_features(
    patches: torch.Tensor, patch_size: tuple[int, int, int], grid: tuple[int, int, int],
    previous: PastSlice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """patches (B, T, P) in [-1, 1]; ``previous``: the context's last time slice, None at a keyframe.
    Returns token features (B, T, TOKEN_FEATURES) and block features (B, BLOCK_FEATURES)."""
    tp, hp, wp = patch_size
    S, gh, gw = grid
    B, T, _ = patches.shape
    x = patches.float().reshape(B, S, gh * gw, tp, hp, wp, 3)  # (B, S, N, tp, hp, wp, C)
    # Detail in three frequency bands: what the finest pixels, 2x2 and 4x4 squares add to the patch mean.
    k = 2 if hp % 2 == 0 and wp % 2 == 0 else 1
    k4 = 4 if hp % 4 == 0 and wp % 4 == 0 else k
    p2, p4 = _pool(x, k), _pool(x, k4)
    mean = x.mean((3, 4, 5), keepdim=True)
    fine = (x - p2).pow(2).mean((3, 4, 5, 6))
    middle = (p2 - p4).pow(2).mean((3, 4, 5, 6))
    coarse = (p4 - mean).pow(2).mean((3, 4, 5, 6))  # (B, S, N)
    brightness = mean.mean((3, 4, 5, 6))
    clipped = (x.abs() > 0.95).float().mean((3, 4, 5, 6))
    has_past = previous is not None
    # The context's error at each place, the same for every slice: copying carries it forward.
    context_error = torch.zeros_like(brightness)  # (B, S, N)
    first = torch.zeros_like(x[:, :1])
    if has_past:
        recon = previous.recon.float()
        first = recon.reshape(B, 1, gh * gw, tp, hp, wp, 3)
        context_error = _log((recon - previous.source.float()).pow(2).mean(-1))[:, None].expand(B, S, gh * gw)
    reference = torch.cat((first, x[:, :-1]), dim=1)
    change = (x - reference).pow(2).mean((3, 4, 5, 6))  # (B, S, N)
    has_ref = torch.ones_like(change)
    if not has_past:
        change[:, 0], has_ref[:, 0] = 0.0, 0.0
    detail = _log(fine + middle + coarse)
    # The neighbourhood's detail (3x3 tokens): what a dropped token can be inpainted from.
    around = torch.nn.functional.avg_pool2d(detail.reshape(B * S, 1, gh, gw), 3, 1, 1, count_include_pad=False)
    slice_pos = (torch.arange(S, device=x.device, dtype=x.dtype) / S)[None, :, None].expand(B, S, gh * gw)
    tokens = torch.stack((
        _log(fine), _log(middle), _log(coarse), around.reshape(B, S, gh * gw), brightness, clipped,
        _log(change) * has_ref, has_ref, slice_pos, context_error,
    ), -1).reshape(B, T, TOKEN_FEATURES)  # (B, T, F), time-major then raster
    past = torch.full((B,), float(has_past), device=x.device)
    size = torch.full((B,), float(torch.log(torch.tensor(float(T)))) / 8, device=x.device)
    block = torch.stack((detail.mean((1, 2)), around.reshape(B, -1).std(1), tokens[..., 6].mean(1), past, size,
                         context_error.mean((1, 2))), -1)
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
        """tokens (B, T, TOKEN_FEATURES), block (B, BLOCK_FEATURES), counts (K,) -> (log MSE (B, K), log of
        its spread (B, K)).

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
        behind = ((pos[None, :] - counts[:, None]) / slice_tokens).clamp(0, 1)  # (K, T)
        w = self.count_in.weight  # (h, 4)
        per_count = (fraction[:, None, None] * w[:, 0] + kept[..., None] * w[:, 1] + ref_kept[..., None] * w[:, 2]
                     + behind[..., None] * w[:, 3])
        x = (self.token_in(tokens) + self.block_in(block)[:, None])[:, None] + per_count[None]  # (B, K, T, h)
        log_err = self.error(x)[..., 0]  # (B, K, T)
        log_mse = torch.logsumexp(log_err, -1) - torch.log(torch.tensor(float(T)))
        spread_in = torch.cat((block[:, None].expand(B, K, BLOCK_FEATURES), fraction[None, :, None].expand(B, K, 1)),
                              -1)
        log_spread = self.spread(spread_in)[..., 0].clamp(-5.0, 2.0)
        return log_mse, log_spread
