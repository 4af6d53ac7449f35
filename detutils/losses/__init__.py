"""Losses of the course's detectors."""

from detutils.losses.atss import atss_loss
from detutils.losses.detr import set_loss, set_loss_on_targets, set_targets
from detutils.losses.dfl import distribution_focal_loss
from detutils.losses.faster_rcnn import roi_loss, rpn_loss
from detutils.losses.focal import quality_focal_loss, sigmoid_focal_loss, weight_reduce_loss
from detutils.losses.gfl import gfl_loss
from detutils.losses.iou import iou_loss
from detutils.losses.yolov3 import yolov3_loss
from detutils.losses.yolov8 import yolov8_assign, yolov8_loss

__all__: list[str] = [
    "atss_loss",
    "distribution_focal_loss",
    "gfl_loss",
    "iou_loss",
    "quality_focal_loss",
    "roi_loss",
    "rpn_loss",
    "set_loss",
    "set_loss_on_targets",
    "set_targets",
    "sigmoid_focal_loss",
    "weight_reduce_loss",
    "yolov3_loss",
    "yolov8_assign",
    "yolov8_loss",
]
