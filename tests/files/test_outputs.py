"""Output checks before any work, and the undoing of what a failed run created."""

from __future__ import annotations

import pytest

from elastictok.files.outputs import Undo, check_output_dir, check_output_file, make_dirs, remove_empty_dirs
from elastictok.utils.files import OutputError


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "a.etok") == tmp_path / "a.etok"
    with pytest.raises(OutputError, match=r"cannot write '.*missing/a\.etok': folder '.*missing' does not exist"):
        check_output_file(tmp_path / "missing" / "a.etok")
    with pytest.raises(OutputError, match="it is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output_file(tmp_path / "f" / "a.etok")
    with pytest.raises(OutputError, match="it is the input file"):
        check_output_file(tmp_path / "f", inputs=[tmp_path / "other", tmp_path / "f"])


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output_dir(tmp_path / "f" / "sub")
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # checks create nothing


def test_make_dirs_and_remove_empty_dirs(tmp_path):
    made = make_dirs(tmp_path / "a" / "b" / "c")
    assert made == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a") == []
    (tmp_path / "a" / "keep.txt").write_text("x")
    remove_empty_dirs(made)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "keep.txt"]  # a is not empty: it stays


def test_undo_removes_only_what_the_run_made(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with Undo() as undo:
            undo.file(tmp_path / "old.txt").write_text("overwritten")  # existed before: stays
            undo.file(tmp_path / "new.txt").write_text("new")
            undo.dirs(tmp_path / "out" / "deep")
            (tmp_path / "out" / "deep" / "result.png").write_text("r")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]
    with Undo() as undo:
        undo.file(tmp_path / "new.txt").write_text("new")
        undo.dirs(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt", "out"]  # success keeps all
