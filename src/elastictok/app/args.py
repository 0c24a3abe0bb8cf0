"""The command line's shared options: model and device, coding flags into CodingOptions, input limits."""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction

import torch

from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.coding.search import DEFAULT_TOLERANCE, SEARCHES
from elastictok.coding.target import METRICS, Target
from elastictok.files.source import DEFAULT_LIMITS, Limits
from elastictok.model.autoencoder import ElasticTok
from elastictok.weights.pretrained import load_default_model, load_pretrained

UNTRAINED_NOTE = (
    "NOTE: the embedded default model's weights are missing from this installation; using a randomly "
    "initialised '{preset}' model. "
    "Its reconstructions are noise: pass --model DIR for real results."
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model",
                   help="pretrained directory (config.json + model.safetensors); default: the embedded model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:N or mps (default: cuda where available, else cpu)")


def device_available(kind: str) -> bool | None:
    """Whether a device type is usable here; None for a type this program does not run on."""
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if kind == "xpu":
        return bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    return None


def check_device(text: str) -> torch.device:
    """``--device`` parsed and checked against this machine, before any model is loaded."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    available = device_available(device.type)
    if available is None:
        raise ValueError(f"--device {text!r}: models run on cpu, cuda or mps, not {device.type}")
    if not available:
        raise ValueError(f"--device {text!r}: {device.type.upper()} is not available on this machine "
                         f"(use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def load_model(args, companions: bool = True) -> ElasticTok:
    if args.model:
        return load_pretrained(args.model, device=args.device, companions=companions)
    model, trained = load_default_model(device=args.device, companions=companions)
    if not trained:
        print(UNTRAINED_NOTE.format(preset="small"), file=sys.stderr)
    return model


def limits_of(args) -> Limits:
    return Limits(pixels=args.limit_pixels, aspect=args.limit_aspect, resolution=args.limit_resolution,
                  frames=args.limit_frames)


def coding_options(args) -> CodingOptions:
    given = args.metric is not None or args.threshold is not None  # else the model's declared target
    return CodingOptions(
        target=Target(args.metric or "mse", args.threshold) if given else None, search=args.search,
        num_tokens=args.num_tokens, budget=args.budget, min_tokens=args.min_tokens, max_tokens=args.max_tokens,
        context_blocks=args.context_blocks, keyframe_interval=args.keyframe_interval,
        cut_threshold=None if args.no_scene_cuts else args.cut_threshold, tolerance=args.tolerance,
    )


def fraction(text: str) -> float:
    """A number or a fraction such as 1/64, for argparse."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 1/64, got {text!r}") from None


def add_coding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=METRICS,
                   help="quality target metric (default: the model's declared target, else mse 0.003)")
    p.add_argument("--threshold", type=float,
                   help="target value (defaults per metric: mse 0.003, psnr 31.25, ssim 0.9, lpips 0.1)")
    p.add_argument("--num-tokens", type=int, help="keep this many tokens in every block instead of searching")
    p.add_argument("--search", choices=SEARCHES,
                   help="token-count search (default: predict where the model has a predictor and the metric is "
                   "mse or psnr, else fast)")
    p.add_argument("--tolerance", type=fraction, metavar="F",
                   help="let the search stop within this fraction of the block's tokens above the fewest that meet "
                   f"the target, e.g. 1/64 (default: {Fraction(DEFAULT_TOLERANCE['predict'])} for predict, "
                   f"{Fraction(DEFAULT_TOLERANCE['fast'])} for fast, 0 (exact) for binary and full; grid takes none)")
    p.add_argument("--min-tokens", type=int, help="fewest tokens a block may get (default: the model's minimum)")
    p.add_argument("--max-tokens", type=int, help="most tokens a block may get (default: all)")
    p.add_argument("--budget", type=float, help="average tokens per block over the whole video (rate control)")
    p.add_argument("--context-blocks", type=int,
                   help="earlier blocks each block attends to (default: as many as the model was trained with)")
    p.add_argument("--keyframe-interval", type=int, help="reset the context every N blocks (random access)")
    p.add_argument("--cut-threshold", type=float, default=DEFAULT_CUT_THRESHOLD,
                   help=f"mean pixel change that marks a scene cut (default {DEFAULT_CUT_THRESHOLD})")
    p.add_argument("--no-scene-cuts", action="store_true", help="never reset the context at detected cuts")
    p.add_argument("--resolution", type=int, help="shorter side in pixels for any-size models")
    p.add_argument("--fps", type=float, help="resample video to this frame rate")
    p.add_argument("--max-frames", type=int, help="read at most this many frames")


def add_limit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits", "inputs beyond these are refused before anything is decoded (docs/limits.md)")
    g.add_argument("--limit-pixels", type=int, default=DEFAULT_LIMITS.pixels, metavar="N",
                   help=f"most pixels per frame at the coded size (default {DEFAULT_LIMITS.pixels:,}: 1920x1080)")
    g.add_argument("--limit-aspect", type=float, default=DEFAULT_LIMITS.aspect, metavar="R",
                   help=f"largest aspect ratio, longer side over shorter (default {DEFAULT_LIMITS.aspect:g})")
    g.add_argument("--limit-resolution", type=int, default=DEFAULT_LIMITS.resolution, metavar="PX",
                   help=f"largest --resolution (default {DEFAULT_LIMITS.resolution})")
    g.add_argument("--limit-frames", type=int, default=DEFAULT_LIMITS.frames, metavar="N",
                   help=f"most frames coded from one video (default {DEFAULT_LIMITS.frames:,})")
