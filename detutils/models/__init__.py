"""The course's detectors, and the one table that maps command-line names to them.

Every detector is an ``nn.Module`` with the same four calls (see ``DETECTORS``'s
entries for the configs and size presets)::

    outputs = model(images)                     # images (B, 3, H, W)
    assignment = model.assign(outputs, targets) # who learns what: the detector's
                                                # AssignResult-like record
    losses = model.loss(outputs, targets, assignment=None)
                                                # dict of scalars, "loss" the total;
                                                # assigns itself when given none
    detections = model.predict(outputs, score_thr=..., iou_thr=..., max_det=...)
                                                # list of {"boxes", "scores", "labels"},
                                                # boxes xyxy in input-image pixels

and the attributes ``name`` (its command-line name, stored in checkpoints),
``num_classes`` and ``config`` (a frozen dataclass: the network and its losses; the
training schedules live in ``detutils.engine.presets``). Heads are modules over a
feature pyramid, a list of ``(B, C_l, H_l, W_l)`` maps, so that a head written for one
detector can be attached to another's features.
"""

import importlib
from collections.abc import Callable

from torch import nn

from detutils.models.atss import build_atss_r18half_fpn64, build_atss_r50
from detutils.models.co_detr import (
    build_co_deformable_detr_r18half_d128,
    build_co_deformable_detr_r50,
)
from detutils.models.deformable_detr import (
    build_deformable_detr_r18half_d128,
    build_deformable_detr_r50,
    build_deformable_detr_r50_refine_two_stage,
)
from detutils.models.faster_rcnn import build_faster_rcnn_r18half_fpn64, build_faster_rcnn_r50
from detutils.models.nanodet import build_nanodet_m
from detutils.models.yolov3 import build_yolov3, build_yolov3_tiny
from detutils.models.yolov8 import build_yolov8n, build_yolov8s

__all__ = ["DETECTORS", "build_detector"]

# Command-line name -> factory(num_classes) building the detector. The one place where
# a string picks a class: every detector is added here by hand as it lands.
DETECTORS: dict[str, Callable[[int], nn.Module]] = {
    "yolov3": build_yolov3,
    "yolov3-tiny": build_yolov3_tiny,
    "nanodet-m": build_nanodet_m,
    "yolov8n": build_yolov8n,
    "yolov8s": build_yolov8s,
    "atss-r50": build_atss_r50,
    "atss-r18half-fpn64": build_atss_r18half_fpn64,
    "faster-rcnn-r50": build_faster_rcnn_r50,
    "faster-rcnn-r18half-fpn64": build_faster_rcnn_r18half_fpn64,
    "deformable-detr-r50": build_deformable_detr_r50,
    "deformable-detr-r50-refine-two-stage": build_deformable_detr_r50_refine_two_stage,
    "deformable-detr-r18half-d128": build_deformable_detr_r18half_d128,
    "co-deformable-detr-r50": build_co_deformable_detr_r50,
    "co-deformable-detr-r18half-d128": build_co_deformable_detr_r18half_d128,
}


def _import_factory(spec: str) -> Callable[[int], nn.Module]:
    """``package.module:function`` -> the function (for detectors outside the table)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model {spec!r}: write module:factory, as in my_package.detector:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model {spec!r}: cannot import {module_name} ({error})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {module_name} has no callable {attribute}")
    return factory


def build_detector(name: str, num_classes: int = 80) -> nn.Module:
    """The detector called ``name`` on the command line, with ``num_classes`` classes.

    Args:
        name: a key of ``DETECTORS`` (``yolov8n`` ...), or ``module:factory`` to
            build a detector that lives outside the package (``factory(num_classes)``
            is called; the module must be importable).
        num_classes: classes of the detection head (80 for COCO).

    Returns:
        the detector, with ``name`` set (a factory's own ``name`` is kept).

    Raises:
        ValueError: unknown name, factory that cannot be imported, bad num_classes.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if name in DETECTORS:
        factory = DETECTORS[name]
    elif ":" in name:
        factory = _import_factory(name)
    else:
        known = ", ".join(sorted(DETECTORS)) or "none yet"
        raise ValueError(f"unknown model {name!r}; known: {known}; or give module:factory")
    model = factory(num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {name!r}: the factory returned {type(model).__name__}, not a Module"
        )
    if not getattr(model, "name", None):
        model.name = name
    return model
