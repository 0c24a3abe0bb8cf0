"""What to tokenize: files, folders (recursively) and lists of paths, each with a stable name.

A source's name identifies it in the dataset (the ``source`` column, and the prefix of each row's
``key``) and is what a resumed run skips by, so it must not depend on where the command runs: it is
the path relative to the folder it was found in, the file name of a file given directly, or the
entry as written in a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from elastictok.media.io import IMAGE_EXTS, VIDEO_EXTS, media_files
from elastictok.utils.files import one_line

MEDIA_EXTS = IMAGE_EXTS | VIDEO_EXTS
LIST_EXTS = (".txt", ".parquet")
# Column read from a Parquet list of paths when it has more than one string column.
PATH_COLUMN = "path"


@dataclass(frozen=True)
class SourceRef:
    """One image or video to tokenize: its stable ``name`` and the ``path`` it is read from."""

    name: str
    path: Path


def list_sources(specs: Sequence[str | Path]) -> list[SourceRef]:
    """Every source named by ``specs`` (files, folders, ``.txt`` or ``.parquet`` lists), in a stable order.

    Folders are searched recursively for image and video extensions (hidden files are skipped).
    Entries of a list are not checked here: a missing or unreadable one becomes a failure entry of
    the dataset, not an error of the whole job.
    """
    if not specs:
        raise ValueError("give at least one SOURCE (a file, folder, or .txt/.parquet list of paths)")
    found: dict[str, SourceRef] = {}
    for spec in specs:
        for ref in _expand(Path(spec)):
            other = found.setdefault(ref.name, ref)
            if other.path.resolve() != ref.path.resolve():
                raise ValueError(
                    f"two sources would share the name {ref.name!r} ({other.path} and {ref.path}); "
                    "put them under one folder or in one list"
                )
    return list(found.values())


def _expand(spec: Path) -> list[SourceRef]:
    if not spec.exists():
        raise FileNotFoundError(f"source {str(spec)!r} does not exist")
    if spec.is_dir():
        refs = [SourceRef(p.relative_to(spec).as_posix(), p) for p in media_files(spec, MEDIA_EXTS)]
        if not refs:
            exts = ", ".join(sorted(MEDIA_EXTS))
            raise ValueError(f"source folder {str(spec)!r} holds no image or video files ({exts})")
        return refs
    suffix = spec.suffix.lower()
    if suffix == ".txt":
        return _refs(spec, _text_entries(spec))
    if suffix == ".parquet":
        return _refs(spec, _parquet_entries(spec))
    if suffix in MEDIA_EXTS:
        return [SourceRef(spec.name, spec)]
    raise ValueError(f"source {str(spec)!r} is not an image, a video, a folder or a .txt/.parquet list of paths")


def _refs(list_path: Path, entries: Iterable[str]) -> list[SourceRef]:
    """Relative entries are read relative to the list's folder, so a list travels with its files."""
    return [SourceRef(entry, list_path.parent / entry) for entry in entries]


def _text_entries(path: Path) -> list[str]:
    """Non-empty lines that are not ``#`` comments, stripped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"source list {str(path)!r} is not UTF-8 text: {err.reason}") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def _parquet_entries(path: Path) -> list[str]:
    """The ``path`` column of a Parquet file (or its only string column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"cannot read source list {str(path)!r} as Parquet: {one_line(err)}") from None
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    column = PATH_COLUMN if PATH_COLUMN in schema.names else (strings[0] if len(strings) == 1 else None)
    if column is None:
        raise ValueError(f"source list {str(path)!r} needs a string column {PATH_COLUMN!r}; it has {schema.names}")
    values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    return [v.strip() for v in values if v and v.strip()]


