"""Multi-GPU training of one large run with torch's DistributedDataParallel, launched by ``torchrun``.

A benchmark *grid* scales out by running many cells at once (``medhub benchmark --executor ray``); one
*large* run (full ChestX-ray14, CheXpert) scales out with data parallelism instead: ``torchrun`` starts one
process per GPU, each holds a replica of the model, trains on its own shard of every epoch, and gradients
are averaged across processes at each step. These helpers are that pattern in five calls; see
``docs/distributed.md`` for a complete script and the launch commands.

>>> world()  # outside torchrun: a single process
World(rank=0, local_rank=0, size=1)
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


class World(NamedTuple):
    """This process's place in the job: global rank, rank on its node, and number of processes."""

    rank: int
    local_rank: int
    size: int


def world() -> World:
    """Read ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as set by ``torchrun`` (a single process otherwise)."""
    return World(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def setup(backend: str | None = None) -> torch.device:
    """Join the process group (NCCL on GPUs, Gloo on CPUs) and return this process's device.

    Safe to call without ``torchrun``: a single process gets ``cuda:0`` or ``cpu`` and no process group.
    """
    me = world()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{me.local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if me.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
        log.info("rank %d of %d on %s", me.rank, me.size, device)
    return device


def wrap(model: nn.Module, device: torch.device, *, sync_batchnorm: bool = True) -> nn.Module:
    """Move ``model`` to ``device`` and wrap it in DDP when there are several processes.

    ``sync_batchnorm`` computes BatchNorm statistics over the global batch, as a single-GPU run would
    (GPUs only: torch's SyncBatchNorm has no CPU kernel, so CPU/Gloo runs keep per-process statistics).
    The wrapped module is in ``.module`` (save ``unwrap(model).state_dict()``).
    """
    model = model.to(device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    if sync_batchnorm and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sharded_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0, **kwargs
) -> DataLoader:
    """A loader over this process's shard (``batch_size`` per process; the global batch is ``size`` times it).

    Call :func:`set_epoch` at the start of every epoch so that shuffling differs between epochs.
    """
    if not dist.is_initialized():
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kwargs)
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a sharded loader for ``epoch`` (no-op for a plain loader)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def is_main() -> bool:
    """True on the process that should log, evaluate on the full validation set, and write files."""
    return not dist.is_initialized() or dist.get_rank() == 0


def mean_across(value: float, device: torch.device) -> float:
    """Average a number (a loss, a count) over every process."""
    if not dist.is_initialized():
        return float(value)
    tensor = torch.tensor([float(value)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / dist.get_world_size()


def barrier() -> None:
    """Wait for every process (e.g. until rank 0 has written a checkpoint)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once at the end, also after an error, e.g. in a ``finally``).

    On a normal exit it first waits for every process, so none tears its connections down while another
    still uses them (with Gloo that race can abort a process at exit). While an exception is propagating
    it does not wait: the other processes may never arrive.
    """
    if dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()
