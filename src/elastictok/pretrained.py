"""Pretrained directories: ``config.json`` + ``model.safetensors``. Loading is strict and never unpickles."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ElasticTokConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(model, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(model.config.to_json() + "\n"))
    return path


def load_config(path: str | Path) -> ElasticTokConfig:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: expected a pretrained directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return ElasticTokConfig.from_json(file.read_text())
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{file}: not a valid elastictok config ({err})") from None


def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    from .model import ElasticTok

    config = load_config(path)
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights}: not a readable safetensors file ({err})") from None
    with torch.device("meta"):
        model = ElasticTok(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{k} {got[k]} (expected {expected[k]})" for k in expected if got[k] != expected[k]]
    if wrong:
        raise ValueError(f"{weights} does not match its config: {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (FSQ constants) were created on meta; rebuild them for real.
    model.quantizer = type(model.quantizer)(*_quantizer_args(config)).to(device)
    return model.eval()


def _quantizer_args(config: ElasticTokConfig) -> tuple:
    return (config.fsq_levels,) if config.bottleneck == "fsq" else (config.vae_latent_dim,)


def default_model_dir() -> Path:
    """Where the embedded default model lives inside the package."""
    return Path(__file__).parent / "default_model"


def load_default_model(device: str | torch.device = "cpu"):
    """The embedded default model and whether it is trained.

    If its weights are missing (a trimmed installation), this is a randomly initialised ``small`` model
    (seeded, so runs repeat) and ``trained`` is False.
    """
    from .model import ElasticTok

    directory = default_model_dir()
    if (directory / WEIGHTS_NAME).is_file():
        return load_pretrained(directory, device=device), True
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = ElasticTok(ElasticTokConfig.from_preset("small"))
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(device).eval(), False
