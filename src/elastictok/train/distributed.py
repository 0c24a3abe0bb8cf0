"""Multi-process training helpers, applied from outside the model (the model knows nothing of them).

Launch with torchrun (``torchrun --nproc_per_node 8 -m elastictok train --parallel fsdp ...``):
:func:`init_distributed` reads RANK / WORLD_SIZE / LOCAL_RANK and joins the process group. Without
torchrun everything works unchanged as rank 0 of 1 with no process group.

State dicts go through ``torch.distributed.checkpoint.state_dict`` in every mode, so checkpoints
hold full (unsharded) tensors keyed by parameter name: a checkpoint written by an 8-GPU FSDP run
resumes on one CPU and vice versa.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "PARALLEL_MODES",
    "all_mean",
    "any_rank",
    "barrier",
    "cleanup",
    "dist_info",
    "full_optimizer_state",
    "full_model_state",
    "init_distributed",
    "initialized",
    "is_main",
    "load_full_state",
    "parallelize",
    "resolve_device",
    "unwrap",
]

PARALLEL_MODES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return initialized()


def initialized() -> bool:
    """Whether a process group is up (False without torchrun)."""
    return dist.is_available() and dist.is_initialized()


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPUs); a no-op without torchrun
    or when a group is already up."""
    if initialized():
        return dist_info()
    if not _launched_by_torchrun():
        return DistInfo()
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before NCCL init, so each rank owns its own GPU
    dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return dist_info()


def dist_info() -> DistInfo:
    if initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def is_main() -> bool:
    return dist_info().is_main


def cleanup() -> None:
    """End the process group, if any."""
    if initialized():
        dist.destroy_process_group()


def resolve_device(device: str = "auto", info: DistInfo | None = None) -> torch.device:
    """``auto``: this rank's GPU (cuda:LOCAL_RANK) when there is one, else the CPU."""
    info = info or dist_info()
    if device == "auto":
        device = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", info.local_rank)
    return d


# ---------------------------------------------------------------------------------------------
# Collectives that degrade to no-ops on one process


def barrier() -> None:
    if initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_mean(values: list[float], device: torch.device) -> list[float]:
    """Mean of each value over ranks (SUM then divide: gloo has no AVG)."""
    if not initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


# ---------------------------------------------------------------------------------------------
# Wrapping


def _layers(model: nn.Module) -> list[nn.Module]:
    return [*model.encoder.layers, *model.decoder.layers]


def parallelize(
    model: nn.Module,
    mode: str,
    device: torch.device,
    compile: bool = False,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """Move ``model`` to ``device`` and apply activation checkpointing, compile and DDP/FSDP2, in that order.

    Compilation is per transformer block (``Module.compile`` in place, so parameter names do not
    change); FSDP2 shards each encoder/decoder block and then the root, which holds the
    embeddings, norms and projections. Returns the module to call for training; the original
    ``model`` still holds the parameters (unsharded except under FSDP).
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected one of {PARALLEL_MODES}")
    if mode != "none" and not initialized():
        raise ValueError(f"parallel={mode!r} needs a process group: launch with torchrun --nproc_per_node N ...")
    model.to(device)
    model.encoder.activation_checkpointing = activation_checkpointing
    model.decoder.activation_checkpointing = activation_checkpointing
    if compile:
        for layer in _layers(model):
            layer.compile()
    if mode == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if mode == "fsdp":
        # Blocks also return their keys/values (views, unused in training and never changed in place),
        # which FSDP2 warns about on every call.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        for layer in _layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper (FSDP2 and compile-in-place do not wrap)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# Full state dicts (collective under FSDP: call on every rank)


def _options(**kwargs: Any):
    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded parameters by name on the CPU; complete on rank 0 (other ranks may get an empty dict)."""
    return get_model_state_dict(unwrap(model), options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer state keyed by parameter name, unsharded on the CPU (complete on rank 0)."""
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict[str, Any],
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Load full state dicts (every rank passes the same dicts) into a plain, DDP or FSDP2 model."""
    set_model_state_dict(unwrap(model), model_state, options=_options())
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(unwrap(model), optimizer, optimizer_state, options=_options())
