"""COCO metrics of a detector: its detections, mapped back to the image files, scored
by pycocotools' ``COCOeval``.

    AP     mean over IoU thresholds 0.50:0.05:0.95 and over classes (the COCO metric)
    AP50   at IoU 0.50 (the PASCAL VOC metric), AP75 at IoU 0.75
    APs, APm, APl   AP of small (< 32^2 px), medium and large (> 96^2 px) objects
    AR100  recall with at most 100 detections per image

A metric with nothing to measure (no small object in the set, say) is NaN, where
``COCOeval`` prints -1. Each is a fraction in [0, 1], not a percentage.
"""

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader

from detutils.boxes import clip_boxes, xyxy_to_xywh
from detutils.data.transforms import undo_letterbox
from detutils.distributed import all_gather_objects, broadcast_object

__all__ = [
    "METRIC_NAMES",
    "EvalResult",
    "coco_evaluate",
    "detections_to_coco",
    "evaluate",
    "merge_labels",
]

# The first six of COCOeval.stats, then AR with 100 detections (stats[8]).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
_STATS_INDEX = (0, 1, 2, 3, 4, 5, 8)


@dataclass
class EvalResult:
    """What ``evaluate`` measured."""

    metrics: dict[str, float]  # METRIC_NAMES -> value in [0, 1], or NaN
    per_class: pd.DataFrame = field(repr=False)  # one row per class: AP, AP50, AP75, gt, detections
    num_images: int = 0  # images evaluated
    num_detections: int = 0  # detections over all images

    def __str__(self) -> str:
        return "  ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())


def detections_to_coco(
    detections: list[dict[str, Any]], label_to_cat_id: list[int]
) -> list[dict[str, Any]]:
    """COCO result records (``xywh`` boxes) from per-image detections.

    Args:
        detections: per image ``{"image_id": int, "boxes": (N, 4) xyxy px of the image
            file, "scores": (N,), "labels": (N,) 0..C-1}``.
        label_to_cat_id: the COCO category id of each label.

    Returns:
        list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
    """
    records = []
    for image in detections:
        boxes = torch.as_tensor(image["boxes"], dtype=torch.float64).reshape(-1, 4)
        xywh = xyxy_to_xywh(boxes)  # (N, 4)
        labels = torch.as_tensor(image["labels"]).reshape(-1).tolist()
        scores = torch.as_tensor(image["scores"]).reshape(-1).tolist()
        if max(labels, default=-1) >= len(label_to_cat_id) or min(labels, default=0) < 0:
            raise ValueError(
                f"image {image['image_id']}: labels must lie in 0..{len(label_to_cat_id) - 1}"
            )
        for box, label, score in zip(xywh.tolist(), labels, scores, strict=True):
            records.append(
                {
                    "image_id": int(image["image_id"]),
                    "category_id": int(label_to_cat_id[label]),
                    "bbox": [round(value, 4) for value in box],
                    "score": float(score),
                }
            )
    return records


def _results_as_coco(coco_gt: COCO, records: list[dict[str, Any]]) -> COCO:
    """A COCO object of results; unlike ``COCO.loadRes`` it accepts an empty list."""
    annotations = []
    for index, record in enumerate(records, start=1):
        width, height = record["bbox"][2], record["bbox"][3]
        annotations.append({**record, "id": index, "area": width * height, "iscrowd": 0})
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def _nan_if_missing(value: float) -> float:
    return math.nan if value < 0 else float(value)


def coco_evaluate(
    coco_gt: COCO,
    records: list[dict[str, Any]],
    image_ids: list[int],
    class_names: list[str],
    label_to_cat_id: list[int],
    verbose: bool = False,
) -> EvalResult:
    """Run COCOeval (bbox) on the images ``image_ids`` and tabulate per-class AP.

    Args:
        coco_gt: the ground truth.
        records: COCO result records (``detections_to_coco``), file pixels.
        image_ids: the images evaluated (a subset of the set is allowed).
        class_names: name of each label 0..C-1.
        label_to_cat_id: COCO category id of each label.
        verbose: print COCOeval's own summary.

    Reference:
        pycocotools ``COCOeval`` (``summarize`` for the metrics; per-class AP from
        ``eval["precision"]`` as detectron2's ``COCOEvaluator`` reads it).
    """
    if not image_ids:
        raise ValueError("no images to evaluate: the loader gave none")
    coco_eval = COCOeval(coco_gt, _results_as_coco(coco_gt, records), iouType="bbox")
    coco_eval.params.imgIds = sorted(image_ids)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    if verbose:
        print(output.getvalue())
    metrics = {
        name: _nan_if_missing(coco_eval.stats[index])
        for name, index in zip(METRIC_NAMES, _STATS_INDEX, strict=True)
    }
    # precision: (T IoU thresholds, R recall points, K classes, A areas, M max dets); -1 = no gt
    precision = coco_eval.eval["precision"]
    category_index = {cat_id: k for k, cat_id in enumerate(coco_eval.params.catIds)}
    evaluated = set(image_ids)
    rows = []
    for name, cat_id in zip(class_names, label_to_cat_id, strict=True):
        per_threshold = precision[:, :, category_index[cat_id], 0, -1]  # (T, R), area all, 100
        gt_ids = coco_gt.getAnnIds(imgIds=sorted(evaluated), catIds=[cat_id])
        num_gt = sum(not coco_gt.anns[ann_id].get("iscrowd", 0) for ann_id in gt_ids)
        rows.append(
            {
                "class": name,
                "AP": _mean_valid(per_threshold),
                "AP50": _mean_valid(per_threshold[0]),
                "AP75": _mean_valid(per_threshold[5]),
                "gt": num_gt,
                "detections": sum(record["category_id"] == cat_id for record in records),
            }
        )
    per_class = pd.DataFrame(rows).set_index("class")
    return EvalResult(metrics, per_class, len(evaluated), len(records))


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


@torch.no_grad()
def merge_labels(detections: dict[str, Any]) -> dict[str, Any]:
    """One image's detections with every label 0 and each distinct box kept once.

    A detector that reports a box under several classes (one per class above the score
    threshold) gives identical boxes; merged, each keeps its highest score.
    """
    boxes, scores = detections["boxes"], detections["scores"]
    if len(boxes) == 0:
        return detections | {"labels": torch.zeros_like(detections["labels"])}
    unique, inverse = torch.unique(boxes, dim=0, return_inverse=True)  # (U, 4), (N,)
    best = scores.new_full((len(unique),), -math.inf).scatter_reduce(
        0, inverse, scores, reduce="amax"
    )  # (U,)
    order = best.argsort(descending=True)
    labels = torch.zeros(len(unique), dtype=detections["labels"].dtype)
    return detections | {"boxes": unique[order], "scores": best[order], "labels": labels}


def _one_category(coco: COCO) -> COCO:
    """A copy of ``coco`` whose every annotation has category 0, "object"."""
    merged = COCO()
    merged.dataset = {
        "images": coco.dataset["images"],
        "categories": [{"id": 0, "name": "object"}],
        "annotations": [
            annotation | {"category_id": 0} for annotation in coco.dataset["annotations"]
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        merged.createIndex()
    return merged


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str | None = None,
    score_thr: float = 0.001,
    iou_thr: float = 0.6,
    max_det: int = 100,
    verbose: bool = False,
    class_agnostic: bool = False,
) -> EvalResult:
    """COCO metrics of ``model`` on the images of ``loader``.

    The detections of the network input are mapped back to the image files (undoing
    the letterbox with each target's ``scale``, ``pad`` and ``orig_size``) and scored
    against the dataset's COCO annotations. Under DDP each rank passes its own shard
    (``build_eval_loader``); detections are gathered and rank 0's result is shared.

    Args:
        model: a detector (``model(images)``, ``model.predict(outputs, ...)``).
        loader: yields ``(images (B, 3, S, S), targets)``; its dataset has ``.coco``,
            ``.class_names`` and ``.label_to_cat_id``.
        device: where to run; default the model's device.
        score_thr, iou_thr, max_det: passed to ``model.predict``; the low default
            threshold is the usual one for COCO AP (it integrates the whole curve).
        verbose: print COCOeval's summary.
        class_agnostic: score boxes only, not names: every ground-truth box and every
            detection belong to one class, "object" (a box the model reports under
            several classes counts once, with its best score). The gap to the usual
            metrics is what wrong class names cost.

    Returns:
        ``EvalResult``; with no detections every AP is 0 (NaN where there is no gt).

    Reference:
        ultralytics ``models/yolo/detect/val.py`` (``conf=0.001``, ``iou=0.6`` or 0.7,
        pycocotools for the final numbers); torchvision ``references/detection/engine.py``.
    """
    dataset = loader.dataset
    for attribute in ("coco", "class_names", "label_to_cat_id"):
        if not hasattr(dataset, attribute):
            raise TypeError(
                f"evaluate needs a COCO dataset; the loader's dataset has no .{attribute}"
            )
    if device is None:  # the model's device (CPU for a model without parameters)
        device = next(model.parameters(), torch.empty(0)).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    detections, image_ids = [], []
    try:
        with torch.inference_mode():  # no graph: a batch costs its forward only
            for images, targets in loader:
                outputs = model(images.to(device, non_blocking=True))
                predictions = model.predict(
                    outputs, score_thr=score_thr, iou_thr=iou_thr, max_det=max_det
                )
                for prediction, target in zip(predictions, targets, strict=True):
                    boxes = prediction["boxes"].detach().float().cpu()
                    boxes = undo_letterbox(boxes, float(target["scale"]), target["pad"].cpu())
                    boxes = clip_boxes(boxes, tuple(int(size) for size in target["orig_size"]))
                    image_id = int(target["image_id"])
                    image_ids.append(image_id)
                    detections.append(
                        {
                            "image_id": image_id,
                            "boxes": boxes,
                            "scores": prediction["scores"].detach().float().cpu(),
                            "labels": prediction["labels"].detach().cpu(),
                        }
                    )
    finally:
        model.train(was_training)
    # Every rank's detections go to rank 0, which scores them all and shares the result.
    gathered = all_gather_objects((detections, image_ids))
    result = None
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        detections = [image for rank_detections, _ in gathered for image in rank_detections]
        image_ids = [image_id for _, rank_ids in gathered for image_id in rank_ids]
        coco, class_names, label_to_cat_id = (
            dataset.coco,
            dataset.class_names,
            dataset.label_to_cat_id,
        )
        if class_agnostic:
            detections = [merge_labels(image) for image in detections]
            coco, class_names, label_to_cat_id = _one_category(coco), ["object"], [0]
        records = detections_to_coco(detections, label_to_cat_id)
        result = coco_evaluate(coco, records, image_ids, class_names, label_to_cat_id, verbose)
    return broadcast_object(result)
