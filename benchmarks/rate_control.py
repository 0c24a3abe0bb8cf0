"""Budget allocation against uniform allocation at the same average rate, on the development clips.

For each budget N (tokens per block on average), every clip is coded twice: `--budget N` (Lagrangian
allocation over measured rate-distortion curves) and N tokens in every block. Prints mean per-block
PSNR of both and the achieved average. Target: the budget allocation is at least as good at every N.

    python benchmarks/rate_control.py [--model DIR] [--frames 32] [--fractions 0.125 0.25 0.5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.files.coding import encode_file
from elastictok.files.source import Source
from elastictok.weights.pretrained import load_default_model, load_pretrained

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--clips", nargs="*", default=sorted(str(p) for p in DEV.glob("*.mp4")))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.125, 0.25, 0.5])
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frac in args.fractions:
            psnr = {"budget": [], "uniform": []}
            average = []
            for clip in args.clips:
                source = Source.open(clip, model, args.resolution, max_frames=args.frames)
                T = model.config.tokens_per_block(source.size)
                n = max(model.config.min_tokens(source.size), round(frac * T))
                b = encode_file(model, source, Path(tmp) / "b.etok",
                                CodingOptions(budget=n, cut_threshold=DEFAULT_CUT_THRESHOLD))
                u = encode_file(model, source, Path(tmp) / "u.etok",
                                CodingOptions(num_tokens=n, cut_threshold=DEFAULT_CUT_THRESHOLD))
                psnr["budget"] += [blk["psnr"] for blk in b["blocks"]]
                psnr["uniform"] += [blk["psnr"] for blk in u["blocks"]]
                average.append(b["average_tokens_per_block"])
                assert b["average_tokens_per_block"] <= n
            mean = {k: sum(v) / len(v) for k, v in psnr.items()}
            rows.append((frac, n, T, mean["budget"], mean["uniform"], max(average)))
    print(f"{len(args.clips)} clips, {args.frames} frames each, frame size {source.size}, {T} tokens per block")
    print(f"{'budget N':>9}{'of T':>7}{'PSNR budget':>13}{'PSNR uniform':>14}{'gain dB':>9}{'max avg tokens':>16}")
    for frac, n, T, pb, pu, avg in rows:
        print(f"{n:>9}{frac:>7.3f}{pb:>13.2f}{pu:>14.2f}{pb - pu:>9.2f}{avg:>16.1f}")
    print("budget allocation at least as good at every N:", all(pb >= pu for _, _, _, pb, pu, _ in rows))


if __name__ == "__main__":
    main()
