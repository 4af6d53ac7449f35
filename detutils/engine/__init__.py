"""The engine that trains and evaluates every detector of the course.

    train(model, train_set, schedule, val_set=..., out_dir=...)   the training loop
    evaluate(model, loader)                  COCO metrics (pycocotools' COCOeval)
    TrainSchedule, default_schedules()      every number of a run
    ci_schedule(), cpu_budget_schedule()    the ``ci`` and ``cpu`` schedules of the detectors
    postprocess_detections(...)             threshold + class-aware NMS + max_det
    save_checkpoint / load_checkpoint       atomic, ``weights_only`` checkpoints

The commands ``python -m detutils.train``, ``detutils.evaluate`` and
``detutils.predict`` are in ``detutils.engine.cli``.

``detutils.engine.train`` and ``detutils.engine.evaluate`` name the functions; their
modules stay reachable with ``from detutils.engine.train import ...`` (or
``importlib.import_module("detutils.engine.train")``).
"""

from detutils.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detutils.engine.evaluate import EvalResult, evaluate
from detutils.engine.log import plot_training_log, read_training_log
from detutils.engine.postprocess import postprocess_detections, select_detections
from detutils.engine.schedule import (
    ModelEMA,
    TrainSchedule,
    ci_schedule,
    cpu_budget_schedule,
    default_schedules,
)
from detutils.engine.train import NonFiniteLossError, TrainResult, train

__all__ = [
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
    "select_detections",
    "train",
]
