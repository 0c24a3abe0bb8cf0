"""The ``tokenize`` and ``detokenize`` verbs: whole datasets to Parquet token shards, and a row back to pixels."""

from __future__ import annotations

import sys

from elastictok.app.args import add_coding_args, add_model_args, coding_options, load_model
from elastictok.datasets import TokenizeJob, detokenize, tokenize
from elastictok.datasets.engines import ENGINES, require_ray
from elastictok.datasets.store import DEFAULT_SHARD_ROWS


def cmd_tokenize(args) -> int:
    job = TokenizeJob(coding_options(args), args.resolution, args.fps, args.max_frames, args.max_clip_frames)
    if args.engine == "ray":
        try:
            require_ray()
        except ImportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    model = load_model(args)
    summary = tokenize(
        model, args.sources, args.output, job, engine=args.engine, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker, shard_rows=args.shard_rows,
        progress=not args.no_progress,
    )
    totals = summary["manifest"]["totals"]
    print(
        f"{summary['dataset']}: {summary['coded']} sources coded ({summary['rows']} clips, {summary['tokens']} tokens) "
        f"in {summary['seconds']:.1f} s, {summary['skipped']} already done, {summary['failed']} failed; "
        f"the dataset holds {totals['rows']} clips from {totals['sources']} sources"
    )
    failures = summary["manifest"]["failures"]
    for failure in failures[:5]:
        print(f"failed: {failure['source']}: {failure['reason']}", file=sys.stderr)
    if len(failures) > 5:
        print(f"... and {len(failures) - 5} more failures, listed in manifest.json", file=sys.stderr)
    return 0


def cmd_detokenize(args) -> int:
    model = load_model(args)
    print(f"wrote {detokenize(model, args.dataset, args.key, args.output)}")
    return 0


def add_parsers(sub) -> None:
    """Add the ``tokenize`` and ``detokenize`` verbs to an argparse subparsers object."""
    p = sub.add_parser("tokenize", help="tokenize images and videos into a Parquet token dataset (resumable)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image or video file, folder (searched recursively), or .txt/.parquet list of paths")
    p.add_argument("-o", "--output", required=True, help="dataset folder (created, or resumed when it exists)")
    p.add_argument("--max-clip-frames", type=int, help="split longer videos into clips of at most this many frames")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: in this process (default); ray: on a Ray cluster (RAY_ADDRESS, else a local one)")
    p.add_argument("--workers", type=int, default=1, help="Ray workers, each holding the model (default 1)")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs and torch threads per Ray worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0: CPU)")
    p.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                   help=f"clips per Parquet shard (default {DEFAULT_SHARD_ROWS}); a re-run resumes after the last one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_coding_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("detokenize", help="decode one clip of a token dataset to an image or video")
    p.add_argument("dataset", help="dataset folder written by tokenize")
    p.add_argument("--key", required=True, help="the clip's key, SOURCE#CLIP (e.g. clips/a.mp4#0)")
    p.add_argument("-o", "--output", required=True, help="output .png/.jpg or .mp4")
    add_model_args(p)
    p.set_defaults(func=cmd_detokenize)
