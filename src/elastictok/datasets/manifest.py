"""``DATASET/manifest.json``: what made the dataset, which shards it holds and which sources failed.

The manifest is the commit point: a shard counts only once the manifest lists it, so a run killed at
any moment leaves a dataset whose listed shards are whole, and a re-run continues from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastictok._version import __version__
from elastictok.model.autoencoder import ElasticTok

FORMAT = "elastictok-token-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_DIR = "data"
TOTALS = ("rows", "sources", "frames", "blocks", "tokens")


class DatasetError(ValueError):
    """A token dataset that cannot be read or appended to as asked (always one line)."""


def model_entry(model: ElasticTok, fingerprint: str) -> dict[str, Any]:
    c = model.config
    return {"fingerprint": fingerprint, "kind": c.bottleneck, "codebook_size": c.codebook_size,
            "latent_dim": c.latent_dim, "frames_per_block": c.frames_per_block, "config": c.to_dict()}


def new_manifest(model: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "software": f"elastictok {__version__}",
            "model": model, "coding": settings, "shards": [], "totals": totals([], {}), "failures": []}


def totals(shards: list[dict[str, Any]], failures: dict[str, Any]) -> dict[str, int]:
    return {name: sum(s[name] for s in shards) for name in TOTALS} | {"failed": len(failures)}


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the dataset at ``root``, checked for format and version."""
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{root} is not a token dataset: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an elastictok token dataset manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {version}; this elastictok reads version {FORMAT_VERSION}")
    return manifest


def check_same_job(root: Path, manifest: dict[str, Any], model: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse to append rows coded by another model or with other settings than the dataset's."""
    had = manifest["model"]["fingerprint"]
    if had != model["fingerprint"]:
        raise DatasetError(
            f"{root} was tokenized with model {had[:12]}, this model is {model['fingerprint'][:12]}; "
            "use the same --model or another output folder"
        )
    old = manifest["coding"]
    changed = sorted(k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k))
    if changed:
        diff = ", ".join(f"{k} {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise DatasetError(f"{root} was tokenized with other coding options ({diff}); use another output folder")
