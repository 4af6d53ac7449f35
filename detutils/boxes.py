"""Box formats, areas and the IoU family: IoU, GIoU, DIoU and CIoU, pairwise and aligned.

Formats (the last dimension of a box tensor ``(..., 4)``):

    xyxy     (x1, y1, x2, y2): top-left and bottom-right corners, the course's default
    xywh     (x1, y1, w, h): top-left corner and size, the COCO annotation format
    cxcywh   (cx, cy, w, h): centre and size

A ``_norm`` suffix means coordinates divided by the image width (x) and height (y),
so they lie in [0, 1] for a box inside the image (YOLO label files, DETR targets).
Image sizes are given as ``(H, W)``, the order of ``tensor.shape[-2:]``. The
conversions follow ``torchvision.ops.box_convert``.

Where the ``eps`` of the IoU family sits (``eps=1e-7`` by default everywhere):

    =======  =========================================  ============================
    term     torchvision.ops (pairwise functions)       ultralytics ``bbox_iou``
    =======  =========================================  ============================
    IoU      inter / union (no eps: 0/0 = NaN)           inter / (union + eps)
    GIoU     (C - union) / C (no eps)                    (C - union) / (C + eps)
    DIoU     rho^2 / (c^2 + eps)                         rho^2 / (c^2 + eps)
    CIoU     atan(w / h), no eps (h = 0 gives NaN)       atan(w / (h + eps))
    alpha    v / (1 - iou + v + eps), no gradient        v / (v - iou + 1 + eps), same
    =======  =========================================  ============================

ultralytics also adds ``eps`` to every box height before the union area. This module
puts ``eps`` where torchvision's loss functions (``generalized_box_iou_loss`` ...) put
it: ``inter / (union + eps)`` and ``(C - union) / (C + eps)``, with exact areas, and it
uses ultralytics' ``atan(w / (h + eps))`` for CIoU. So ``iou`` and ``giou`` equal
torchvision's loss functions exactly, every kind equals torchvision's pairwise
functions within about ``eps / union`` (1e-9 for boxes of 100 px^2), and ``ciou``
equals ultralytics' ``bbox_iou(xywh=False, CIoU=True)`` to the same precision. In
exchange a zero-area box gives finite values and finite gradients, never NaN; its IoU
with any box, itself included, is 0 (torchvision: NaN with itself).

Widths and heights are clamped at zero, so an inverted box (x2 < x1) counts as empty.
"""

import math

import torch
from torch import Tensor

__all__ = [
    "invalid_boxes",
    "IOU_KINDS",
    "box_area",
    "box_iou",
    "box_iou_aligned",
    "box_recall",
    "clip_boxes",
    "cxcywh_norm_to_xyxy",
    "cxcywh_to_xyxy",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_cxcywh_norm",
    "xyxy_to_xywh",
]

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def _check_boxes(boxes: Tensor, name: str) -> Tensor:
    """Raise ValueError unless ``boxes`` is a tensor ``(..., 4)``; integers become float32."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    return boxes if boxes.is_floating_point() else boxes.float()


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """Raise ValueError unless ``image_size`` is (H, W) with positive sides."""
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size}")
    height, width = image_size
    return height, width


def _image_scale(image_size: tuple[int, int], like: Tensor) -> Tensor:
    """(W, H, W, H) as a tensor on the device and dtype of ``like``."""
    height, width = _check_image_size(image_size)
    return like.new_tensor([width, height, width, height])


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy to (..., 4) xywh (top-left corner and size, COCO)."""
    boxes = _check_boxes(boxes, "boxes")
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """(..., 4) xywh (top-left corner and size, COCO) to (..., 4) xyxy."""
    boxes_xywh = _check_boxes(boxes_xywh, "boxes_xywh")
    x1, y1, width, height = boxes_xywh.unbind(-1)
    return torch.stack([x1, y1, x1 + width, y1 + height], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy to (..., 4) cxcywh (centre and size)."""
    boxes = _check_boxes(boxes, "boxes")
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """(..., 4) cxcywh (centre and size) to (..., 4) xyxy."""
    boxes_cxcywh = _check_boxes(boxes_cxcywh, "boxes_cxcywh")
    center_x, center_y, width, height = boxes_cxcywh.unbind(-1)
    half_width, half_height = width / 2, height / 2
    return torch.stack(
        [
            center_x - half_width,
            center_y - half_height,
            center_x + half_width,
            center_y + half_height,
        ],
        dim=-1,
    )


def xyxy_to_cxcywh_norm(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(..., 4) xyxy pixels to (..., 4) cxcywh divided by the image width and height.

    Args:
        boxes: (..., 4) xyxy, pixels.
        image_size: (H, W) of the image, pixels.

    Returns:
        (..., 4) cxcywh, normalised: x and w divided by W, y and h divided by H.
    """
    boxes_cxcywh = xyxy_to_cxcywh(boxes)
    return boxes_cxcywh / _image_scale(image_size, boxes_cxcywh)


def cxcywh_norm_to_xyxy(boxes_cxcywh_norm: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(..., 4) normalised cxcywh (YOLO labels, DETR targets) to (..., 4) xyxy pixels.

    Args:
        boxes_cxcywh_norm: (..., 4) cxcywh, x and w in units of W, y and h in units of H.
        image_size: (H, W) of the image, pixels.

    Returns:
        (..., 4) xyxy, pixels.
    """
    boxes_cxcywh_norm = _check_boxes(boxes_cxcywh_norm, "boxes_cxcywh_norm")
    return cxcywh_to_xyxy(boxes_cxcywh_norm * _image_scale(image_size, boxes_cxcywh_norm))


def invalid_boxes(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) bool: True where a box is not a valid xyxy box.

    Valid means four finite coordinates with x2 >= x1 and y2 >= y1 (a zero-area box is
    valid). A box in xywh or cxcywh by mistake is usually caught: its "x2" (a width) is
    smaller than its x1 wherever the box is narrower than its distance to the left edge.
    """
    finite = torch.isfinite(boxes).all(dim=-1)
    ordered = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
    return ~(finite & ordered)


def box_area(boxes: Tensor) -> Tensor:
    """Area of (..., 4) xyxy boxes -> (...); an inverted box (x2 < x1 or y2 < y1) has area 0.

    Reference: torchvision.ops.box_area (which returns a negative area for inverted boxes).
    """
    boxes = _check_boxes(boxes, "boxes")
    width = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    height = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return width * height


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp (..., 4) xyxy pixel boxes to the image: x to [0, W], y to [0, H].

    Reference: torchvision.ops.clip_boxes_to_image.
    """
    boxes = _check_boxes(boxes, "boxes")
    height, width = _check_image_size(image_size)
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2)
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _iou_family(boxes1: Tensor, boxes2: Tensor, kind: str, eps: float) -> Tensor:
    """Element-wise IoU of kind ``kind`` between broadcastable (..., 4) xyxy boxes -> (...)."""
    left1, top1, right1, bottom1 = boxes1.unbind(-1)
    left2, top2, right2, bottom2 = boxes2.unbind(-1)
    # 1. Sizes, clamped so that an inverted box counts as an empty one.
    width1, height1 = (right1 - left1).clamp(min=0), (bottom1 - top1).clamp(min=0)
    width2, height2 = (right2 - left2).clamp(min=0), (bottom2 - top2).clamp(min=0)

    # 2. Intersection and union; eps keeps 0 / 0 (two empty boxes) at 0.
    inter_width = (torch.minimum(right1, right2) - torch.maximum(left1, left2)).clamp(min=0)
    inter_height = (torch.minimum(bottom1, bottom2) - torch.maximum(top1, top2)).clamp(min=0)
    inter = inter_width * inter_height
    union = width1 * height1 + width2 * height2 - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return iou

    # 3. The smallest box enclosing both.
    enclose_width = torch.maximum(right1, right2) - torch.minimum(left1, left2)
    enclose_height = torch.maximum(bottom1, bottom2) - torch.minimum(top1, top2)
    if kind == "giou":
        # GIoU: minus the share of the enclosing box that neither box covers.
        enclose_area = enclose_width * enclose_height
        return iou - (enclose_area - union) / (enclose_area + eps)

    # 4. DIoU: minus the squared centre distance over the squared enclosing diagonal.
    # Sums of corners are twice the centres, hence the / 4.
    center_dx = (left2 + right2) - (left1 + right1)
    center_dy = (top2 + bottom2) - (top1 + bottom1)
    center_distance2 = (center_dx**2 + center_dy**2) / 4
    diagonal2 = enclose_width**2 + enclose_height**2 + eps
    diou = iou - center_distance2 / diagonal2
    if kind == "diou":
        return diou

    # 5. CIoU: minus alpha * v, v measuring the aspect-ratio mismatch. alpha is a weight,
    # not a function to differentiate: both references compute it without gradient.
    v = (4 / math.pi**2) * (
        torch.atan(width2 / (height2 + eps)) - torch.atan(width1 / (height1 + eps))
    ) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return diou - alpha * v


def _check_kind(kind: str) -> None:
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")


def box_iou(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """Pairwise IoU, GIoU, DIoU or CIoU between two sets of boxes.

    Element ``i, j`` of the result compares box ``i`` of ``boxes1`` with box ``j`` of
    ``boxes2``. Ranges: IoU in [0, 1]; GIoU, DIoU in (-1, 1]; CIoU in (-1.5, 1].

    Args:
        boxes1: (N, 4) xyxy, pixels (any unit works, as long as both sets share it).
        boxes2: (M, 4) xyxy, same unit.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: keeps every division finite; where it sits is told in the module docstring.

    Returns:
        (N, M) values, differentiable (CIoU's alpha is a constant for autograd).

    Raises:
        ValueError: a box set is not (K, 4), or ``kind`` is unknown.

    Reference: torchvision.ops.box_iou, generalized_box_iou, distance_box_iou,
        complete_box_iou; ultralytics.utils.metrics.bbox_iou (CIoU).
    """
    _check_kind(kind)
    boxes1 = _check_boxes(boxes1, "boxes1")
    boxes2 = _check_boxes(boxes2, "boxes2")
    if boxes1.ndim != 2:
        raise ValueError(f"boxes1 must have shape (N, 4), got {tuple(boxes1.shape)}")
    if boxes2.ndim != 2:
        raise ValueError(f"boxes2 must have shape (M, 4), got {tuple(boxes2.shape)}")
    return _iou_family(boxes1[:, None, :], boxes2[None, :, :], kind, eps)  # (N, M)


def box_iou_aligned(boxes1: Tensor, boxes2: Tensor, kind: str = "iou", eps: float = 1e-7) -> Tensor:
    """IoU, GIoU, DIoU or CIoU between boxes in matching positions (a prediction and its target).

    Element ``i`` compares ``boxes1[i]`` with ``boxes2[i]``: the diagonal of
    :func:`box_iou`, without computing the rest of the matrix.

    Args:
        boxes1: (..., 4) xyxy, pixels; for example (N, 4) or (B, A, 4).
        boxes2: (..., 4) xyxy, the same shape as ``boxes1``.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: keeps every division finite; where it sits is told in the module docstring.

    Returns:
        (...) values, the shape of the boxes without the last dimension.

    Raises:
        ValueError: a box set is not (..., 4), the shapes differ, or ``kind`` is unknown.

    Reference: torchvision.ops.generalized_box_iou_loss, distance_box_iou_loss,
        complete_box_iou_loss (as 1 - loss); ultralytics.utils.metrics.bbox_iou.
    """
    _check_kind(kind)
    boxes1 = _check_boxes(boxes1, "boxes1")
    boxes2 = _check_boxes(boxes2, "boxes2")
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"boxes1 and boxes2 must have the same shape, got {tuple(boxes1.shape)} "
            f"and {tuple(boxes2.shape)}"
        )
    return _iou_family(boxes1, boxes2, kind, eps)


def box_recall(
    proposals: list[Tensor],
    gt_boxes: list[Tensor],
    iou_thrs: tuple[float, ...] = (0.5, 0.7),
    max_proposals: int | None = None,
) -> dict[float, float]:
    """The recall of region proposals: the share of ground-truth boxes that at least one
    proposal overlaps by ``iou_thr`` or more, over a set of images.

    Args:
        proposals: per image (P_i, 4) xyxy px, best first.
        gt_boxes: per image (M_i, 4) xyxy px.
        iou_thrs: the IoU thresholds to measure at.
        max_proposals: count only each image's first proposals, or None for all.

    Returns:
        ``{iou_thr: recall}`` in [0, 1]; 0 when there is no box at all.

    Reference: mmdet ``eval_recalls`` (``mmdet/evaluation/functional/recall.py``), the
        proposal recall of the RPN's evaluation.
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"{len(proposals)} proposal sets for {len(gt_boxes)} images")
    found = torch.zeros(len(iou_thrs))
    total = 0
    for image_proposals, boxes in zip(proposals, gt_boxes, strict=True):
        total += len(boxes)
        if len(boxes) == 0 or len(image_proposals) == 0:
            continue
        best = box_iou(boxes.float(), image_proposals[:max_proposals].float()).max(dim=1).values
        found += torch.stack([(best >= thr).sum() for thr in iou_thrs]).float().cpu()
    return {thr: float(count) / max(total, 1) for thr, count in zip(iou_thrs, found, strict=True)}
