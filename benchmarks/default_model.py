"""The figures of the default model's card: Kodak PSNR by rate, tokens needed for MSE 0.003, WebP at equal bytes.

Kodak: the 24 images, plain 256x256 centre crops (no resizing). An image is one 4-frame block whose
first quarter of tokens covers the first frame, so with 16-bit FSQ indices k tokens cost 16k bits:
bits per pixel = 16k / (256*256). WebP (Pillow, method 6) is searched for the highest quality whose
file is at most the same number of bytes. Video: the dev clips, 32 frames each at the model's
resolution, tokens per block needed for block MSE <= 0.003 (fast search; blocks that never reach it
count at the maximum). Usage:

    python benchmarks/default_model.py [--model DIR] [--images N] [--clips N]
"""

from __future__ import annotations

import argparse
import io as pyio
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.coding.target import Target
from elastictok.files.coding import encode_file
from elastictok.files.source import Source
from elastictok.metrics.pixel import mse_to_psnr
from elastictok.weights.pretrained import load_default_model, load_pretrained

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def centre_crop(path: Path, size: int = 256) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(image.crop((left, top, left + size, top + size)))


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def webp_at(pixels: np.ndarray, max_bytes: int) -> tuple[float, int]:
    """PSNR and size of the best WebP no larger than max_bytes (quality 0 if none fits)."""
    best = None
    lo, hi = 0, 100
    while lo <= hi:
        q = (lo + hi) // 2
        buf = pyio.BytesIO()
        Image.fromarray(pixels).save(buf, "WEBP", quality=q, method=6)
        if buf.tell() <= max_bytes:
            best, lo = (q, buf.getvalue()), q + 1
        else:
            hi = q - 1
    if best is None:
        buf = pyio.BytesIO()
        Image.fromarray(pixels).save(buf, "WEBP", quality=0, method=6)
        best = (0, buf.getvalue())
    decoded = np.asarray(Image.open(pyio.BytesIO(best[1])).convert("RGB"))
    return psnr_u8(pixels, decoded), len(best[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--counts", type=int, nargs="*", default=[64, 256, 1024, 2048, 4096])
    args = parser.parse_args()
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    kodak = sorted((DATA / "images" / "kodak").glob("*.png"))[: args.images]
    rows = {n: [] for n in args.counts}
    webp = {n: [] for n in args.counts}
    needed = []
    start = time.perf_counter()
    for path in kodak:
        pixels = centre_crop(path)
        video = torch.from_numpy(pixels).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1  # (1, 3, 1, H, W)
        for n in args.counts:
            recon = model.decode(model.encode(video, n))[0, :, 0]
            out = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            rows[n].append(psnr_u8(pixels, out))
            webp[n].append(webp_at(pixels, 2 * n)[0])
        result = encode_adaptive(model, video, CodingOptions(target=Target("mse", 0.003), search="fast"))
        needed.append(int(result.tokens.counts[0, 0]))
    seconds = time.perf_counter() - start
    T = model.config.tokens_per_block((256, 256))
    print(f"Kodak: {len(kodak)} images, 256x256 centre crops, {T} tokens per block ({seconds:.0f} s)")
    print(f"{'tokens':>7}{'bpp':>8}{'PSNR':>8}{'WebP PSNR same bytes':>22}")
    for n in args.counts:
        print(f"{n:>7}{16 * n / 65536:>8.4f}{np.mean(rows[n]):>8.2f}{np.mean(webp[n]):>22.2f}")
    mean_needed = float(np.mean(needed))
    print(f"mean tokens for MSE <= 0.003 ({mse_to_psnr(0.003):.2f} dB): {mean_needed:.0f} of {T} "
          f"({16 * mean_needed / 65536:.3f} bpp); reached by {sum(n < T for n in needed)}/{len(needed)} images")
    clips = sorted((DATA / "video" / "dev" / "sam2").glob("*.mp4"))[: args.clips]
    counts, maxima = [], []
    for clip in clips:
        source = Source.open(clip, model, max_frames=args.frames)
        stats = encode_file(model, source, "/tmp/_default_model_bench.etok",
                            CodingOptions(target=Target("mse", 0.003), cut_threshold=DEFAULT_CUT_THRESHOLD))
        counts += [b["tokens"] for b in stats["blocks"]]
        maxima.append(stats["blocks"][0]["max_tokens"])
    if counts:
        size = source.size
        print(f"dev video: {len(clips)} clips x {args.frames} frames at {size[0]}x{size[1]}, {maxima[0]} tokens per "
              f"block: mean tokens per block for MSE <= 0.003: {np.mean(counts):.0f} "
              f"({16 * np.mean(counts) / (4 * size[0] * size[1]):.3f} bpp)")


if __name__ == "__main__":
    main()
