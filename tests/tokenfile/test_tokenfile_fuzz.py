"""Property-based fuzzing: damaged .etok files only ever raise TokenFileError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from elastictok.tokenfile.format import TokenFileError, open_token_file, write_tokens
from helpers import random_video, tiny

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DIR = Path(tempfile.mkdtemp(prefix="etok-fuzz-"))
_MODEL = tiny("tiny-fsq")
_GOOD = _DIR / "good.etok"
write_tokens(_GOOD, _MODEL.encode(random_video(1, 12), torch.tensor([[64, 7, 30]])), _MODEL, fps=24.0)
_BYTES = _GOOD.read_bytes()


def _read_everything(path: Path) -> None:
    with open_token_file(path) as f:
        f.verify()
        f.info()
        for i in range(f.num_blocks):
            f.read_block(i)
        f.to_tokens()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(_BYTES)),
    flips=st.lists(st.tuples(st.integers(0, len(_BYTES) - 1), st.integers(1, 255)), max_size=4),
    junk=st.binary(max_size=16),
)
def test_damaged_files_raise_only_the_format_error(cut, flips, junk):
    data = bytearray(_BYTES[:cut])
    for pos, xor in flips:
        if pos < len(data):
            data[pos] ^= xor
    data += junk
    path = _DIR / "damaged.etok"
    path.write_bytes(bytes(data))
    if bytes(data) == _BYTES:
        _read_everything(path)  # an untouched file must still read
        return
    try:
        _read_everything(path)
    except TokenFileError as err:
        assert "\n" not in str(err)
    # A mutation that leaves every checksum valid can only be in unchecked padding; reading it is fine.
