"""How a detector is trained: the schedule, the optimizer and the learning rate.

A ``TrainSchedule`` holds every number of a training run. Each detector has three,
``ci``, ``cpu`` and ``gpu`` (``detutils.engine.presets``): seconds for the tests,
minutes on a laptop CPU, and the full GPU recipe. Command-line flags override single
fields.

A run lasts ``epochs`` passes over the training set, or exactly ``iterations``
optimizer steps when that is set (a run shorter than one epoch, or one that ends
mid-epoch: the schedule of a few-minute budget). ``max_minutes`` stops it earlier
when the time is spent; with ``lr_by_time`` the learning rate then follows the clock
too (see ``build_lr_scheduler``), so that a machine slower than planned still ends
its cosine at the deadline instead of stopping half way down it.

The learning rate is set every iteration: a linear warm-up from
``warmup_start_factor * lr`` to ``lr`` over the first ``warmup_epochs`` epochs
(counted in iterations, so a fraction of an epoch works; or ``warmup_iterations``
steps, mmdet's way), then a cosine decay to
``final_lr_fraction * lr`` at the last iteration, or steps of ``step_gamma`` at the
``step_milestones`` (fractions of the whole run). With ``warmup_bias_lr`` the biases
get a group of their own that starts the warm-up at that learning rate and falls
linearly to ``lr`` (YOLO's ``warmup_bias_lr``, 0.1): the detection head's biases
settle within the first iterations, while the weights still warm up.
"""

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "TrainSchedule",
    "apply_lr_multipliers",
    "build_lr_scheduler",
    "build_optimizer",
    "lr_factor",
    "parameter_groups",
    "split_biases",
]

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "step")
# Layers whose weights are scales and shifts of a normalisation: never decayed.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass(frozen=True)
class TrainSchedule:
    """Every number of a training run; ``replace(**overrides)`` gives a modified copy."""

    epochs: int = 12  # passes over the training set
    iterations: int = 0  # optimizer steps of the whole run; 0: epochs x steps per epoch
    batch_size: int = 16  # images per step and per process (DDP: each rank takes this many)
    img_size: int = 640  # side of the square, letterboxed network input (px)
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adamw"
    lr: float = 0.01  # peak learning rate, reached at the end of the warm-up
    momentum: float = 0.937  # SGD momentum, or AdamW's beta1
    weight_decay: float = 5e-4  # applied to weights only, never to norms and biases
    warmup_epochs: float = 1.0  # linear warm-up length, in epochs (may be fractional)
    warmup_iterations: int = 0  # when > 0: the warm-up length in steps instead (mmdet: 500)
    warmup_start_factor: float = 0.01  # warm-up starts at this fraction of lr
    warmup_bias_lr: float = 0.0  # biases start the warm-up at this lr, falling to lr (YOLO: 0.1)
    lr_schedule: str = "cosine"  # "cosine" or "step", after the warm-up
    final_lr_fraction: float = 0.01  # cosine: lr at the last iteration, as a fraction of lr
    step_milestones: tuple[float, ...] = (0.67, 0.89)  # step: fractions of the run
    step_gamma: float = 0.1  # step: factor applied at each milestone
    grad_clip: float = 10.0  # max global L2 norm of the gradients; 0 turns clipping off
    lr_multipliers: tuple[tuple[str, float], ...] = ()  # (name part, factor): parameters
    # whose name contains the part train at factor x lr (the first part that matches);
    # mmdet's ``paramwise_cfg.custom_keys`` with ``lr_mult``
    ema: bool = False  # keep an exponential moving average of the weights (YOLOv8)
    ema_decay: float = 0.9999  # EMA decay once ramped up
    ema_tau: float = 2000.0  # EMA ramp: decay * (1 - exp(-updates / tau))
    amp: bool = False  # mixed precision: float16 + GradScaler on CUDA, bfloat16 on CPU
    channels_last: bool = False  # weights and images in NHWC memory layout (faster convs)
    threads: int = 2  # torch intra-op threads on CPU (1 keeps CI bit-identical)
    workers: int = 2  # DataLoader worker processes
    augment: bool = True  # training-time augmentation of the data transforms
    mosaic: float = 0.0  # with augment: probability that a training image is a mosaic of 4
    scale: float = 0.0  # with augment: random zoom in [1 - scale, 1 + scale] (YOLO: 0.5)
    translate: float = 0.0  # with augment: random shift of the centre, fraction of the side
    hsv: tuple[float, float, float] | None = None  # with augment: HSV gains, not colour jitter
    cache_images: bool = False  # decode the training images into memory once (small sets)
    eval_interval: int = 1  # evaluate every this many epochs (0: only at the end)
    max_minutes: float | None = None  # time budget: stop cleanly (and evaluate) when spent
    lr_by_time: bool = False  # with max_minutes: the LR schedule also advances with the time
    seed: int = 0  # seeds Python, NumPy, torch, the sampler and the workers

    def __post_init__(self) -> None:
        positive_ints = ("epochs", "batch_size", "img_size", "threads")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"schedule field {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.mosaic <= 1.0:
            raise ValueError(f"schedule field mosaic must lie in [0, 1], got {self.mosaic}")
        if not 0.0 <= self.scale < 1.0 or not 0.0 <= self.translate < 1.0:
            raise ValueError("schedule fields scale and translate must lie in [0, 1)")
        if self.hsv is not None and len(self.hsv) != 3:
            raise ValueError(f"schedule field hsv must be 3 gains or None, got {self.hsv}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"schedule field optimizer must be one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"schedule field lr_schedule must be one of {LR_SCHEDULES}")
        if not self.lr > 0:
            raise ValueError(f"schedule field lr must be positive, got {self.lr}")
        non_negative = (
            "iterations", "weight_decay", "warmup_epochs", "warmup_iterations", "warmup_bias_lr",
            "grad_clip", "workers",
        )  # fmt: skip
        for name in (*non_negative, "eval_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"schedule field {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.warmup_start_factor <= 1 or not 0 <= self.final_lr_fraction <= 1:
            raise ValueError("warmup_start_factor must lie in (0, 1], final_lr_fraction in [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"schedule field ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"schedule field max_minutes must be positive, got {self.max_minutes}")
        for entry in self.lr_multipliers:
            if len(entry) != 2 or not isinstance(entry[0], str) or not entry[1] > 0:
                raise ValueError(
                    f"schedule field lr_multipliers takes (name part, positive factor) pairs, "
                    f"got {entry!r}"
                )
        if self.lr_by_time and self.max_minutes is None:
            raise ValueError("schedule field lr_by_time needs max_minutes, the time to plan over")

    def total_iterations(self, iterations_per_epoch: int) -> int:
        """Optimizer steps of the whole run: ``iterations``, else ``epochs`` full epochs."""
        return self.iterations or self.epochs * iterations_per_epoch

    def replace(self, **overrides: Any) -> "TrainSchedule":
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        names = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainSchedule has no field {', '.join(unknown)}")
        changes = {name: value for name, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes)

    def recipe(self) -> dict[str, str]:
        """The schedule in words, one entry per ingredient of a training recipe.

        The training notebooks set these beside the reference's recipe, row by row.
        """
        if self.optimizer == "sgd":
            optimizer = f"SGD, Nesterov momentum {self.momentum:g}"
        else:
            optimizer = f"AdamW, beta1 {self.momentum:g}"
        length = f"{self.iterations} steps" if self.iterations else f"{self.epochs} epochs"
        if self.lr_schedule == "cosine":
            decay = f"cosine to {self.final_lr_fraction:g} lr"
        else:
            unit, total = ("step", self.iterations) if self.iterations else ("epoch", self.epochs)
            milestones = ", ".join(str(round(m * total)) for m in self.step_milestones)
            decay = f"x {self.step_gamma:g} at {unit}s {milestones}"
        if self.warmup_iterations:
            warmup = f"{self.warmup_iterations} steps"
        else:
            warmup = f"{self.warmup_epochs:g} epoch{'' if self.warmup_epochs == 1 else 's'}"
        augment = []
        if self.augment:
            augment.append("flip")
            augment.append("HSV" if self.hsv is not None else "colour jitter")
            if self.scale:
                augment.append(f"scale +-{self.scale:g}")
            if self.translate:
                augment.append(f"translate +-{self.translate:g}")
            if self.mosaic:
                augment.append(f"mosaic {self.mosaic:g}")
        learning_rate = f"{self.lr:g}"
        if self.lr_multipliers:
            learning_rate += "; " + ", ".join(
                f"x {factor:g} for {part}" for part, factor in self.lr_multipliers
            )
        return {
            "optimizer": optimizer,
            "learning rate": learning_rate,
            "weight decay": f"{self.weight_decay:g}",
            "images per step": str(self.batch_size),
            "length": length,
            "image size": f"{self.img_size} px",
            "warm-up": f"{warmup} from {self.warmup_start_factor:g} lr",
            "decay": decay,
            "EMA of the weights": "yes" if self.ema else "no",
            "mixed precision": "yes" if self.amp else "no (float32)",
            "augmentation": ", ".join(augment) or "none",
            "gradient clipping": f"norm {self.grad_clip:g}" if self.grad_clip else "none",
            "time guard": f"{self.max_minutes:g} min" if self.max_minutes else "none",
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values, as stored in checkpoints and printed in logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSchedule":
        """The inverse of ``to_dict`` (tuples come back from lists)."""
        values = dict(values)
        values["step_milestones"] = tuple(values.get("step_milestones", ()))
        values["lr_multipliers"] = tuple(
            (str(part), float(factor)) for part, factor in values.get("lr_multipliers", ())
        )
        if values.get("hsv") is not None:
            values["hsv"] = tuple(values["hsv"])
        return cls(**values)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters: weights decay, norm layers and biases do not.

    Decaying the scale of a BatchNorm or a bias only pulls the network away from
    what it needs (they set no capacity that over-fits), so they get zero decay.

    Returns:
        two optimizer groups: ``{"name": "decay", "weight_decay": weight_decay}`` and
        ``{"name": "no_decay", "weight_decay": 0.0}``, each with its ``params``.

    Reference:
        torchvision ``references/classification/utils.py`` ``set_weight_decay``;
        ultralytics ``build_optimizer`` (groups of weights, norm weights, biases).
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if isinstance(module, NORM_TYPES) or name == "bias":
                no_decay.append(parameter)
            else:
                decay.append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def split_biases(groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """``parameter_groups`` with the biases moved out of ``no_decay`` into a ``bias`` group.

    Returns:
        three groups, ``decay``, ``no_decay`` (norm weights and shifts) and ``bias``
        (the ``bias`` of every other layer, no decay), the first two as given.
    """
    biases = {
        id(parameter)
        for module in model.modules()
        if not isinstance(module, NORM_TYPES)
        for name, parameter in module.named_parameters(recurse=False)
        if name == "bias"
    }
    decay, no_decay = groups
    kept = [parameter for parameter in no_decay["params"] if id(parameter) not in biases]
    moved = [parameter for parameter in no_decay["params"] if id(parameter) in biases]
    return [
        decay,
        {**no_decay, "params": kept},
        {"params": moved, "weight_decay": 0.0, "name": "bias"},
    ]


def apply_lr_multipliers(
    groups: list[dict[str, Any]],
    model: nn.Module,
    multipliers: tuple[tuple[str, float], ...],
    lr: float,
) -> list[dict[str, Any]]:
    """Split each group by learning-rate factor: a parameter whose name contains a part
    of ``multipliers`` (the first that matches) trains at that factor times ``lr``.

    Returns:
        the groups at factor 1 first (so ``param_groups[0]`` carries the schedule's own
        rate), then one group per (group, factor) that has parameters, each with
        ``lr`` and ``lr_mult`` set and named ``"<group> x<factor>"``.

    Reference: mmengine ``DefaultOptimWrapperConstructor`` (``custom_keys`` with
        ``lr_mult``), as Deformable DETR's config uses it.
    """
    if not multipliers:
        return groups
    names = {id(parameter): name for name, parameter in model.named_parameters()}

    def factor_of(parameter: nn.Parameter) -> float:
        name = names.get(id(parameter), "")
        return next((factor for part, factor in multipliers if part in name), 1.0)

    plain, scaled = [], []
    for group in groups:
        by_factor: dict[float, list[nn.Parameter]] = {}
        for parameter in group["params"]:
            by_factor.setdefault(factor_of(parameter), []).append(parameter)
        plain.append({**group, "params": by_factor.pop(1.0, []), "lr": lr, "lr_mult": 1.0})
        for factor, params in by_factor.items():
            name = f"{group.get('name', 'group')} x{factor:g}"
            scaled.append(
                {**group, "params": params, "lr": lr * factor, "lr_mult": factor, "name": name}
            )
    return plain + scaled


def build_optimizer(model: nn.Module, schedule: TrainSchedule) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW, on ``parameter_groups``.

    With ``schedule.warmup_bias_lr`` the biases form a third group (``split_biases``),
    so that the LR scheduler can warm them up on their own.

    Reference:
        ultralytics ``engine/trainer.py`` ``build_optimizer``.
    """
    groups = parameter_groups(model, schedule.weight_decay)
    if schedule.warmup_bias_lr > 0:
        groups = split_biases(groups, model)
    groups = apply_lr_multipliers(groups, model, schedule.lr_multipliers, schedule.lr)
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=schedule.lr, momentum=schedule.momentum, nesterov=True)
    # The fused kernel updates every tensor in one pass: on a CPU, the default per-tensor
    # loop of AdamW can take a third of a small model's training step.
    devices = {parameter.device.type for group in groups for parameter in group["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(
        groups, lr=schedule.lr, betas=(schedule.momentum, 0.999), fused=fused or None
    )


def lr_factor(
    iteration: int,
    total_iterations: int,
    schedule: TrainSchedule,
    warmup: int,
    bias: bool = False,
) -> float:
    """The learning rate at ``iteration`` (0-based) as a fraction of ``schedule.lr``.

    Args:
        iteration: steps already taken.
        total_iterations: steps of the whole run.
        schedule: gives the shape (warm-up start, cosine end or step milestones).
        warmup: warm-up length in iterations.
        bias: the factor of the ``bias`` group: with ``schedule.warmup_bias_lr`` the
            warm-up starts at ``warmup_bias_lr / lr`` instead of ``warmup_start_factor``.

    Reference:
        torchvision ``LinearLR`` then ``CosineAnnealingLR`` / ``MultiStepLR``, as chained
        by ``references/detection/train.py``; ultralytics ``one_cycle`` for the cosine,
        its ``warmup_bias_lr`` for the biases' warm-up.
    """
    if iteration < warmup:
        start = schedule.warmup_start_factor
        if bias and schedule.warmup_bias_lr > 0:
            start = schedule.warmup_bias_lr / schedule.lr
        return start + (1.0 - start) * iteration / warmup
    if schedule.lr_schedule == "step":
        done = iteration / max(1, total_iterations)
        return schedule.step_gamma ** sum(
            done >= milestone for milestone in schedule.step_milestones
        )
    progress = min(1.0, (iteration - warmup) / max(1, total_iterations - 1 - warmup))
    final = schedule.final_lr_fraction
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: TrainSchedule,
    iterations_per_epoch: int,
    time_spent: Callable[[], float] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per iteration, following ``lr_factor``.

    Args:
        optimizer: its groups' ``lr`` become ``schedule.lr`` times the factor.
        schedule: gives the length and the shape of the schedule.
        iterations_per_epoch: optimizer steps per epoch (for epochs and the warm-up).
        time_spent: with ``schedule.lr_by_time``, returns the fraction of the time
            budget spent so far (the trainer counts from its first iteration, so that
            start-up costs are not taken for slowness). The schedule then stands at
            the larger of the iterations done and ``time_spent() * (total - 1)``: a
            run that keeps to its plan follows the iterations exactly, a slower one is
            pulled along by the clock and reaches the end of its cosine at the deadline.

    Reference:
        torchvision ``references/detection/train.py`` (warm-up, then cosine or
        multi-step, per iteration); ultralytics ``one_cycle`` cosine.
    """
    total = schedule.total_iterations(iterations_per_epoch)
    warmup = schedule.warmup_iterations or round(schedule.warmup_epochs * iterations_per_epoch)

    def factor_of(bias: bool) -> Callable[[int], float]:
        def factor(iteration: int) -> float:
            if time_spent is not None and schedule.lr_by_time:
                by_time = math.floor(min(1.0, time_spent()) * (total - 1))
                iteration = max(iteration, by_time)
            return lr_factor(iteration, total, schedule, warmup, bias)

        return factor

    # a bias group split by lr_multipliers is named "bias x<factor>"
    factors = [
        factor_of(str(group.get("name", "")).split(" ")[0] == "bias")
        for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
