"""torchrun set-up: join the process group from the environment, and this process's place in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def process_group_from_env() -> Iterator[int]:
    """Join torchrun's process group for the duration, when ``WORLD_SIZE`` > 1; yields this rank.

    Under ``torchrun --nproc_per_node=K`` every process runs the same command; :func:`robustwrap.evaluation.run_evaluation`
    then shards batches over the K ranks. NCCL on a GPU, gloo on CPUs. A process group that is
    already initialised is used as it is and left open; one started here is destroyed on exit.
    Without torchrun (``WORLD_SIZE`` unset or 1) this yields rank 0 and does nothing.
    """
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        yield torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for outside a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
