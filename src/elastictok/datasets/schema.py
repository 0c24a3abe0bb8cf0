"""The rows of a token dataset: one clip each, as Parquet columns, and back to :class:`Tokens`.

Columns (``docs/datasets.md`` has the full description): ``key``, ``source``, ``clip``,
``start_frame``, ``start_time``, ``num_frames``, ``height``, ``width``, ``fps``, ``num_blocks``,
``counts``, ``keyframes``, ``mse``, ``psnr``, ``total_tokens`` and ``tokens``, the kept tokens of
every block in block order (FSQ indices as uint16, VAE latents as float16, ``latent_dim`` per token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from elastictok.model.config import ElasticTokConfig
from elastictok.model.tokens import Tokens

COLUMNS = (
    "key", "source", "clip", "start_frame", "start_time", "num_frames", "height", "width", "fps", "num_blocks",
    "counts", "keyframes", "mse", "psnr", "total_tokens", "tokens",
)


class RowError(ValueError):
    """A row that does not describe a clip this model can decode (always one line)."""


def clip_key(source: str, clip: int) -> str:
    """A row's key: its source's name and the clip's index, as ``name#clip``."""
    return f"{source}#{clip}"


def token_dtype(config: ElasticTokConfig) -> np.dtype:
    """How the ``tokens`` column stores values: uint16 FSQ indices (uint32 past 65536 codes), float16 latents."""
    if config.bottleneck == "vae":
        return np.dtype(np.float16)
    return np.dtype(np.uint16 if config.codebook_size <= 1 << 16 else np.uint32)


def arrow_schema(config: ElasticTokConfig):
    """The Parquet schema of a dataset coded by a model with this config."""
    import pyarrow as pa

    tokens = {"float16": pa.float16(), "uint16": pa.uint16(), "uint32": pa.uint32()}[token_dtype(config).name]
    return pa.schema([
        ("key", pa.string()), ("source", pa.string()), ("clip", pa.int32()), ("start_frame", pa.int64()),
        ("start_time", pa.float64()), ("num_frames", pa.int32()), ("height", pa.int32()), ("width", pa.int32()),
        ("fps", pa.float64()), ("num_blocks", pa.int32()), ("counts", pa.list_(pa.int32())),
        ("keyframes", pa.list_(pa.bool_())), ("mse", pa.list_(pa.float64())), ("psnr", pa.list_(pa.float64())),
        ("total_tokens", pa.int64()), ("tokens", pa.list_(tokens)),
    ])


def flat_tokens(values: torch.Tensor, config: ElasticTokConfig) -> np.ndarray:
    """Kept tokens of a clip, (N,) indices or (N, D) latents, as the flat ``tokens`` column value."""
    dtype = token_dtype(config)
    if dtype.kind == "f":
        half = values.to(torch.float16)
        if not bool(torch.isfinite(half).all()):
            raise ValueError("vae latents are not finite in float16 (|x| > 65504 or NaN)")
        return half.numpy().reshape(-1)
    return values.numpy().astype(dtype)


def row_tokens(row: Mapping[str, Any], config: ElasticTokConfig, context_blocks: int | None) -> Tokens:
    """A row as a batch-of-one :class:`Tokens` that ``model.decode`` takes.

    Values past each block's count are zero and keyframes are None when block 0 is the only one,
    exactly as :func:`~elastictok.tokenfile.format.read_tokens` gives for the same clip.
    """
    key = row.get("key", "?")
    counts = [int(c) for c in row["counts"]]
    keys = [bool(k) for k in row["keyframes"]]
    size = (int(row["height"]), int(row["width"]))
    T = config.tokens_per_block(size)
    flat = np.asarray(row["tokens"])
    per_token = config.latent_dim if config.bottleneck == "vae" else 1
    if not counts or len(keys) != len(counts) or not keys[0]:
        raise RowError(f"row {key}: expected one count and one keyframe flag per block, block 0 a keyframe")
    if min(counts) < 1 or max(counts) > T:
        raise RowError(f"row {key}: token counts must be in [1, {T}] for {size[0]}x{size[1]} frames, got {counts}")
    if flat.size != sum(counts) * per_token:
        raise RowError(f"row {key}: {flat.size} token values do not match counts summing to {sum(counts)}")
    n = len(counts)
    if per_token == 1:
        values = torch.zeros(1, n, T, dtype=torch.long)
        kept = torch.from_numpy(flat.astype(np.int64))
    else:
        values = torch.zeros(1, n, T, per_token, dtype=torch.float32)
        kept = torch.from_numpy(flat.astype(np.float32).reshape(-1, per_token))
    for i, block in enumerate(torch.split(kept, counts)):
        values[0, i, : counts[i]] = block
    keyframes = torch.tensor([keys]) if any(keys[1:]) else None
    return Tokens(torch.tensor([counts]), values, config.bottleneck, int(row["num_frames"]), size, context_blocks,
                  keyframes)
