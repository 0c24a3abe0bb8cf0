"""Training ElasticTok: configure a run with :class:`TrainConfig`, run or resume it with :func:`train`,
turn its checkpoints into pretrained directories with :func:`export_pretrained`."""

from elastictok.train.checkpoint import (
    checksum_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from elastictok.train.config import TrainConfig
from elastictok.train.data import Pack, PackedDataset, PackStats, load_pack, pack_dataset, sample_counts, write_pack
from elastictok.train.export import export_pretrained, init_weights
from elastictok.train.loop import TrainingDiverged, train
from elastictok.train.loss import compute_loss, lr_factor
from elastictok.train.validation import validate

__all__ = [
    "Pack",
    "PackStats",
    "PackedDataset",
    "TrainConfig",
    "TrainingDiverged",
    "checksum_path",
    "compute_loss",
    "export_pretrained",
    "init_weights",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_pack",
    "lr_factor",
    "pack_dataset",
    "resolve_checkpoint",
    "sample_counts",
    "save_checkpoint",
    "train",
    "validate",
    "write_pack",
]
