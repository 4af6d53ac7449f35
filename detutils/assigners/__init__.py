"""Label assigners: which prior learns which ground-truth box.

Every assigner marks a prior with ``BACKGROUND`` (it learns "no object") or
``IGNORE`` (it takes part in no loss), for the gt index and for the label alike.
"""

from detutils.assigners.atss import (
    ATSSExplanation,
    assign_atss,
    assign_atss_batched,
    explain_atss,
)
from detutils.assigners.batch import pad_ground_truth
from detutils.assigners.hungarian import (
    assign_hungarian,
    assign_hungarian_batched,
    hungarian_costs,
)
from detutils.assigners.max_iou import assign_max_iou, assign_max_iou_batched, sample_random
from detutils.assigners.result import BACKGROUND, IGNORE, AssignResult
from detutils.assigners.tal import (
    TaskAlignedResult,
    assign_task_aligned,
    assign_task_aligned_dense,
)
from detutils.assigners.yolov3_targets import YOLOv3Targets, build_yolov3_targets, wh_iou

__all__ = [
    "ATSSExplanation",
    "AssignResult",
    "BACKGROUND",
    "IGNORE",
    "TaskAlignedResult",
    "YOLOv3Targets",
    "assign_atss",
    "assign_atss_batched",
    "assign_hungarian",
    "assign_hungarian_batched",
    "assign_max_iou",
    "assign_max_iou_batched",
    "assign_task_aligned",
    "assign_task_aligned_dense",
    "build_yolov3_targets",
    "explain_atss",
    "hungarian_costs",
    "pad_ground_truth",
    "sample_random",
    "wh_iou",
]
