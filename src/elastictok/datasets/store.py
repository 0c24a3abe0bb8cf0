"""Writing a token dataset: rows buffered per source, Parquet shards written atomically, manifest kept current.

A shard holds whole sources only, so a source is either finished (in a listed shard) or absent,
and a re-run skips exactly the finished ones. Shards are renamed into place complete and listed in
the manifest right after; files the manifest does not list (left by a killed run) are removed on open.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from elastictok.datasets.clips import SourceResult
from elastictok.datasets.manifest import (
    DATA_DIR,
    MANIFEST,
    DatasetError,
    check_same_job,
    new_manifest,
    read_manifest,
    totals,
)
from elastictok.datasets.schema import arrow_schema
from elastictok.model.config import ElasticTokConfig
from elastictok.utils.files import atomic_path, sha256, write_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent runs are the user's to avoid
    fcntl = None  # type: ignore[assignment]

SHARD_PATTERN = "part-{:05d}.parquet"
DEFAULT_SHARD_ROWS = 256
COMPRESSION = "zstd"


class DatasetWriter:
    """Appends sources to the dataset at ``root``, creating it when absent; use as a context manager.

    Opening an existing dataset checks that it was made by the same model (``model["fingerprint"]``)
    with the same ``settings``, and holds a lock so that two runs never write it at once.
    ``done`` names the sources already in finished shards.
    """

    def __init__(self, root: str | os.PathLike[str], model: dict[str, Any], settings: dict[str, Any],
                 shard_rows: int = DEFAULT_SHARD_ROWS) -> None:
        if not (isinstance(shard_rows, int) and shard_rows >= 1):
            raise ValueError(f"expected --shard-rows to be an int >= 1, got {shard_rows!r}")
        self.root, self.shard_rows = Path(root), shard_rows
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"output {str(self.root)!r} exists and is not a folder")
        if self.root.is_dir() and not (self.root / MANIFEST).exists() and _has_files(self.root):
            raise DatasetError(f"output folder {str(self.root)!r} is not empty and holds no {MANIFEST}")
        (self.root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.root)
        try:
            if (self.root / MANIFEST).exists():
                self.manifest = read_manifest(self.root)
                check_same_job(self.root, self.manifest, model, settings)
            else:
                self.manifest = new_manifest(model, settings)
            self.schema = arrow_schema(ElasticTokConfig.from_dict(model["config"]))
            self._remove_unlisted()
            self.done = self._finished_sources()
            self.failures = {f["source"]: f for f in self.manifest["failures"]}
            self._write_manifest()
        except BaseException:
            self.close_lock()
            raise
        self._pending: list[SourceResult] = []

    # Appending -----------------------------------------------------------------------------------
    def add(self, result: SourceResult, path: str | None = None) -> None:
        """Buffer one source's rows (or record its failure); a full buffer becomes a shard."""
        if result.source in self.done:
            return  # a retried task delivered it twice: keep the first
        if result.failure is not None:
            self.failures[result.source] = {"source": result.source, "path": path, "reason": result.failure}
            return
        self.done.add(result.source)
        self._pending.append(result)
        if sum(len(r.rows) for r in self._pending) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as a shard (if any) and the manifest."""
        if self._pending:
            self._write_shard([row for r in self._pending for row in r.rows], len(self._pending))
            for r in self._pending:  # an earlier run's failure of a source that is now in a shard
                self.failures.pop(r.source, None)
            self._pending = []
        self._write_manifest()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.close_lock()

    def close_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            # Interrupted: what is buffered is dropped (a re-run codes it again); finished shards stay.
            with suppress(Exception):
                self._write_manifest()
            self.close_lock()

    # Files ---------------------------------------------------------------------------------------
    def _write_shard(self, rows: list[dict[str, Any]], sources: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = self.manifest["shards"]
        index = 1 + max((_shard_index(s["path"]) for s in shards), default=-1)
        rel = f"{DATA_DIR}/{SHARD_PATTERN.format(index)}"
        table = pa.Table.from_pylist(rows, schema=self.schema)
        with atomic_path(self.root / rel, fsync=True) as temp:
            pq.write_table(table, temp, compression=COMPRESSION)
            digest = sha256(temp)
        shards.append({
            "path": rel, "rows": len(rows), "sources": sources, "frames": sum(r["num_frames"] for r in rows),
            "blocks": sum(r["num_blocks"] for r in rows), "tokens": sum(r["total_tokens"] for r in rows),
            "bytes": (self.root / rel).stat().st_size, "sha256": digest,
        })

    def _write_manifest(self) -> None:
        m = self.manifest
        m["failures"] = [self.failures[k] for k in sorted(self.failures)]
        m["totals"] = totals(m["shards"], self.failures)
        write_json(self.root / MANIFEST, m)

    def _remove_unlisted(self) -> None:
        """Shards a killed run renamed into place but never listed, and temporary files, are not data."""
        listed = {Path(s["path"]).name for s in self.manifest["shards"]}
        for path in (self.root / DATA_DIR).iterdir():
            if path.name not in listed and (path.name.startswith(".") or path.suffix == ".parquet"):
                path.unlink()
        for path in self.root.glob(f".{MANIFEST}.*.tmp*"):
            path.unlink()

    def _finished_sources(self) -> set[str]:
        import pyarrow.parquet as pq

        done: set[str] = set()
        for shard in self.manifest["shards"]:
            path = self.root / shard["path"]
            if not path.is_file():
                raise DatasetError(f"{path} is listed in {MANIFEST} but missing; the dataset is damaged")
            done.update(pq.read_table(path, columns=["source"]).column("source").to_pylist())
        return done


def _has_files(folder: Path) -> bool:
    """Anything besides an empty data folder (which a run stopped at its very start may leave)."""
    data = folder / DATA_DIR
    return any(p != data for p in folder.iterdir()) or (data.is_dir() and any(data.iterdir()))


def _shard_index(rel: str) -> int:
    return int(Path(rel).stem.split("-")[-1])



def _lock(root: Path) -> int | None:
    """An exclusive lock on the dataset folder, released when the descriptor closes (or the process dies)."""
    if fcntl is None:
        return None
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatasetError(f"{root} is being written by another tokenize run") from None
    return fd
