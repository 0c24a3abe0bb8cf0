"""Adaptive-encode time: the official search procedure against ours, on the same clips, side by side.

The official procedure (elastic/inference.py) bisects with one encoder+decoder pass per candidate,
then runs a commit pass per block and a final whole-sequence pass. Ours (`binary`, `fast`) keeps the
winning candidate's KV cache and needs neither, and with an unconditioned encoder encodes each block
once. Prints time, sequential passes and how often the chosen counts agree. `--speculation D` adds
`fast` scoring D bisection levels per batched pass (what it does by itself on a GPU, where a batch
costs little more than one candidate; on a CPU it costs more). Usage:

    python benchmarks/search.py [--model DIR] [--unconditioned-model DIR] [--clips PATH ...] [--frames 32]
        [--threshold 0.003] [--resolution PX] [--device cpu|cuda] [--speculation D|auto] [--context-blocks W]
    python benchmarks/search.py --save-clips DIR --clips ... [--frames 32] [--resolution PX]   # .npy frames

A clip ending in .npy is read as saved by --save-clips (the GPU run in scripts/device_search.sh).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.coder import BlockCoder
from elastictok.coding.options import CodingOptions
from elastictok.coding.search import Probe, official_binary, run_search
from elastictok.coding.target import BlockScorer, Target
from elastictok.files.source import load_input
from elastictok.metrics.pixel import block_mse
from elastictok.weights.pretrained import load_default_model, load_pretrained

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2"


@torch.no_grad()
def official_procedure(model, video, threshold: float, context_blocks: int | None = None) -> tuple[list[int], int]:
    """Kept counts per block and the number of block passes, as the official code spends them."""
    T = model.config.tokens_per_block(tuple(video.shape[-2:]))
    lo = model.config.min_tokens(tuple(video.shape[-2:]))
    patches = model.patchify(model.pad_frames(video))
    state, counts, passes = model.new_state(tuple(video.shape[-2:])), [], 0
    for i in range(patches.shape[1] // T):
        block = patches[:, i * T : (i + 1) * T]

        def loss(kept: int) -> float:
            step = model.code_block(block, torch.tensor([kept], device=video.device), state)
            return float(block_mse(step.recon, block, T)[0, 0])

        reported, tried = official_binary(loss, lo, T, threshold)
        kept = min(reported + 1, T)
        model.commit(state, model.code_block(block, torch.tensor([kept], device=video.device), state),
                     context_blocks)  # the commit pass
        passes += len(tried) + 1
        counts.append(kept)
    model.decode(model.encode(video, torch.tensor([counts], device=video.device),
                              context_blocks))  # the final whole-sequence pass
    return counts, passes + patches.shape[1] // T


@torch.no_grad()
def paired_agreement(model, video, threshold: float, context_blocks: int | None = None) -> tuple[int, int]:
    """Blocks where `fast` picks `binary`'s count when both search the same block against the same
    context (binary's earlier choices). In two separate runs one different count changes every later
    block's context, so their curves, and the end-to-end agreement counts that too."""
    frame_size = tuple(video.shape[-2:])
    lo, hi, T = model.config.token_bounds(frame_size, None, None)
    target, scorer = Target("mse", threshold), BlockScorer(model, "mse", frame_size)
    patches = model.patchify(model.pad_frames(video))
    state, start, slope, same = model.new_state(frame_size), None, None, 0
    for i in range(patches.shape[1] // T):
        coder = BlockCoder(model, patches[:, i * T : (i + 1) * T], state, scorer)
        # One memo for both searches: each count costs one pass whichever asks first.
        margin = Probe(lambda n: target.margin(coder.evaluate(n, target.met))).value
        reference = run_search("binary", margin, lo, hi)
        found = run_search("fast", margin, lo, hi, start, slope)
        start, slope = found.count, found.slope
        same += found.count == reference.count
        model.commit(state, coder.final(reference.count), context_blocks)
    return same, patches.shape[1] // T


def bench_model(name: str, model, clips: list[str], frames: int, threshold: float, fps, resolution, speculation,
                context_blocks) -> None:
    device = model.device
    context_blocks = model.config.context_window(context_blocks)  # the library's default, for every row
    searches = {"binary": ("binary", 1), "fast": ("fast", 1)}
    if speculation == "auto":
        searches["fast-auto"] = ("fast", None)  # the library's default: depth timed on the first block
    elif int(speculation):
        searches[f"fast-spec{speculation}"] = ("fast", int(speculation))
    rows = {k: [0.0, 0, 0, 0] for k in ["official", *searches]}  # seconds, passes, candidates, blocks
    same = {k: 0 for k in searches}
    paired = [0, 0]
    for clip in clips:
        video = load_clip(clip, model, frames, fps, resolution).to(device)
        # The official procedure re-runs the encoder for every candidate whatever the encoder.
        sync(device)
        start = time.perf_counter()
        ref_counts, passes = official_procedure(model, video, threshold, context_blocks)
        sync(device)
        rows["official"][0] += time.perf_counter() - start
        rows["official"][1] += passes
        rows["official"][2] += passes
        rows["official"][3] += len(ref_counts)
        picks = {}
        for label, (search, depth) in searches.items():
            start = time.perf_counter()
            result = encode_adaptive(model, video, CodingOptions(target=Target("mse", threshold), search=search,
                                                                 speculation=depth, context_blocks=context_blocks))
            sync(device)
            rows[label][0] += time.perf_counter() - start
            rows[label][1] += result.passes
            rows[label][2] += result.evaluations
            picks[label] = result.tokens.counts[0].tolist()
            rows[label][3] += len(picks[label])
        for label in searches:
            same[label] += sum(a == b for a, b in zip(picks["binary"], picks[label]))
        paired = [x + y for x, y in zip(paired, paired_agreement(model, video, threshold, context_blocks))]
        # How far the answer moves from block to block bounds what starting from the previous count saves.
        steps = [abs(a - b) for a, b in zip(picks["binary"][1:], picks["binary"])]
        print(f"  {Path(clip).name}: " + ", ".join(f"{k} {v}" for k, v in picks.items())
              + f"; median |change| between blocks {sorted(steps)[len(steps) // 2] if steps else 0}")
    total = rows["binary"][3]
    window = f"at most {context_blocks} earlier block(s)"
    print(f"\n{name} ({model.config.encoder_conditioning} encoder), {len(clips)} clips, {total} blocks, "
          f"MSE <= {threshold}, {device}, {window}")
    # Passes: sequential model calls over one block (encoder + decoder; with an unconditioned encoder,
    # ours encode once per block and a candidate costs a decoder pass). Candidates: counts scored.
    print(f"{'search':<14}{'seconds':>9}{'passes/block':>14}{'candidates/block':>18}{'s/block':>9}"
          f"{'same as binary':>16}")
    for label, (seconds, passes, candidates, blocks) in rows.items():
        agree = f"{same[label]}/{blocks}" if label in same else "-"
        print(f"{label:<14}{seconds:>9.2f}{passes / blocks:>14.2f}{candidates / blocks:>18.2f}"
              f"{seconds / blocks:>9.3f}{agree:>16}")
    for label in searches:
        if label != "binary":
            print(f"{label} vs binary: {rows['binary'][0] / rows[label][0]:.2f}x faster, "
                  f"same count on {same[label]}/{total} blocks ({100 * same[label] / total:.1f}%); "
                  f"vs the official procedure: {rows['official'][0] / rows[label][0]:.2f}x")
    print(f"fast picks binary's count on {paired[0]}/{paired[1]} blocks ({100 * paired[0] / paired[1]:.1f}%) "
          "when both search each block against the same context")


def load_clip(clip: str, model, frames: int, fps, resolution) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1]: a video file, or frames saved by ``--save-clips`` (no PyAV needed,
    for machines without it, such as the GPU machine this project borrows)."""
    if clip.endswith(".npy"):
        array = torch.from_numpy(np.load(clip))[:frames]  # (T, H, W, 3) uint8
        return (array.permute(3, 0, 1, 2).float() / 127.5 - 1)[None]
    video, _ = load_input(clip, model.config, resolution=resolution, max_frames=frames, fps=fps)
    return video


def save_clips(clips: list[str], out: str, model, frames: int, fps, resolution) -> None:
    """Decode each clip as the benchmark would and save it as uint8 frames (T, H, W, 3), exactly."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for clip in clips:
        video = load_input(clip, model.config, resolution=resolution, max_frames=frames, fps=fps)[0][0]
        array = ((video + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)  # (T, H, W, 3)
        np.save(Path(out) / f"{Path(clip).stem}.npy", array.numpy())
        print(f"{clip} -> {Path(out) / Path(clip).stem}.npy {tuple(array.shape)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="mask-conditioned model (default: the embedded model)")
    parser.add_argument("--unconditioned-model", help="an encoder_conditioning='none' model to compare as well")
    parser.add_argument("--clips", nargs="*", default=sorted(str(p) for p in DEV.glob("*.mp4")))
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.003)
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--resolution", type=int, help="shorter side in pixels (any-size models; default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--speculation", default="0",
                        help="also run fast with this many levels per batched pass, or 'auto' (its default choice)")
    parser.add_argument("--context-blocks", type=int,
                        help="earlier blocks each block attends to (default: the model's trained window, "
                        "the library's default; a number >= the clip's blocks gives every earlier block)")
    parser.add_argument("--save-clips", metavar="DIR", help="only decode the clips into DIR as .npy frames, then stop")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.frames} frames per clip")
    model = load_pretrained(args.model, device=args.device) if args.model else load_default_model(device=args.device)[0]
    if args.save_clips:
        save_clips(args.clips, args.save_clips, model, args.frames, args.fps, args.resolution)
        return
    common = (args.clips, args.frames, args.threshold, args.fps, args.resolution, args.speculation, args.context_blocks)
    bench_model(args.model or "default model", model, *common)
    if args.unconditioned_model:
        bench_model(args.unconditioned_model, load_pretrained(args.unconditioned_model, device=args.device), *common)


if __name__ == "__main__":
    main()
