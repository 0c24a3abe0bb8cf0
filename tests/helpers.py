from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
DATA = SHARED / "data"


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} not found: {what} are not available on this machine")
    return path


def tiny(preset: str = "tiny-fsq", seed: int = 0, **overrides) -> ElasticTok:
    torch.manual_seed(seed)
    return ElasticTok(ElasticTokConfig.from_preset(preset, **overrides)).eval()


def random_video(batch: int = 2, frames: int = 12, size=(32, 32), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, *size, generator=g) * 2 - 1
