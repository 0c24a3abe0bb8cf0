"""What an evaluation keeps per item, and how items aggregate into results.json.

Kept apart from the run itself (:mod:`elastictok.evaluation`) because these are plain functions of
the per-item records: token-share curves and gains over all blocks pooled, quality and codec rows
averaged over items, FVD looked up per method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elastictok.eval.baseline import Baseline
from elastictok.eval.curves import BUDGETS, adaptive_curve, baseline_curve, efficiency_gain, uniform_curve
from elastictok.utils.files import write_text

# Shares of blocks meeting the threshold at which gains are reported besides the headline one.
GAIN_SHARES = (0.5, 0.8)


@dataclass
class _Item:
    """What is kept of one evaluated item."""

    name: str
    frames: int
    frame_size: tuple[int, int]
    fps: float | None
    tokens_per_block: int
    min_tokens: int
    counts: list[int]  # per grid column
    mse: list[list[float]]  # (n_blocks, G)
    budgets: dict[str, dict] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)
    adaptive: dict[str, dict] = field(default_factory=dict)
    codecs: dict[str, dict[str, dict]] = field(default_factory=dict)


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _aggregate(rows: list[dict], keys: Sequence[str]) -> dict[str, float | None]:
    return {k: _mean(r.get(k) for r in rows) for k in keys}


_QUALITY = ("token_share", "psnr", "ssim", "lpips")


def _token_share_results(items: list[_Item], thresholds: Sequence[float], baselines: Sequence[Baseline]) -> dict:
    mse = np.concatenate([np.asarray(it.mse) for it in items])
    counts = np.concatenate([np.tile(it.counts, (len(it.mse), 1)) for it in items])
    tokens = np.concatenate([np.full(len(it.mse), it.tokens_per_block) for it in items])
    out = {}
    for thr in thresholds:
        uni, ada = uniform_curve(mse, counts, tokens, thr), adaptive_curve(mse, counts, tokens, thr)
        full_share = float(uniform_curve(mse[:, -1:], counts[:, -1:], tokens, thr).share_met[0])
        entry: dict[str, Any] = {
            "uniform": uni.to_json(), "adaptive": ada.to_json(),
            "uniform_share_at_full_tokens": full_share,
            "gains": {"at_uniform_full": efficiency_gain(ada, uni, full_share),
                      **{f"at_{round(s * 100)}": efficiency_gain(ada, uni, s) for s in GAIN_SHARES}},
            "baselines": {},
        }
        for b in baselines:
            bm = np.concatenate([np.asarray(it.baselines[b.name]["mse"])[:, None] for it in items])
            bc = np.concatenate([np.full((len(it.mse), 1), it.baselines[b.name]["count"]) for it in items])
            curve = baseline_curve(bm, bc, tokens, thr)
            share = float(curve.share_met[0])
            entry["baselines"][b.name] = {"point": curve.to_json()[0], "fraction": b.fraction,
                                          "fraction_source": b.fraction_source,
                                          "gain": efficiency_gain(ada, curve, share)}
        out[f"{thr:g}"] = entry
    return out


def _quality_results(items: list[_Item], thresholds: Sequence[float], baselines: Sequence[Baseline],
                     fvd: dict[str, float | None]) -> dict:
    out: dict[str, Any] = {"uniform": {}, "adaptive": {}, "baselines": {}}
    for label in BUDGETS:
        rows = [it.budgets[label] for it in items if label in it.budgets]
        out["uniform"][label] = {**_aggregate(rows, _QUALITY), "fvd": fvd.get(f"uniform {label}")}
    for thr in thresholds:
        key = f"{thr:g}"
        rows = [it.adaptive[key] for it in items]
        out["adaptive"][key] = {**_aggregate(rows, (*_QUALITY, "bytes", "bpp", "seconds")),
                                "fvd": fvd.get(f"adaptive {key}")}
    for b in baselines:
        rows = [it.baselines[b.name] for it in items]
        out["baselines"][b.name] = {**_aggregate(rows, _QUALITY), "fvd": fvd.get(f"baseline {b.name}")}
    return out


def _codec_results(items: list[_Item], thresholds: Sequence[float], fvd: dict[str, float | None]) -> dict:
    out: dict[str, Any] = {}
    for thr in thresholds:
        key = f"{thr:g}"
        ours = [it.adaptive[key] for it in items]
        entry = {"elastictok": {**_aggregate(ours, ("bytes", "bpp", "psnr", "ssim", "lpips")),
                                "fvd": fvd.get(f"adaptive {key}")}}
        codecs = sorted({c for it in items for c in it.codecs.get(key, {})})
        for codec in codecs:
            rows = [it.codecs[key][codec] for it in items]
            entry[codec] = {**_aggregate(rows, ("target", "bytes", "bpp", "param", "psnr", "ssim", "lpips")),
                            "within_tolerance": sum(r["within_tolerance"] for r in rows) / len(rows),
                            "fvd": fvd.get(f"{codec} {key}")}
        out[key] = entry
    return out


def write_results(data: dict, path: Path) -> None:
    """results.json: compact (indent 1) and strict (no NaN), written atomically."""
    write_text(path, json.dumps(data, indent=1, default=_json_default, allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
