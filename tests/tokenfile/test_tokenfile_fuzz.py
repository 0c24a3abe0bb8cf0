"""Property-based fuzzing: damaged .etok files only ever raise TokenFileError.

Everything is written under pytest's temporary directories (nothing is left in /tmp). The larger
campaign, with structure-aware mutations and per-case time limits, is ``benchmarks/fuzz.py``;
``test_fuzz_etok.py`` runs a short version of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elastictok.tokenfile.format import TokenFileError, open_token_file, write_tokens
from helpers import random_video, tiny

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    model = tiny("tiny-fsq")
    path = tmp_path_factory.mktemp("etok-fuzz") / "good.etok"
    write_tokens(path, model.encode(random_video(1, 12), torch.tensor([[64, 7, 30]])), model, fps=24.0)
    return path.read_bytes()


def _read_everything(path: Path) -> None:
    with open_token_file(path) as f:
        f.verify()
        f.info()
        for i in range(f.num_blocks):
            f.read_block(i)
        f.to_tokens()


@settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one file, rewritten by every example
)
@given(
    cut=st.floats(0, 1),  # the share of the file kept
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
    junk=st.binary(max_size=16),
)
def test_damaged_files_raise_only_the_format_error(good, tmp_path, cut, flips, junk):
    data = bytearray(good[: round(cut * len(good))])
    for where, xor in flips:
        pos = int(where * len(good))
        if pos < len(data):
            data[pos] ^= xor
    data += junk
    path = tmp_path / "damaged.etok"
    path.write_bytes(bytes(data))
    if bytes(data) == good:
        _read_everything(path)  # an untouched file must still read
        return
    try:
        _read_everything(path)
    except TokenFileError as err:
        assert "\n" not in str(err)
    # A mutation that leaves every checksum valid can only be in unchecked padding; reading it is fine.
