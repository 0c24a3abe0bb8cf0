"""The short media part of the fuzzing campaign (``benchmarks/fuzz.py``).

Damaged PNG, JPEG and mp4 files (40 of each, built from small real-content seeds) go through
``load_image`` or ``video_info`` / ``load_video`` / ``iter_video_frames``, each case in a worker
process under a time limit. Every file must be read or refused with a
one-line ``MediaError`` in time: no crash, no hang, no wrong result.
The full campaign runs 2,000 files of each type (``python benchmarks/fuzz.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

pytest.importorskip("av", reason="the mp4 cases need PyAV: pip install 'elastictok[video]'")

PER_TYPE = 40
@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-media")
    counts_file = folder / "counts.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--only", "png", "jpeg", "mp4",
           *(f"--{t}={PER_TYPE}" for t in ("png", "jpeg", "mp4")), "--workers", "2", "--timeout", "30", "--quiet",
           "--json", str(counts_file), "--save", str(folder / "found")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=folder)
    assert counts_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(counts_file.read_text())["targets"]


def _problems(counts: dict, outcome: str) -> list[dict]:
    return [p for p in counts["problems"] if p["outcome"] == outcome]


def test_every_file_is_read_or_refused_in_time(campaign):
    for kind in ("png", "jpeg", "mp4"):
        counts = campaign[kind]
        assert counts["cases"] == PER_TYPE
        assert counts["hang"] == 0 and counts["wrong"] == 0 and counts["harness"] == 0, counts["problems"]
        assert counts["ok"] > 0 and counts["refused"] > 0  # both undamaged-enough and broken files were reached


def test_no_crashes(campaign):
    crashes = {kind: counts["crash"] for kind, counts in campaign.items()}
    assert crashes == {"png": 0, "jpeg": 0, "mp4": 0}, [p for c in campaign.values() for p in _problems(c, "crash")]
