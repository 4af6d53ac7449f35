"""Label assigners: which prior learns which ground-truth box.

Every assigner marks a prior with ``BACKGROUND`` (it learns "no object") or
``IGNORE`` (it takes part in no loss), for the gt index and for the label alike.
"""

BACKGROUND = -1
IGNORE = -2

from detutils.assigners.wh_iou import YOLOv3Targets, build_yolov3_targets, wh_iou  # noqa: E402

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "YOLOv3Targets",
    "build_yolov3_targets",
    "wh_iou",
]
