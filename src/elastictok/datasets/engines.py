"""Where sources are coded: in this process (``local``) or on a Ray cluster (``ray``), one result per source.

The Ray engine runs ``ray.data`` ``map_batches`` over the sources with a pool of actors that each hold
the model (shipped once through the object store). A worker that dies is restarted by Ray and its
source coded again; the writer keeps a source's first result, so none is lost or written twice.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from elastictok.datasets.clips import SourceResult, code_source
from elastictok.datasets.job import TokenizeJob
from elastictok.datasets.sources import SourceRef
from elastictok.model.autoencoder import ElasticTok

ENGINES = ("local", "ray")
# Set only by the test of worker failure: a path; the first worker to create that file, after coding
# a source and before returning it, exits abruptly, as a crashed process or node would.
KILL_ENV = "ELASTICTOK_TEST_KILL_WORKER"
# Sources are spread over at most this many Ray blocks: one source per block balances the load best,
# but each block costs the scheduler bookkeeping, which adds up over millions of sources.
MAX_RAY_BLOCKS = 4096


def local_results(model: ElasticTok, refs: Sequence[SourceRef], job: TokenizeJob) -> Iterator[SourceResult]:
    for ref in refs:
        yield code_source(model, ref, job)


class RayWorker:
    """A Ray actor: holds the model on its device and codes one source per call."""

    def __init__(self, model: ElasticTok, job: TokenizeJob, device: str, threads: int,
                 kill_marker: str | None = None) -> None:
        torch.set_num_threads(threads)
        self.model, self.job, self.kill_marker = model.to(device).eval(), job, kill_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for name, path in zip(batch["source"], batch["path"]):
            result = code_source(self.model, SourceRef(str(name), Path(str(path))), self.job)
            self._die_once()
            results.append(pickle.dumps(result))
        return {"source": batch["source"], "result": np.array(results, dtype=object)}

    def _die_once(self) -> None:
        """Exit without a word, once per marker file: a worker lost after doing the work."""
        if not self.kill_marker:
            return
        try:
            os.close(os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


def require_ray() -> None:
    """Raise a one-line ImportError unless Ray Data can be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the ray engine needs Ray Data: pip install 'elastictok[ray]'") from None


def ray_results(
    model: ElasticTok, refs: Sequence[SourceRef], job: TokenizeJob,
    workers: int = 1, gpus_per_worker: float = 0.0, cpus_per_worker: int = 1,
) -> Iterator[SourceResult]:
    """Code ``refs`` on Ray: the cluster at ``RAY_ADDRESS`` if set, else a local one started here.

    Results come in source order. Paths are sent as absolute paths: on a multi-node cluster every
    node must see the sources at the same path (a shared file system).
    """
    require_ray()
    import ray
    import ray.data

    if not refs:
        return
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # Ray Data narrates each execution at INFO and draws its own bars; the caller has its progress bar.
    data_log = logging.getLogger("ray.data")
    context = ray.data.DataContext.get_current()
    saved = data_log.level, context.execution_options.preserve_order, context.enable_progress_bars
    data_log.setLevel(logging.ERROR)
    context.execution_options.preserve_order = True  # rows arrive, and shards fill, in source order
    context.enable_progress_bars = False
    try:
        items = [{"source": r.name, "path": str(r.path.resolve())} for r in refs]
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        worker_args = {
            "model": model if model.device.type == "cpu" else copy.deepcopy(model).cpu(), "job": job,
            "device": device, "threads": cpus_per_worker, "kill_marker": os.environ.get(KILL_ENV),
        }
        coded = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_RAY_BLOCKS)).map_batches(
            RayWorker, batch_size=1, batch_format="numpy", num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
            fn_constructor_kwargs=worker_args,
        )
        for batch in coded.iter_batches(batch_size=1, batch_format="numpy"):
            for blob in batch["result"]:
                yield pickle.loads(blob)
    finally:
        data_log.setLevel(saved[0])
        context.execution_options.preserve_order, context.enable_progress_bars = saved[1:]
        if started:
            ray.shutdown()
