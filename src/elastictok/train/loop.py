"""The training loop: :func:`train` runs (or resumes) one :class:`~elastictok.train.config.TrainConfig`.

On one process it just works; under torchrun it joins the process group and trains with DDP or
FSDP2 (see :mod:`elastictok.train.distributed`). A run directory holds::

    train_config.json    the configuration
    metrics.jsonl        one JSON line per log step (split "train") and per validation (split "val")
    checkpoints/         step_XXXXXXXX.pt, the last ``keep_last`` of them
    samples/             step_XXXXXXXX.png reconstruction grids from validation

Token counts are drawn from U{min..max} per block, without the official +1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import elastictok.train.distributed as D
from elastictok.metrics.lpips import LPIPS
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.checks import check_frame_size
from elastictok.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    check_compatible,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from elastictok.train.config import TrainConfig
from elastictok.train.data import PackedDataset, derive_seed, load_pack, sample_counts
from elastictok.train.export import init_weights, new_model
from elastictok.train.loss import clip_grad_norm, compute_loss, lr_factor
from elastictok.train.validation import validate
from elastictok.utils.files import write_text

__all__ = ["TrainingDiverged", "train"]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing of that step was applied or saved."""


class _Run:
    """The state of one training invocation; :meth:`fit` runs it."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        self.cfg, self.info = cfg, info  # the caller's config: read, never written
        self.steps = cfg.steps  # the schedule's length, which fit_steps_to_time may shorten
        self.device = D.resolve_device(cfg.device, info)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.out = Path(cfg.out_dir)
        self.mcfg = cfg.model_config()
        self.lpips = self._build_lpips()  # first: missing weights fail before any heavy work
        self._build_data()  # before the resume check: it sets an any-size model's frame size
        resume = resolve_checkpoint(cfg.resume, self.out) if cfg.resume else None
        self.ckpt = load_checkpoint(resume) if resume else None
        if self.ckpt is not None:
            check_compatible(self.ckpt, self.mcfg)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = ElasticTok(self.mcfg)
        if cfg.init_from and self.ckpt is None:
            self._log("initialised from %s: %s", cfg.init_from, init_weights(self.model, cfg.init_from))
        self.wrapped = D.parallelize(self.model, cfg.parallel, self.device, cfg.compile, cfg.activation_checkpointing)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, self.steps, cfg.min_lr_ratio))
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
        set_rng_state(ckpt["rng"])
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
        norm = clip_grad_norm(self.params, cfg.grad_clip)
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
                "data": self.data.state_dict(), "rng": rng_state(), "elapsed_s": self._elapsed(),
                "model_config": self.mcfg.to_json(), "train_config": self._effective_config().to_json(),
                "world_size": self.info.world_size, "torch_version": str(torch.__version__),
            }
            path = save_checkpoint(state, self.out / "checkpoints" / f"step_{step:08d}.pt")
            prune_checkpoints(self.out / "checkpoints", self.cfg.keep_last)
        D.barrier()
        return path

    def _validate(self, step: int) -> dict[str, float] | None:
        state = D.full_model_state(self.wrapped)
        metrics = None
        if self.info.is_main and self.val_video is not None:
            # A plain fp32 copy: the training module may be compiled, wrapped or sharded.
            model = new_model(self.mcfg)
            model.load_state_dict(state)
            model.to(self.device)
            grid = self.out / "samples" / f"step_{step:08d}.png"
            metrics = validate(model, self.val_video.to(self.device), self.cfg.val_threshold, self.cfg.val_adaptive,
                               grid)
            self._write_metrics({"split": "val", "step": step, **metrics, "grid": str(grid)})
            del model
        D.barrier()
        return metrics

    def _effective_config(self) -> TrainConfig:
        """The config as run: ``steps`` is the schedule's length after any fitting to the time budget."""
        return dataclasses.replace(self.cfg, steps=self.steps)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t0

    # The loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        self.t0 = time.monotonic()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "train_config.json", cfg.to_json() + "\n")
        summary: dict[str, Any] = {"out_dir": str(self.out), "world_size": info.world_size, "val": None,
                                   "checkpoint": self.ckpt["path"] if self.ckpt else None}
        if self.step >= self.steps:
            self._log("already at step %d of %d; nothing to do", self.step, self.steps)
            return {**summary, "step": self.step, "steps": self.steps, "stopped": "completed"}
        self.model.train()
        self._log("training %s (%.2fM parameters) on %s x%d, step %d -> %d", cfg.preset,
                  sum(p.numel() for p in self.model.parameters()) / 1e6, self.device, info.world_size,
                  self.step, self.steps)
        stopped, window, last = "completed", [], {}
        t_window, start_step = time.monotonic(), self.step
        bar = tqdm(total=self.steps, initial=self.step, disable=not (info.is_main and cfg.progress), dynamic_ncols=True)
        batches = self._batches()
        try:
            while self.step < self.steps:
                self.step += 1
                window.append(self._train_step(self.step, next(batches)))
                bar.update(1)
                if cfg.fit_steps_to_time:
                    self._fit_steps(start_step, bar)
                if self.step % cfg.log_every == 0 or self.step == self.steps:
                    last = self._log_window(window, time.monotonic() - t_window, bar)
                    window, t_window = [], time.monotonic()
                if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == self.steps):
                    summary["val"] = self._validate(self.step)
                stop = self._should_stop()
                if stop or self.step % cfg.ckpt_every == 0 or self.step == self.steps:
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
        return {**summary, **last, "step": self.step, "steps": self.steps, "stopped": stopped, "elapsed_s": elapsed,
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
            if fitted < self.steps:
                self.steps = fitted  # the scheduler's lambda reads it
                bar.total = fitted
            self._log("%.3f s per step: the schedule ends at step %d", per_step, self.steps)

    def _should_stop(self) -> str | None:
        cfg = self.cfg
        if cfg.stop_after is not None and self.step >= cfg.stop_after and self.step < self.steps:
            return "stop_after"
        over = cfg.max_minutes is not None and time.monotonic() - self.t0 > cfg.max_minutes * 60
        if cfg.max_minutes is not None and D.any_rank(over, self.device) and self.step < self.steps:
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
    """Run (or resume) a training run; returns a summary (final step, the schedule's length ``steps``,
    why it stopped, last metrics). ``cfg`` itself is left as given.

    Raises :class:`TrainingDiverged` on a non-finite loss or gradient, before the step is applied.
    """
    joined = not D.initialized()  # a caller's own process group is left running
    info = D.init_distributed()
    try:
        return _Run(cfg, info).fit()
    finally:
        if joined:
            D.cleanup()
