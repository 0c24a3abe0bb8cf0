"""The Ray engine on a local 2-CPU cluster: the same rows as the local engine, and no source lost or doubled
when a worker dies."""

from __future__ import annotations

import json

import pytest
import torch
from test_datasets import OPTIONS, sorted_rows, write_corpus

from elastictok.datasets import TokenizeJob, tokenize
from elastictok.datasets.engines import KILL_ENV
from helpers import tiny

JOB = TokenizeJob(OPTIONS, max_clip_frames=12)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (starting one costs seconds)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'elastictok[ray]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as err:  # no shared memory, no ports, a sandbox: anything that keeps Ray from starting
        pytest.skip(f"Ray cannot start on this machine: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)  # as each Ray worker runs
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    model = tiny("tiny-fsq")
    local = tmp_path_factory.mktemp("local") / "tokens"
    tokenize(model, [corpus], local, JOB, progress=False)
    return corpus, model, local


def test_ray_gives_the_rows_of_the_local_engine(ray_cluster, setup, tmp_path):
    corpus, model, local = setup
    out = tmp_path / "tokens"
    summary = tokenize(model, [corpus], out, JOB, engine="ray", workers=2, shard_rows=2, progress=False)
    assert summary["coded"] == 3 and summary["failed"] == 1
    assert sorted_rows(out) == sorted_rows(local)
    assert json.loads((out / "manifest.json").read_text())["failures"][0]["source"] == "broken.mp4"


def test_a_killed_worker_loses_nothing_and_doubles_nothing(ray_cluster, setup, tmp_path, monkeypatch):
    corpus, model, local = setup
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, str(marker))
    out = tmp_path / "tokens"
    summary = tokenize(model, [corpus], out, JOB, engine="ray", workers=2, progress=False)
    assert marker.exists(), "no worker was killed"
    assert summary["coded"] == 3 and summary["failed"] == 1
    rows = sorted_rows(out)
    assert [r["key"] for r in rows] == ["clip.mp4#0", "clip.mp4#1", "still.png#0", "sub/noise.mp4#0"]
    assert rows == sorted_rows(local)
