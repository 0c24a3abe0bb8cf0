"""The configuration of a training run: :class:`TrainConfig` and the values its fields may take."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from elastictok.model.config import ElasticTokConfig
from elastictok.train.distributed import PARALLEL_MODES

__all__ = ["LPIPS_NETS", "MASK_MODES", "PRECISIONS", "TrainConfig"]

LPIPS_NETS = ("vgg", "alex", "none")
PRECISIONS = ("auto", "fp32", "bf16")
MASK_MODES = ("elastic", "fixed")


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
    # With max_minutes: time the first steps, then end the cosine schedule at the step that fits, so a
    # time-boxed run still decays its learning rate to the end. The run keeps the fitted length; this
    # config is left as given (the summary's "steps" and the checkpoint's train_config record it).
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
        need(self.parallel in PARALLEL_MODES, f"parallel must be one of {PARALLEL_MODES}, got {self.parallel!r}")
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
