"""Process-group helpers: the same code runs alone, on one GPU, or under ``torchrun``.

Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on GPUs, Gloo on CPUs),
each rank takes ``LOCAL_RANK``'s device, and only rank 0 writes files.

Usage::

    ctx = DistContext.from_env()
    model = ctx.wrap(model)
    if ctx.is_main: save(...)
    exit_worker(0)                   # last line of a torchrun worker script
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if use_cuda:
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            atexit.register(shutdown, wait_for_peers=False)   # a group still open, while Python can free its tensors
        return cls(rank, world, local, dev)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            if self.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:   # torch's SyncBatchNorm refuses CPU tensors
                from .sync_ops import convert_cpu_sync_batchnorm

                model = convert_cpu_sync_batchnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def shutdown(wait_for_peers: bool = True) -> None:
    """End this process's part in the process group, if it has one.

    With ``wait_for_peers`` every rank first meets at a barrier, so no rank closes its connections
    while a peer still uses them (Gloo aborts a process whose peer vanished mid-exchange). After a
    failure pass ``False``: the peers may be stuck in another collective and torchrun stops them.

    Usage: ``shutdown()`` at the end of a torchrun worker.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker with ``code``: leave the process group, flush, and exit at once.

    Outside a process group this does nothing and returns. Inside one it never returns: it calls
    ``shutdown`` (meeting the peers first when ``code`` is 0), flushes the standard streams and the
    logging handlers, and leaves through ``os._exit`` without the interpreter's teardown. Why: DDP
    and ``torch.distributed.nn`` keep the Gloo group and its threads alive after
    ``destroy_process_group``, and freeing it while the interpreter finalises now and then aborts a
    worker whose work was done ("terminate called without an active exception", SIGABRT), which
    torchrun reports as a failed stage.

    Usage: ``exit_worker(0)`` as the last line of a torchrun worker; the ``renalclip`` CLI does it.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    try:
        shutdown(wait_for_peers=code == 0)
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
