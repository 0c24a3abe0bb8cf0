"""The README's library example runs as written.

Every ```python block of README.md is executed, in order and in one namespace (as a reader would paste
them), from a temporary working directory. Tracebacks point at README.md's own line numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_python_blocks_are_found() -> None:
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


def test_readme_python_blocks_run(tmp_path, monkeypatch) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block to run"
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    # The example's passes are small: one thread is fastest, and oversubscribed shared cores are
    # many times slower than one.
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__readme__"}
    try:
        for line, code in blocks:
            exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
