"""From files to tokens and reconstructions: the library calls behind the CLI verbs."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import io
from .adaptive import Target, encode_adaptive
from .config import ElasticTokConfig
from .metrics import block_mse, mse_to_psnr
from .model import ElasticTok, pad_to_blocks, patchify
from .tokens import Tokens


def input_size(path: str | Path, config: ElasticTokConfig, resolution: int | None = None) -> tuple[int, int]:
    """The (H, W) a file is resized and cropped to before coding.

    A 1-D RoPE model (the official kind) only takes its training size. An axial model keeps the
    aspect ratio: the shorter side becomes ``resolution`` (default: the model's training size) and
    both sides are cut down to multiples of the patch size.
    """
    _, hp, wp = config.patch_size
    h, w = _native_size(path)
    if h < hp or w < wp:
        raise ValueError(f"{path}: {h}x{w} pixels is smaller than one {hp}x{wp} patch")
    if config.rope == "1d":
        if resolution is not None and (resolution, resolution) != tuple(config.frame_size):
            raise ValueError(f"this model only takes {config.frame_size[0]}x{config.frame_size[1]} frames; drop --resolution")
        return config.frame_size
    if resolution is not None and resolution < min(hp, wp):
        raise ValueError(f"expected --resolution of at least one patch ({min(hp, wp)} px), got {resolution}")
    short = resolution or min(config.frame_size)
    scale = short / min(h, w)
    th, tw = max(hp, int(h * scale) // hp * hp), max(wp, int(w * scale) // wp * wp)
    return th, tw


def _native_size(path: str | Path) -> tuple[int, int]:
    if io.is_video_path(path):
        info = io.video_info(path)
        return info.height, info.width
    try:
        with Image.open(path) as image:
            w, h = image.size
    except (OSError, ValueError) as err:
        raise io.MediaError(f"cannot read {str(path)!r} as an image: {err}") from None
    return h, w


def load_input(
    path: str | Path,
    config: ElasticTokConfig,
    resolution: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, float | None]:
    """Read an image or video as a (1, 3, T, H, W) batch at the size the model takes."""
    size = input_size(path, config, resolution)
    video, rate = io.load_media(path, size=size, fps=fps, max_frames=max_frames)
    return video.unsqueeze(0), rate


@dataclass
class Reconstruction:
    video: torch.Tensor  # (1, 3, T, H, W) input
    recon: torch.Tensor  # (1, 3, T, H, W)
    tokens: Tokens
    fps: float | None
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def block_stats(self, config: ElasticTokConfig) -> list[dict[str, Any]]:
        """Per block: tokens kept, the maximum, official block MSE on [-1, 1] pixels, and PSNR."""
        T = self.tokens.tokens_per_block
        # Pad both sides the way the encoder did, so each block is scored on what was coded.
        video = pad_to_blocks(self.video, config.frames_per_block)
        recon = pad_to_blocks(self.recon, config.frames_per_block)
        mse = block_mse(patchify(video, config.patch_size), patchify(recon, config.patch_size), T)[0]
        return [
            {"block": i, "tokens": int(self.tokens.counts[0, i]), "max_tokens": T, "mse": float(m), "psnr": float(mse_to_psnr(float(m)))}
            for i, m in enumerate(mse)
        ]

    def stats(self, config: ElasticTokConfig) -> dict[str, Any]:
        blocks = self.block_stats(config)
        mse = float(torch.mean(torch.tensor([b["mse"] for b in blocks])))
        return {
            "blocks": blocks,
            "total_tokens": int(self.tokens.total_tokens[0]),
            "max_total_tokens": self.tokens.num_blocks * self.tokens.tokens_per_block,
            "token_fraction": float(self.tokens.total_tokens[0]) / (self.tokens.num_blocks * self.tokens.tokens_per_block),
            "mean_mse": mse,
            "mean_psnr": float(sum(b["psnr"] for b in blocks) / len(blocks)),
            "frames": int(self.video.shape[2]),
            "frame_size": list(self.tokens.frame_size),
            "fps": self.fps,
            "settings": self.settings,
            "seconds": self.seconds,
        }


def reconstruct(
    model: ElasticTok,
    video: torch.Tensor,
    num_tokens: int | None = None,
    fps: float | None = None,
    target: Target | None = None,
    search: str = "fast",
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    context_blocks: int | None = None,
    on_block=None,
) -> Reconstruction:
    """Encode (adaptively to ``target``, or at ``num_tokens`` per block) and decode, block by block.

    ``context_blocks`` defaults to the model's trained window (``config.default_context_blocks``).
    """
    start = time.perf_counter()
    result = encode_adaptive(
        model, video, target, search=search, min_tokens=min_tokens, max_tokens=max_tokens,
        num_tokens=num_tokens, context_blocks=context_blocks, on_block=on_block,
    )
    seconds = time.perf_counter() - start
    if num_tokens is not None:
        settings: dict[str, Any] = {"mode": "fixed", "num_tokens": num_tokens}
    else:
        target = target or Target()
        settings = {"mode": "adaptive", "metric": target.metric, "threshold": target.threshold, "search": search,
                    "min_tokens": min_tokens, "max_tokens": max_tokens, "evaluations": result.evaluations}
    settings["context_blocks"] = result.tokens.context_blocks
    return Reconstruction(video, result.recon, result.tokens, fps, seconds, settings)


def side_by_side(video: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) pair -> (3, T, H, 2W + gap): original left, reconstruction right."""
    gap = torch.ones_like(video[..., :4])
    return torch.cat((video, gap, recon), dim=-1)


def write_reconstruction(result: Reconstruction, config: ElasticTokConfig, out_dir: str | Path, extra: dict | None = None) -> dict:
    """Write recon.png|mp4, compare.png|mp4 and stats.json into ``out_dir``; return the stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video, recon = result.video[0], result.recon[0]
    if result.fps is None:  # an image
        io.save_image(recon[:, 0], out / "recon.png")
        io.save_image(side_by_side(video, recon)[:, 0], out / "compare.png")
    else:
        io.save_video(recon, out / "recon.mp4", result.fps)
        io.save_video(side_by_side(video, recon), out / "compare.mp4", result.fps)
    stats = result.stats(config) | (extra or {})
    plot_blocks(stats, out / "blocks.png")
    tmp = out / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2, default=_json_default) + "\n")
    tmp.replace(out / "stats.json")
    return stats


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def plot_blocks(stats: dict, path: Path) -> Path | None:
    """PNG of tokens (bars) and PSNR (line) per block; skipped when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    blocks = stats["blocks"]
    x = [b["block"] for b in blocks]
    fig, ax = plt.subplots(figsize=(max(4, min(14, 0.35 * len(x) + 3)), 3.2), dpi=110)
    ax.bar(x, [b["tokens"] for b in blocks], color="#4c78a8", label="tokens kept")
    ax.set_ylim(0, blocks[0]["max_tokens"] * 1.05)
    ax.set_xlabel("block")
    ax.set_ylabel("tokens kept", color="#4c78a8")
    ax2 = ax.twinx()
    ax2.plot(x, [b["psnr"] for b in blocks], color="#e45756", marker="o", label="PSNR")
    ax2.set_ylabel("PSNR (dB)", color="#e45756")
    ax.set_title(f"{stats['total_tokens']}/{stats['max_total_tokens']} tokens, mean PSNR {stats['mean_psnr']:.2f} dB")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
