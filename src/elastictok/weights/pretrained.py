"""The embedded default model and pretrained directories of ElasticTok models."""

from __future__ import annotations

from pathlib import Path

import torch

from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig
from elastictok.utils.pretrained import WEIGHTS_NAME


def load_pretrained(path: str | Path, device: str | torch.device = "cpu", companions: bool = True) -> ElasticTok:
    """A pretrained directory (``config.json`` + ``model.safetensors``) as an ElasticTok in eval mode;
    its predictor too, where there is one, unless ``companions`` is False."""
    return ElasticTok.from_pretrained(path, device=device, companions=companions)


def default_model_dir() -> Path:
    """Where the embedded default model lives inside the package."""
    return Path(__file__).parent / "default_model"


def load_default_model(device: str | torch.device = "cpu", companions: bool = True) -> tuple[ElasticTok, bool]:
    """The embedded default model and whether it is trained.

    If its weights are missing (a trimmed installation), this is a randomly initialised ``small`` model
    (seeded, so runs repeat) and ``trained`` is False.
    """
    directory = default_model_dir()
    if (directory / WEIGHTS_NAME).is_file():
        return load_pretrained(directory, device=device, companions=companions), True
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = ElasticTok(ElasticTokConfig.from_preset("small"))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(device).eval(), False
