"""Adaptive-encode time: the official search procedure against ours, on one clip, side by side.

The official procedure (elastic/inference.py) bisects with one encoder+decoder pass per candidate,
then runs a commit pass per block and a final whole-sequence pass. Ours (`binary`, `fast`) keeps the
winning candidate's KV cache and needs neither. Prints time, passes and how often the chosen counts
agree. Usage:

    python benchmarks/search.py [--model DIR] [--clips PATH ...] [--frames 32] [--threshold 0.003] [--resolution PX]
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


def bench_model(name: str, model, clips: list[str], frames: int, threshold: float, fps, resolution) -> None:
    rows = {k: [0.0, 0, 0] for k in ["official", "binary", "fast"]}  # seconds, passes, blocks
    same = total = 0
    for clip in clips:
        video, _ = load_input(clip, model.config, resolution=resolution, max_frames=frames, fps=fps)
        # The official procedure re-runs the encoder for every candidate whatever the encoder.
        start = time.perf_counter()
        ref_counts, passes = official_procedure(model, video, threshold)
        rows["official"][0] += time.perf_counter() - start
        rows["official"][1] += passes
        rows["official"][2] += len(ref_counts)
        picks = {}
        for search in ["binary", "fast"]:
            start = time.perf_counter()
            result = encode_adaptive(model, video, Target("mse", threshold), search=search)
            rows[search][0] += time.perf_counter() - start
            rows[search][1] += result.evaluations
            picks[search] = result.tokens.counts[0].tolist()
            rows[search][2] += len(picks[search])
        same += sum(a == b for a, b in zip(picks["binary"], picks["fast"]))
        total += len(picks["fast"])
        # How far the answer moves from block to block bounds what starting from the previous count saves.
        steps = [abs(a - b) for a, b in zip(picks["binary"][1:], picks["binary"])]
        print(f"  {Path(clip).name}: binary {picks['binary']}, fast {picks['fast']}; "
              f"median |change| between blocks {sorted(steps)[len(steps) // 2] if steps else 0}")
    print(f"\n{name} ({model.config.encoder_conditioning} encoder), {len(clips)} clips, {total} blocks, MSE <= {threshold}")
    # Passes: candidate evaluations (one encoder + decoder pass over one block; with an unconditioned
    # encoder, ours encode once per block and a candidate costs a decoder pass only).
    print(f"{'search':<10}{'seconds':>9}{'passes/block':>14}{'s/block':>9}")
    for search, (seconds, passes, blocks) in rows.items():
        if blocks:
            print(f"{search:<10}{seconds:>9.2f}{passes / blocks:>14.2f}{seconds / blocks:>9.3f}")
    print(f"fast vs binary: {rows['binary'][0] / rows['fast'][0]:.2f}x faster, same count on {same}/{total} blocks "
          f"({100 * same / total:.1f}%); fast vs the official procedure: {rows['official'][0] / rows['fast'][0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="mask-conditioned model (default: the embedded model)")
    parser.add_argument("--unconditioned-model", help="an encoder_conditioning='none' model to compare as well")
    parser.add_argument("--clips", nargs="*", default=sorted(str(p) for p in DEV.glob("*.mp4")))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.003)
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--resolution", type=int, help="shorter side in pixels (any-size models; default: the model's)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.frames} frames per clip")
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    bench_model(args.model or "default model", model, args.clips, args.frames, args.threshold, args.fps, args.resolution)
    if args.unconditioned_model:
        other = load_pretrained(args.unconditioned_model)
        bench_model(args.unconditioned_model, other, args.clips, args.frames, args.threshold, args.fps, args.resolution)


if __name__ == "__main__":
    main()
