"""Dataset tokenization throughput: the local engine against the Ray engine at 1 and 2 workers.

Tokenizes the development clips and Kodak images from ../shared/data with the embedded default model
(or ``--model``) at the default coding settings, each engine into a fresh dataset, with one torch
thread per worker (and in the local engine). Prints items (clips and images) per second, blocks and
tokens per second, the speed-up from 1 to 2 Ray workers, Ray's fixed start-up cost (starting a local
cluster, and the first actor holding the model), and the size of the Parquet dataset against the
``.etok`` files of the same clips. Usage::

    python benchmarks/tokenize_dataset.py [--model DIR] [--clips 6] [--images 24] [--max-frames 16]
                                  [--resolution R] [--workers 1 2] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.datasets import TokenDataset, TokenizeJob, tokenize
from elastictok.tokenfile.format import write_tokens
from elastictok.weights.pretrained import load_default_model, load_pretrained

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = DATA / "video" / "dev" / "sam2"
KODAK = DATA / "images" / "kodak"


def run(model, sources, out: Path, job: TokenizeJob, **engine) -> dict:
    start = time.perf_counter()
    summary = tokenize(model, sources, out, job, progress=False, **engine)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items": summary["rows"], "blocks": summary["blocks"], "tokens": summary["tokens"],
            "items_per_s": summary["rows"] / seconds, "blocks_per_s": summary["blocks"] / seconds,
            "tokens_per_s": summary["tokens"] / seconds}


def etok_bytes(model, dataset: Path, folder: Path) -> int:
    """What the same clips take as ``.etok`` files (the tokens ``encode`` writes, without coding again)."""
    ds = TokenDataset(dataset)
    folder.mkdir()
    total = 0
    for i, row in enumerate(ds.rows()):
        path = write_tokens(folder / f"{i}.etok", ds.tokens(row), model, fps=row["fps"],
                            settings={k: v for k, v in ds.manifest["coding"].items()})
        total += path.stat().st_size
    return total


def parquet_bytes(dataset: Path) -> int:
    return sum(s["bytes"] for s in json.loads((dataset / "manifest.json").read_text())["shards"])


def ray_startup(model, image: Path, job: TokenizeJob, tmp: Path) -> dict:
    """Seconds to start a local cluster, and a one-image job's extra time over the local engine."""
    import ray

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    init = time.perf_counter() - start
    local = run(model, [image], tmp / "one-local", job)["seconds"]
    remote = run(model, [image], tmp / "one-ray", job, engine="ray", workers=1)["seconds"]
    return {"ray_init_s": init, "first_actor_and_job_overhead_s": remote - local}


SPIN = """
import time, torch
torch.set_num_threads(1)
a = torch.randn(384, 384)
start = time.perf_counter()
for _ in range(1500):
    a @ a
print(time.perf_counter() - start)
"""


def parallel_capacity(n: int = 2) -> float:
    """How many one-thread torch processes this machine runs at full speed at once, measured now.

    On a shared machine this is what bounds any engine's speed-up from 1 to n workers.
    """
    def spin(k: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True) for _ in range(k)]
        return max(float(p.communicate()[0]) for p in procs)

    one = spin(1)
    return n * one / spin(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="pretrained directory (default: the embedded model)")
    p.add_argument("--clips", type=int, default=6, help="development clips to tokenize (default 6)")
    p.add_argument("--images", type=int, default=24, help="Kodak images to tokenize (default 24)")
    p.add_argument("--max-frames", type=int, default=16, help="frames read per clip (default 16)")
    p.add_argument("--resolution", type=int, help="shorter side in pixels (default: the model's)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    p.add_argument("--no-ray", action="store_true", help="measure the local engine only")
    args = p.parse_args()
    if not CLIPS.is_dir() or not KODAK.is_dir():
        raise SystemExit(f"{DATA} not found: the development clips and Kodak images are needed")
    torch.set_num_threads(1)
    model = load_pretrained(args.model) if args.model else load_default_model()[0]
    sources = sorted(CLIPS.glob("*.mp4"))[: args.clips] + sorted(KODAK.glob("*.png"))[: args.images]
    job = TokenizeJob(CodingOptions(cut_threshold=DEFAULT_CUT_THRESHOLD), args.resolution, None, args.max_frames)
    print(f"{len(sources)} sources ({min(args.clips, 6)} clips of <= {args.max_frames} frames, "
          f"{min(args.images, 24)} images), resolution {args.resolution or 'default'}, 1 torch thread per worker")
    results: dict[str, dict] = {"machine": {"parallel_capacity_2": parallel_capacity(2)}}
    print(f"this machine now runs 2 one-thread torch processes at {results['machine']['parallel_capacity_2']:.2f}x "
          "the throughput of one (the bound on any 1 -> 2 worker speed-up)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # Warm-up: the first passes of a process pay for kernel set-up, which no engine should be charged.
        run(model, sources[-1:], tmp / "warm", job)
        results["local"] = run(model, sources, tmp / "local", job)
        if not args.no_ray:
            results["ray_startup"] = ray_startup(model, sources[-1], job, tmp)
            for n in args.workers:
                results[f"ray_{n}"] = run(model, sources, tmp / f"ray{n}", job, engine="ray", workers=n)
            import ray

            ray.shutdown()
        size = {"parquet_bytes": parquet_bytes(tmp / "local"),
                "etok_bytes": etok_bytes(model, tmp / "local", tmp / "etok")}
    size["parquet_over_etok"] = size["parquet_bytes"] / size["etok_bytes"]
    results["size"] = size
    print(f"{'engine':10} {'seconds':>8} {'items/s':>8} {'blocks/s':>9} {'tokens/s':>9}")
    for name, r in results.items():
        if "items_per_s" in r:
            print(f"{name:10} {r['seconds']:8.1f} {r['items_per_s']:8.3f} {r['blocks_per_s']:9.2f} "
                  f"{r['tokens_per_s']:9.0f}")
    if "ray_startup" in results:  # the same runs without the actors' start-up, as on a long job
        fixed = results["ray_startup"]["first_actor_and_job_overhead_s"]
        for n in args.workers:
            r = results[f"ray_{n}"]
            r["items_per_s_after_startup"] = r["items"] / max(r["seconds"] - fixed, 1e-9)
            print(f"ray_{n} after start-up: {r['items_per_s_after_startup']:.3f} items/s")
    if "ray_1" in results and "ray_2" in results:
        gain = results["ray_2"]["items_per_s"] / results["ray_1"]["items_per_s"]
        print(f"ray speed-up from 1 to 2 workers: {gain:.2f}x")
    if "ray_startup" in results:
        s = results["ray_startup"]
        print(f"ray start-up: {s['ray_init_s']:.1f} s to start a local cluster, "
              f"{s['first_actor_and_job_overhead_s']:.1f} s more than the local engine for a one-image job")
    print(f"size: Parquet {size['parquet_bytes']} bytes, .etok {size['etok_bytes']} bytes "
          f"({size['parquet_over_etok']:.2f}x)")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
