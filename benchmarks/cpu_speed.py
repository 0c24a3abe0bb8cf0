"""CPU speed: encode and decode throughput (frames/s) at fixed token counts, and adaptive-encode time.

For the embedded default model (and any ``--model`` directories), on one clip: ``model.encode`` and
``model.decode`` (whole-sequence passes) at the minimum, 1/4, 1/2 and all tokens per block, then
adaptive encoding to a block-MSE target with the ``fast`` and ``binary`` searches (block by block,
KV-cached, as ``elastictok encode`` does). Times are medians after a warm-up. Usage::

    python benchmarks/cpu_speed.py [--model DIR ...] [--clip PATH] [--frames 16] [--resolution R]
                                   [--threads N] [--repeat 3] [--threshold 0.003]

The default clip is the first development clip in ../shared/data, else the bundled sample clip.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.files.source import load_input
from elastictok.weights.pretrained import load_default_model, load_pretrained

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2"


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def default_clip(tmp: Path) -> Path:
    clips = sorted(DEV.glob("*.mp4"))
    if clips:
        return clips[0]
    from elastictok.media.samples import write_sample_clip

    return write_sample_clip(tmp / "sample.mp4", num_frames=32)


def bench(name: str, model, clip: Path, frames: int, resolution: int | None, repeat: int, threshold: float) -> None:
    video, _ = load_input(clip, model.config, resolution, max_frames=frames)
    size = tuple(video.shape[-2:])
    T, lo = model.config.tokens_per_block(size), model.config.min_tokens(size)
    n_frames = video.shape[2]
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n{name}: {params:.1f}M parameters, {model.config.bottleneck}; {clip.name}, {n_frames} frames at "
          f"{size[0]}x{size[1]}, {T} tokens per block")
    print(f"{'tokens/block':>13}{'encode s':>10}{'frames/s':>10}{'decode s':>10}{'frames/s':>10}")
    for n in sorted({lo, max(lo, T // 4), max(lo, T // 2), T}):
        enc = timed(lambda: model.encode(video, n), repeat)
        tokens = model.encode(video, n)
        dec = timed(lambda: model.decode(tokens), repeat)
        print(f"{n:>13}{enc:>10.3f}{n_frames / enc:>10.1f}{dec:>10.3f}{n_frames / dec:>10.1f}")
    print(f"adaptive, block MSE <= {threshold}:")
    print(f"{'search':>13}{'seconds':>10}{'frames/s':>10}{'passes':>10}{'tokens/block':>14}")
    for search in ("fast", "binary"):
        start = time.perf_counter()
        result = encode_adaptive(model, video, CodingOptions(target=Target("mse", threshold), search=search))
        seconds = time.perf_counter() - start
        mean = float(result.tokens.counts.float().mean())
        print(f"{search:>13}{seconds:>10.2f}{n_frames / seconds:>10.1f}{result.evaluations:>10}{mean:>14.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="pretrained directory (repeatable)")
    parser.add_argument("--no-default", action="store_true", help="skip the embedded default model")
    parser.add_argument("--clip", type=Path, help="video file (default: a dev clip, else the sample clip)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, help="shorter side for any-size models (default: the model's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.003)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip or default_clip(Path(tmp))
        if not args.no_default:
            model, trained = load_default_model()
            bench("default model" + ("" if trained else " (untrained: random weights)"), model, clip, args.frames,
                  args.resolution, args.repeat, args.threshold)
        for path in args.model:
            bench(path, load_pretrained(path), clip, args.frames, args.resolution, args.repeat, args.threshold)


if __name__ == "__main__":
    main()
