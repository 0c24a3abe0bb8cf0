"""Fixed-token baselines: models trained at one token fraction, the paper's comparison for adaptive coding."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from elastictok.model.autoencoder import ElasticTok
from elastictok.weights.pretrained import load_pretrained


@dataclass
class Baseline:
    """A fixed-token model (trained with mask mode ``fixed``) evaluated at ``ceil(fraction * T)`` tokens."""

    name: str
    model: ElasticTok
    fraction: float
    fraction_source: str = ""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", fraction: float | None = None) -> Baseline:
        path = Path(path)
        found, source = _trained_fraction(path)
        if fraction is not None:
            found, source = fraction, "--baseline-fraction"
        return cls(path.name, load_pretrained(path, device=device), found, source)

    def count(self, tokens: int) -> int:
        return min(tokens, max(1, math.ceil(tokens * self.fraction - 1e-9)))  # as data.sample_counts


def _trained_fraction(path: Path) -> tuple[float, str]:
    """The fixed_fraction a baseline was trained with, from a train_config.json next to it (else 0.5)."""
    for candidate in (path / "train_config.json", path.parent / "train_config.json"):
        if candidate.is_file():
            cfg = json.loads(candidate.read_text())
            if cfg.get("mask_mode") == "fixed":
                return float(cfg.get("fixed_fraction", 0.5)), str(candidate)
    return 0.5, "default 0.5 (no train_config.json with mask_mode fixed found; pass --baseline-fraction)"
