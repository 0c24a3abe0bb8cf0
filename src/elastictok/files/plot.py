"""Pictures of a coded file: original beside reconstruction, and tokens and PSNR per block."""

from __future__ import annotations

from pathlib import Path

import torch

from elastictok.utils.files import atomic_path


def side_by_side(video: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) pair -> (3, T, H, 2W + gap): original left, reconstruction right."""
    gap = torch.ones_like(video[..., :4])
    return torch.cat((video, gap, recon), dim=-1)


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
    with atomic_path(path) as temp:
        fig.savefig(temp)
    plt.close(fig)
    return path
