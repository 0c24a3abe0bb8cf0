"""The ``train-predictor`` verb: a token-count predictor for a model, from curves it measures itself."""

from __future__ import annotations

import json
from pathlib import Path

from elastictok.app.args import add_model_args, load_model
from elastictok.files.outputs import Undo, check_output_dir
from elastictok.train.predictor import PredictorTraining, train_predictor
from elastictok.weights.pretrained import default_model_dir


def cmd_train_predictor(args) -> int:
    opts = PredictorTraining(
        resolutions=tuple(args.resolution), max_images=args.max_images, max_videos=args.max_videos,
        blocks_per_video=args.blocks_per_video, counts_per_block=args.counts_per_block,
        focus_counts=args.focus_counts, focus_mse=tuple(args.focus_mse), epochs=args.epochs,
        still_clips=args.still_clips, still_blocks=args.still_blocks, seed=args.seed,
    )
    for folder in [*args.images, *args.videos]:
        if not folder.is_dir():
            raise ValueError(f"cannot read {str(folder)!r}: not a folder of images or videos")
    if not args.images and not args.videos:
        raise ValueError("give training data with --images and/or --videos")
    check_output_dir(args.output)
    model = load_model(args, companions=False)  # its predictor, if any, is being replaced
    with Undo() as undo:
        undo.dirs(args.output)
        for name in ("predictor.json", "predictor.safetensors"):
            undo.file(args.output / name)
        if args.curves is not None:
            undo.file(args.curves)
        summary = train_predictor(model, args.model or default_model_dir(), args.images, args.videos, args.output,
                                  opts, args.curves)
    print(json.dumps(summary, indent=2))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train-predictor", help="train a model's token-count predictor (for --search predict)")
    p.add_argument("--images", nargs="*", type=Path, default=[], metavar="DIR", help="folders of training images")
    p.add_argument("--videos", nargs="*", type=Path, default=[], metavar="DIR", help="folders of training videos")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="model directory to write, with the predictor beside the weights (may be --model's)")
    p.add_argument("--curves", type=Path, help="measured curves: read when the file exists, else saved there")
    p.add_argument("--resolution", nargs="+", type=int, default=[112], help="shorter sides, cycled over sources")
    p.add_argument("--max-images", type=int, default=240)
    p.add_argument("--max-videos", type=int, default=48)
    p.add_argument("--blocks-per-video", type=int, default=6)
    p.add_argument("--counts-per-block", type=int, default=8, help="token counts measured per block")
    p.add_argument("--focus-counts", type=int, default=PredictorTraining.focus_counts,
                   help="of those, how many go near where the curve crosses MSE levels drawn from --focus-mse")
    p.add_argument("--focus-mse", nargs=2, type=float, default=list(PredictorTraining.focus_mse),
                   metavar=("LOW", "HIGH"),
                   help="range of MSE levels (on [-1, 1] pixels) the focused counts aim at: the usual targets")
    p.add_argument("--still-clips", type=int, default=PredictorTraining.still_clips,
                   help="of the images, how many to measure also as still clips (static scenes)")
    p.add_argument("--still-blocks", type=int, default=PredictorTraining.still_blocks,
                   help="blocks per still clip")
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    p.set_defaults(func=cmd_train_predictor)
