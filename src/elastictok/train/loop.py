"""Training ElasticTok: the loss, the loop, atomic resumable checkpoints and export.

One :class:`TrainConfig` holds everything about a run; :func:`train` runs it and returns a summary.
On one process it just works; under torchrun it joins the process group and trains with DDP or
FSDP2 (see :mod:`elastictok.distributed`). A run directory holds::

    train_config.json    the configuration
    metrics.jsonl        one JSON line per log step (split "train") and per validation (split "val")
    checkpoints/         step_XXXXXXXX.pt, the last ``keep_last`` of them
    samples/             step_XXXXXXXX.png reconstruction grids from validation

The loss is the official one (spec section 2.1): pixel MSE over every token, dropped ones included,
plus ``lpips_weight`` x LPIPS on one random frame per sample, plus ``kl_weight`` x KL for the VAE.
Unlike the official code, LPIPS sees frames at their native size (no 224 resize; frames under
32 px are upsampled to 32 so the backbones keep a spatial extent), and counts are drawn from
U{min..max} per block without the official +1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from elastictok.coding.adaptive import encode_adaptive
from elastictok.coding.options import CodingOptions
from elastictok.coding.target import Target
from elastictok.metrics.lpips import LPIPS
from elastictok.metrics.pixel import psnr
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.checks import check_frame_size
from elastictok.model.config import ElasticTokConfig
from elastictok.train import distributed as D
from elastictok.train.data import PackedDataset, derive_seed, load_pack, sample_counts
from elastictok.utils.pretrained import WEIGHTS_NAME

__all__ = [
    "TrainConfig",
    "TrainingDiverged",
    "compute_loss",
    "export_pretrained",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "save_checkpoint",
    "train",
    "validate",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "elastictok-train"
CHECKPOINT_VERSION = 1
LPIPS_NETS = ("vgg", "alex", "none")
PRECISIONS = ("auto", "fp32", "bf16")
MASK_MODES = ("elastic", "fixed")
LPIPS_MIN_SIDE = 32


@dataclass
class TrainConfig:
    """Everything about a training run. Defaults suit the ``small`` preset on 64x64 clips."""

    # Model: a preset plus field overrides (e.g. {"bottleneck": "vae"}).
    preset: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # Data: a pack from `elastictok pack-data`.
    pack: str | None = None
    frame_size: int | None = None  # training frame side; default: the pack's
    image_ratio: float | None = 0.5  # share of samples that are images; None: the pack's proportion
    crop_scale: float = 0.8  # smallest random square crop, as a fraction of the frame side (1: no crop)
    flip: bool = True
    val_per_kind: int = 8  # images and clips held out of training for validation
    # Optimisation (official: AdamW (0.9, 0.95), wd 1e-4 on everything, clip 1.0, lr 1e-4 with 2k warm-up).
    batch_size: int = 32  # per rank
    steps: int = 20_000
    lr: float = 3e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the last step
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    grad_clip: float = 1.0  # 0: no clipping (the norm is still logged)
    # Loss.
    lpips_weight: float = 0.1
    lpips_net: str = "vgg"  # "vgg" as the official, "alex" is cheaper, "none" disables
    kl_weight: float = 1e-8  # VAE only
    mask_mode: str = "elastic"  # "fixed": the fixed-token baseline
    fixed_fraction: float = 0.5
    # Systems.
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "none"  # "ddp" or "fsdp" under torchrun
    # Bookkeeping.
    out_dir: str = "runs/elastictok"
    resume: str | None = None  # "latest" (in out_dir), a checkpoint file, or a run directory
    init_from: str | None = None  # a pretrained directory to fine-tune from (tensors matched by name and shape)
    ckpt_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    val_every: int = 500  # 0: never
    val_batch: int = 8
    val_adaptive: int = 4  # samples coded adaptively to measure tokens needed for val_threshold
    val_threshold: float = 0.003
    seed: int = 0
    max_minutes: float | None = None  # stop cleanly (with a checkpoint) after this much wall-clock time
    # With max_minutes: time the first steps, then shorten `steps` (the cosine schedule's length) to
    # what fits, so a time-boxed run still decays its learning rate to the end.
    fit_steps_to_time: bool = False
    data_on_device: bool = True  # hold the pack on the training device (CUDA) and augment there
    stop_after: int | None = None  # end this invocation after this step (with a checkpoint); the schedule keeps `steps`
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives a list
        self.model_overrides = dict(self.model_overrides)
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid TrainConfig: {msg}")

        need(self.lpips_net in LPIPS_NETS, f"lpips_net must be one of {LPIPS_NETS}, got {self.lpips_net!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.mask_mode in MASK_MODES, f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        need(self.parallel in D.PARALLEL_MODES, f"parallel must be one of {D.PARALLEL_MODES}, got {self.parallel!r}")
        need(self.batch_size >= 1 and self.steps >= 1, "batch_size and steps must be >= 1")
        need(self.lr > 0 and self.warmup_steps >= 0 and 0 <= self.min_lr_ratio <= 1, "bad learning-rate schedule")
        need(len(self.betas) == 2, f"betas must be a pair, got {self.betas}")
        need(min(self.ckpt_every, self.keep_last, self.log_every) >= 1, "ckpt_every, keep_last, log_every must be >= 1")
        need(min(self.lpips_weight, self.kl_weight, self.grad_clip) >= 0, "loss weights and grad_clip must be >= 0")
        need(not self.fit_steps_to_time or self.max_minutes, "fit_steps_to_time needs max_minutes")

    def model_config(self) -> ElasticTokConfig:
        return ElasticTokConfig.from_preset(self.preset, **self.model_overrides)

    @property
    def uses_lpips(self) -> bool:
        return self.lpips_weight > 0 and self.lpips_net != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing of that step was applied or saved."""


# ---------------------------------------------------------------------------------------------
# Loss and schedule


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr for the optimizer step after ``step`` completed ones: linear warm-up, cosine down."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _lpips_pair(recon: torch.Tensor, video: torch.Tensor, frame_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame per sample from (B, 3, T, H, W) -> two (B, 3, H', W') batches, at least 32 px a side."""
    b = torch.arange(video.shape[0], device=video.device)
    a, t = recon[b, :, frame_idx], video[b, :, frame_idx]  # (B, 3, H, W): the index dims come first
    side = min(a.shape[-2:])
    if side < LPIPS_MIN_SIDE:
        size = tuple(math.ceil(s * LPIPS_MIN_SIDE / side) for s in a.shape[-2:])
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return a, t


def compute_loss(
    model: nn.Module,
    video: torch.Tensor,
    counts: torch.Tensor,
    frame_idx: torch.Tensor | None = None,
    lpips: nn.Module | None = None,
    lpips_weight: float = 0.0,
    kl_weight: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training loss of ``model`` (plain or wrapped) on video (B, 3, T, H, W) with counts (B, n_blocks).

    Returns the total and its parts (detached): mse, and lpips / kl when they apply.
    ``frame_idx`` (B,) picks the frame LPIPS scores in each sample; ``generator`` drives VAE sampling.
    """
    out = model(video, counts, generator=generator)
    recon = out.recon.float()
    mse = (recon - video.float()).square().mean()
    loss, parts = mse, {"mse": mse.detach()}
    if lpips is not None and lpips_weight > 0:
        idx = frame_idx if frame_idx is not None else torch.zeros(video.shape[0], dtype=torch.long, device=video.device)
        perceptual = lpips(*_lpips_pair(recon, video.float(), idx)).mean()
        loss = loss + lpips_weight * perceptual
        parts["lpips"] = perceptual.detach()
    if out.kl is not None:
        kl = out.kl.float()
        loss = loss + kl_weight * kl
        parts["kl"] = kl.detach()
    return loss, parts


def _clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global gradient norm (full, also under FSDP), clipping to ``max_norm`` when it is > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if hasattr(total, "full_tensor"):  # a DTensor under FSDP2: reduce the shards' partial norms
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename: never a partial checkpoint.

    A ``.sha256`` file beside it lets :func:`load_checkpoint` detect later damage (torch's zip reader
    does not check its CRCs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_sum = tmp.with_name(tmp.name + ".sha256")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        tmp_sum.write_text(_sha256(tmp) + "\n")
        os.replace(tmp_sum, checksum_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)
        raise
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``directory`` (a run dir or its checkpoints/), oldest step first."""
    directory = Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    found = []
    for p in directory.glob("step_*.pt"):
        with contextlib.suppress(ValueError):
            found.append((int(p.stem.split("_", 1)[1]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _prune(directory: Path, keep: int) -> None:
    for p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
        checksum_path(p).unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True`` (plain tensors and containers only)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoints (step_*.pt) in {path}")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sums = checksum_path(path)
    if sums.is_file() and sums.read_text().strip() != _sha256(path):
        raise ValueError(f"{path}: checkpoint is corrupt (its SHA-256 does not match {sums.name}); resume from an older one")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling raises many types on foreign or damaged files
        raise ValueError(f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an elastictok training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    ckpt["path"] = str(path)
    return ckpt


def _check_compatible(ckpt: dict[str, Any], config: ElasticTokConfig) -> None:
    saved = json.loads(ckpt["model_config"])
    now = config.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
             for k in sorted(set(saved) | set(now)) if json.dumps(saved.get(k)) != json.dumps(now.get(k))]
    if diffs:
        raise ValueError(f"cannot resume from {ckpt['path']}: its model differs ({'; '.join(diffs)})")


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Stored as tensors and scalars: weights_only loading refuses numpy arrays.
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _new_model(config: ElasticTokConfig) -> ElasticTok:
    """Build a model without touching the global RNG (so building one mid-run changes nothing)."""
    with torch.random.fork_rng(devices=[]):
        return ElasticTok(config)


def init_weights(model: ElasticTok, directory: str | Path) -> str:
    """Copy the tensors of a pretrained directory whose names and shapes match ``model``'s.

    For fine-tuning, including into a variant (e.g. an unconditioned encoder, which has no kept/masked
    embeddings): tensors only one side has are reported, not fatal; nothing matching is an error.
    """
    source = load_file(str(Path(directory) / WEIGHTS_NAME))
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"{directory}: no tensor matches this model by name and shape; expected an elastictok model")
    model.load_state_dict(matched, strict=False)
    fresh = sorted(set(own) - set(matched))
    dropped = sorted(set(source) - set(matched))
    return f"{len(matched)} tensors loaded, new {fresh or 'none'}, unused {dropped or 'none'}"


def export_pretrained(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Training checkpoint (or run directory: its latest) -> a ``from_pretrained`` directory."""
    ckpt = load_checkpoint(checkpoint)
    model = _new_model(ElasticTokConfig.from_json(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return model.save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# Validation


def _frame_u8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def save_grid(rows: list[list[torch.Tensor]], path: str | Path, gap: int = 2) -> Path:
    """Write frames (3, H, W) laid out as ``rows`` of equal length to a PNG, atomically."""
    h, w = rows[0][0].shape[-2:]
    ncol = len(rows[0])
    canvas = Image.new("RGB", (ncol * (w + gap) + gap, len(rows) * (h + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            canvas.paste(Image.fromarray(_frame_u8(frame)), (gap + c * (w + gap), gap + r * (h + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def validate(
    model: ElasticTok,
    video: torch.Tensor,
    threshold: float = 0.003,
    adaptive_samples: int = 4,
    grid_path: str | Path | None = None,
    grid_rows: int = 4,
) -> dict[str, float]:
    """PSNR at the minimum, half and full token counts, and the mean tokens per block that adaptive
    coding ("fast" search) needs to reach block MSE ``threshold`` on the first ``adaptive_samples``.

    ``video`` (B, 3, T, H, W) in [-1, 1]. With ``grid_path``, writes a PNG: per row one sample's first
    frame of its last block, then its reconstructions at min, 1/4, 1/2 and all tokens.
    """
    model.eval()
    frame_size = tuple(video.shape[-2:])
    T = model.config.tokens_per_block(frame_size)
    n_blocks = video.shape[2] // model.config.frames_per_block
    levels = {"min": model.config.min_tokens(frame_size), "quarter": max(1, T // 4), "half": max(1, T // 2), "full": T}
    out: dict[str, float] = {}
    recons = {}
    for name, n in levels.items():
        counts = torch.full((video.shape[0], n_blocks), n, dtype=torch.long, device=video.device)
        recons[name] = model(video, counts, sample=False).recon.float().clamp(-1, 1)
        out[f"psnr_{name}"] = float(psnr(recons[name], video).mean())
        out[f"tokens_{name}"] = n
    if adaptive_samples > 0:
        result = encode_adaptive(model, video[:adaptive_samples], CodingOptions(target=Target("mse", threshold)))
        mean = float(result.tokens.counts.float().mean())
        out.update(adaptive_tokens=mean, adaptive_fraction=mean / T, adaptive_threshold=threshold)
    if grid_path is not None:
        t = (n_blocks - 1) * model.config.frames_per_block
        rows = [[video[i, :, t]] + [recons[k][i, :, t] for k in levels] for i in range(min(grid_rows, len(video)))]
        save_grid(rows, grid_path)
    return out


# ---------------------------------------------------------------------------------------------
# The loop


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = latest_checkpoint(Path(cfg.out_dir))
        if found is None:
            log.info("no checkpoint in %s to resume; starting from scratch", cfg.out_dir)
        return found
    path = Path(cfg.resume)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoints (step_*.pt) in {path}")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume not found: {path}")
    return path


class _Run:
    """The state of one training invocation; :meth:`fit` runs it."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.device = D.resolve_device(cfg.device, info)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.out = Path(cfg.out_dir)
        self.mcfg = cfg.model_config()
        self.lpips = self._build_lpips()  # first: missing weights fail before any heavy work
        self._build_data()  # before the resume check: it sets an any-size model's frame size
        resume = _resolve_resume(cfg)
        self.ckpt = load_checkpoint(resume) if resume else None
        if self.ckpt is not None:
            _check_compatible(self.ckpt, self.mcfg)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = ElasticTok(self.mcfg)
        if cfg.init_from and self.ckpt is None:
            self._log("initialised from %s: %s", cfg.init_from, init_weights(self.model, cfg.init_from))
        self.wrapped = D.parallelize(self.model, cfg.parallel, self.device, cfg.compile, cfg.activation_checkpointing)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
        self.step, self.elapsed_before = 0, 0.0
        if self.ckpt is not None:
            self._restore(self.ckpt)

    # Setup ----------------------------------------------------------------------------------
    def _build_lpips(self) -> nn.Module | None:
        if not self.cfg.uses_lpips:
            return None
        return LPIPS(self.cfg.lpips_net).to(self.device)

    def _build_data(self) -> None:
        cfg = self.cfg
        if not cfg.pack:
            raise ValueError("no data: set TrainConfig.pack (make one with `elastictok pack-data`)")
        pack = load_pack(cfg.pack)
        fpb = int(pack.meta["frames_per_block"])
        if fpb != self.mcfg.frames_per_block:
            raise ValueError(f"the pack has {fpb} frames per block but the model expects {self.mcfg.frames_per_block}")
        kw = dict(frame_size=cfg.frame_size, image_ratio=cfg.image_ratio, crop_scale=cfg.crop_scale, flip=cfg.flip,
                  val_per_kind=cfg.val_per_kind, seed=cfg.seed,
                  device=self.device if cfg.data_on_device and self.device.type == "cuda" else None)
        self.data = PackedDataset(pack, "train", rank=self.info.rank, world_size=self.info.world_size, **kw)
        size = self.data.frame_size
        # Record the sequence length trained on: inference attends to no more earlier blocks.
        self.mcfg = dataclasses.replace(self.mcfg, max_context_blocks=int(pack.meta["blocks_per_clip"]))
        if self.mcfg.rope == "axial":
            # Any size runs; the config records the training size, which inference uses by default.
            self.mcfg = dataclasses.replace(self.mcfg, frame_size=(size, size))
        check_frame_size((size, size), self.mcfg)
        self.frame_size = (size, size)
        self.val_video = PackedDataset(pack, "val", **kw).val_batch(cfg.val_batch) if self.info.is_main else None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        D.load_full_state(self.wrapped, self.optimizer, ckpt["model"], ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.data.load_state_dict(ckpt["data"])
        _set_rng_state(ckpt["rng"])
        self.step, self.elapsed_before = int(ckpt["step"]), float(ckpt["elapsed_s"])
        self._log(f"resumed from {ckpt['path']} at step {self.step}")

    # Helpers --------------------------------------------------------------------------------
    def _log(self, msg: str, *args: Any) -> None:
        if self.info.is_main:
            log.info(msg, *args)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # One step -------------------------------------------------------------------------------
    def _load_batch(self, position: int) -> torch.Tensor:
        batch = self.data.batch_at(position, self.cfg.batch_size)  # (B, 3, T, H, W)
        return batch.pin_memory() if self.device.type == "cuda" and batch.device.type == "cpu" else batch

    def _batches(self) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Training batches, each prepared in a thread while the previous step runs.

        Batches are pure functions of the data position, so reading ahead leaves the resumable state
        (``self.data.position``: samples consumed) exact.
        """
        B, world, rank = self.cfg.batch_size, self.info.world_size, self.info.rank
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._load_batch, self.data.position)
            while True:
                batch = ahead.result()
                # Global sample indices, as the data sharding assigns them to this rank.
                ids = [p * world + rank for p in range(self.data.position, self.data.position + B)]
                self.data.position += B
                ahead = pool.submit(self._load_batch, self.data.position)
                yield batch, ids

    def _train_step(self, step: int, batch: tuple[torch.Tensor, list[int]]) -> dict[str, float]:
        cfg = self.cfg
        video, ids = batch
        video = video.to(self.device, non_blocking=True)
        # Masks and LPIPS frames are drawn per sample from (seed, global sample index): nothing to save,
        # exact on resume, and the same samples get the same draws whatever the number of processes.
        T = self.mcfg.tokens_per_block(self.frame_size)
        n_blocks = video.shape[2] // self.mcfg.frames_per_block
        counts, frame_idx = [], []
        for i in ids:
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, i, 2))
            counts.append(sample_counts(1, n_blocks, self.mcfg.min_tokens(self.frame_size), T, gen, cfg.mask_mode,
                                        cfg.fixed_fraction))
            frame_idx.append(torch.randint(video.shape[2], (1,), generator=gen))
        counts, frame_idx = torch.cat(counts), torch.cat(frame_idx)
        noise = None
        if self.mcfg.bottleneck == "vae":
            noise = torch.Generator(self.device).manual_seed(derive_seed(cfg.seed, step, self.info.rank, 3))
        with self._autocast():
            loss, parts = compute_loss(self.wrapped, video, counts.to(self.device), frame_idx.to(self.device),
                                       self.lpips, cfg.lpips_weight, cfg.kl_weight, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = _clip_grad_norm(self.params, cfg.grad_clip)
        values = torch.stack([loss.detach().float(), norm.float(), *(v.float() for v in parts.values())]).tolist()
        record = dict(zip(["loss", "grad_norm", *parts], values), lr=self.optimizer.param_groups[0]["lr"])
        if D.any_rank(not all(math.isfinite(v) for v in values[:2]), self.device):
            raise TrainingDiverged(self._diverged_message(step, record))
        self.optimizer.step()
        self.scheduler.step()
        return record

    def _diverged_message(self, step: int, record: dict[str, float]) -> str:
        last = latest_checkpoint(self.out)
        parts = ", ".join(f"{k}={v:.4g}" for k, v in record.items())
        return (f"training diverged at step {step}: non-finite loss or gradient ({parts}); the step was not applied "
                f"and nothing was saved. Last good checkpoint: {last or 'none'}. Try a lower lr, more warm-up or "
                "--precision fp32, and resume from it.")

    # Checkpoint and validation (collective under FSDP: every rank calls them) ---------------
    def _save(self, step: int) -> Path | None:
        model_state = D.full_model_state(self.wrapped)
        optim_state = D.full_optimizer_state(self.wrapped, self.optimizer)
        path = None
        if self.info.is_main:
            state = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
                "model": model_state, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                "data": self.data.state_dict(), "rng": _rng_state(), "elapsed_s": self._elapsed(),
                "model_config": self.mcfg.to_json(), "train_config": self.cfg.to_json(),
                "world_size": self.info.world_size, "torch_version": str(torch.__version__),
            }
            path = save_checkpoint(state, self.out / "checkpoints" / f"step_{step:08d}.pt")
            _prune(self.out / "checkpoints", self.cfg.keep_last)
        D.barrier()
        return path

    def _validate(self, step: int) -> dict[str, float] | None:
        state = D.full_model_state(self.wrapped)
        metrics = None
        if self.info.is_main and self.val_video is not None:
            # A plain fp32 copy: the training module may be compiled, wrapped or sharded.
            model = _new_model(self.mcfg)
            model.load_state_dict(state)
            model.to(self.device)
            grid = self.out / "samples" / f"step_{step:08d}.png"
            metrics = validate(model, self.val_video.to(self.device), self.cfg.val_threshold, self.cfg.val_adaptive,
                               grid)
            self._write_metrics({"split": "val", "step": step, **metrics, "grid": str(grid)})
            del model
        D.barrier()
        return metrics

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    # The loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        self.t0 = time.monotonic()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(cfg.to_json() + "\n")
        summary: dict[str, Any] = {"out_dir": str(self.out), "world_size": info.world_size, "val": None,
                                   "checkpoint": self.ckpt["path"] if self.ckpt else None}
        if self.step >= cfg.steps:
            self._log("already at step %d of %d; nothing to do", self.step, cfg.steps)
            return {**summary, "step": self.step, "stopped": "completed"}
        self.model.train()
        self._log("training %s (%.2fM parameters) on %s x%d, step %d -> %d", cfg.preset,
                  sum(p.numel() for p in self.model.parameters()) / 1e6, self.device, info.world_size,
                  self.step, cfg.steps)
        stopped, window, last = "completed", [], {}
        t_window, start_step = time.monotonic(), self.step
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True)
        batches = self._batches()
        try:
            while self.step < cfg.steps:
                self.step += 1
                window.append(self._train_step(self.step, next(batches)))
                bar.update(1)
                if cfg.fit_steps_to_time:
                    self._fit_steps(start_step, bar)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    last = self._log_window(window, time.monotonic() - t_window, bar)
                    window, t_window = [], time.monotonic()
                if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    summary["val"] = self._validate(self.step)
                stop = self._should_stop()
                if stop or self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    path = self._save(self.step)  # every rank: the state gathering is collective
                    summary["checkpoint"] = str(path) if path else None
                if stop:
                    stopped = stop
                    break
        finally:
            batches.close()
            bar.close()
        done = self.step - start_step
        elapsed = time.monotonic() - self.t0
        self._log("stopped at step %d (%s) after %.1f s", self.step, stopped, elapsed)
        return {**summary, **last, "step": self.step, "stopped": stopped, "elapsed_s": elapsed,
                "samples_per_s": done * cfg.batch_size * info.world_size / max(elapsed, 1e-9)}

    # Steps timed to fit the schedule to max_minutes: after the first ones (compilation, warm-up).
    _FIT_SKIP, _FIT_TIMED = 10, 30

    def _fit_steps(self, start_step: int, bar: Any) -> None:
        done = self.step - start_step
        # Each step ends in a host sync (the logged loss), so host clocks time whole steps.
        if done == self._FIT_SKIP:
            self._fit_t0 = time.monotonic()
        elif done == self._FIT_SKIP + self._FIT_TIMED:
            per_step = (time.monotonic() - self._fit_t0) / self._FIT_TIMED
            # 3% of the budget is left for the final validation and checkpoint.
            left = self.cfg.max_minutes * 60 * 0.97 - (time.monotonic() - self.t0)
            per_step, left = D.all_mean([per_step, left], self.device)  # every rank must agree on the length
            fitted = self.step + max(0, int(left / per_step))
            if fitted < self.cfg.steps:
                self.cfg.steps = fitted  # the scheduler's lambda reads it
                bar.total = fitted
            self._log("%.3f s per step: the schedule ends at step %d", per_step, self.cfg.steps)

    def _should_stop(self) -> str | None:
        cfg = self.cfg
        if cfg.stop_after is not None and self.step >= cfg.stop_after and self.step < cfg.steps:
            return "stop_after"
        over = cfg.max_minutes is not None and time.monotonic() - self.t0 > cfg.max_minutes * 60
        if cfg.max_minutes is not None and D.any_rank(over, self.device) and self.step < cfg.steps:
            return "time_limit"
        return None

    def _log_window(self, window: list[dict[str, float]], seconds: float, bar: Any) -> dict[str, float]:
        keys = list(window[0])
        means = D.all_mean([sum(r[k] for r in window) / len(window) for k in keys], self.device)
        record = dict(zip(keys, means))
        sps = len(window) * self.cfg.batch_size * self.info.world_size / max(seconds, 1e-9)
        record["samples_per_s"] = sps
        self._write_metrics({"split": "train", "step": self.step, **record, "elapsed_s": self._elapsed()})
        bar.set_postfix(loss=f"{record['loss']:.4f}", mse=f"{record['mse']:.4f}", sps=f"{sps:.1f}")
        return record


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (final step, why it stopped, last metrics).

    Raises :class:`TrainingDiverged` on a non-finite loss or gradient, before the step is applied.
    """
    joined = not D.initialized()  # a caller's own process group is left running
    info = D.init_distributed()
    try:
        return _Run(cfg, info).fit()
    finally:
        if joined:
            D.cleanup()
