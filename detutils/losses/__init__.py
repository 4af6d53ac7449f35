"""Losses of the course's detectors."""

from detutils.losses.yolo import yolov3_loss

__all__: list[str] = [
    "yolov3_loss",
]
