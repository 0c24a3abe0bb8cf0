"""Training checkpoints: atomic ``step_XXXXXXXX.pt`` files with a ``.sha256`` beside each, found,
pruned and resolved (what ``--resume`` names), and the RNG state they carry."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elastictok.model.config import ElasticTokConfig
from elastictok.utils.files import atomic_path, sha256, write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "check_compatible",
    "checksum_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "elastictok-train"
CHECKPOINT_VERSION = 1


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically and fsynced: never a partial checkpoint.

    A ``.sha256`` file beside it lets :func:`load_checkpoint` detect later damage (torch's zip reader
    does not check its CRCs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=True) as temp:
        with open(temp, "wb") as f:
            torch.save(state, f)
        # The checksum lands first, so a checkpoint is never visible without its own.
        write_text(checksum_path(path), sha256(temp) + "\n")
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``directory`` (a run dir or its checkpoints/), oldest step first."""
    directory = Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    found = []
    for p in directory.glob("step_*.pt"):
        with contextlib.suppress(ValueError):
            found.append((int(p.stem.split("_", 1)[1]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the last ``keep`` checkpoints (and their checksums) in ``directory``."""
    for p in list_checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
        checksum_path(p).unlink(missing_ok=True)


def resolve_checkpoint(spec: str | Path, run_dir: str | Path | None = None) -> Path | None:
    """The checkpoint file ``spec`` names: a file, or a run directory's latest; with ``run_dir``,
    "latest" is ``run_dir``'s latest, or None when it has none yet (a run that starts from scratch).
    """
    if run_dir is not None and str(spec) == "latest":
        found = latest_checkpoint(run_dir)
        if found is None:
            log.info("no checkpoint in %s to resume; starting from scratch", run_dir)
        return found
    path = Path(spec)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoints (step_*.pt) in {path}")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (a file, or a run directory's latest) with ``weights_only=True``
    (plain tensors and containers only), checking its ``.sha256`` when there is one."""
    path = resolve_checkpoint(path)
    assert path is not None  # only "latest" with a run_dir resolves to nothing
    sums = checksum_path(path)
    if sums.is_file() and sums.read_text().strip() != sha256(path):
        raise ValueError(f"{path}: checkpoint is corrupt (its SHA-256 does not match {sums.name}); "
                         "resume from an older one")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling raises many types on foreign or damaged files
        raise ValueError(f"{path}: not a readable training checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an elastictok training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    ckpt["path"] = str(path)
    return ckpt


def check_compatible(ckpt: dict[str, Any], config: ElasticTokConfig) -> None:
    """Raise ValueError, naming every differing field, when ``ckpt`` holds a model other than ``config``'s."""
    saved = json.loads(ckpt["model_config"])
    now = config.to_dict()
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
             for k in sorted(set(saved) | set(now)) if json.dumps(saved.get(k)) != json.dumps(now.get(k))]
    if diffs:
        raise ValueError(f"cannot resume from {ckpt['path']}: its model differs ({'; '.join(diffs)})")


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python RNG states, in a form ``weights_only`` loading accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Stored as tensors and scalars: weights_only loading refuses numpy arrays.
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
