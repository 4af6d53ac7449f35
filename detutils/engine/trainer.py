"""The training loop that every detector shares.

One iteration, in order (the names are those of the code below):

1. forward, under ``torch.autocast`` when the schedule asks for mixed precision
   (float16 on CUDA, bfloat16 on a CPU that computes in it natively); then
   ``model.loss``, in float32 on the outputs cast back up, gives a dict of scalars
   with ``"loss"`` the total;
2. the loss components are averaged over the processes (for the log, and so every
   rank sees a NaN that any rank met); a non-finite loss stops the run;
3. backward through the ``GradScaler``, unscale, clip the gradient norm, step;
4. the learning rate moves one iteration along its schedule, the EMA follows.

Each epoch ends with an evaluation (every ``eval_interval`` epochs and at the end)
and a checkpoint written atomically by rank 0. ``resume`` restores every state, so
a killed run continues exactly where its last checkpoint left it.
"""

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from detutils.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    init_distributed,
)
from detutils.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from detutils.engine.ema import ModelEMA
from detutils.engine.evaluator import evaluate
from detutils.engine.loader import build_eval_loader, build_train_loader, set_loader_epoch
from detutils.engine.log import EVAL_LOG, TRAIN_LOG, CsvLog, ProgressLines, bar_shows, progress_bar
from detutils.engine.pretrain import load_pretrained
from detutils.engine.schedule import TrainSchedule, build_lr_scheduler, build_optimizer

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "autocast_dtype",
    "cpu_has_bfloat16",
    "intra_op_threads",
    "move_targets",
    "seed_everything",
    "to_float32",
    "train",
]


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration and each component."""


@dataclass
class TrainResult:
    """What ``train`` leaves behind."""

    model: nn.Module = field(repr=False)  # the trained model (unwrapped from DDP), eval mode
    ema_model: nn.Module | None = field(repr=False)  # EMA of its weights, if the schedule keeps one
    epochs_done: int  # epochs completed (the last may be cut short by the time budget)
    iterations: int  # optimizer steps taken, resumed ones included
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    checkpoint: Path | None = None  # last.pt of the run folder (rank 0 only)
    out_of_time: bool = False  # True when max_minutes stopped the run

    @property
    def best_model(self) -> nn.Module:
        """The weights to predict with: the EMA when there is one."""
        return self.ema_model if self.ema_model is not None else self.model


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- the global generator, for code using it
    torch.manual_seed(seed)


def move_targets(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Every tensor of every target dict on ``device``; other values as they are."""
    return [
        {
            key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in target.items()
        }
        for target in targets
    ]


def cpu_has_bfloat16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 kernels natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision run on ``device``, or None for float32.

    float16 on CUDA (its small range needs the ``GradScaler``); bfloat16 on a CPU
    whose oneDNN computes in it natively (bfloat16 keeps float32's exponent, so no
    loss scaling). Other CPUs would only emulate it, slower than float32: they train
    in float32, with a warning.

    Reference:
        PyTorch docs, "Automatic Mixed Precision package - torch.amp" (CUDA float16
        with ``GradScaler``; CPU autocast in bfloat16).
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bfloat16():
        return torch.bfloat16
    warnings.warn(
        f"AMP: no native low-precision kernels on {device.type} here; training in float32",
        stacklevel=3,
    )
    return None


def to_float32(outputs: Any) -> Any:
    """Every floating tensor in nested lists, tuples and dicts cast to float32."""
    if torch.is_tensor(outputs):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {key: to_float32(value) for key, value in outputs.items()}
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):  # a named tuple
        return type(outputs)(*(to_float32(value) for value in outputs))
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(value) for value in outputs)
    return outputs


def _loss_message(epoch: int, iteration: int, names: list[str], values: torch.Tensor) -> str:
    components = ", ".join(
        f"{name}={value:.4g}" for name, value in zip(names, values.tolist(), strict=True)
    )
    return f"non-finite loss at epoch {epoch}, iteration {iteration}: {components}"


@contextlib.contextmanager
def intra_op_threads(device: torch.device, threads: int) -> Iterator[None]:
    """On the CPU, run the block with ``threads`` intra-op threads, then restore the count."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(
    model: nn.Module,
    train_set: Dataset,
    schedule: TrainSchedule,
    val_set: Dataset | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    resume: str | Path | None = None,
    collate_fn=None,
    class_names: list[str] | None = None,
    progress: bool = True,
    context: DistributedContext | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    pretrained: bool = True,
) -> TrainResult:
    """Train ``model`` on ``train_set`` following ``schedule``.

    On the CPU, torch's intra-op thread count is ``schedule.threads`` during the run,
    and what it was before afterwards. With
    ``schedule.amp`` the forward pass runs under autocast (see ``autocast_dtype``), and
    the loss in float32. With ``schedule.channels_last`` the weights and every batch
    are laid out channels-last (NHWC) during the run, the layout oneDNN's and cuDNN's
    convolutions run fastest in; the model is handed back in the usual layout. Rank 0
    writes ``last.pt`` (after every epoch) and the logs into ``out_dir``. A run stopped
    by its time budget counts its last, partial epoch as done: resuming from it starts
    the next epoch. A resumed run continues the schedule, the sampler's order and every
    random stream of the checkpoint, so its weights equal those of an uninterrupted run.

    Args:
        model: a detector with ``name``, ``loss`` and ``predict`` (seed before
            building it: every rank must start from the same weights).
        train_set: yields ``(image (3, S, S), target)``, targets as in ``detutils.data``.
        schedule: every number of the run.
        val_set: a COCO dataset to evaluate on, or None.
        out_dir: run folder for checkpoints and logs; None writes nothing.
        device: ``auto``, ``cpu`` or ``cuda`` (ignored when ``context`` is given).
        resume: a checkpoint of this model to continue from.
        collate_fn: batches samples; default ``detutils.data.collate``.
        class_names: stored in checkpoints; default ``train_set.class_names``.
        progress: show a progress bar on a terminal; elsewhere (CI, a pipe) a line about
            every minute with the iteration, the loss and the minutes left.
        context: the process's rank and device; default ``init_distributed(device)``.
        on_step: called after every optimizer step with the number of steps done and
            the network that evaluation would use (the EMA when the schedule keeps one),
            for example to keep a copy of the weights every 100 steps.
        pretrained: a new run (not a resumed one) first loads the backbone weights that
            ``model.config.pretrained`` names, as mmdet's ``init_weights`` does
            (:func:`detutils.engine.pretrain.load_pretrained`; the course's own are
            pre-trained on first use); False starts from the model's initialisation.

    Returns:
        ``TrainResult``.

    Raises:
        NonFiniteLossError: a loss became NaN or infinite; no checkpoint is written.
        CheckpointError: ``resume`` holds another model or another number of classes.
        ValueError: the training set gives no batch.

    Reference:
        torchvision ``references/detection/engine.py`` ``train_one_epoch``;
        ultralytics ``engine/trainer.py`` (AMP, clipping, EMA, time budget).
    """
    context = context or init_distributed(device)
    device = context.device
    with intra_op_threads(device, schedule.threads):  # restored on the way out
        amp_dtype = autocast_dtype(schedule.amp, device)  # None: float32 throughout
        out_dir = Path(out_dir) if out_dir is not None else None
        write = context.is_main and out_dir is not None
        class_names = list(class_names or getattr(train_set, "class_names", []))

        if pretrained and resume is None:
            source = load_pretrained(model, verbose=context.is_main)
            if source and context.is_main and progress:
                print(f"backbone weights: {source}")
        seed_everything(schedule.seed + context.rank)  # ranks augment differently
        model.to(device)
        if schedule.channels_last:  # before the EMA copy and the optimizer see the weights
            model.to(memory_format=torch.channels_last)
        ema = ModelEMA(model, schedule.ema_decay, schedule.ema_tau) if schedule.ema else None
        loader = build_train_loader(
            train_set, schedule.batch_size, context, schedule.workers, schedule.seed, collate_fn
        )
        if len(loader) == 0:
            raise ValueError("the training set is empty: no batch to train on")
        optimizer = build_optimizer(model, schedule)
        spent = [0.0]  # fraction of the time budget spent, the same on every rank (lr_by_time)
        lr_scheduler = build_lr_scheduler(optimizer, schedule, len(loader), lambda: spent[0])
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        start_epoch, iteration, metrics = 0, 0, {}
        if resume is not None:
            state = load_checkpoint(resume, model_name=getattr(model, "name", None))
            if state["num_classes"] != getattr(model, "num_classes", None):
                raise CheckpointError(
                    f"checkpoint {resume} has {state['num_classes']} classes, the model "
                    f"{getattr(model, 'num_classes', None)}"
                )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            lr_scheduler.load_state_dict(state["lr_scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None and state["ema"] is not None:
                ema.load_state_dict(state["ema"])
            if len(state["rng"]) == context.world_size:  # same ranks: continue their streams
                restore_rng_state(state["rng"][context.rank])
            else:
                warnings.warn(
                    f"resuming {len(state['rng'])} process(es) as {context.world_size}: the "
                    "random states are not restored (augmentation and sampling take new "
                    "streams), so the run will not repeat an uninterrupted one exactly",
                    stacklevel=2,
                )
            start_epoch, iteration, metrics = state["epoch"], state["iteration"], state["metrics"]
        network = model
        if context.distributed:
            device_ids = [device.index] if device.type == "cuda" else None
            network = DistributedDataParallel(model, device_ids=device_ids)

        keep = start_epoch + 1 if resume is not None else None
        train_log = CsvLog(out_dir / TRAIN_LOG if write else "", write, keep_before_epoch=keep)
        eval_log = CsvLog(out_dir / EVAL_LOG if write else "", write, keep_before_epoch=keep)
        budget = 60 * schedule.max_minutes if schedule.max_minutes else None
        deadline = time.monotonic() + budget if budget else None
        clock_start = None  # lr_by_time: the clock starts at the first loss, after start-up costs
        out_of_time, epochs_done, checkpoint = False, start_epoch, None
        # A run of ``schedule.iterations`` steps ends inside its last epoch.
        total_iterations = schedule.total_iterations(len(loader))
        num_epochs = math.ceil(total_iterations / len(loader))
        lines = ProgressLines(
            total_iterations, progress and context.is_main and not bar_shows(), deadline=deadline
        )
        for epoch in range(start_epoch, num_epochs):
            set_loader_epoch(loader, epoch, schedule.seed, context.rank)
            network.train()
            description = f"epoch {epoch + 1}/{num_epochs}"
            for images, targets in progress_bar(
                loader, len(loader), description, progress and context.is_main
            ):
                images = images.to(device, non_blocking=True)
                if schedule.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = move_targets(targets, device)
                # 1. forward (mixed precision: the convolutions in float16 / bfloat16), loss
                if amp_dtype is not None:
                    with torch.autocast(device.type, dtype=amp_dtype):
                        outputs = network(images)
                    outputs = to_float32(outputs)  # boxes, IoUs and logs need float32
                else:
                    outputs = network(images)
                losses = model.loss(outputs, targets)
                # 2. averaged over the ranks; the clock rides along so all ranks stop together
                names = ["loss"] + sorted(name for name in losses if name != "loss")
                now = time.monotonic()
                late = float(deadline is not None and now > deadline)
                clock_start = now if clock_start is None else clock_start
                span = max(deadline - clock_start, 1e-6) if deadline else None
                fraction = (now - clock_start) / span if span else 0.0
                values = torch.stack([losses[name].detach().float() for name in names])
                reduced = all_reduce_mean(torch.cat([values, values.new_tensor([late, fraction])]))
                values, out_of_time = reduced[:-2].cpu(), bool(reduced[-2] > 0)
                spent[0] = float(reduced[-1])
                if not torch.isfinite(values).all():
                    raise NonFiniteLossError(_loss_message(epoch + 1, iteration + 1, names, values))
                # 3. backward, unscale, clip, step
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                if schedule.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                # 4. schedule and EMA
                learning_rate = optimizer.param_groups[0]["lr"]
                lr_scheduler.step()
                if ema is not None:
                    ema.update(model)
                iteration += 1
                row = {"epoch": epoch + 1, "iteration": iteration, "lr": learning_rate}
                logged = dict(zip(names, values.tolist(), strict=True))
                train_log.write(row | logged)
                lines.update(iteration, logged)
                if on_step is not None:
                    on_step(iteration, ema.model if ema is not None else model)
                if out_of_time or iteration == total_iterations:
                    break

            epochs_done = epoch + 1
            last = epochs_done == num_epochs or out_of_time
            interval = schedule.eval_interval
            if val_set is not None and (last or (interval and epochs_done % interval == 0)):
                eval_model = ema.model if ema is not None else model
                eval_loader = build_eval_loader(
                    val_set, schedule.batch_size, context, schedule.workers, collate_fn
                )
                metrics = evaluate(eval_model, eval_loader, device).metrics
                eval_log.write({"epoch": epochs_done, "iteration": iteration} | metrics)
            rng_states = all_gather_objects(capture_rng_state())
            if write:
                state = {
                    "model_name": getattr(model, "name", type(model).__name__),
                    "num_classes": getattr(model, "num_classes", None),
                    "class_names": class_names,
                    "schedule": schedule.to_dict(),
                    "epoch": epochs_done,
                    "iteration": iteration,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_states,
                    "metrics": metrics,
                }
                checkpoint = save_checkpoint(state, out_dir / "last.pt")
            barrier()
            if out_of_time:
                break

        if schedule.channels_last:  # hand back weights in the usual layout
            model.to(memory_format=torch.contiguous_format)
            if ema is not None:
                ema.model.to(memory_format=torch.contiguous_format)
        model.eval()
        return TrainResult(
            model=model,
            ema_model=ema.model if ema is not None else None,
            epochs_done=epochs_done,
            iterations=iteration,
            metrics=metrics,
            checkpoint=checkpoint,
            out_of_time=out_of_time,
        )
