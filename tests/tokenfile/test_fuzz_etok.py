"""The short version of the fuzzing campaign (``benchmarks/fuzz.py``) for the .etok reader.

300 generated and damaged token files, each read in a worker process under a time limit: none may
crash, hang or be misread (a valid file refused or read back differently, a file that must be
refused accepted). The full campaign runs 100,000 (``python benchmarks/fuzz.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_short_etok_fuzz_campaign(tmp_path):
    counts_file = tmp_path / "counts.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--only", "etok", "--etok", "300", "--workers", "2",
           "--timeout", "20", "--quiet", "--json", str(counts_file), "--save", str(tmp_path / "found")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert counts_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = json.loads(counts_file.read_text())["targets"]["etok"]
    problems = "\n".join(f"{p['count']} x {p['outcome']} {p['kind']} {p['where']}: {p['message']}"
                         for p in counts["problems"])
    assert proc.returncode == 0, problems + proc.stdout[-3000:]
    assert counts["cases"] == 300
    assert counts["crash"] == counts["hang"] == counts["wrong"] == counts["harness"] == 0, problems
    assert counts["ok"] >= 20 and counts["refused"] >= 150  # valid files read, damaged ones refused
