"""Output paths checked before any work is done, and what a failed run created removed again.

Every message names the path as the caller gave it (never a hidden temporary file) and raises
:class:`~elastictok.utils.files.OutputError`, an input error. :class:`Undo` records the files and
folders a run creates and deletes exactly those when the run fails or is interrupted; anything that
existed before is left alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from elastictok.utils.files import OutputError

__all__ = ["Undo", "check_output_dir", "check_output_file", "make_dirs", "remove_empty_dirs"]


def _writable(folder: Path) -> bool:
    # access() sees read-only mounts and immutable folders even for root, unlike the mode bits.
    return os.access(folder, os.W_OK | os.X_OK)


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _existing_ancestor(path: Path) -> Path:
    here = path
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def _same_file(a: Path, b: str | os.PathLike[str]) -> bool:
    try:
        return a.exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """``path`` as a Path if a file can be written there, else OutputError naming it.

    Its folder must exist and be writable, ``path`` must not be a folder, nor one of ``inputs``
    (the files the run reads: writing over them would destroy them).
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: it is a folder")
    parent = p.parent
    if not parent.exists():
        raise OutputError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: {str(parent)!r} is not a folder")
    if not _writable(parent):
        raise OutputError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")
    for source in inputs:
        if _same_file(p, source):
            raise OutputError(f"cannot write {str(path)!r}: it is the input file")
    return p


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it is a writable folder or one that can be created, else OutputError."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot write to {str(path)!r}: it is a file, not a folder")
    if p.is_dir():
        if not _writable(p):
            raise OutputError(f"cannot write to {str(path)!r}: the folder is not writable")
        return p
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise OutputError(f"cannot create folder {str(path)!r}: {str(base)!r} is not a folder")
    if not _writable(base):
        raise OutputError(f"cannot create folder {str(path)!r}: {str(base)!r} is not writable")
    return p


def make_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Create ``path`` and its missing parents; returns the folders created, outermost first."""
    p = Path(path)
    missing = []
    here = p
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    made: list[Path] = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                remove_empty_dirs(made)
                raise OutputError(f"cannot create folder {str(path)!r}: {str(folder)!r} is a file") from None
            continue  # made meanwhile by someone else: not ours to remove
        except OSError as err:
            remove_empty_dirs(made)
            raise OutputError(f"cannot create folder {str(path)!r}: {_why(err)}") from err
        made.append(folder)
    return made


def remove_empty_dirs(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (innermost last in the iterable) where they are empty; others stay."""
    for folder in reversed(list(folders)):
        try:
            folder.rmdir()
        except OSError:
            pass


class Undo:
    """What a run creates, deleted again if it fails: use as a context manager around the run.

    ``file(path)`` registers a file the run will write, if none exists there yet; ``dirs(path)``
    creates a folder and its missing parents and registers the ones it made, which are deleted with
    everything in them (the run made all of it). On success nothing is touched.
    """

    def __init__(self) -> None:
        self._files: list[Path] = []
        self._trees: list[Path] = []

    def file(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            self._files.append(p)
        return p

    def dirs(self, path: str | os.PathLike[str]) -> list[Path]:
        made = make_dirs(path)
        self._trees.extend(made)
        return made

    def undo(self) -> None:
        for p in reversed(self._files):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        for folder in reversed(self._trees):
            shutil.rmtree(folder, ignore_errors=True)
        self._files, self._trees = [], []

    def __enter__(self) -> Undo:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.undo()
