"""Reading a token dataset: its manifest and rows, a row as :class:`Tokens`, and a row back to pixels."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from elastictok.datasets.manifest import DatasetError, read_manifest
from elastictok.datasets.schema import row_tokens
from elastictok.files.coding import decode_frames
from elastictok.media import io
from elastictok.model.autoencoder import ElasticTok
from elastictok.model.config import ElasticTokConfig
from elastictok.model.tokens import Tokens
from elastictok.tokenfile.format import model_fingerprint


class TokenDataset:
    """A token dataset on disk (``manifest.json`` + ``data/part-*.parquet``), read shard by shard."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.config = ElasticTokConfig.from_dict(self.manifest["model"]["config"])
        self.context_blocks: int | None = self.manifest["coding"].get("context_blocks")

    @property
    def shard_paths(self) -> list[Path]:
        return [self.root / s["path"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return int(self.manifest["totals"]["rows"])

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[Any]:
        """``pyarrow.RecordBatch`` es of every shard in order (only ``columns``, when given)."""
        import pyarrow.parquet as pq

        for path in self.shard_paths:
            yield from pq.ParquetFile(path).iter_batches(columns=list(columns) if columns else None)

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        for batch in self.batches(columns):
            yield from batch.to_pylist()

    def keys(self) -> list[str]:
        return [k for batch in self.batches(["key"]) for k in batch.column("key").to_pylist()]

    def row(self, key: str) -> dict[str, Any]:
        """The row with this ``key`` (``source#clip``)."""
        import pyarrow.parquet as pq

        for path in self.shard_paths:
            found = pq.read_table(path, filters=[("key", "==", key)]).to_pylist()
            if found:
                return found[0]
        keys = self.keys()
        near = [k for k in keys if k.startswith(key.split("#")[0])][:3] or keys[:3]
        raise DatasetError(f"{self.root} has no row with key {key!r} (keys look like {', '.join(near) or 'nothing'})")

    def tokens(self, key_or_row: str | dict[str, Any]) -> Tokens:
        """A row (or the row with this key) as the :class:`Tokens` the encoder produced for that clip."""
        row = self.row(key_or_row) if isinstance(key_or_row, str) else key_or_row
        return row_tokens(row, self.config, self.context_blocks)

    def check_model(self, model: ElasticTok) -> None:
        """Refuse a model other than the one that tokenized this dataset."""
        expected, actual = self.manifest["model"]["fingerprint"], model_fingerprint(model)
        if expected != actual:
            raise DatasetError(
                f"{self.root} was tokenized with model {expected[:12]}, this model is {actual[:12]}; "
                "pass the model that tokenized it"
            )


def open_dataset(root: str | os.PathLike[str]) -> TokenDataset:
    return TokenDataset(root)


class _ClipView:
    """A row seen as an open token file, so the ``.etok`` decoder streams it block by block."""

    def __init__(self, tokens: Tokens, fps: float | None) -> None:
        self.tokens = tokens
        self.header = {"frame_size": list(tokens.frame_size), "fps": fps}
        self.num_blocks, self.num_frames = tokens.num_blocks, tokens.num_frames
        keys = tokens.keyframes
        self.keyframes = [0] if keys is None else keys[0].nonzero().flatten().tolist()
        self.context_blocks = tokens.context_blocks

    def check_model(self, model: ElasticTok) -> None:
        """Done once by the caller against the dataset (hashing the model per row would be wasteful)."""

    def read_block(self, i: int) -> torch.Tensor:
        return self.tokens.block(0, i)


def decode_row(model: ElasticTok, dataset: TokenDataset, key_or_row: str | dict[str, Any]) -> Iterator[torch.Tensor]:
    """(3, H, W) frames of one row, decoded block by block as the encoder reconstructed them.

    The model is not checked here (hashing it per row would be wasteful): call
    :meth:`TokenDataset.check_model` once first.
    """
    row = dataset.row(key_or_row) if isinstance(key_or_row, str) else key_or_row
    return decode_frames(model, _ClipView(dataset.tokens(row), row["fps"]))


def detokenize(model: ElasticTok, root: str | os.PathLike[str], key: str, out_path: str | os.PathLike[str]) -> Path:
    """Decode the row ``key`` of the dataset at ``root`` into an image or a video file (streamed)."""
    dataset = TokenDataset(root)
    dataset.check_model(model)
    row = dataset.row(key)
    frames = decode_row(model, dataset, row)
    if Path(out_path).suffix.lower() in io.VIDEO_EXTS:
        return io.save_video(frames, out_path, row["fps"] or 24.0)
    if row["num_frames"] != 1:
        raise ValueError(f"row {key} holds {row['num_frames']} frames; write it to a video file such as out.mp4")
    return io.save_image(next(frames), out_path)
