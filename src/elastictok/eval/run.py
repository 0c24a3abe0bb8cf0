"""Evaluation: token efficiency (the paper's main curve), quality at fixed budgets, FVD and codec anchors.

This module runs an evaluation end to end. The other definitions live with the code that computes
them: token-share curves and the token-efficiency gain in :mod:`elastictok.curves`; codec anchors at
equal bytes in :mod:`elastictok.codecs`; per-item records and their aggregation into results.json in
:mod:`elastictok.evalresults`; summary.md and the plots in :mod:`elastictok.evalreport`.

**Quality.** PSNR (dB on [0, 1]), SSIM and LPIPS (AlexNet) per frame, averaged over frames and then
items, of reconstructions rounded to 8 bits (what a user would save), at uniform budgets (min, 1/4,
1/2, full tokens per block), for adaptive encoding at each threshold (real ``.etok`` files from
:func:`elastictok.filecoding.encode_file`, decoded back), for baselines and for the codec anchors.
FVD (video) is the Fréchet distance between Gaussian fits of the I3D logits of real and
reconstructed 16-frame windows (non-overlapping, all items pooled; see :mod:`elastictok.i3d`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from elastictok.coding.options import DEFAULT_CUT_THRESHOLD, CodingOptions
from elastictok.coding.target import Target
from elastictok.eval.baseline import Baseline
from elastictok.eval.codecs import encode_h264, encode_jpeg, encode_webp, frames_u8, from_frames_u8
from elastictok.eval.curves import BUDGETS, _count_at, grid_fractions
from elastictok.eval.report import write_plots, write_summary
from elastictok.eval.results import _codec_results, _Item, _quality_results, _token_share_results, write_results
from elastictok.files.coding import decode_frames, encode_file
from elastictok.files.source import Source, load_input
from elastictok.media import io as media
from elastictok.metrics.i3d import FVD_FRAMES, fvd, load_i3d
from elastictok.metrics.lpips import LPIPS
from elastictok.metrics.pixel import psnr, ssim
from elastictok.model.autoencoder import ElasticTok
from elastictok.tokenfile.format import open_token_file

DEFAULT_THRESHOLDS = (0.003, 0.007)

# ---------------------------------------------------------------------------------------------
# Coding at fixed counts


@torch.no_grad()
def code_fixed(model: ElasticTok, video: Tensor, counts: Sequence[int], context_blocks: int | None = None) -> Tensor:
    """Reconstructions (k, 3, T', H, W) of ``video`` (1, 3, T, H, W) with each of k counts in every block.

    Blocks are coded in order through the KV cache, batched over the counts, so each block is
    conditioned on the earlier blocks coded at the same count, at most ``context_blocks`` of them
    (default: the model's trained window, as the adaptive encodes use). T' is T padded to whole
    blocks (the last frame repeated, as the encoder does).
    """
    window = model.config.context_window(context_blocks)
    device = model.device
    padded = model.pad_frames(video).to(device)
    fpb, size = model.config.frames_per_block, tuple(video.shape[-2:])
    state = model.new_state(size)
    n = torch.tensor(list(counts), device=device)
    blocks = []
    for i in range(padded.shape[2] // fpb):
        patches = model.patchify(padded[:, :, i * fpb : (i + 1) * fpb]).expand(len(n), -1, -1)
        step = model.code_block(patches, n, state)
        model.commit(state, step, window)
        blocks.append(model.unpatchify(step.recon.float(), fpb, size).clamp(-1, 1))
    return torch.cat(blocks, 2)


def _block_mse(recon: Tensor, padded: Tensor, frames_per_block: int) -> np.ndarray:
    """Official block MSE of (k, 3, T', H, W) reconstructions against the padded input: (k, n_blocks)."""
    err = (recon.float().cpu() - padded.float().cpu()).square()
    k, c, t, h, w = err.shape
    return err.reshape(k, c, t // frames_per_block, frames_per_block, h, w).mean((1, 3, 4, 5)).numpy()


# ---------------------------------------------------------------------------------------------
# Frame metrics


def _to_8bit(x: Tensor) -> Tensor:
    """Pixels rounded to the 256 levels a saved file holds, so metrics see what a viewer sees."""
    return media.to_unit(media.to_uint8(x))


class FrameMetrics:
    """PSNR, SSIM and LPIPS per frame of (3, T, H, W) pairs in [-1, 1], averaged over frames."""

    def __init__(self, device: torch.device | str, use_lpips: bool = True) -> None:
        self.device, self.lpips, self.note = device, None, None
        if use_lpips:
            try:
                self.lpips = LPIPS("alex").to(device)
            except FileNotFoundError as err:
                self.note = f"LPIPS skipped: {err}"

    @torch.no_grad()
    def __call__(self, ref: Tensor, rec: Tensor) -> dict[str, float | None]:
        a = ref.float().transpose(0, 1).contiguous()  # (T, 3, H, W)
        b = _to_8bit(rec).transpose(0, 1).contiguous()
        out: dict[str, float | None] = {"psnr": float(psnr(b, a).clamp(max=100).mean())}
        out["ssim"] = float(ssim(b, a).mean()) if min(a.shape[-2:]) >= 11 else None
        if self.lpips is not None:
            values = [self.lpips(b[i : i + 16].to(self.device), a[i : i + 16].to(self.device))
                      for i in range(0, len(a), 16)]
            out["lpips"] = float(torch.cat(values).mean())
        else:
            out["lpips"] = None
        return out


# ---------------------------------------------------------------------------------------------
# The evaluation run


@dataclass
class EvalOptions:
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    resolution: int | None = None
    max_items: int | None = None
    frames: int = 16
    grid_points: int = 32
    search: str = "fast"
    fvd: bool = True
    codecs: bool = True
    lpips: bool = True
    batch: int = 4  # counts coded together in one batched pass


def list_inputs(folder: str | Path, kind: str, max_items: int | None = None) -> list[Path]:
    """Image or video files under ``folder`` (recursively, sorted), at most ``max_items``."""
    exts = media.IMAGE_EXTS if kind == "image" else media.VIDEO_EXTS
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = media.media_files(folder, exts)
    if kind == "video":
        files = [p for p in files if media.is_video_path(p)]
    files = files[:max_items] if max_items else files
    if not files:
        raise FileNotFoundError(f"no {kind} files found under {folder}")
    return files


class _Evaluator:
    def __init__(self, model: ElasticTok, kind: str, out_dir: Path, options: EvalOptions,
                 baselines: Sequence[Baseline]) -> None:
        self.model, self.kind, self.out, self.opt, self.baselines = model, kind, out_dir, options, list(baselines)
        self.device = model.device
        self.metrics = FrameMetrics(self.device, options.lpips)
        self.notes: list[str] = [self.metrics.note] if self.metrics.note else []
        self.fractions = grid_fractions(model.config.min_token_fraction, options.grid_points)
        self.i3d = self._load_i3d()
        self.features: dict[str, list[np.ndarray]] = {}  # method -> I3D features of 16-frame windows

    def _load_i3d(self):
        if self.kind != "video" or not self.opt.fvd:
            return None
        if self.opt.frames < FVD_FRAMES:
            self.notes.append(f"FVD skipped: it needs clips of at least {FVD_FRAMES} frames "
                              f"(--frames {self.opt.frames})")
            return None
        try:
            return load_i3d(self.device)
        except FileNotFoundError as err:
            self.notes.append(f"FVD skipped: {err}")
            return None

    # -- per item ---------------------------------------------------------------------------------
    def item(self, path: Path, name: str) -> _Item:
        video, fps = load_input(path, self.model.config, self.opt.resolution,
                                max_frames=self.opt.frames if self.kind == "video" else None)
        size = tuple(video.shape[-2:])
        T, lo = self.model.config.tokens_per_block(size), self.model.config.min_tokens(size)
        counts = [_count_at(f, T, lo) for f in self.fractions]
        item = _Item(name, video.shape[2], size, fps, T, lo, counts, [])
        self._features("real", video[0])
        self._grid(item, video)
        for b in self.baselines:
            self._baseline(item, video, b)
        for threshold in self.opt.thresholds:
            self._adaptive(item, path, video, threshold)
        return item

    def _score(self, method: str, ref: Tensor, rec: Tensor) -> dict[str, float | None]:
        self._features(method, rec)
        return self.metrics(ref, rec)

    def _features(self, method: str, clip: Tensor) -> None:
        """I3D features of the non-overlapping 16-frame windows of a (3, T, H, W) clip."""
        if self.i3d is None:
            return
        windows = [clip[:, i : i + FVD_FRAMES] for i in range(0, clip.shape[1] - FVD_FRAMES + 1, FVD_FRAMES)]
        if windows:
            feats = self.i3d.features(_to_8bit(torch.stack(windows)) if method != "real" else torch.stack(windows))
            self.features.setdefault(method, []).append(feats.numpy())

    def _grid(self, item: _Item, video: Tensor) -> None:
        fpb = self.model.config.frames_per_block
        padded = self.model.pad_frames(video)
        unique = sorted(set(item.counts))
        mse_of: dict[int, np.ndarray] = {}
        budget_counts = {label: _count_at(item.min_tokens / item.tokens_per_block if f is None else f,
                                          item.tokens_per_block, item.min_tokens) for label, f in BUDGETS.items()}
        for i in range(0, len(unique), self.opt.batch):
            chunk = unique[i : i + self.opt.batch]
            recon = code_fixed(self.model, video, chunk)
            for n, m, rec in zip(chunk, _block_mse(recon, padded, fpb), recon):
                mse_of[n] = m
                for label, count in budget_counts.items():
                    if count == n:
                        scores = self._score(f"uniform {label}", video[0], rec[:, : item.frames].cpu())
                        item.budgets[label] = {"count": n, "token_share": n / item.tokens_per_block, **scores}
        item.mse = np.stack([mse_of[n] for n in item.counts], 1).tolist()

    def _baseline(self, item: _Item, video: Tensor, baseline: Baseline) -> None:
        if baseline.model.config.tokens_per_block(item.frame_size) != item.tokens_per_block:
            raise ValueError(f"baseline {baseline.name} has a different token grid than the evaluated model")
        n = baseline.count(item.tokens_per_block)
        recon = code_fixed(baseline.model, video, [n])
        mse = _block_mse(recon, baseline.model.pad_frames(video), baseline.model.config.frames_per_block)[0]
        scores = self._score(f"baseline {baseline.name}", video[0], recon[0, :, : item.frames].cpu())
        item.baselines[baseline.name] = {"count": n, "token_share": n / item.tokens_per_block,
                                         "mse": mse.tolist(), **scores}

    def _adaptive(self, item: _Item, path: Path, video: Tensor, threshold: float) -> None:
        source = Source.open(path, self.model, self.opt.resolution,
                             max_frames=self.opt.frames if self.kind == "video" else None)
        etok = self.out / "etok" / f"{item.name}_mse{threshold:g}.etok"
        etok.parent.mkdir(parents=True, exist_ok=True)
        stats = encode_file(self.model, source, etok,
                            CodingOptions(target=Target("mse", threshold), search=self.opt.search,
                                          cut_threshold=DEFAULT_CUT_THRESHOLD))
        with open_token_file(etok) as f:
            recon = torch.stack(list(decode_frames(self.model, f)), 1).cpu()
        size = etok.stat().st_size
        key = f"{threshold:g}"
        item.adaptive[key] = {
            "tokens": [b["tokens"] for b in stats["blocks"]],
            "token_share": stats["total_tokens"] / stats["max_total_tokens"],
            "bytes": size, "bpp": self._bpp(size, item), "seconds": stats["seconds"],
            **self._score(f"adaptive {key}", video[0], recon),
        }
        if self.opt.codecs:
            item.codecs[key] = self._codecs(video[0], item, size, key)

    def _codecs(self, ref: Tensor, item: _Item, target: int, key: str) -> dict[str, dict]:
        frames = frames_u8(ref)
        if self.kind == "image":
            results = [encode_jpeg(frames[0], target), encode_webp(frames[0], target)]
        else:
            results = [encode_h264(frames, item.fps or 25.0, target)]
        out = {}
        for r in results:
            out[r.codec] = {"target": r.target, "bytes": r.bytes, "bpp": self._bpp(r.bytes, item), "param": r.param,
                            "within_tolerance": r.within_tolerance,
                            **self._score(f"{r.codec} {key}", ref, from_frames_u8(r.decoded[: item.frames]))}
        return out

    @staticmethod
    def _bpp(size: int, item: _Item) -> float:
        return 8 * size / (item.frames * item.frame_size[0] * item.frame_size[1])

    # -- aggregation --------------------------------------------------------------------------------
    def fvd(self) -> dict[str, float | None]:
        if self.i3d is None or "real" not in self.features:
            return {}
        real = np.concatenate(self.features["real"])
        if len(real) < 2:
            self.notes.append("FVD skipped: it needs at least two 16-frame windows in all (more clips or --frames)")
            return {}
        if len(real) < 64:
            self.notes.append(f"FVD is over only {len(real)} 16-frame windows: a noisy estimate, "
                              "comparable only within this run")
        return {m: fvd(real, np.concatenate(f)) for m, f in self.features.items() if m != "real"}


def evaluate(
    model: ElasticTok,
    inputs: Sequence[str | Path],
    kind: str,
    out_dir: str | Path,
    options: EvalOptions | None = None,
    baselines: Sequence[Baseline] = (),
    model_name: str = "",
) -> dict:
    """Run the whole evaluation over image or video files and write results.json, summary.md and plots.

    ``kind`` is "image" or "video"; see the module docstrings (here and in the modules it names) for
    every definition. Returns the results.
    """

    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    options = options or EvalOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ev = _Evaluator(model.eval(), kind, out, options, baselines)
    items: list[_Item] = []
    seen: dict[str, int] = {}
    for path in tqdm(list(inputs)[: options.max_items], desc=f"eval {kind}s", unit=kind):
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1  # same-named files in different folders keep apart
        items.append(ev.item(Path(path), stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    fvd = ev.fvd()
    results = {
        "settings": {
            "model": model_name, "config": model.config.to_dict(), "kind": kind, "items": len(items),
            "options": asdict(options), "grid_fractions": ev.fractions,
            "baselines": {b.name: {"fraction": b.fraction, "source": b.fraction_source} for b in baselines},
            "seconds": None,
        },
        "token_share": _token_share_results(items, options.thresholds, baselines),
        "quality": _quality_results(items, options.thresholds, ev.baselines, fvd),
        "codecs": _codec_results(items, options.thresholds, fvd) if options.codecs else {},
        "items": [asdict(it) for it in items],
        "notes": ev.notes + [
            "Token-share curves come from fixed-count passes: each video block is conditioned on earlier blocks "
            "coded at the same count, not at their adaptive counts.",
        ],
    }
    results["settings"]["seconds"] = time.perf_counter() - start
    write_plots(results, out)  # may add a note, so before the JSON
    write_results(results, out / "results.json")
    write_summary(results, out / "summary.md")
    return results
