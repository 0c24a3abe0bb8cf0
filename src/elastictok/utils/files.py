"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output path that cannot be written (missing folder, a directory in the way, no permission)."""


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], fsync: bool = False, error: type[ValueError] = OutputError
) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; rename it over ``path`` when the block succeeds,
    delete it when the block fails or is interrupted.

    The temporary name keeps the suffix (writers that sniff extensions still work), and the writer
    creates the file itself, so it gets normal permissions (mkstemp would give 0600). A path that
    cannot be written raises ``error`` (the caller's own input-error class).
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise error(f"cannot write {str(path)!r}: directory {str(final.parent)!r} does not exist")
    if final.is_dir():
        raise error(f"cannot write {str(path)!r}: it is a directory")
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp{final.suffix}")
    try:
        yield temp
        if fsync:
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.replace(temp, final)
        except OSError as err:
            raise error(f"cannot write {str(path)!r}: {one_line(err)}") from err
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as temp:
        temp.write_text(text)
    return Path(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and numpy arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON; infinities are written as strings ("inf"), which strict JSON lacks."""
    return write_text(path, json.dumps(_finite(data), indent=2, default=_json_default) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
