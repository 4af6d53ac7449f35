"""Every detector's positives in one form, to set the assigners side by side.

Each detector's ``model.assign`` returns its own record (YOLOv3's per-layer targets,
an (B, A) ``AssignResult`` over priors, YOLOv8's ``TaskAlignedResult``, Faster R-CNN's
two stages, Deformable DETR's matched queries, Co-DETR's branches).
:func:`positives_of` reads one image's positives out of any of them as
:class:`Positives`: for each positive, the ground-truth box it learns, the level it
sits on, and the box the assigner measured it by, either a prior's (a YOLO anchor
placed on its cell, a grid cell, an anchor box, a proposal) or a prediction's (the
task-aligned assigner and Hungarian matching look at what the network predicts).
:func:`positives_table` counts them per box and level, :func:`positives_summary`
per assigner, and :func:`draw_positives` draws one level's.

A teaching helper: it imports the detectors' modules only to recognise them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from detutils.boxes import box_iou_aligned, cxcywh_norm_to_xyxy

__all__ = [
    "Positives",
    "draw_positives",
    "level_order",
    "positives_of",
    "positives_summary",
    "positives_table",
]


class Positives(NamedTuple):
    """One assigner's positives in one image: P of them, on named levels."""

    gt_index: Tensor  # (P,) long, the ground-truth box each positive learns, 0 .. M-1
    level: Tensor  # (P,) long, index into ``levels``
    boxes: Tensor  # (P, 4) xyxy px: the prior's or the prediction's box the assigner measured
    iou: Tensor  # (P,) IoU of that box with the ground-truth box it learns
    prior: Tensor  # (P,) long, the prior's or query's flat index; -1 for the RoI head's
    # proposals, which change from call to call
    levels: tuple[str, ...]  # the level names, e.g. ("stride 8", "stride 16")
    measured: str  # "prior" or "prediction": what ``boxes`` holds


def _make(
    gt_index: Tensor, level: Tensor, boxes: Tensor, prior: Tensor, gt_boxes: Tensor, levels,
    measured: str,
) -> Positives:  # fmt: skip
    gt_index, level, boxes = gt_index.long().cpu(), level.long().cpu(), boxes.float().cpu()
    prior, gt_boxes = prior.long().cpu(), gt_boxes.float().cpu()
    order = torch.argsort(gt_index * len(levels) + level, stable=True)  # by box, then level
    gt_index, level, boxes, prior = gt_index[order], level[order], boxes[order], prior[order]
    iou = box_iou_aligned(boxes, gt_boxes[gt_index]) if len(gt_index) else boxes.new_zeros(0)
    return Positives(gt_index, level, boxes, iou, prior, tuple(levels), measured)


def _stride_names(strides) -> tuple[str, ...]:
    return tuple(f"stride {int(stride)}" for stride in strides)


def _level_of(num_per_level: list[int]) -> Tensor:
    """(A,) long: the level of every prior, priors flattened level by level."""
    return torch.repeat_interleave(torch.arange(len(num_per_level)), torch.tensor(num_per_level))


def _sizes(maps: list[Tensor]) -> list[tuple[int, int]]:
    return [tuple(m.shape[-2:]) for m in maps]


def _outputs_size(outputs, layer: int) -> tuple[int, int]:
    """(H, W) of YOLOv3's output ``layer``, in training or eval mode."""
    raw = outputs[1] if isinstance(outputs, tuple) else outputs
    return tuple(raw[layer].shape[2:4])


def _gt_boxes(targets: list[dict[str, Tensor]], image: int) -> Tensor:
    return targets[image]["boxes"].float().cpu().reshape(-1, 4)


# ------------------------------------------------------------------ per detector
def _yolov3(model, outputs, assignment, targets, image) -> dict[str, Positives]:
    gt_boxes = _gt_boxes(targets, image)
    gt_index, level, boxes, prior, offset = [], [], [], [], 0
    for layer, (layer_targets, stride, head) in enumerate(
        zip(assignment, model.strides, model.heads, strict=True)
    ):
        mine = layer_targets.image == image
        height, width = _outputs_size(outputs, layer)
        cell = layer_targets.gy[mine] * width + layer_targets.gx[mine]
        prior.append(offset + layer_targets.anchor[mine] * height * width + cell)
        offset += head.num_anchors * height * width
        centre = torch.stack([layer_targets.gx[mine], layer_targets.gy[mine]], 1) + 0.5
        half = layer_targets.anchor_wh[mine] / 2
        boxes.append(torch.cat([centre - half, centre + half], 1).float() * stride)
        gt_index.append(layer_targets.gt_index[mine])
        level.append(torch.full((int(mine.sum()),), layer))
    return {
        "YOLOv3 wh-IoU": _make(
            torch.cat(gt_index),
            torch.cat(level),
            torch.cat(boxes),
            torch.cat(prior),
            gt_boxes,
            _stride_names(model.strides),
            "prior",
        )  # fmt: skip
    }


def _prior_result(result, priors, num_per_level, strides, gt_boxes, image, mask=None):
    """Positives of a (B, A) assignment over priors (A, 4)."""
    positive = result.gt_index[image] >= 0
    if mask is not None:
        positive &= mask[image]
    positive = positive.cpu()
    level = _level_of(num_per_level)
    return _make(
        result.gt_index[image].cpu()[positive], level[positive], priors.cpu()[positive],
        torch.nonzero(positive).flatten(), gt_boxes, _stride_names(strides), "prior",
    )  # fmt: skip


def _nanodet(model, outputs, assignment, targets, image) -> dict[str, Positives]:
    cells, num_per_level, _ = model.priors(_sizes(outputs[0]))
    result = _prior_result(
        assignment.assignment, cells, num_per_level, model.config.strides,
        _gt_boxes(targets, image), image,
    )  # fmt: skip
    return {"ATSS on grid cells": result}


def _yolov8(model, outputs, assignment, targets, image) -> dict[str, Positives]:
    _, _, _, point_strides = model.flatten(outputs)  # anchor points level by level
    with torch.no_grad():
        predicted, _ = model.decode(outputs)  # (B, A, 4) xyxy px
    positive = assignment.fg_mask[image].bool().cpu()
    strides = list(model.config.strides)
    _, per_level = torch.unique_consecutive(point_strides.cpu(), return_counts=True)
    level = _level_of(per_level.tolist())
    result = _make(
        assignment.gt_index[image].cpu()[positive], level[positive],
        predicted[image].detach().cpu()[positive], torch.nonzero(positive).flatten(),
        _gt_boxes(targets, image),
        _stride_names(strides), "prediction",
    )  # fmt: skip
    return {"task-aligned": result}


def _atss(branch, outputs, assignment, targets, image) -> Positives:
    sizes = _sizes(outputs[0])
    anchors, num_per_level = branch.anchors(sizes)
    return _prior_result(
        assignment.assignment, anchors, num_per_level, branch.config.strides,
        _gt_boxes(targets, image), image,
    )  # fmt: skip


def _rpn_roi(branch, outputs, assignment, targets, image) -> tuple[Positives, Positives]:
    gt_boxes = _gt_boxes(targets, image)
    anchors, num_per_level = branch.anchors(_sizes(outputs.objectness))
    rpn = _prior_result(
        assignment.rpn, anchors, num_per_level, branch.config.strides, gt_boxes, image,
        mask=assignment.rpn_sampled,
    )  # fmt: skip
    rois = assignment.rois.cpu()
    mine = (rois[:, 0] == image) & (assignment.roi_labels.cpu() >= 0)
    roi_boxes, roi_targets = rois[mine, 1:], assignment.roi_targets.cpu()[mine]
    # the box each positive learns: the ground-truth box equal to its target
    same = (roi_targets[:, None, :] == gt_boxes[None, :, :]).all(-1)  # (P, M)
    gt_index = same.float().argmax(1) if len(gt_boxes) else torch.zeros(0, dtype=torch.long)
    extractor = branch.roi_head.extractor
    level = extractor.map_levels(roi_boxes) if len(roi_boxes) else torch.zeros(0)
    no_index = torch.full_like(gt_index, -1)
    roi = _make(gt_index, level, roi_boxes, no_index, gt_boxes, _stride_names(extractor.strides),
                "prior")  # fmt: skip
    return rpn, roi


def _hungarian(detr, outputs, assignment, targets, image) -> dict[str, Positives]:
    gt_boxes = _gt_boxes(targets, image)
    image_size = detr.image_size(outputs)
    layers = assignment.layers.gt_index[-1, image].cpu()
    matched = layers >= 0
    boxes = cxcywh_norm_to_xyxy(outputs.boxes[-1, image].detach().float().cpu(), image_size)
    records = {
        "Hungarian (last decoder layer)": _make(
            layers[matched],
            torch.zeros(int(matched.sum())),
            boxes[matched],
            torch.nonzero(matched).flatten(),
            gt_boxes,
            ("queries",),
            "prediction",
        )  # fmt: skip
    }
    if assignment.encoder is not None:
        shapes = outputs.spatial_shapes.cpu()
        counts = (shapes[:, 0] * shapes[:, 1]).tolist()
        strides = [image_size[0] // int(h) for h in shapes[:, 0]]
        encoder = assignment.encoder.gt_index[image].cpu()
        matched = encoder >= 0
        boxes = cxcywh_norm_to_xyxy(outputs.enc_boxes[image].detach().float().cpu(), image_size)
        records["Hungarian (encoder proposals)"] = _make(
            encoder[matched], _level_of(counts)[matched], boxes[matched],
            torch.nonzero(matched).flatten(), gt_boxes, _stride_names(strides), "prediction",
        )  # fmt: skip
    return records


def positives_of(
    model: torch.nn.Module,
    outputs: Any,
    assignment: Any,
    targets: list[dict[str, Tensor]],
    image: int = 0,
) -> dict[str, Positives]:
    """One image's positives of every assigner a detector runs, by assigner name.

    Args:
        model: one of the course's detectors (YOLOv3, NanoDet, YOLOv8, ATSS, Faster
            R-CNN, Deformable DETR, Co-DETR).
        outputs: what ``model(images)`` returned in training mode.
        assignment: what ``model.assign(outputs, targets)`` returned.
        targets: the B targets ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        image: which image of the batch.

    Returns:
        ``{assigner name: Positives}``: one entry for a one-stage detector, two for
        Faster R-CNN (its RPN and its RoI head), two for a two-stage Deformable DETR
        (the last decoder layer and the encoder's proposals), five for Co-DETR.

    Raises:
        TypeError: a model this function does not know.
        IndexError: ``image`` outside the batch.
    """
    from detutils.models.atss import ATSSBranch
    from detutils.models.co_detr import CoDETR
    from detutils.models.deformable_detr import DeformableDETR
    from detutils.models.faster_rcnn import RPNRoIBranch
    from detutils.models.nanodet import NanoDet
    from detutils.models.yolov3 import YOLOv3
    from detutils.models.yolov8 import YOLOv8

    if not 0 <= image < len(targets):
        raise IndexError(f"image {image} outside a batch of {len(targets)}")
    if isinstance(model, YOLOv3):
        return _yolov3(model, outputs, assignment, targets, image)
    if isinstance(model, NanoDet):
        return _nanodet(model, outputs, assignment, targets, image)
    if isinstance(model, YOLOv8):
        return _yolov8(model, outputs, assignment, targets, image)
    if isinstance(model, ATSSBranch):
        return {"ATSS on anchors": _atss(model, outputs, assignment, targets, image)}
    if isinstance(model, RPNRoIBranch):
        rpn, roi = _rpn_roi(model, outputs, assignment, targets, image)
        return {"RPN max IoU + sampler": rpn, "RoI head max IoU + sampler": roi}
    if isinstance(model, DeformableDETR):
        return _hungarian(model, outputs, assignment, targets, image)
    if isinstance(model, CoDETR):
        one_to_one = _hungarian(model.detr, outputs.one_to_one, assignment.one_to_one, targets,
                                image)  # fmt: skip
        records = {f"Co-DETR {name[10:].strip('()')}": value for name, value in
                   one_to_one.items()}  # fmt: skip
        if assignment.atss is not None:
            records["Co-DETR ATSS head"] = _atss(
                model.aux["atss"], outputs.atss, assignment.atss, targets, image
            )
        if assignment.rcnn is not None:
            rpn, roi = _rpn_roi(model.aux["rcnn"], outputs.rpn, assignment.rcnn, targets, image)
            records["Co-DETR RPN"], records["Co-DETR RoI head"] = rpn, roi
        return records
    raise TypeError(f"positives_of does not know {type(model).__name__}")


# ------------------------------------------------------------------ tables
def level_order(name: str) -> tuple[int, int]:
    """Strides in increasing order, other names (``queries``) after them."""
    if name.startswith("stride "):
        return 0, int(name.split()[1])
    return 1, 0


def positives_table(records: dict[str, Positives], num_boxes: int):
    """Per assigner and box: positives on each level, their total and mean IoU.

    Returns:
        a DataFrame indexed by (assigner, box) with one column per level name (levels
        of different assigners side by side; 0 where an assigner has no such level),
        ``positives`` and ``mean IoU`` (NaN for a box without positives).
    """
    import pandas as pd

    columns = []
    for record in records.values():
        columns += [name for name in record.levels if name not in columns]
    columns.sort(key=level_order)
    rows = []
    for name, record in records.items():
        for box in range(num_boxes):
            mine = record.gt_index == box
            counts = {level: 0 for level in columns}
            for index, level in enumerate(record.levels):
                counts[level] = int((mine & (record.level == index)).sum())
            iou = float(record.iou[mine].mean()) if mine.any() else float("nan")
            rows.append({"assigner": name, "box": box, **counts,
                         "positives": int(mine.sum()), "mean IoU": iou})  # fmt: skip
    return pd.DataFrame(rows).set_index(["assigner", "box"])


def positives_summary(records: dict[str, Positives], num_boxes: int):
    """Per assigner: positives in all, per box, mean IoU, and the boxes left without any.

    Returns:
        a DataFrame indexed by assigner with ``positives``, ``per box`` (mean),
        ``mean IoU`` (over all positives), ``boxes without`` (their count) and
        ``which`` (their indices, as text).
    """
    import pandas as pd

    rows = []
    for name, record in records.items():
        counts = torch.bincount(record.gt_index, minlength=num_boxes)[:num_boxes]
        empty = torch.nonzero(counts == 0).flatten().tolist()
        rows.append({
            "assigner": name, "measured": record.measured, "positives": len(record.gt_index),
            "per box": len(record.gt_index) / max(num_boxes, 1),
            "mean IoU": float(record.iou.mean()) if len(record.iou) else float("nan"),
            "boxes without": len(empty), "which": " ".join(map(str, empty)) or "-",
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("assigner")


# ------------------------------------------------------------------ figure
def draw_positives(
    ax, image: Any, gt_boxes: Tensor, record: Positives, level: int | None = None,
    title: str | None = None, box_outline: bool = False, faded: bool = True,
):  # fmt: skip
    """Draw the ground truth and one level's positives (all levels with ``level=None``).

    Each positive is a dot at its box's centre in its ground-truth box's colour (the
    box's index picks the colour), with its box outlined when ``box_outline``; boxes
    without a positive on this level are drawn dashed. With ``faded`` the image is shown
    in light grey, so that the colours are the boxes' alone (and a figure of many panels
    stays small).

    Returns:
        ``ax``.
    """
    from detutils.viz import _draw_rectangle, class_color, image_to_array

    array = image_to_array(image)
    if faded:
        grey = (array.astype("float32").mean(axis=-1) / 255 * 4).round() / 4  # 5 tones
        ax.imshow(0.6 + 0.4 * grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(array)
    ax.set_xticks([]), ax.set_yticks([])
    mine = torch.ones(len(record.gt_index), dtype=torch.bool)
    if level is not None:
        mine = record.level == level
    gt_boxes = torch.as_tensor(gt_boxes).float().cpu().reshape(-1, 4)
    for index, box in enumerate(gt_boxes.tolist()):
        has = bool((mine & (record.gt_index == index)).any())
        _draw_rectangle(ax, box, class_color(index), linestyle="-" if has else "--", linewidth=1.5)
    boxes, owners = record.boxes[mine], record.gt_index[mine]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for (cx, cy), owner, box in zip(centres.tolist(), owners.tolist(), boxes.tolist(),
                                    strict=True):  # fmt: skip
        ax.plot(cx, cy, "o", ms=3.5, mec="white", mew=0.6, color=class_color(owner))
        if box_outline:
            _draw_rectangle(ax, box, class_color(owner), linestyle=":", linewidth=0.8)
    ax.set_xlim(0, array.shape[1]), ax.set_ylim(array.shape[0], 0)
    if title is not None:
        ax.set_title(title, fontsize=8)
    return ax
