"""The training schedules of every detector, by command-line name: ``ci``, ``cpu``, ``gpu``.

The engine owns the schedules; a model's config describes only the network and its
losses. ``schedules_for(name)`` gives a new dict of the three each time, so a notebook
that changes one changes only its own copy.

    ci   seconds: does everything run? The tests and the notebooks in CI use it.
    cpu  minutes: a meaningful result on a plain 2-core laptop CPU, in float32.
    gpu  the reference's recipe, or a stated difference from it.

The figures each ``cpu`` schedule reaches are measured by ``benchmarks/sample_efficiency.py``
and ``benchmarks/cpu_budget.py`` and listed in the README, not here: they move with the
machine.
"""

from collections.abc import Callable
from types import MappingProxyType

from torch import nn

from detutils.engine.schedule import TrainSchedule

__all__ = [
    "SCHEDULE_PRESETS",
    "DETR_LR_MULTIPLIERS",
    "atss_schedules",
    "co_detr_schedules",
    "deformable_detr_schedules",
    "faster_rcnn_schedules",
    "ci_schedule",
    "cpu_budget_schedule",
    "default_schedules",
    "nanodet_schedules",
    "schedules_for",
    "yolov3_schedules",
    "yolov8_schedules",
]


def default_schedules() -> dict[str, TrainSchedule]:
    """Schedules for a detector whose config names none: ``ci``, ``cpu`` and ``gpu``."""
    return {
        "ci": TrainSchedule(
            epochs=1, batch_size=4, img_size=64, warmup_epochs=0.0, threads=1, workers=0
        ),
        "cpu": TrainSchedule(epochs=30, batch_size=8, img_size=256, max_minutes=10.0),
        "gpu": TrainSchedule(
            epochs=100, batch_size=32, img_size=640, amp=True, ema=True, workers=8
        ),
    }


def ci_schedule() -> TrainSchedule:
    """The ``ci`` schedule of the course's detectors: does everything run?

    Three AdamW steps of four 64 px images, no augmentation, on one thread without
    worker processes (seconds, and bit-identical from run to run), evaluated once.
    """
    return TrainSchedule(
        iterations=3, batch_size=4, img_size=64, optimizer="adamw", lr=0.002,
        momentum=0.9, warmup_epochs=0.0, augment=False, eval_interval=0, threads=1,
        workers=0,
    )  # fmt: skip


def cpu_budget_schedule(
    iterations: int,
    lr: float,
    img_size: int = 256,
    amp: bool = False,
    channels_last: bool = False,
) -> TrainSchedule:
    """A ``cpu`` schedule for ten minutes of a 2-core CPU, evaluation included.

    ``iterations`` steps of 16 images at ``img_size`` px with AdamW at ``lr`` (beta1
    0.9) after half an epoch of warm-up, then a cosine to 1 % of it; flips and colour
    jitter on images decoded into memory once; one evaluation, at the end. The plan is
    in iterations, so the cosine reaches its floor at the last one; ``max_minutes``
    (8.75) stops a slower machine and ``lr_by_time`` then ends the cosine at that
    deadline. The plan is float32, which every CPU runs; ``amp`` (bfloat16
    convolutions, only on a CPU with native kernels) and ``channels_last`` make each
    step cheaper, so more of them fit. What each detector's schedule reaches is measured
    by ``benchmarks/sample_efficiency.py`` (AP50 after a number of steps, which hardly
    depends on the CPU) and ``benchmarks/cpu_budget.py`` (AP50 against minutes), and
    listed in the README.
    """
    return TrainSchedule(
        iterations=iterations, batch_size=16, img_size=img_size, optimizer="adamw", lr=lr,
        momentum=0.9, warmup_epochs=0.5, augment=True, cache_images=True,
        eval_interval=0, threads=2, workers=1, max_minutes=8.75, lr_by_time=True, amp=amp,
        channels_last=channels_last,
    )  # fmt: skip


def yolov3_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of YOLOv3 and YOLOv3-tiny.

    ci   three steps of four 64 px images on one thread, no worker process.
    cpu  YOLOv3-tiny on the shapes set: 500 float32 steps of 16 images at 320 px, AdamW
         at 0.002, within ten minutes of a 2-core CPU where the steps are fast enough
         (the time guard ends it earlier elsewhere), evaluation of the 500 validation
         images included. The full YOLOv3 does about twelve times the arithmetic per
         image; on this schedule it only starts learning. See ``cpu_budget_schedule``
         (``--amp`` adds bfloat16 on a CPU that has it). The loss keeps the reference's
         COCO gains: with the class gain scaled by C / 80, as the reference's train.py
         does, the same 500 steps reached AP50 0.259 instead of 0.441.
    gpu  the reference's recipe (``train.py`` of ultralytics/yolov3, archive branch):
         SGD with Nesterov momentum 0.937, lr 0.01, weight decay 5e-4, 300 epochs, 64
         images per optimizer step (the reference accumulates 4 batches of 16), 3 epochs
         of warm-up with the biases' rate falling from 0.1, a cosine to 0.05 lr, an EMA
         of the weights, mixed precision, mosaic and the reference's HSV gains, at
         416 px. Differences from the reference: it trains multi-scale, 320 to 640 px,
         and tests at 640 px, which the course's trainer does not do; the trainer
         clips the gradient norm at 10; the warm-up is 3 epochs (the reference: at
         least 500 steps), does not ramp the momentum and the weight decay, and does
         not ramp ``gr`` from 0 to 1 (``YOLOv3Config.gr`` stays 1); the model keeps
         the COCO class gain 37.4 (the reference scales it by C / 80; notebook 12).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    return {
        "ci": ci_schedule(),
        "cpu": cpu_budget_schedule(iterations=500, lr=0.002, img_size=320, channels_last=True),
        "gpu": TrainSchedule(
            epochs=300, batch_size=64, img_size=416, optimizer="sgd", lr=0.01,
            momentum=0.937, weight_decay=5e-4, warmup_epochs=3.0, warmup_bias_lr=0.1,
            final_lr_fraction=0.05, ema=True, amp=True, mosaic=1.0,
            hsv=(0.0138, 0.678, 0.36), workers=8,
        ),
    }  # fmt: skip


def nanodet_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of NanoDet-m.

    ci   three steps of four 64 px images on one thread, no worker process.
    cpu  NanoDet-m on the shapes set: 500 float32 steps of 16 images at 384 px, AdamW at
         0.008, within ten minutes of a 2-core CPU, evaluation of the 500 validation
         images included; see ``cpu_budget_schedule``. NanoDet-m's steps are cheap, so
         it can afford larger images than the set's 320 px: at 320 px, and with lr 0.004
         or 0.012, or with an EMA of the weights, the same 500 steps scored lower.
         bfloat16 (``amp``) does not pay here: the depthwise convolutions of ShuffleNetV2
         are bound by memory, not arithmetic.
    gpu  the recipe of NanoDet's ``config/nanodet-m.yml``: SGD with momentum 0.9, lr
         0.14 for 192 images a step, weight decay 1e-4, 280 epochs at 320 px, the rate
         divided by 10 at epochs 240, 260 and 275, random scale 0.6 to 1.4 and shift
         up to 0.2 of the side. Differences: SGD with Nesterov momentum (NanoDet: plain
         momentum), a warm-up of one epoch from 1 % of lr (NanoDet: 300 steps from
         10 %), the gradient norm clipped at 10 (NanoDet: 35), mixed precision
         (NanoDet: float32), the course's colour jitter for NanoDet's brightness,
         contrast and saturation, and random initial weights (NanoDet starts from an
         ImageNet-trained ShuffleNetV2).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    return {
        "ci": ci_schedule(),
        "cpu": cpu_budget_schedule(iterations=500, lr=0.008, img_size=384, channels_last=True),
        "gpu": TrainSchedule(
            epochs=280, batch_size=192, img_size=320, optimizer="sgd", lr=0.14,
            momentum=0.9, weight_decay=1e-4, warmup_epochs=1.0, lr_schedule="step",
            step_milestones=(240 / 280, 260 / 280, 275 / 280), step_gamma=0.1, amp=True,
            scale=0.4, translate=0.2, workers=8,
        ),
    }  # fmt: skip


def yolov8_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of YOLOv8n and YOLOv8s.

    ci   three steps of four 64 px images on one thread, no worker process.
    cpu  YOLOv8n on the shapes set: 500 float32 steps of 16 images at 320 px, AdamW at
         0.002, within ten minutes of a 2-core CPU where the steps are fast enough (the
         time guard ends it earlier elsewhere), evaluation of the 500 validation images
         included; see ``cpu_budget_schedule`` (``--amp`` adds bfloat16). Mosaic (as
         ultralytics trains) does not pay in a run of a few epochs: mosaics are harder
         images, and so short a run has no over-fitting to prevent.
    gpu  ultralytics' default recipe (``cfg/default.yaml``) with 64 images per step:
         SGD with Nesterov momentum 0.937, lr 0.01, weight decay 5e-4, 3 warm-up
         epochs with the biases' rate falling from 0.1, decay to 1 % of lr, EMA of the
         weights, mixed precision, mosaic, random scale 0.5 and shift 0.1, HSV gains
         (0.015, 0.7, 0.4), 500 epochs at 640 px (ultralytics' YOLOv8 models were
         trained this long). Differences: a cosine instead of ultralytics' linear
         decay; mosaic in every epoch (ultralytics closes it for the last 10); no
         momentum ramp in the warm-up; 64 images a step (ultralytics: batches of 16
         whose gradients are accumulated to its nominal 64).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    return {
        "ci": ci_schedule(),
        "cpu": cpu_budget_schedule(iterations=500, lr=0.002, img_size=320, channels_last=True),
        "gpu": TrainSchedule(
            epochs=500, batch_size=64, img_size=640, optimizer="sgd", lr=0.01,
            momentum=0.937, weight_decay=5e-4, warmup_epochs=3.0, warmup_bias_lr=0.1,
            final_lr_fraction=0.01, ema=True, amp=True, mosaic=1.0, scale=0.5,
            translate=0.1, hsv=(0.015, 0.7, 0.4), workers=8,
        ),
    }  # fmt: skip


def atss_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of ATSS.

    ci   three steps of four 64 px images on one thread, no worker process.
    cpu  ``atss-r18half-fpn64`` on the shapes set, from the backbone the course
         pre-trains (notebook 04): 500 float32 steps of 16 images at 320 px, AdamW at
         0.002, within twenty minutes of a 2-core CPU, evaluation of the 500 validation
         images included; see ``cpu_budget_schedule``.
    gpu  mmdet's 1x schedule (``schedule_1x.py`` with the ATSS config's lr): SGD with
         momentum 0.9, lr 0.01 for 16 images a step, weight decay 1e-4, 12 epochs, the
         rate divided by 10 after epochs 8 and 11, a linear warm-up over 500 steps from
         0.001 lr, no gradient clipping, ImageNet weights for the ResNet-50
         (``ATSSConfig.pretrained``), stem and stage 2 frozen, batch norms fixed.
         Differences: Nesterov momentum (mmdet: plain); square 800 px letterboxed images
         (mmdet: the shorter side 800, the longer at most 1333, kept ratio); flip and
         colour jitter (mmdet: flip only); mixed precision (mmdet: float32).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    cpu = cpu_budget_schedule(iterations=500, lr=0.002, img_size=320, channels_last=True)
    return {
        "ci": ci_schedule(),
        "cpu": cpu.replace(max_minutes=18.0),
        "gpu": TrainSchedule(
            epochs=12, batch_size=16, img_size=800, optimizer="sgd", lr=0.01, momentum=0.9,
            weight_decay=1e-4, warmup_iterations=500, warmup_start_factor=0.001,
            lr_schedule="step", step_milestones=(8 / 12, 11 / 12), step_gamma=0.1,
            grad_clip=0.0, amp=True, workers=8,
        ),
    }  # fmt: skip


def faster_rcnn_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of Faster R-CNN.

    ci   three steps of four 64 px images on one thread, no worker process.
    cpu  ``faster-rcnn-r18half-fpn64`` on the shapes set, from the backbone the course
         pre-trains (notebook 04): 500 float32 steps of 16 images at 320 px, AdamW at
         0.002, within twenty minutes of a 2-core CPU, evaluation of the 500 validation
         images included (as ATSS's; see ``cpu_budget_schedule``).
    gpu  mmdet's 1x schedule (``schedule_1x.py``): SGD with momentum 0.9, lr 0.02 for
         16 images a step, weight decay 1e-4, 12 epochs, the rate divided by 10 after
         epochs 8 and 11, a linear warm-up over 500 steps from 0.001 lr, no gradient
         clipping, ImageNet weights for the ResNet-50 (``FasterRCNNConfig.pretrained``),
         stem and stage 2 frozen, batch norms fixed. Differences, as for ATSS: Nesterov
         momentum (mmdet: plain); square 800 px letterboxed images (mmdet: the shorter
         side 800, the longer at most 1333); flip and colour jitter (mmdet: flip only);
         mixed precision for the backbone, FPN and RPN (mmdet: float32; the RoI head
         runs in float32 in the loss).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    cpu = cpu_budget_schedule(iterations=500, lr=0.002, img_size=320, channels_last=True)
    gpu = atss_schedules()["gpu"].replace(lr=0.02)
    return {"ci": ci_schedule(), "cpu": cpu.replace(max_minutes=18.0), "gpu": gpu}


# Deformable DETR's parameters that learn at a tenth of the rate (mmdet's custom_keys)
DETR_LR_MULTIPLIERS = (("backbone", 0.1), ("sampling_offsets", 0.1), ("reference_points", 0.1))


def deformable_detr_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of Deformable DETR.

    ci   three steps of four 128 px images on one thread, no worker process (two stages
         pick the queries among the encoder's tokens: 340 at 128 px, 85 at 64 px).
    cpu  ``deformable-detr-r18half-d128`` on the shapes set, from the backbone the course
         pre-trains (notebook 04): 500 float32 steps of 8 images at 320 px with the
         reference's optimizer (AdamW, weight decay 1e-4, a tenth of the rate for the
         backbone, the sampling offsets and the reference points, gradient norm clipped
         at 0.1) after half an epoch of warm-up, a cosine to 1 %, with a time guard of 25
         minutes, evaluation of the 500 validation images included: within thirty minutes
         of a 2-core CPU (notebook 63's run: 500 steps of 2.3 s in 19.1 minutes, AP50
         0.192; DETRs learn slowly).
    gpu  the reference's: AdamW at 2e-4 for 32 images a step (mmdet: 16 GPUs x 2),
         weight decay 1e-4, the same tenth for backbone, offsets and reference points,
         gradient norm clipped at 0.1, 50 epochs, the rate divided by 10 after epoch 40,
         no warm-up, ImageNet weights for the ResNet-50, stem and stage 2 frozen, batch
         norms fixed. Differences: square 800 px letterboxed images (mmdet: multi-scale
         resizing of the shorter side from 480 to 800 and random crops); flip and colour
         jitter; mixed precision (mmdet: float32); weight decay on weights only (mmdet
         decays every parameter).

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    cpu = cpu_budget_schedule(iterations=500, lr=2e-4, img_size=320)
    return {
        # 128 px: the two-stage preset's 100 queries need at least 100 encoder tokens
        "ci": ci_schedule().replace(
            img_size=128, grad_clip=0.1, lr_multipliers=DETR_LR_MULTIPLIERS
        ),
        "cpu": cpu.replace(
            batch_size=8, weight_decay=1e-4, grad_clip=0.1, lr_multipliers=DETR_LR_MULTIPLIERS,
            max_minutes=25.0,
        ),
        "gpu": TrainSchedule(
            epochs=50, batch_size=32, img_size=800, optimizer="adamw", lr=2e-4, momentum=0.9,
            weight_decay=1e-4, warmup_epochs=0.0, lr_schedule="step", step_milestones=(0.8,),
            step_gamma=0.1, grad_clip=0.1, lr_multipliers=DETR_LR_MULTIPLIERS, amp=True,
            workers=8,
        ),
    }  # fmt: skip


def co_detr_schedules() -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` training schedules of Co-DETR.

    ci   as Deformable DETR's: three steps of four 128 px images on one thread.
    cpu  ``co-deformable-detr-r18half-d128`` on the shapes set, from the backbone the
         course pre-trains (notebook 04), with Deformable DETR's cpu recipe unchanged, so
         that the two compare on the same budget: 500 float32 steps of 8 images at 320
         px, AdamW 2e-4, weight decay 1e-4, a tenth of the rate for the backbone, the
         sampling offsets and the reference points, gradient norm clipped at 0.1, half
         an epoch of warm-up, a cosine to 1 %; a time guard of 38 minutes, evaluation of
         the 500 validation images included: within forty minutes of a 2-core CPU.
    gpu  the reference's (``co_deformable_detr_r50_1x_coco``): AdamW at 2e-4 for 16
         images a step (8 GPUs x 2), weight decay 1e-4, the same tenth for backbone,
         offsets and reference points, gradient norm clipped at 0.1, 12 epochs, the rate
         divided by 10 after epoch 11, no warm-up, ImageNet weights for the ResNet-50,
         stem and stage 2 frozen, batch norms fixed. Differences, as Deformable DETR's:
         square 800 px letterboxed images (the reference: multi-scale resizing of the
         shorter side from 480 to 800 and random crops); flip and colour jitter; mixed
         precision; weight decay on weights only.

    Returns:
        ``{"ci": TrainSchedule, "cpu": ..., "gpu": ...}``, a new dict on each call.
    """
    detr = deformable_detr_schedules()
    return {
        "ci": detr["ci"],
        "cpu": detr["cpu"].replace(max_minutes=38.0),
        "gpu": detr["gpu"].replace(epochs=12, batch_size=16, step_milestones=(11 / 12,)),
    }


# Command-line name -> its schedules; kept in step with ``detutils.models.DETECTORS``
# by a test. A detector outside the package brings its own (see ``schedules_for``).
SCHEDULE_PRESETS: MappingProxyType[str, Callable[[], dict[str, TrainSchedule]]] = MappingProxyType(
    {
        "yolov3": yolov3_schedules,
        "yolov3-tiny": yolov3_schedules,
        "nanodet-m": nanodet_schedules,
        "yolov8n": yolov8_schedules,
        "yolov8s": yolov8_schedules,
        "atss-r50": atss_schedules,
        "atss-r18half-fpn64": atss_schedules,
        "faster-rcnn-r50": faster_rcnn_schedules,
        "faster-rcnn-r18half-fpn64": faster_rcnn_schedules,
        "deformable-detr-r50": deformable_detr_schedules,
        "deformable-detr-r50-refine-two-stage": deformable_detr_schedules,
        "deformable-detr-r18half-d128": deformable_detr_schedules,
        "co-deformable-detr-r50": co_detr_schedules,
        "co-deformable-detr-r18half-d128": co_detr_schedules,
    }
)


def schedules_for(model: nn.Module | str) -> dict[str, TrainSchedule]:
    """The ``ci``, ``cpu`` and ``gpu`` schedules of a detector, as a new dict.

    Args:
        model: a detector (its ``name`` is looked up) or a command-line name.

    Returns:
        ``SCHEDULE_PRESETS[name]()`` for the course's detectors; for a detector built
        outside the package (``module:factory``), the dict its ``config.schedules``
        holds, if any, else ``default_schedules()``.
    """
    name = model if isinstance(model, str) else getattr(model, "name", "")
    if name in SCHEDULE_PRESETS:
        return SCHEDULE_PRESETS[name]()
    own = getattr(getattr(model, "config", None), "schedules", None)
    return dict(own) if own else default_schedules()
