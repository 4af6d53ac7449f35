"""Label assigners: which prior learns which ground-truth box.

Every assigner marks a prior with ``BACKGROUND`` (it learns "no object") or
``IGNORE`` (it takes part in no loss), for the gt index and for the label alike.
"""

BACKGROUND = -1
IGNORE = -2

from detutils.assigners.atss import (  # noqa: E402
    ATSSExplanation,
    assign_atss,
    assign_atss_batched,
    explain_atss,
)
from detutils.assigners.batch import pad_ground_truth  # noqa: E402
from detutils.assigners.result import AssignResult  # noqa: E402
from detutils.assigners.tal import (  # noqa: E402
    TaskAlignedResult,
    assign_task_aligned,
    assign_task_aligned_dense,
)
from detutils.assigners.wh_iou import YOLOv3Targets, build_yolov3_targets, wh_iou  # noqa: E402

__all__ = [
    "ATSSExplanation",
    "AssignResult",
    "BACKGROUND",
    "IGNORE",
    "TaskAlignedResult",
    "YOLOv3Targets",
    "assign_atss",
    "assign_atss_batched",
    "assign_task_aligned",
    "assign_task_aligned_dense",
    "build_yolov3_targets",
    "explain_atss",
    "pad_ground_truth",
    "wh_iou",
]
