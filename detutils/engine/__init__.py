"""The engine that trains and evaluates every detector of the course.

    train(model, train_set, schedule, val_set=..., out_dir=...)   the training loop
    evaluate(model, loader)                  COCO metrics (pycocotools' COCOeval)
    TrainSchedule                           every number of a run
    schedules_for(model)                    its ``ci``, ``cpu`` and ``gpu`` schedules (presets)
    ModelEMA                                the moving average of the weights
    postprocess_detections(...)             threshold + class-aware NMS + max_det
                                            (from ``detutils.postprocess``)
    save_checkpoint / load_checkpoint       atomic, ``weights_only`` checkpoints

The commands ``python -m detutils.train``, ``detutils.evaluate`` and
``detutils.predict`` are in ``detutils.engine.cli``.

The functions ``train`` and ``evaluate`` live in the modules ``detutils.engine.trainer``
and ``detutils.engine.evaluator``; ``python -m detutils.train`` is the command.
"""

from detutils.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detutils.engine.ema import ModelEMA
from detutils.engine.evaluator import EvalResult, evaluate
from detutils.engine.log import plot_training_log, read_training_log
from detutils.engine.presets import (
    SCHEDULE_PRESETS,
    ci_schedule,
    cpu_budget_schedule,
    default_schedules,
    schedules_for,
)
from detutils.engine.schedule import TrainSchedule
from detutils.engine.trainer import NonFiniteLossError, TrainResult, train
from detutils.postprocess import postprocess_detections, select_detections

__all__ = [
    "SCHEDULE_PRESETS",
    "CheckpointError",
    "EvalResult",
    "ModelEMA",
    "NonFiniteLossError",
    "TrainResult",
    "TrainSchedule",
    "ci_schedule",
    "cpu_budget_schedule",
    "default_schedules",
    "evaluate",
    "load_checkpoint",
    "plot_training_log",
    "postprocess_detections",
    "read_training_log",
    "save_checkpoint",
    "schedules_for",
    "select_detections",
    "train",
]
