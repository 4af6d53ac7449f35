"""One process or several: what ``torchrun`` sets up, and the few collectives we use.

``torchrun --nproc_per_node=N -m detutils.train ...`` starts N processes and gives
each the environment variables ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the
rendezvous address). Each process joins the group (``nccl`` on CUDA, ``gloo`` on CPU),
takes the GPU of its local rank, trains on its share of the data, and
DistributedDataParallel averages the gradients. Only rank 0 writes checkpoints and
logs. Without those variables everything below degrades to a single process.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    local_rank: int = 0  # rank on this machine: the GPU it takes
    world_size: int = 1  # processes in all
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes, or stay a single process.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``; under DDP on CUDA each process takes
            ``cuda:LOCAL_RANK``.

    Reference:
        torchvision ``references/detection/utils.py`` ``init_distributed_mode``.
    """
    base = resolve_device(device)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext(device=base)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if base.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            device_id=base if base.type == "cuda" else None,
        )
    return DistributedContext(rank, local_rank, world_size, base)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (a no-op for one process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all processes (the tensor itself for one process)."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order: ``[value]`` for one process."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value``, on every process."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
