"""YOLOv3 target building: match ground-truth boxes to anchors by width-height IoU.

YOLOv3 does not compare boxes with anchor boxes placed on the image. It only asks
whether a box and an anchor have a similar *shape*: the width-height IoU puts both
boxes on the same centre and measures their overlap, ``min(w) min(h) / union``. A box
is then predicted, at every YOLO layer, by each of that layer's anchors whose wh-IoU
with it exceeds ``iou_t``, in the grid cell that holds the box centre. So one box may
have several positives on one layer, positives on several layers, or none at all.

Reference: ultralytics/yolov3 (archive branch) ``utils/utils.py`` ``wh_iou`` and
``build_targets`` (``use_all_anchors=True``, ``reject=True``, ``hyp['iou_t'] = 0.20``).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from detutils.assigners.batch import check_gt_boxes

__all__ = ["YOLOv3Targets", "build_yolov3_targets", "wh_iou"]


def wh_iou(wh1: Tensor, wh2: Tensor) -> Tensor:
    """Pairwise IoU of boxes given by width and height only, as if they shared a centre.

    Element ``i, j`` is ``min(w_i, w_j) min(h_i, h_j) / (w_i h_i + w_j h_j - inter)``.
    Scaling both sets by the same factor leaves it unchanged, so pixels or grid cells
    give the same matrix. Two empty boxes give 0 (not 0 / 0).

    Args:
        wh1: (N, 2) widths and heights, >= 0 (for example the anchors).
        wh2: (M, 2) widths and heights, >= 0, the same unit.

    Returns:
        (N, M) IoU in [0, 1].

    Reference: ultralytics/yolov3 (archive) ``utils/utils.py`` ``wh_iou``.
    """
    for name, wh in (("wh1", wh1), ("wh2", wh2)):
        if wh.dim() != 2 or wh.shape[-1] != 2:
            raise ValueError(f"{name} must have shape (K, 2), got {tuple(wh.shape)}")
        if (wh < 0).any():
            raise ValueError(f"{name} holds a negative width or height")
    wh1, wh2 = wh1[:, None, :], wh2[None, :, :]  # (N, 1, 2), (1, M, 2)
    inter = torch.minimum(wh1, wh2).prod(dim=-1)  # (N, M)
    union = wh1.prod(dim=-1) + wh2.prod(dim=-1) - inter  # (N, M)
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


class YOLOv3Targets(NamedTuple):
    """Targets of one YOLO layer: n (image, anchor, cell) positives.

    Entries run anchor by anchor; within an anchor, image by image and, within an
    image, in ground-truth order (the order of the reference). A box matched by two
    anchors appears twice; two boxes may share an (image, anchor, cell).
    """

    image: Tensor  # (n,) long, image of the batch
    anchor: Tensor  # (n,) long, anchor of the layer, 0 .. K - 1
    gy: Tensor  # (n,) long, cell row, 0 .. H - 1
    gx: Tensor  # (n,) long, cell column, 0 .. W - 1
    box: Tensor  # (n, 4) float: centre offset in the cell (x, y), width, height; grid units
    labels: Tensor  # (n,) long, class of the box
    anchor_wh: Tensor  # (n, 2) float: the anchor's width and height, grid units
    gt_index: Tensor  # (n,) long, index m of the box in gt_boxes[image]


def _check_ground_truth(gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> None:
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must have shape (B, M, 4), got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
        raise ValueError(
            f"gt_labels {tuple(gt_labels.shape)} and gt_mask {tuple(gt_mask.shape)} must be "
            f"(B, M) = {tuple(gt_boxes.shape[:2])}"
        )
    if gt_mask.dtype != torch.bool:
        raise ValueError(f"gt_mask must be bool, got {gt_mask.dtype}")
    if gt_boxes.device.type != "cpu":  # on a GPU a check would cost a round trip a step
        return
    check_gt_boxes(gt_boxes, gt_mask)
    if (gt_labels[gt_mask] < 0).any():
        raise ValueError("gt_labels of valid boxes must be class ids >= 0")


def build_yolov3_targets(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    anchors: Sequence[Tensor],
    strides: Sequence[float],
    feature_sizes: Sequence[Sequence[int]],
    iou_t: float = 0.2,
) -> list[YOLOv3Targets]:
    """Match every ground-truth box to the anchors of every YOLO layer; build its targets.

    For each layer with stride s, feature size (H, W) and K anchors:

    1. Boxes go to grid units: centre (cx, cy) / s and size (w, h) / s; anchors / s
       (the reference's ``anchor_vec``).
    2. wh-IoU of every anchor with every valid box: (K, B, M).
    3. A box is a positive of each anchor whose wh-IoU with it is above ``iou_t``;
       padded entries (``gt_mask`` False) never are.
    4. Its cell is the integer part of its centre, clamped to the grid: a centre exactly
       on the right or bottom edge (cx = W) falls in the last cell, W - 1. (The archive
       reference does not clamp and would index past the grid; its successors clamp.)
    5. Box targets: the centre's offset from the cell's top-left corner (in [0, 1), and
       1 for a centre on the right or bottom edge) and the box width and height.

    A box no anchor matches (too small, too large or too elongated for all of them, or
    of zero width) gets no target on that layer: it is simply not learnt there.

    Args:
        gt_boxes: (B, M, 4) xyxy, pixels of the network input, padded.
        gt_labels: (B, M) class ids.
        gt_mask: (B, M) bool, True for real boxes, False for padding.
        anchors: one (K, 2) tensor per layer: anchor width and height, pixels.
        strides: pixels per cell of each layer.
        feature_sizes: (H, W) of each layer.
        iou_t: wh-IoU a box and an anchor must exceed to match (``hyp['iou_t']``).

    Returns:
        one :class:`YOLOv3Targets` per layer.

    Raises:
        ValueError: shapes disagree, the layer lists differ in length, an anchor or stride
            is not positive, or a valid box is not a finite xyxy box.

    Reference: ultralytics/yolov3 (archive) ``utils/utils.py`` ``build_targets``.
    """
    _check_ground_truth(gt_boxes, gt_labels, gt_mask)
    if not len(anchors) == len(strides) == len(feature_sizes):
        raise ValueError(
            f"anchors, strides and feature_sizes need one entry per layer, got "
            f"{len(anchors)}, {len(strides)} and {len(feature_sizes)}"
        )
    # Padding may hold anything: zero it, so that only the mask decides.
    gt_boxes = torch.where(gt_mask[..., None], gt_boxes.float(), 0.0)  # (B, M, 4)
    center = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2) px
    size = gt_boxes[..., 2:] - gt_boxes[..., :2]  # (B, M, 2) px
    batch, num_gt = gt_mask.shape
    results = []
    for layer, (layer_anchors, stride, (height, width)) in enumerate(
        zip(anchors, strides, feature_sizes, strict=True)
    ):
        if not stride > 0 or layer_anchors.dim() != 2 or not (layer_anchors > 0).all():
            raise ValueError(f"layer {layer}: stride and anchors (K, 2) must be positive")
        # 1. grid units
        anchor_grid = layer_anchors.to(gt_boxes) / stride  # (K, 2)
        center_grid, size_grid = center / stride, size / stride  # (B, M, 2) each
        # 2.-3. which (anchor, image, box) triples match
        iou = wh_iou(anchor_grid, size_grid.reshape(-1, 2))  # (K, B M)
        iou = iou.view(len(anchor_grid), batch, num_gt)  # (K, B, M)
        match = (iou > iou_t) & gt_mask[None]  # (K, B, M)
        anchor, image, gt_index = match.nonzero(as_tuple=True)  # (n,) each, anchor-major
        # 4. cells, clamped to the grid
        xy = center_grid[image, gt_index]  # (n, 2)
        gx = xy[:, 0].floor().long().clamp(0, width - 1)  # (n,)
        gy = xy[:, 1].floor().long().clamp(0, height - 1)  # (n,)
        # 5. box targets: offset in the (clamped) cell, size
        offset = xy - torch.stack([gx, gy], dim=-1).to(xy)  # (n, 2)
        box = torch.cat([offset, size_grid[image, gt_index]], dim=-1)  # (n, 4)
        results.append(
            YOLOv3Targets(
                image=image,
                anchor=anchor,
                gy=gy,
                gx=gx,
                box=box,
                labels=gt_labels[image, gt_index].long(),
                anchor_wh=anchor_grid[anchor],
                gt_index=gt_index,
            )
        )
    return results
