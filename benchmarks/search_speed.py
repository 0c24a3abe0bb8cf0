"""Adaptive-encode time: the official search procedure against ours, on one clip, side by side.

The official procedure (elastic/inference.py) bisects with one encoder+decoder pass per candidate,
then runs a commit pass per block and a final whole-sequence pass. Ours (`binary`, `fast`) keeps the
winning candidate's KV cache and needs neither. Prints time, passes and how often the chosen counts
agree. Usage:

    python benchmarks/search_speed.py [--model DIR] [--clip PATH] [--frames 32] [--threshold 0.003]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from elastictok.adaptive import Target, encode_adaptive
from elastictok.metrics import block_mse
from elastictok.pipeline import load_input
from elastictok.pretrained import load_default_model, load_pretrained
from elastictok.search import official_binary

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2"


@torch.no_grad()
def official_procedure(model, video, threshold: float) -> tuple[list[int], int]:
    """Kept counts per block and the number of block passes, as the official code spends them."""
    T = model.config.tokens_per_block(tuple(video.shape[-2:]))
    lo = model.config.min_tokens(tuple(video.shape[-2:]))
    patches = model.patchify(model.pad_frames(video))
    state, counts, passes = model.new_state(tuple(video.shape[-2:])), [], 0
    for i in range(patches.shape[1] // T):
        block = patches[:, i * T : (i + 1) * T]

        def loss(kept: int) -> float:
            step = model.code_block(block, torch.tensor([kept]), state)
            return float(block_mse(step.recon, block, T)[0, 0])

        reported, tried = official_binary(loss, lo, T, threshold)
        kept = min(reported + 1, T)
        model.commit(state, model.code_block(block, torch.tensor([kept]), state))  # the commit pass
        passes += len(tried) + 1
        counts.append(kept)
    model.decode(model.encode(video, torch.tensor([counts])))  # the final whole-sequence pass
    return counts, passes + patches.shape[1] // T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--clip", default=str(DEV / "bedroom.mp4"))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.003)
    parser.add_argument("--fps", type=float, default=None)
    args = parser.parse_args()
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    video, _ = load_input(args.clip, model.config, max_frames=args.frames, fps=args.fps)
    print(f"clip {Path(args.clip).name}: {video.shape[2]} frames at {video.shape[-2]}x{video.shape[-1]}, "
          f"threshold MSE {args.threshold}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    ref_counts, ref_passes = official_procedure(model, video, args.threshold)
    t_official = time.perf_counter() - start
    print(f"{'procedure':<18}{'seconds':>9}{'passes':>8}{'speed-up':>10}{'same counts':>13}{'tokens':>8}")
    print(f"{'official binary':<18}{t_official:>9.2f}{ref_passes:>8}{1.0:>10.2f}{'-':>13}{sum(ref_counts):>8}")
    for search in ["binary", "fast"]:
        start = time.perf_counter()
        result = encode_adaptive(model, video, Target("mse", args.threshold), search=search)
        seconds = time.perf_counter() - start
        counts = result.tokens.counts[0].tolist()
        same = sum(a == b for a, b in zip(counts, ref_counts))
        print(f"{search:<18}{seconds:>9.2f}{result.evaluations:>8}{t_official / seconds:>10.2f}"
              f"{f'{same}/{len(counts)}':>13}{sum(counts):>8}")


if __name__ == "__main__":
    main()
