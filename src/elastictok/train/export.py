"""Weights in and out of training: fine-tuning from a pretrained directory, exporting a checkpoint to one."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig
from elastictok.train.checkpoint import load_checkpoint
from elastictok.utils.pretrained import WEIGHTS_NAME

__all__ = ["export_pretrained", "init_weights", "new_model"]


def new_model(config: ElasticTokConfig) -> ElasticTok:
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
    model = new_model(ElasticTokConfig.from_json(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return model.save_pretrained(out_dir)
