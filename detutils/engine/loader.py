"""DataLoaders that are reproducible, shard the data under DDP, and keep the GPU fed.

Training batches come from a ``DistributedSampler`` always, with one replica when
there is one process: its shuffle depends only on ``(seed, epoch)``, so a resumed run
draws the same batches, and N processes together see exactly the batches one process
would see (rank r takes positions r, r + N, ... of the same permutation).

Each epoch reseeds the loader's generator from ``(seed, epoch, rank)``; the workers'
seeds come from it, and ``seed_worker`` passes them on to NumPy and Python, so random
augmentation in workers repeats run to run. Memory is pinned when training on CUDA.
"""

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detutils.distributed import DistributedContext

__all__ = ["build_eval_loader", "build_train_loader", "seed_worker", "set_loader_epoch"]


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and Python in a DataLoader worker from the seed torch gave it.

    Reference:
        PyTorch docs, "Reproducibility: DataLoader" (``seed_worker``).
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 -- the global generator that augmentation uses
    random.seed(seed)


def _default_collate() -> Callable:
    from detutils.data import collate

    return collate


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    context: DistributedContext,
    workers: int = 2,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """The shuffled, sharded training loader; call ``set_loader_epoch`` each epoch.

    Args:
        dataset: yields ``(image (3, S, S), target dict)``.
        batch_size: images per step of this process.
        context: rank, world size and device of this process.
        workers: worker processes (0 loads in the training process).
        seed: seed of the shuffle and of the workers.
        collate_fn: batches a list of samples; default ``detutils.data.collate``.

    Reference:
        torchvision ``references/detection/train.py`` (DistributedSampler, per-epoch
        ``set_epoch``).
    """
    sampler = DistributedSampler(
        dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn or _default_collate(),
        pin_memory=context.device.type == "cuda",
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int, rank: int = 0) -> None:
    """Make epoch ``epoch`` of ``loader`` depend on ``(seed, epoch, rank)`` alone."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    context: DistributedContext,
    workers: int = 2,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """The evaluation loader: in order, rank r takes images r, r + N, ... (no padding).

    Unlike ``DistributedSampler``, no image is repeated to even out the shares, so
    the detections gathered from all ranks hold every image exactly once.
    """
    indices = list(range(context.rank, len(dataset), context.world_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        num_workers=workers,
        collate_fn=collate_fn or _default_collate(),
        pin_memory=context.device.type == "cuda",
        worker_init_fn=seed_worker,
    )
