"""A local web demo (Gradio): upload an image or a clip, pick a quality target or a token count, compare.

``elastictok demo`` (or :func:`launch`) serves it on localhost. Gradio is an optional dependency
(``pip install 'elastictok[demo]'``) and is imported only here, inside the functions that need it.

Each request is coded in its own temporary directory with the library's own calls
(:func:`~elastictok.pipeline.load_input`, :func:`~elastictok.pipeline.reconstruct`,
:func:`~elastictok.pipeline.write_reconstruction`, :func:`~elastictok.tokenfile.write_tokens`), so the
page shows exactly what ``elastictok reconstruct`` and ``elastictok encode`` would write. Requests
queue behind a small concurrency limit, and uploads that are too large or too long are refused with
a message saying what the limits are.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from elastictok.coding.options import CodingOptions
from elastictok.coding.target import DEFAULT_THRESHOLDS, Target, default_target
from elastictok.files.coding import reconstruct_file
from elastictok.files.source import Source
from elastictok.media import io
from elastictok.media.samples import sample_image_path, write_sample_clip
from elastictok.metrics.lpips import lpips_weights_path
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig
from elastictok.weights.pretrained import load_default_model, load_pretrained

log = logging.getLogger(__name__)

GRADIO_HINT = "the web demo needs Gradio: pip install 'elastictok[demo]'"

UNTRAINED_BANNER = (
    "**Untrained model.** The embedded default model's weights are missing from this installation, "
    "so this page runs a randomly "
    "initialised `{preset}` model: its reconstructions are noise and every block needs all its tokens. "
    "Start the demo with `elastictok demo --model DIR` (a converted official checkpoint or your own "
    "trained model) for real results."
)

# Dropped-token patches are dimmed towards this colour in the coverage overlay.
_DROPPED_TINT = np.array([20.0, 24.0, 72.0])


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Larger or longer inputs are refused with a message."""

    max_upload_mb: float = 50.0  # file size
    max_seconds: float = 30.0  # video duration, from the container header
    max_frames: int = 64  # frames coded from a video (the first ones)
    max_pixels: int = 50_000_000  # image size, width x height
    max_resolution: int = 256  # the shorter side an image is coded at
    max_video_resolution: int = 128  # the shorter side a video is coded at


class DemoError(ValueError):
    """A request the demo refuses (shown to the user as a message, not a traceback)."""


def _import_gradio():
    # No telemetry or version check from a local demo: it must work on a closed network.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError(GRADIO_HINT) from err
    return gr


def lpips_available() -> bool:
    """Whether the LPIPS (AlexNet) weights have been imported into the local cache."""
    return lpips_weights_path("alex").is_file()


def available_metrics() -> list[str]:
    return ["mse", "psnr", "ssim"] + (["lpips"] if lpips_available() else [])


def token_overlay(
    video: torch.Tensor, counts: list[int], config: ElasticTokConfig, min_height: int = 160
) -> list[tuple[np.ndarray, str]]:
    """Which part of each frame the kept tokens cover, one image per block.

    ``video`` (3, T, H, W) in [-1, 1] is the coded input; ``counts`` the tokens kept per block. A
    block's tokens are ordered time slice first (``frames_per_block / patch_t`` slices), then rows,
    then columns of ``patch_h x patch_w`` patches, and the kept ones are the first ``count``. Each
    image is a strip of the block's time slices (the first frame of each) with the patches of dropped
    tokens dimmed. Slices past the end of the input are the padding the model codes (copies of the
    last frame, as an image is coded as a block of copies); the caption says so. Returns
    (uint8 (H', W', 3), caption) per block.
    """
    _, num_frames, h, w = video.shape
    fpb = config.frames_per_block
    tp, hp, wp = config.patch_size
    rows, cols = h // hp, w // wp
    per_slice = rows * cols
    T = (fpb // tp) * per_slice
    pixels = io.to_uint8(video).permute(1, 2, 3, 0).cpu().numpy().astype(np.float32)  # (T, H, W, 3)
    scale = max(1, math.ceil(min_height / h))
    gap = np.full((h * scale, 4, 3), 255, np.uint8)
    out = []
    for b, count in enumerate(counts):
        tiles = []
        first, last = b * fpb, min((b + 1) * fpb, num_frames) - 1
        for s in range(fpb // tp):
            frame = pixels[min(b * fpb + s * tp, num_frames - 1)]
            index = s * per_slice + np.arange(per_slice).reshape(rows, cols)
            kept = np.kron(index < count, np.ones((hp, wp), dtype=bool))[..., None]  # (H, W, 1)
            tile = np.where(kept, frame, 0.3 * frame + 0.7 * _DROPPED_TINT)
            tile = np.repeat(np.repeat(tile, scale, 0), scale, 1)
            tiles.extend([tile.round().clip(0, 255).astype(np.uint8), gap])
        strip = np.concatenate(tiles[:-1], axis=1)
        frames = f"frame {first}" if first == last else f"frames {first}-{last}"
        caption = f"block {b}: {count}/{T} tokens kept, {frames}"
        padding = (b + 1) * fpb - 1 - last
        if padding:
            caption += f" + {padding} padding frame{'s' if padding > 1 else ''} (copies of frame {last})"
        out.append((strip, caption))
    return out


def overlay_sheet(strips: list[tuple[np.ndarray, str]], pad: int = 6):
    """The strips of :func:`token_overlay` stacked into one PIL image, each under its caption."""
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    line = 20
    width = max(strip.shape[1] for strip, _ in strips) + 2 * pad
    height = sum(strip.shape[0] + line + pad for strip, _ in strips) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for strip, caption in strips:
        draw.text((pad, y + 2), caption, fill=(20, 20, 20), font=font)
        sheet.paste(Image.fromarray(strip), (pad, y + line))
        y += line + strip.shape[0] + pad
    return sheet


def _enlarged(path: Path, out: Path, min_height: int = 256, max_width: int = 1600) -> Path:
    """``path`` scaled up by a whole factor (sharp pixels) so a small frame is visible on the page."""
    with Image.open(path) as image:
        factor = max(1, min(math.ceil(min_height / image.height), max_width // image.width))
        image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST).save(out)
    return out


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MB"


class DemoRunner:
    """The work behind the page's Run button, independent of Gradio so it can be tested directly."""

    def __init__(self, model: ElasticTok, limits: Limits = Limits(), work_dir: str | Path | None = None,
                 keep_seconds: float = 3600.0) -> None:
        self.model, self.limits, self.keep_seconds = model, limits, keep_seconds
        if work_dir is None:
            # Under the system temp dir, which Gradio serves files from.
            work_dir = tempfile.mkdtemp(prefix="elastictok-demo-")
            atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.active = 0  # requests being coded now
        self.peak = 0  # the most coded at once

    @property
    def config(self) -> ElasticTokConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def any_size(self) -> bool:
        """Whether the model takes any frame size (axial RoPE), so the page offers a resolution."""
        return self.config.rope == "axial"

    def check_input(self, path: str | Path) -> bool:
        """Refuse a missing, too large or too long input with a message; return whether it is a video."""
        lim = self.limits
        path = Path(path)
        if not path.is_file():
            raise DemoError("upload an image or a video first (or click one of the samples)")
        ext = path.suffix.lower()
        if ext not in io.IMAGE_EXTS | io.VIDEO_EXTS:
            known = ", ".join(sorted(io.IMAGE_EXTS | io.VIDEO_EXTS))
            raise DemoError(f"{path.name}: unsupported file type {ext or '(none)'}; expected one of {known}")
        size = path.stat().st_size
        if size > lim.max_upload_mb * 2**20:
            raise DemoError(f"{path.name} is {_mb(size)}; this demo takes files up to {lim.max_upload_mb:g} MB")
        if io.is_video_path(path):
            info = io.video_info(path)
            if info.frames is not None and info.frames / info.fps > lim.max_seconds:
                raise DemoError(
                    f"{path.name} lasts {info.frames / info.fps:.1f} s; this demo takes videos up to "
                    f"{lim.max_seconds:g} s (and codes the first {lim.max_frames} frames)"
                )
            return True
        try:
            with Image.open(path) as image:
                w, h = image.size
        except Exception as err:  # Pillow raises many kinds; the message is what matters
            raise DemoError(f"{path.name}: not a readable image ({err})") from None
        if w * h > lim.max_pixels:
            raise DemoError(f"{path.name} is {w}x{h}; this demo takes images up to {lim.max_pixels / 1e6:g} megapixels")
        return False

    def _request_dir(self) -> Path:
        """A fresh directory for one request; directories older than ``keep_seconds`` are removed."""
        now = time.time()
        for old in self.work_dir.glob("req-*"):
            try:
                if now - old.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                pass
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.work_dir))

    def run(
        self,
        path: str | Path,
        metric: str = "mse",
        threshold: float | None = None,
        budget_percent: float = 100.0,
        fixed: bool = False,
        fixed_percent: float = 25.0,
        resolution: int | None = None,
        frames: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Code one input; return the paths written and the stats (see :func:`build_app` for the page)."""
        is_video = self.check_input(path)
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            running = self.active
        print(f"[demo] coding {Path(path).name} ({running} running)", flush=True)
        try:
            return self._run(path, is_video, metric, threshold, budget_percent, fixed, fixed_percent, resolution,
                             frames, progress)
        finally:
            with self._lock:
                self.active -= 1

    def options(self, metric: str, threshold: float | None, budget_percent: float, fixed: bool,
                fixed_percent: float, frame_size: tuple[int, int]) -> CodingOptions:
        """The page's controls as coding options (percentages of the block's tokens become counts)."""
        T = self.config.tokens_per_block(frame_size)
        lo = self.config.min_tokens(frame_size)

        def percent_to_count(p: float) -> int:
            return max(lo, min(T, round(float(p) / 100 * T)))

        if fixed:
            return CodingOptions(num_tokens=percent_to_count(fixed_percent))
        if metric not in available_metrics():
            raise DemoError(f"metric {metric!r} is not available here; pick one of {available_metrics()}")
        try:
            target = Target(metric, None if threshold is None else float(threshold))
        except ValueError as err:
            raise DemoError(str(err)) from None
        cap = percent_to_count(budget_percent)
        return CodingOptions(target=target, max_tokens=cap if cap < T else None)

    def _run(self, path, is_video, metric, threshold, budget_percent, fixed, fixed_percent, resolution, frames,
             progress) -> dict[str, Any]:
        notes = []
        lim = self.limits
        if not self.any_size:
            resolution = None
        else:
            resolution = int(resolution or min(self.config.frame_size))
            cap = lim.max_video_resolution if is_video else lim.max_resolution
            if resolution > cap:
                notes.append(f"resolution lowered to {cap} px (the limit for {'videos' if is_video else 'images'})")
                resolution = cap
        frames = max(1, min(int(frames or lim.max_frames), lim.max_frames))
        try:
            source = Source.open(path, self.model, resolution, None, frames if is_video else None)
        except (ValueError, FileNotFoundError) as err:
            raise DemoError(str(err)) from None
        if is_video and not source.fps:
            source.fps = 24.0
        options = self.options(metric, threshold, budget_percent, fixed, fixed_percent, source.size)
        known = io.video_info(path).frames if is_video else 1
        n_blocks = -(-min(frames, known or frames) // self.config.frames_per_block)
        on_block = None
        if progress is not None:
            def on_block(cb) -> None:
                progress(cb.index + 1, max(n_blocks, cb.index + 1))

        out = self._request_dir()
        name = Path(path).stem or "input"
        stats = reconstruct_file(self.model, source, out, options, on_block=on_block)
        if is_video and (known is None or known > source.frames_read):
            notes.append(f"coded the first {source.frames_read} frames")
        etok = (out / "tokens.etok").replace(out / f"{name}.etok")  # the download keeps the input's name
        video = torch.stack(list(source.frames()), dim=1)  # (3, T, H, W)
        counts = [b["tokens"] for b in stats["blocks"]]
        strips = token_overlay(video, counts, self.config, min_height=160 if len(counts) <= 4 else 80)
        overlay = out / f"{name}_tokens.png"
        overlay_sheet(strips).save(overlay)
        compare = out / ("compare.mp4" if is_video else "compare.png")
        if not is_video:
            compare = _enlarged(compare, out / f"{name}_compare.png")
        return {
            "video": is_video,
            "compare": str(compare),
            "recon": str(out / ("recon.mp4" if is_video else "recon.png")),
            "plot": str(out / "blocks.png") if (out / "blocks.png").is_file() else None,
            "overlay": str(overlay),
            "overlay_captions": [caption for _, caption in strips],
            "etok": str(etok),
            "stats": stats,
            "summary": self.summary(stats, self.config.tokens_per_block(source.size), notes),
            "dir": str(out),
        }

    def summary(self, stats: dict, T: int, notes: list[str]) -> str:
        s = stats["settings"]
        n = len(stats["blocks"])
        if s["mode"] == "fixed":
            how = f"fixed {s['num_tokens']} tokens per block"
        else:
            how = f"adaptive, {s['metric']} target {s['threshold']:g}"
            if s.get("max_tokens"):
                how += f", at most {s['max_tokens']} tokens per block"
        what = "image" if stats["fps"] is None else f"{stats['frames']} frames at {stats['fps']:.3g} fps"
        h, w = stats["frame_size"]
        text = (
            f"**{stats['total_tokens']} / {stats['max_total_tokens']} tokens** ({stats['token_fraction']:.1%}) "
            f"in {n} block{'s' if n != 1 else ''} of {T} · mean PSNR {stats['mean_psnr']:.2f} dB · "
            f"{what}, {w}x{h} · {how} · {stats['seconds']:.2f} s"
        )
        if notes:
            note = "; ".join(notes)
            text += "\n\n" + note[0].upper() + note[1:] + "."
        return text


def _samples(work_dir: Path) -> dict[str, Path]:
    """The bundled sample image and clip, copied into ``work_dir`` (which Gradio may serve)."""
    sample_dir = work_dir / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    image = sample_dir / "sample_image.jpg"
    if not image.is_file():
        shutil.copyfile(sample_image_path(), image)
    found["image"] = image
    clip = sample_dir / "sample_clip.mp4"
    try:
        if not clip.is_file():
            write_sample_clip(clip)
        found["clip"] = clip
    except (ValueError, ImportError) as err:  # no PyAV: the image sample still works
        log.warning("no sample clip: %s", err)
    return found


def build_app(
    model: ElasticTok,
    max_upload_mb: float = 50.0,
    max_seconds: float = 30.0,
    max_frames: int = 64,
    *,
    trained: bool = True,
    model_name: str | None = None,
    concurrency: int = 2,
    queue_size: int = 32,
    limits: Limits | None = None,
    work_dir: str | Path | None = None,
):
    """The demo page as a ``gr.Blocks``, queued (``concurrency`` requests at once, ``queue_size`` waiting).

    ``trained=False`` puts a banner on the page saying the model is untrained. Serve it with
    ``app.launch(max_file_size=f"{max_upload_mb}mb")`` (as :func:`launch` does) so oversize uploads are
    refused before they are stored.
    """
    gr = _import_gradio()
    limits = limits or Limits(max_upload_mb=max_upload_mb, max_seconds=max_seconds, max_frames=max_frames)
    runner = DemoRunner(model, limits, work_dir=work_dir)
    samples = _samples(runner.work_dir)
    config = model.config
    T_default = config.tokens_per_block()
    metrics = available_metrics()
    exts = sorted(io.IMAGE_EXTS | io.VIDEO_EXTS)
    patch = config.patch_size[1]
    declared = default_target(config)

    with gr.Blocks(title="ElasticTok demo", analytics_enabled=False, delete_cache=(900, 3600)) as app:
        app.elastictok_runner = runner  # for tests and embedding
        gr.Markdown(
            "# ElasticTok: adaptive tokens for images and video\n"
            f"Model: `{model_name or 'embedded default'}` · {config.bottleneck.upper()} bottleneck · "
            f"{config.frames_per_block}-frame blocks · {T_default} tokens per block at "
            f"{config.frame_size[0]}x{config.frame_size[1]}. Each block gets the fewest tokens that meet the "
            "quality target (or a fixed count); the kept tokens are always the first ones of the block.",
            elem_id="header",
        )
        if not trained:
            gr.Markdown("⚠️ " + UNTRAINED_BANNER.format(preset="small"), elem_id="untrained-warning")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(
                    label=f"Image or video (up to {limits.max_upload_mb:g} MB, {limits.max_seconds:g} s)",
                    file_types=exts, type="filepath", elem_id="input-file",
                )
                with gr.Row():
                    sample_buttons = [
                        (gr.Button(f"Sample {kind}", size="sm", elem_id=f"sample-{kind}"), path)
                        for kind, path in samples.items()
                    ]
                with gr.Row():
                    metric = gr.Dropdown(
                        metrics, value=declared.metric if declared.metric in metrics else "mse",
                        label="Quality metric", elem_id="metric",
                        info=None if "lpips" in metrics else "lpips appears once its weights are imported",
                    )
                    threshold = gr.Number(
                        value=declared.threshold if declared.metric in metrics else DEFAULT_THRESHOLDS["mse"],
                        label="Threshold per block", info="mse/lpips: at most; psnr (dB)/ssim: at least",
                        elem_id="threshold",
                    )
                budget = gr.Slider(1, 100, value=100, step=1, info="the search's --max-tokens cap", elem_id="budget",
                                   label="Token budget: most tokens per block (% of the block)")
                fixed = gr.Checkbox(value=False, label="Fixed count instead of a search (--num-tokens)",
                                    elem_id="fixed")
                fixed_percent = gr.Slider(1, 100, value=25, step=1, label="Fixed tokens per block (% of the block)",
                                          elem_id="fixed-percent")
                resolution = gr.Slider(
                    patch, limits.max_resolution, value=min(config.frame_size), step=patch,
                    label=f"Resolution: shorter side in px (videos at most {limits.max_video_resolution})",
                    visible=runner.any_size, elem_id="resolution",
                )
                frames = gr.Slider(1, limits.max_frames, value=min(16, limits.max_frames), step=1,
                                   label="Video frames coded (the first ones)", elem_id="frames")
                run = gr.Button("Run", variant="primary", elem_id="run-button")
            with gr.Column(scale=2, min_width=480):
                summary = gr.Markdown("Upload an image or a video, or click a sample.", elem_id="summary")
                compare_image = gr.Image(label="Original | reconstruction", type="filepath", interactive=False,
                                         elem_id="compare-image", height=300)
                compare_video = gr.Video(label="Original | reconstruction", interactive=False, visible=False,
                                         elem_id="compare-video", height=300, autoplay=True, loop=True)
                gr.Markdown("**Kept-token coverage** per block: its time slices left to right, the patches of "
                            "dropped tokens dimmed (tokens run slice by slice, row by row).")
                overlay = gr.Image(label="Kept-token coverage", show_label=False, type="filepath", interactive=False,
                                   elem_id="overlay")
                with gr.Row():
                    plot = gr.Image(label="Tokens and PSNR per block", show_label=False, type="filepath",
                                    interactive=False, elem_id="blocks-plot", scale=2)
                    etok = gr.File(label="Tokens (.etok)", interactive=False, elem_id="etok", scale=1)
                stats = gr.JSON(label="stats.json", elem_id="stats")

        def on_metric(name: str):
            same = name == declared.metric  # the model's own threshold for its declared metric
            return gr.update(value=declared.threshold if same else DEFAULT_THRESHOLDS.get(name, 0.0))

        metric.change(on_metric, metric, threshold, queue=False, show_progress="hidden")

        def do_run(path, metric_name, threshold_value, budget_pct, fixed_on, fixed_pct, res, n_frames,
                   progress=gr.Progress()):
            if not path:
                raise gr.Error("Upload an image or a video first, or click one of the samples.")
            progress(0, desc="coding")
            try:
                r = runner.run(path, metric_name, threshold_value, budget_pct, fixed_on, fixed_pct, res, n_frames,
                               progress=lambda i, n: progress(i / n, desc=f"block {i}/{n}"))
            except DemoError as err:
                raise gr.Error(str(err)) from None
            except (ValueError, FileNotFoundError) as err:
                raise gr.Error(f"could not code this input: {err}") from None
            except Exception:
                log.exception("demo request failed")
                raise gr.Error("something went wrong while coding this input; see the server log") from None
            return (
                r["summary"],
                gr.update(value=None if r["video"] else r["compare"], visible=not r["video"]),
                gr.update(value=r["compare"] if r["video"] else None, visible=r["video"]),
                r["plot"],
                r["overlay"],
                r["etok"],
                r["stats"],
            )

        inputs = [upload, metric, threshold, budget, fixed, fixed_percent, resolution, frames]
        outputs = [summary, compare_image, compare_video, plot, overlay, etok, stats]
        run.click(do_run, inputs, outputs, api_name="reconstruct")
        for button, path in sample_buttons:
            button.click(lambda p=str(path): p, None, upload, queue=False).then(do_run, inputs, outputs)

    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return app


def launch(
    model_dir: str | Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    device: str | None = None,
    max_upload_mb: float = 50.0,
    max_seconds: float = 30.0,
    max_frames: int = 64,
    concurrency: int = 2,
    prevent_thread_lock: bool = False,
):
    """Load the model (the embedded default unless ``model_dir``) and serve the demo on ``host:port``.

    Blocks until interrupted unless ``prevent_thread_lock``; returns the ``gr.Blocks``.
    """
    _import_gradio()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model_dir:
        model, trained, name = load_pretrained(model_dir, device=device), True, Path(model_dir).resolve().name
    else:
        model, trained = load_default_model(device=device)
        name = "embedded default" + ("" if trained else " (untrained 'small')")
    app = build_app(model, max_upload_mb, max_seconds, max_frames, trained=trained, model_name=name,
                    concurrency=concurrency)
    options = dict(
        server_name=host, server_port=port, max_file_size=f"{max_upload_mb:g}mb", ssr_mode=False, show_error=True,
        prevent_thread_lock=prevent_thread_lock, inbrowser=False, share=False,
    )
    accepted = inspect.signature(app.launch).parameters
    if not prevent_thread_lock and threading.current_thread() is threading.main_thread():
        # Stop on SIGTERM as on Ctrl-C: Gradio closes its server and the temporary files are removed.
        signal.signal(signal.SIGTERM, _interrupt)
    app.launch(**{k: v for k, v in options.items() if k in accepted})
    return app


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
