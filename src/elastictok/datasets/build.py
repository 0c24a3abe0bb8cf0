"""``tokenize``: list the sources, skip the finished ones, code the rest on an engine, write the dataset."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from tqdm import tqdm

from elastictok.datasets.engines import ENGINES, local_results, ray_results, require_ray
from elastictok.datasets.job import TokenizeJob
from elastictok.datasets.manifest import model_entry
from elastictok.datasets.sources import list_sources
from elastictok.datasets.store import DEFAULT_SHARD_ROWS, DatasetWriter
from elastictok.model.autoencoder import ElasticTok
from elastictok.tokenfile.format import model_fingerprint


def tokenize(
    model: ElasticTok,
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    job: TokenizeJob | None = None,
    *,
    engine: str = "local",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: int = 1,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize every image and video of ``sources`` into the dataset at ``out_dir``, resuming it if it exists.

    ``engine`` "local" codes in this process; "ray" on a Ray cluster with ``workers`` actors of
    ``cpus_per_worker`` CPUs (and torch threads) and ``gpus_per_worker`` GPUs each. Returns a summary:
    sources listed, skipped (already finished), coded and failed, and the final manifest.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown --engine {engine!r}; expected one of {ENGINES}")
    for name, value in (("workers", workers), ("cpus-per-worker", cpus_per_worker)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"expected --{name} to be an int >= 1, got {value!r}")
    if not gpus_per_worker >= 0:
        raise ValueError(f"expected --gpus-per-worker to be >= 0, got {gpus_per_worker!r}")
    if engine == "local" and (workers, cpus_per_worker, gpus_per_worker) != (1, 1, 0):
        raise ValueError("--workers, --cpus-per-worker and --gpus-per-worker need --engine ray")
    if engine == "ray":
        require_ray()
    refs = list_sources(sources)
    job = (job or TokenizeJob()).for_model(model)
    if model.config.rope == "1d":  # one frame size for every source: bad options fail here, not per source
        job.options.bounds(model.config, model.config.frame_size)
    start = time.perf_counter()
    with DatasetWriter(out_dir, model_entry(model, model_fingerprint(model)), job.settings(), shard_rows) as writer:
        pending = [r for r in refs if r.name not in writer.done]
        if engine == "local":
            results = local_results(model, pending, job)
        else:
            results = ray_results(model, pending, job, workers, gpus_per_worker, cpus_per_worker)
        paths = {r.name: str(r.path) for r in pending}
        seen: set[str] = set()
        # closing(): a stopped run shuts down the engine (and a Ray instance it started) right away.
        with closing(results), _Meter(len(pending), progress) as meter:
            for result in results:
                writer.add(result, paths.get(result.source))
                if result.source not in seen:
                    seen.add(result.source)
                    meter.update(result)
        missing = sorted(paths.keys() - seen)
        if missing:  # an engine that drops a source is a bug, not an input problem
            raise RuntimeError(f"the {engine} engine returned no result for {len(missing)} sources: {missing[:3]}")
    manifest = writer.manifest
    return {
        "dataset": str(Path(out_dir)), "sources": len(refs), "skipped": len(refs) - len(pending),
        "coded": meter.coded, "failed": meter.failed, "rows": meter.rows, "blocks": meter.blocks,
        "tokens": meter.tokens, "seconds": time.perf_counter() - start, "manifest": manifest,
    }


class _Meter:
    """A progress bar over sources showing clips (items), blocks and tokens per second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="source", desc="tokenize", disable=not enabled, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.coded = self.failed = self.rows = self.blocks = self.tokens = 0

    def update(self, result) -> None:
        self.failed += result.failure is not None
        self.coded += result.failure is None
        self.rows += len(result.rows)
        self.blocks += result.blocks
        self.tokens += result.tokens
        seconds = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(
            f"{self.rows / seconds:.2f} items/s, {self.blocks / seconds:.1f} blocks/s, "
            f"{self.tokens / seconds:.0f} tokens/s, {self.failed} failed", refresh=False,
        )
        self.bar.update(1)

    def __enter__(self) -> _Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
