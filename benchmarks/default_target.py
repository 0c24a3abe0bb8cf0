"""How the embedded model's declared quality target was chosen: per-block PSNR against tokens kept.

Reads held-out photos (Imagenette val, never in the training pack), codes each as one block at a grid
of token counts, and prints, for candidate PSNR targets, the share of blocks that meet the target
before all tokens and the spread of the counts they need. Usage:

    python benchmarks/default_target.py [--images DIR] [--per-class 4] [--model DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from elastictok.eval.run import code_fixed
from elastictok.media.io import load_image
from elastictok.metrics.pixel import mse_to_psnr
from elastictok.weights.pretrained import load_default_model, load_pretrained

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(SHARED / "images" / "imagenette" / "val"))
    p.add_argument("--per-class", type=int, default=4, help="images per class folder (sorted names)")
    p.add_argument("--model", help="pretrained directory (default: the embedded model)")
    p.add_argument("--targets", type=float, nargs="+", default=[20, 21, 22, 23, 24, 25, 26])
    args = p.parse_args()
    torch.set_num_threads(2)
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    T = model.config.tokens_per_block()
    counts = sorted({model.config.min_tokens(), *(round(T * f) for f in (1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4)), T})
    files = [f for d in sorted(Path(args.images).iterdir()) if d.is_dir()
             for f in sorted(d.iterdir())[: args.per_class]]
    start = time.perf_counter()
    curves = []  # (images, counts) PSNR
    for f in files:
        video = load_image(f, size=model.config.frame_size)[None]  # (1, 3, 1, H, W)
        recon = code_fixed(model, video, counts)[:, :, :1]  # (k, 3, 1, H, W)
        mse = ((recon - video) ** 2).mean(dim=(1, 2, 3, 4))
        curves.append([float(mse_to_psnr(float(m))) for m in mse])
    psnr = np.array(curves)
    print(f"{len(files)} held-out photos from {args.images}, {T} tokens per block, "
          f"{time.perf_counter() - start:.0f} s")
    print("PSNR (dB) at tokens kept: " + ", ".join(f"{n}: {v:.2f}" for n, v in zip(counts, psnr.mean(0))))
    print("| PSNR target | blocks meeting it below all tokens | median tokens needed (grid) "
          "| blocks never meeting it |")
    print("|---|---|---|---|")
    for t in args.targets:
        ok = psnr >= t
        first = np.where(ok.any(1), ok.argmax(1), len(counts) - 1)
        needed = np.array(counts)[first]
        below = float(((needed < T) & ok.any(1)).mean())
        print(f"| {t:g} | {below:.0%} | {int(np.median(needed))} | {float((~ok.any(1)).mean()):.0%} |")


if __name__ == "__main__":
    main()
