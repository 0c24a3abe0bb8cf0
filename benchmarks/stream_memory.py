"""Peak resident memory of streaming encodes of 16, 256 and 2,048 frames (a real clip, looped).

Each length runs in its own process (ru_maxrss is a high-water mark). Target: the 2,048-frame run
uses no more than 1.2x the memory of the 256-frame run. Usage:

    python benchmarks/stream_memory.py [--model DIR] [--clip PATH] [--context-blocks 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dev" / "sam2" / "bedroom.mp4"


def child(args) -> None:
    from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
    from elastictok.files.coding import encode_file
    from elastictok.files.source import Source
    from elastictok.weights.pretrained import load_default_model, load_pretrained

    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    base = Source.open(args.clip, model, resolution=args.resolution)

    class Looped(Source):
        def frames(self):
            # Decode the clip again on every loop: frames are never stored.
            return islice((f for _ in cycle([0]) for f in Source.frames(base)), args.frames)

    source = Looped(base.path, base.size, base.fps, None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stats = encode_file(model, source, Path(tmp) / "x.etok",
                            CodingOptions(num_tokens=args.num_tokens, context_blocks=args.context_blocks,
                                          cut_threshold=DEFAULT_CUT_THRESHOLD))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"frames": stats["frames"], "blocks": len(stats["blocks"]), "peak_mib": peak,
                      "seconds": time.perf_counter() - start, "size": base.size}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--clip", default=str(CLIP))
    parser.add_argument("--context-blocks", type=int, default=4)
    parser.add_argument("--num-tokens", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--lengths", type=int, nargs="*", default=[16, 256, 2048])
    args = parser.parse_args()
    if args.frames:
        child(args)
        return
    rows = []
    for n in args.lengths:
        cmd = [sys.executable, __file__, "--frames", str(n), "--clip", args.clip, "--context-blocks",
               str(args.context_blocks), "--num-tokens", str(args.num_tokens)]
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--resolution", str(args.resolution)] if args.resolution else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    print(f"clip {Path(args.clip).name} looped, frames {rows[0]['size']}, context {args.context_blocks} blocks, "
          f"{args.num_tokens} tokens per block")
    print(f"{'frames':>7}{'blocks':>8}{'peak MiB':>10}{'seconds':>9}")
    for r in rows:
        print(f"{r['frames']:>7}{r['blocks']:>8}{r['peak_mib']:>10.1f}{r['seconds']:>9.1f}")
    by = {r["frames"]: r["peak_mib"] for r in rows}
    if 256 in by and 2048 in by:
        print(f"2048 / 256 frames peak memory: {by[2048] / by[256]:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
